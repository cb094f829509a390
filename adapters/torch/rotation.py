"""QuaRot-style randomized Hadamard incoherence for Llama-style decoders (function-preserving).

With orthogonal ``R`` (hidden × hidden), ``R_h`` (head_dim) and ``R_d`` (intermediate), all randomized
Hadamard matrices from one seed:

- RMSNorm weights ``γ`` are folded into the linears that read the norm (``W ← W diag(γ)``, ``γ ← 1``);
  ``RMSNorm(h R) = RMSNorm(h) R`` because ``‖h R‖ = ‖h‖``;
- residual stream ``h ↦ h R``: embeddings ``E ← E R``; readers (q, k, v, gate, up, lm_head)
  ``W ← W R``; writers (o, down) ``W ← Rᵀ W``, ``b ← b R``;
- per attention head (fused, exact because attention mixes tokens, not features): ``W_v[head] ← R_hᵀ
  W_v[head]``, ``W_o[:, head] ← W_o[:, head] R_h``;
- ``down_proj`` input (online): ``W_down ← W_down R_d`` and a pre-hook ``x ↦ x R_d``.

Tied input/output embeddings are untied (the lm_head receives the final-norm fold).
"""

from __future__ import annotations

import torch
from torch import nn

from .actquant import InputTransform
from .hadamard import RandomizedHadamard

__all__ = ["ROTATION_SEED_OFFSETS", "llama_parts", "fold_norm_into", "rotate_llama"]

#: Seeds of the three rotations derived from the user's seed (residual, head, down_proj input).
ROTATION_SEED_OFFSETS = {"residual": 0, "head": 1, "down_proj_input": 2}

_LAYER_PARTS = (
    "input_layernorm", "post_attention_layernorm", "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
    "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj",
)


def llama_parts(model: nn.Module):
    """(embedding, decoder layers, final norm, lm_head) of a Llama-style ``*ForCausalLM``, or a clear error."""
    try:
        embed, layers, norm, head = model.model.embed_tokens, model.model.layers, model.model.norm, model.lm_head
    except AttributeError as missing:
        raise ValueError(
            f"{type(model).__name__} is not a Llama-style causal LM (needs model.embed_tokens, model.layers, "
            f"model.norm, lm_head): {missing}"
        ) from None
    for index, layer in enumerate(layers):
        modules = dict(layer.named_modules())
        absent = [part for part in _LAYER_PARTS if part not in modules]
        if absent:
            raise ValueError(f"decoder layer {index} lacks the Llama-style parts {absent}")
        # Extra weighted parts (Gemma's q/k norms and post-attention/feed-forward norms on the residual
        # branches) do not commute with a rotation of the residual stream: refuse instead of breaking the model.
        extra = [name for name, module in modules.items()
                 if name not in _LAYER_PARTS and any(True for _ in module.parameters(recurse=False))]
        if extra:
            raise ValueError(f"decoder layer {index} ({type(layer).__name__}) has parts the Llama rotation does "
                             f"not handle: {extra}; the Hadamard rotation supports Llama-style blocks only")
    return embed, layers, norm, head


def fold_norm_into(norm: nn.Module, readers: list[nn.Linear]) -> None:
    """``W ← W diag(γ)`` for each reader, then ``γ ← 1`` (the norm must have no bias)."""
    if getattr(norm, "bias", None) is not None:
        raise ValueError(f"cannot fold {type(norm).__name__} with a bias")
    gamma = norm.weight.detach().to(torch.float64)
    with torch.no_grad():
        for reader in readers:
            reader.weight.copy_(reader.weight.to(torch.float64) * gamma[None, :])
        norm.weight.fill_(1.0)


def _right_multiply(linear: nn.Linear, R: torch.Tensor) -> None:
    with torch.no_grad():
        linear.weight.copy_(linear.weight.to(torch.float64) @ R)


def _rotate_output(linear: nn.Linear, R: torch.Tensor) -> None:
    with torch.no_grad():
        linear.weight.copy_(R.T @ linear.weight.to(torch.float64))
        if linear.bias is not None:
            linear.bias.copy_(linear.bias.to(torch.float64) @ R)


def _untie_lm_head(model: nn.Module, embed: nn.Embedding, head: nn.Linear) -> None:
    if head.weight is embed.weight or head.weight.data_ptr() == embed.weight.data_ptr():
        head.weight = nn.Parameter(embed.weight.detach().clone())
    model.config.tie_word_embeddings = False
    if hasattr(model.config, "get_text_config"):
        model.config.get_text_config().tie_word_embeddings = False


def rotate_llama(model: nn.Module, seed: int = 0) -> dict:
    """Apply the rotations in place; returns the spec recorded in quantization.json."""
    embed, layers, norm, head = llama_parts(model)
    config = model.config
    hidden = embed.weight.shape[1]
    head_dim = getattr(config, "head_dim", None) or hidden // config.num_attention_heads
    residual = RandomizedHadamard(hidden, seed + ROTATION_SEED_OFFSETS["residual"])
    per_head = RandomizedHadamard(head_dim, seed + ROTATION_SEED_OFFSETS["head"])
    R = residual.matrix()
    R_h = per_head.matrix()
    _untie_lm_head(model, embed, head)
    with torch.no_grad():
        embed.weight.copy_(embed.weight.to(torch.float64) @ R)
    down_rotation = None
    for layer in layers:
        attn, mlp = layer.self_attn, layer.mlp
        fold_norm_into(layer.input_layernorm, [attn.q_proj, attn.k_proj, attn.v_proj])
        fold_norm_into(layer.post_attention_layernorm, [mlp.gate_proj, mlp.up_proj])
        for reader in (attn.q_proj, attn.k_proj, attn.v_proj, mlp.gate_proj, mlp.up_proj):
            _right_multiply(reader, R)
        for writer in (attn.o_proj, mlp.down_proj):
            _rotate_output(writer, R)
        _rotate_heads(attn.v_proj, attn.o_proj, R_h, head_dim)
        if down_rotation is None:
            down_rotation = RandomizedHadamard(mlp.down_proj.in_features, seed + ROTATION_SEED_OFFSETS["down_proj_input"])
            R_d = down_rotation.matrix()
        _right_multiply(mlp.down_proj, R_d)
        mlp.down_proj.register_forward_pre_hook(InputTransform(down_rotation, None))
    fold_norm_into(norm, [head])
    _right_multiply(head, R)
    return {
        "method": "randomized_hadamard",
        "seed": seed,
        "residual": residual.to_spec(),
        "head": per_head.to_spec(),
        "down_proj_input": None if down_rotation is None else down_rotation.to_spec(),
    }


def _rotate_heads(v_proj: nn.Linear, o_proj: nn.Linear, R_h: torch.Tensor, head_dim: int) -> None:
    """``W_v[head] ← R_hᵀ W_v[head]`` (``b_v[head] ← b_v[head] R_h``), ``W_o[:, head] ← W_o[:, head] R_h``."""
    with torch.no_grad():
        W_v = v_proj.weight.to(torch.float64).reshape(-1, head_dim, v_proj.in_features)
        v_proj.weight.copy_(torch.einsum("dk,hdi->hki", R_h, W_v).reshape(v_proj.weight.shape))
        if v_proj.bias is not None:
            v_proj.bias.copy_((v_proj.bias.to(torch.float64).reshape(-1, head_dim) @ R_h).reshape(-1))
        W_o = o_proj.weight.to(torch.float64).reshape(o_proj.out_features, -1, head_dim)
        o_proj.weight.copy_((W_o @ R_h).reshape(o_proj.weight.shape))
