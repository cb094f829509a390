"""The input transforms of a linear: an online rotation and per-token activation fake quantization.

The quantizer itself is the core's :func:`qronos_linalg.activations.fake_quantize_per_token`.
"""

from __future__ import annotations

from torch import nn

from qronos_linalg.activations import check_act_bits, fake_quantize_per_token

from .hadamard import RandomizedHadamard

__all__ = ["InputTransform", "install_input_transforms"]


class InputTransform:
    """Forward pre-hook on a linear: ``x ↦ Q_act(x R)`` (online rotation R then activation quantization).

    Either part may be absent. ``spec()`` is what quantization.json stores to re-install it.
    """

    def __init__(self, rotation: RandomizedHadamard | None = None, act_bits: int | None = None):
        check_act_bits(act_bits)
        self.rotation = rotation
        self.act_bits = act_bits

    def spec(self) -> dict:
        return {
            "online_hadamard": None if self.rotation is None else self.rotation.to_spec(),
            "act_bits": self.act_bits,
        }

    def transform(self, x, channel_dim: int = -1):
        if self.rotation is not None:
            x = self.rotation.apply(x)
        if self.act_bits is not None:
            x = fake_quantize_per_token(x, self.act_bits, axis=channel_dim)
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
