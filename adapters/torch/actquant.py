"""Per-token dynamic asymmetric activation fake quantization and the input transforms of a linear.

For each token (row ``x`` of the last axis): ``lo = min(min x, 0)``, ``hi = max(max x, 0)``,
``scale = (hi − lo) / (2^b − 1)``, ``zero = round(−lo / scale)``,
``x̂ = (clip(round(x / scale) + zero, 0, 2^b − 1) − zero) · scale`` (an all-zero token stays zero).
"""

from __future__ import annotations

import torch
from torch import nn

from .hadamard import RandomizedHadamard

__all__ = ["SUPPORTED_ACT_BITS", "fake_quantize_per_token", "InputTransform", "install_input_transforms"]

SUPPORTED_ACT_BITS = (2, 3, 4, 5, 6, 7, 8)


def fake_quantize_per_token(x: torch.Tensor, bits: int, dim: int = -1) -> torch.Tensor:
    """Round every slice of ``x`` along ``dim`` to its own asymmetric ``bits``-bit min-max grid."""
    if bits not in SUPPORTED_ACT_BITS:
        raise ValueError(f"activation bits must be one of {SUPPORTED_ACT_BITS}, got {bits!r}")
    qmax = 2**bits - 1
    lo = torch.clamp(x.amin(dim=dim, keepdim=True), max=0)
    hi = torch.clamp(x.amax(dim=dim, keepdim=True), min=0)
    scale = (hi - lo) / qmax
    safe_scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    zero = torch.round(-lo / safe_scale)
    codes = torch.clamp(torch.round(x / safe_scale) + zero, 0, qmax)
    return (codes - zero) * safe_scale


class InputTransform:
    """Forward pre-hook on a linear: ``x ↦ Q_act(x R)`` (online rotation R then activation quantization).

    Either part may be absent. ``spec()`` is what quantization.json stores to re-install it.
    """

    def __init__(self, rotation: RandomizedHadamard | None = None, act_bits: int | None = None):
        if act_bits is not None and act_bits not in SUPPORTED_ACT_BITS:
            raise ValueError(f"activation bits must be one of {SUPPORTED_ACT_BITS}, got {act_bits!r}")
        self.rotation = rotation
        self.act_bits = act_bits

    def spec(self) -> dict:
        return {
            "online_hadamard": None if self.rotation is None else self.rotation.to_spec(),
            "act_bits": self.act_bits,
        }

    def transform(self, x: torch.Tensor, channel_dim: int = -1) -> torch.Tensor:
        if self.rotation is not None:
            x = self.rotation.apply(x)
        if self.act_bits is not None:
            x = fake_quantize_per_token(x, self.act_bits, dim=channel_dim)
        return x

    def __call__(self, module: nn.Module, args):
        channel_dim = 1 if isinstance(module, (nn.Conv1d, nn.Conv2d)) else -1
        return (self.transform(args[0], channel_dim), *args[1:])


def install_input_transforms(model: nn.Module, specs: dict[str, dict]) -> dict[str, InputTransform]:
    """Register an :class:`InputTransform` pre-hook on each named module; returns them by name."""
    modules = dict(model.named_modules())
    installed = {}
    for name, spec in specs.items():
        if name not in modules:
            raise KeyError(f"input transform for {name!r}: the model has no module of that name")
        rotation = spec.get("online_hadamard")
        transform = InputTransform(
            None if rotation is None else RandomizedHadamard.from_spec(rotation), spec.get("act_bits")
        )
        if transform.rotation is None and transform.act_bits is None:
            continue
        modules[name].register_forward_pre_hook(transform)
        installed[name] = transform
    return installed
