"""SmoothQuant (Xiao et al., 2023) folded into the RMSNorms of a Llama-style decoder (function-preserving).

For the linears reading one RMSNorm (q/k/v after ``input_layernorm``, gate/up after
``post_attention_layernorm``), per input channel j:

    s_j = max|X_j|^α / max_{readers} max|W_{:, j}|^(1 − α),    γ ← γ / s,    W ← W diag(s),

so ``(x / s) (W diag(s))ᵀ = x Wᵀ`` and activation outliers move into the weights. ``max|X_j|`` is taken
over the calibration windows in the float model.
"""

from __future__ import annotations

import torch
from torch import nn

from .hooks import temporary_hooks
from .rotation import llama_parts

__all__ = ["MIN_SMOOTHING_SCALE", "check_smoothquant_alpha", "smoothing_scales", "smooth_llama"]

#: Lower clamp of max|X_j| and max|W_:,j| (a dead channel would otherwise give 0 or inf).
MIN_SMOOTHING_SCALE = 1e-5


def check_smoothquant_alpha(alpha) -> None:
    """ValueError unless ``alpha`` is None (off) or a number in [0, 1]."""
    if alpha is not None and (isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 <= alpha <= 1):
        raise ValueError(f"SmoothQuant alpha must be in [0, 1], got {alpha!r}")


def smoothing_scales(activation_max: torch.Tensor, weight_max: torch.Tensor, alpha: float) -> torch.Tensor:
    """``s = max|X|^α / max|W|^(1 − α)`` per input channel."""
    check_smoothquant_alpha(alpha)
    activation_max = activation_max.clamp(min=MIN_SMOOTHING_SCALE)
    weight_max = weight_max.clamp(min=MIN_SMOOTHING_SCALE)
    return activation_max.pow(alpha) / weight_max.pow(1 - alpha)


def smooth_llama(model: nn.Module, calibration: torch.Tensor, alpha: float, *, batch_size: int = 1) -> dict:
    """Apply SmoothQuant in place; returns the spec recorded in quantization.json."""
    _embed, layers, _norm, _head = llama_parts(model)
    pairs = []
    for layer in layers:
        pairs.append((layer.input_layernorm, [layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj]))
        pairs.append((layer.post_attention_layernorm, [layer.mlp.gate_proj, layer.mlp.up_proj]))
    maxima = [None] * len(pairs)

    def record(index):
        def hook(module, args, output):
            current = output.detach().abs().reshape(-1, output.shape[-1]).amax(dim=0).to(torch.float64)
            maxima[index] = current if maxima[index] is None else torch.maximum(maxima[index], current)
        return hook

    norms = {index: norm for index, (norm, _) in enumerate(pairs)}
    with temporary_hooks(norms, record, kind="post"), torch.no_grad():
        for start in range(0, calibration.shape[0], batch_size):
            model(input_ids=calibration[start : start + batch_size], use_cache=False)
    with torch.no_grad():
        for (norm, readers), activation_max in zip(pairs, maxima):
            weight_max = torch.stack([r.weight.detach().abs().amax(dim=0) for r in readers]).amax(dim=0)
            scales = smoothing_scales(activation_max, weight_max.to(torch.float64), alpha)
            norm.weight.copy_(norm.weight.to(torch.float64) / scales)
            for reader in readers:
                reader.weight.copy_(reader.weight.to(torch.float64) * scales[None, :])
    return {"alpha": alpha, "calibration_windows": int(calibration.shape[0])}
