"""YAQA's Kronecker factors of each linear's end-to-end Hessian, from the model's own output distribution.

For a causal LM with float weights and a calibration window b, next-token labels are **sampled from the
model's own softmax** (seeded), the cross-entropy of the model's logits against them is back-propagated,
and each linear's weight gradient for that window is ``G_b = Σ_t g_t x_tᵀ`` (out × in: g_t the gradient at
the layer's output, x_t its input). The one-pass sketch of the Fisher ``E[vec(G) vec(G)ᵀ] ≈ H_out ⊗ H_in``:

    H_in  = (1/B) Σ_b G_bᵀ G_b      (in × in),        H_out = (1/B) Σ_b G_b G_bᵀ      (out × out).

Only the product's scale matters to rounding (YAQA's codes do not change when a factor is multiplied by
a positive number, and the relative damping scales with it), so no further normalisation is applied.
Sampling the labels from the model (not taking the text's next tokens) makes ``E[G]`` = 0 at the float
weights, so the gradients' second moment is the Fisher information of the model's own output
distribution — the second-order term of KL(p_float ‖ p_quant), the objective YAQA rounds against.

Memory: the factors of every linear (Σ in² + out²) and one window's activations and gradients; the whole
model is in memory, as the gradients need every layer. For a model larger than memory, the same sums
stream block by block: a backward pass needs only the layers after the block (their weights can be
onloaded in turn) and the block's own inputs, so the factors of one block at a time can be accumulated
from recorded output-gradients of the block's last layer — not implemented here.
"""

from __future__ import annotations

import torch
from torch import nn

from qronos_linalg.io import progress as progress_bar

from .layerwise import supported_layers

__all__ = ["KroneckerFactors", "kronecker_factors"]


class KroneckerFactors:
    """A linear's factors: ``H`` = H_in (in × in), ``H_out`` (out × out), ``count`` windows, ``name``.

    The attributes are those :func:`qronos_linalg.recipe.solve` reads (``H`` is the solver's H_in)."""

    def __init__(self, name: str, in_features: int, out_features: int, dtype=torch.float64):
        self.name = name
        self.H = torch.zeros(in_features, in_features, dtype=dtype)
        self.H_out = torch.zeros(out_features, out_features, dtype=dtype)
        self.count = 0

    def add(self, gradient: torch.Tensor) -> None:
        G = gradient.detach().to(self.H.dtype).reshape(self.H_out.shape[0], self.H.shape[0])
        self.H += G.T @ G
        self.H_out += G @ G.T
        self.count += 1

    def finish(self) -> "KroneckerFactors":
        """Average over the windows (the scale does not change the codes; it keeps the numbers readable)."""
        if self.count:
            self.H /= self.count
            self.H_out /= self.count
        return self


def _loss_head(model: nn.Module) -> None:
    """ValueError unless the model returns next-token logits (a causal LM head)."""
    if not callable(getattr(model, "get_output_embeddings", None)) or model.get_output_embeddings() is None:
        raise ValueError(f"{type(model).__name__} has no language-model head (get_output_embeddings() is None): "
                         "YAQA's Hessian comes from the gradients of the model's output distribution")


def kronecker_factors(model: nn.Module, windows: torch.Tensor, layers: dict[str, nn.Module] | None = None, *,
                      seed: int = 0, progress: bool = True, average: bool = True,
                      first_window: int = 0) -> dict[str, KroneckerFactors]:
    """The factors of every linear in ``layers`` (default: all supported layers of ``model``) from one
    forward and backward per window (n_windows × seq_len token ids), with labels sampled from the model's
    own softmax; window i's labels come from a generator seeded with ``seed + first_window + i`` (so a share
    of the windows starting at ``first_window`` samples what the whole set would). ``average``: divide the
    sums by the windows (:meth:`KroneckerFactors.finish`; a data-parallel run reduces the sums first). The
    model's weights and gradients are left as they were (its parameters' ``.grad`` is restored to None)."""
    _loss_head(model)
    if not isinstance(windows, torch.Tensor) or windows.ndim != 2 or windows.shape[0] == 0:
        raise ValueError("windows must be a non-empty 2-D tensor of token ids (n_windows × seq_len)")
    layers = dict(supported_layers(model)) if layers is None else dict(layers)
    if not layers:
        raise ValueError(f"{type(model).__name__} has no supported layers")
    factors = {name: KroneckerFactors(name, layer.weight.shape[1] if layer.weight.ndim == 2 else
                                      layer.weight[0].numel(), layer.weight.shape[0])
               for name, layer in layers.items()}
    parameters = list(model.parameters())
    wanted = {layer.weight for layer in layers.values()}
    flags = [parameter.requires_grad for parameter in parameters]
    model.eval()
    bar = progress_bar(windows.shape[0], "Hessian factors", "window", enabled=progress)
    try:
        for parameter in parameters:
            parameter.requires_grad_(parameter in wanted)
            parameter.grad = None
        for index in range(windows.shape[0]):
            batch = windows[index : index + 1]
            logits = model(input_ids=batch, use_cache=False).logits[0].float()
            with torch.no_grad():
                generator = torch.Generator().manual_seed(seed + first_window + index)
                labels = torch.multinomial(torch.softmax(logits, dim=-1), 1, generator=generator)[:, 0]
            torch.nn.functional.cross_entropy(logits, labels, reduction="sum").backward()
            for name, layer in layers.items():
                factors[name].add(layer.weight.grad)
                layer.weight.grad = None
            bar.update(1)
    finally:
        bar.close()
        for parameter, flag in zip(parameters, flags):
            parameter.requires_grad_(flag)
            parameter.grad = None
    return {name: factor.finish() if average else factor for name, factor in factors.items()}
