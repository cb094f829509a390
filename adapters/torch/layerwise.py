"""Layer-by-layer quantization of ``nn.Linear`` / ``nn.Conv1d`` / ``nn.Conv2d`` layers of a module.

Each layer ``W`` (out × in; a convolution's kernel flattened to out × (C·k)) is rounded by a solver that
minimises ``‖X Wᵀ − X̃ Qᵀ‖_F²``, with ``X`` the layer's input in the float model and ``X̃`` its input in
the partially quantized model (earlier layers already quantized, activation quantization applied).
``X`` and ``X̃`` are captured by forward pre-hooks, one calibration batch at a time, and reduced at once
into :class:`qronos_linalg.LayerStats`; no activation outlives its batch.

Layers that read the same input tensor (q/k/v, gate/up) form a group and are solved together; groups are
solved in the order the model first calls them, each after every earlier group is quantized.
"""

from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from qronos_linalg import LayerStats, UniformGrid, gpfq, gptaq, optq, output_error, qronos, rtn
from qronos_linalg.grid import MAX_BITS as MAX_WEIGHT_BITS
from qronos_linalg.grid import MIN_BITS as MIN_WEIGHT_BITS

from .actquant import SUPPORTED_ACT_BITS, InputTransform
from .magr import magr

__all__ = [
    "ALGORITHMS",
    "SUPPORTED_LAYERS",
    "QuantConfig",
    "StopForward",
    "layer_input_matrix",
    "layer_weight_matrix",
    "set_layer_weight",
    "supported_layers",
    "discover_groups",
    "solve_layer",
    "quantize_layers_in_block",
    "float_copy",
    "quantize_module",
]

ALGORITHMS = ("rtn", "optq", "gpfq", "gptaq", "qronos")
SUPPORTED_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d)


@dataclass(frozen=True)
class QuantConfig:
    """Rounding settings shared by every quantized layer (``damp=None``: the solver's default)."""

    algorithm: str = "qronos"
    bits: int = 4
    group_size: int | None = None
    symmetric: bool = False
    shrink: float = 1.0
    search: str = "minmax"
    damp: float | None = None
    block_size: int = 128
    act_order: bool = False
    gptaq_alpha: float = 0.25
    act_bits: int | None = None
    magr_alpha: float | None = None

    def __post_init__(self):
        if not isinstance(self.bits, int) or not MIN_WEIGHT_BITS <= self.bits <= MAX_WEIGHT_BITS:
            raise ValueError(f"bits must be an integer in [{MIN_WEIGHT_BITS}, {MAX_WEIGHT_BITS}], got {self.bits!r}")
        if self.group_size is not None and (not isinstance(self.group_size, int) or self.group_size < 1):
            raise ValueError(f"group_size must be None or a positive integer, got {self.group_size!r}")
        if not 0 < self.shrink <= 1:
            raise ValueError(f"shrink must be in (0, 1], got {self.shrink!r}")
        if self.algorithm not in ALGORITHMS:
            raise ValueError(f"algorithm must be one of {ALGORITHMS}, got {self.algorithm!r}")
        if self.act_bits is not None and self.act_bits not in SUPPORTED_ACT_BITS:
            raise ValueError(f"act_bits must be None or one of {SUPPORTED_ACT_BITS}, got {self.act_bits!r}")
        if self.magr_alpha is not None and not self.magr_alpha > 0:
            raise ValueError(f"magr_alpha must be > 0, got {self.magr_alpha!r}")

    def to_dict(self) -> dict:
        return asdict(self)


class StopForward(Exception):
    """Raised by a capture hook once every wanted input is captured, to skip the rest of a forward."""


def supported_layers(module: nn.Module) -> dict[str, nn.Module]:
    """Named Linear/Conv1d/Conv2d submodules (registration order); rejects convolutions we cannot unfold."""
    layers = {}
    for name, layer in module.named_modules():
        if not isinstance(layer, SUPPORTED_LAYERS):
            continue
        if isinstance(layer, (nn.Conv1d, nn.Conv2d)):
            if layer.groups != 1 or layer.padding_mode != "zeros" or isinstance(layer.padding, str):
                raise ValueError(
                    f"convolution {name!r}: only groups=1, padding_mode='zeros' and numeric padding are "
                    f"supported (got groups={layer.groups}, padding_mode={layer.padding_mode!r}, "
                    f"padding={layer.padding!r})"
                )
        layers[name] = layer
    return layers


def _conv2d_geometry(layer: nn.Module):
    """(kernel, stride, padding, dilation) as 2-tuples; a Conv1d is a Conv2d of height 1."""
    if isinstance(layer, nn.Conv1d):
        return ((1, layer.kernel_size[0]), (1, layer.stride[0]), (0, layer.padding[0]), (1, layer.dilation[0]))
    return layer.kernel_size, layer.stride, layer.padding, layer.dilation


def layer_input_matrix(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The layer's input as samples × in_features such that ``output = samples · Wᵀ (+ bias)``.

    Linear: leading dims flattened. Convolution: the unfolded patches (``F.unfold``), one row per output
    position, matching ``weight.reshape(out, −1)``.
    """
    if isinstance(layer, nn.Linear):
        return x.reshape(-1, layer.in_features)
    if isinstance(layer, nn.Conv1d):
        x = x.unsqueeze(-2)
    kernel, stride, padding, dilation = _conv2d_geometry(layer)
    patches = F.unfold(x, kernel, dilation=dilation, padding=padding, stride=stride)
    return patches.transpose(1, 2).reshape(-1, patches.shape[1])


def layer_weight_matrix(layer: nn.Module) -> torch.Tensor:
    """``W`` as out × in_features (a detached view of the layer's weight)."""
    return layer.weight.detach().reshape(layer.weight.shape[0], -1)


def set_layer_weight(layer: nn.Module, W: torch.Tensor) -> None:
    with torch.no_grad():
        layer.weight.copy_(W.reshape(layer.weight.shape).to(layer.weight.dtype))


def discover_groups(block: nn.Module, layer_names: list[str], run) -> list[list[str]]:
    """Groups of ``layer_names`` in first-call order; consecutive layers called on the same tensor share
    a group. ``run()`` performs one forward of ``block``. Layers never called, or called more than once
    per forward, are errors (their input would be ambiguous)."""
    modules = dict(block.named_modules())
    calls: list[tuple[str, torch.Tensor]] = []  # keeps the inputs alive, so identities cannot be reused
    handles = [
        modules[name].register_forward_pre_hook(lambda module, args, name=name: calls.append((name, args[0])))
        for name in layer_names
    ]
    try:
        with torch.no_grad():
            run()
    finally:
        for handle in handles:
            handle.remove()
    called = [name for name, _ in calls]
    repeated = sorted({name for name in called if called.count(name) > 1})
    if repeated:
        raise ValueError(f"layers called more than once per forward are not supported: {repeated}")
    missing = [name for name in layer_names if name not in called]
    if missing:
        raise ValueError(f"layers never called by the forward pass (cannot collect their inputs): {missing}")
    groups: list[list[str]] = []
    previous_input = None
    for name, layer_input in calls:
        if groups and layer_input is previous_input:
            groups[-1].append(name)
        else:
            groups.append([name])
        previous_input = layer_input
    return groups


def capture_inputs(block: nn.Module, layer_names: list[str], run) -> dict[str, torch.Tensor]:
    """Inputs (samples × in_features, after any input transform) of the named layers in one forward."""
    modules = dict(block.named_modules())
    captured: dict[str, torch.Tensor] = {}

    def hook(module, args, name):
        captured[name] = layer_input_matrix(module, args[0]).detach()
        if len(captured) == len(layer_names):
            raise StopForward

    handles = [
        modules[name].register_forward_pre_hook(lambda m, a, name=name: hook(m, a, name)) for name in layer_names
    ]
    try:
        with torch.no_grad():
            run()
    except StopForward:
        pass
    finally:
        for handle in handles:
            handle.remove()
    return captured


def _relative_errors(W, candidates, H, G, H_float) -> list[float]:
    """``sqrt(‖XWᵀ − X̃Qᵀ‖² / ‖XWᵀ‖²)`` for each Q, with ``‖XWᵀ‖² = tr(W H_float Wᵀ)`` computed once."""
    reference = float(((W @ H_float) * W).sum())
    if not reference > 0:
        return [0.0 for _ in candidates]
    return [math.sqrt(output_error(W, Q, H, G, H_float) / reference) for Q in candidates]


def _input_gap(stats) -> float:
    """``‖X̃ − X‖_F / ‖X‖_F = sqrt((tr H − 2 tr G + tr H_float) / tr H_float)``."""
    reference = float(torch.trace(stats.H_float))
    gap = float(torch.trace(stats.H) - 2 * torch.trace(stats.G) + torch.trace(stats.H_float))
    return math.sqrt(max(gap, 0.0) / reference) if reference > 0 else 0.0


def _transform_key(module: nn.Module) -> str:
    return json.dumps([hook.spec() for hook in module._forward_pre_hooks.values() if isinstance(hook, InputTransform)])


def _stats_sharing(group: list[str], modules: dict[str, nn.Module]) -> list[list[str]]:
    """Members of a group (same input tensor) whose input transforms agree see identical X and X̃, so
    they share one LayerStats: sub-lists of ``group`` in order."""
    by_key: dict[str, list[str]] = {}
    for name in group:
        by_key.setdefault(_transform_key(modules[name]), []).append(name)
    return list(by_key.values())


def solve_layer(W: torch.Tensor, stats: LayerStats, config: QuantConfig, *, name: str | None = None):
    """Fit the grid to W (after MagR if asked) and round with ``config.algorithm``.

    Returns ``(result, report)``; the report's relative errors ``sqrt(‖XWᵀ − X̃Qᵀ‖² / ‖XWᵀ‖²)`` are measured
    against the original W for both RTN and the chosen algorithm.
    """
    start = time.perf_counter()
    W = W.to(torch.float64)
    H, G = stats.H.to(torch.float64), stats.G.to(torch.float64)
    target = W if config.magr_alpha is None else magr(W, H, config.magr_alpha)
    grid = UniformGrid.fit(
        target, config.bits, symmetric=config.symmetric, group_size=config.group_size,
        shrink=config.shrink, search=config.search,
    )
    damp_kwargs = {} if config.damp is None else {"damp": config.damp}
    common = {"block_size": config.block_size, "act_order": config.act_order}
    if config.algorithm == "rtn":
        result = rtn(target, grid)
    elif config.algorithm == "optq":
        result = optq(target, H, grid, **damp_kwargs, **common)
    elif config.algorithm == "gpfq":
        result = gpfq(target, H, G, grid, act_order=config.act_order)
    elif config.algorithm == "gptaq":
        result = gptaq(target, H, G, grid, alpha=config.gptaq_alpha, **damp_kwargs, **common)
    else:
        result = qronos(target, H, G, grid, **damp_kwargs, **common)
    elapsed = time.perf_counter() - start
    rtn_weight = result.weight if config.algorithm == "rtn" else rtn(target, grid).weight
    rel_error_rtn, rel_error = _relative_errors(W, [rtn_weight, result.weight], H, G,
                                                stats.H_float.to(torch.float64))
    report = {
        "name": name or stats.name,
        "shape": list(W.shape),
        "algorithm": result.algorithm,
        "bits": config.bits,
        "group_size": config.group_size,
        "samples": stats.count,
        "damp": result.damp,
        "input_gap": _input_gap(stats),
        "rel_error_rtn": rel_error_rtn,
        "rel_error": rel_error,
        "time_s": elapsed,
    }
    return result, report


def float_copy(block: nn.Module) -> nn.Module:
    """A deep copy of ``block`` whose input transforms keep their online rotation but drop activation
    quantization (the float model's inputs are never quantized)."""
    clone = copy.deepcopy(block)
    for module in clone.modules():
        for key, hook in list(module._forward_pre_hooks.items()):
            if isinstance(hook, InputTransform):
                module._forward_pre_hooks[key] = InputTransform(hook.rotation, None)
    return clone


def quantize_layers_in_block(
    float_block: nn.Module,
    quant_block: nn.Module,
    float_runs: list,
    quant_runs: list,
    config: QuantConfig,
    *,
    prefix: str = "",
    layer_names: list[str] | None = None,
    stats_dtype: str = "float64",
    on_layer=None,
) -> dict[str, tuple]:
    """Quantize the supported layers of ``quant_block`` in place, group after group.

    ``float_runs[i]()`` / ``quant_runs[i]()`` forward calibration batch i through ``float_block`` /
    ``quant_block``; X comes from the former (captured once for every layer of the block and kept for
    the block's duration) and X̃ from the latter (once per group, after the earlier groups are quantized).
    Layers of a group with the same input transform share one LayerStats. Returns ``{name: (result, report)}``
    with names prefixed by ``prefix``; ``on_layer(name)`` is called after each layer.
    """
    if layer_names is None:
        layer_names = list(supported_layers(quant_block))
    if not layer_names:
        return {}
    groups = discover_groups(float_block, layer_names, float_runs[0])
    quant_modules = dict(quant_block.named_modules())
    sharings = [_stats_sharing(group, quant_modules) for group in groups]
    # X does not depend on the quantized block, so one float forward per batch serves every group.
    all_representatives = [members[0] for sharing in sharings for members in sharing]
    float_inputs = [capture_inputs(float_block, all_representatives, run) for run in float_runs]
    outcome = {}
    for group, sharing in zip(groups, sharings):
        stats = {}
        for members in sharing:
            label = prefix + members[0] + (f" (shared by {', '.join(members[1:])})" if len(members) > 1 else "")
            in_features = layer_weight_matrix(quant_modules[members[0]]).shape[1]
            shared = LayerStats(in_features, dtype=stats_dtype, name=label)
            stats.update({name: shared for name in members})
        representatives = [members[0] for members in sharing]
        for X, quant_run in zip(float_inputs, quant_runs):
            X_tilde = capture_inputs(quant_block, representatives, quant_run)
            for name in representatives:
                stats[name].update(X[name], X_tilde[name])
        for name in group:
            layer = quant_modules[name]
            result, report = solve_layer(layer_weight_matrix(layer), stats[name], config, name=prefix + name)
            set_layer_weight(layer, result.weight)
            outcome[prefix + name] = (result, report)
            if on_layer is not None:
                on_layer(prefix + name)
    return outcome


def _forward_call(module: nn.Module, batch):
    if isinstance(batch, dict):
        return lambda: module(**batch)
    if isinstance(batch, (tuple, list)):
        return lambda: module(*batch)
    return lambda: module(batch)


def quantize_module(model: nn.Module, calibration, config: QuantConfig, *, stats_dtype: str = "float64",
                    on_layer=None) -> dict[str, tuple]:
    """Quantize every Linear/Conv1d/Conv2d of ``model`` in place (generic, any ``nn.Module``).

    ``calibration``: a list of batches (a tensor, a tuple of positional args or a dict of kwargs). A float
    copy of the model gives X; one forward per batch and layer group through each copy, stopped early
    after the group's inputs are captured. With ``config.act_bits`` every quantized layer's input is
    fake-quantized per token (a hook left installed on ``model``). Returns ``{name: (result, report)}``.
    """
    layers = supported_layers(model)
    if not layers:
        raise ValueError(
            f"{type(model).__name__} has no supported layers to quantize (looked for "
            f"{', '.join(cls.__name__ for cls in SUPPORTED_LAYERS)})"
        )
    calibration = list(calibration)
    if not calibration:
        raise ValueError("calibration must contain at least one batch")
    model.eval()
    float_model = float_copy(model)
    if config.act_bits is not None:
        for layer in layers.values():
            layer.register_forward_pre_hook(InputTransform(None, config.act_bits))
    return quantize_layers_in_block(
        float_model, model,
        [_forward_call(float_model, batch) for batch in calibration],
        [_forward_call(model, batch) for batch in calibration],
        config, layer_names=list(layers), stats_dtype=stats_dtype, on_layer=on_layer,
    )
