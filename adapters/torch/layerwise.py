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

import contextlib
import copy
import json
import time

import torch
import torch.nn.functional as F
from torch import nn

from qronos_linalg import LayerStats
from qronos_linalg.stats import STATISTIC_NAMES
from qronos_linalg.recipe import Recipe, solve

from .actquant import InputTransform
from .hooks import StopForward, named_modules, run_until_stopped, temporary_hooks
from .reuse import OutputReuse, settled_modules

__all__ = [
    "SUPPORTED_LAYERS",
    "layer_input_matrix",
    "layer_weight_matrix",
    "set_layer_weight",
    "supported_layers",
    "discover_groups",
    "solve_layer",
    "quantize_layers_in_block",
    "hidden_of",
    "float_copy",
    "quantize_module",
]

SUPPORTED_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d)


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
    calls: list[tuple[str, torch.Tensor]] = []
    with temporary_hooks(named_modules(block, layer_names), call_recorder(calls)), torch.no_grad():
        run()
    return groups_from_calls(calls, layer_names)


def call_recorder(calls: list):
    """Hook factory for :func:`temporary_hooks` appending ``(name, input tensor)`` to ``calls`` (keeping the
    inputs alive, so tensor identities cannot be reused within the forward)."""

    def record(name):
        return lambda module, args: calls.append((name, args[0]))

    return record


def groups_from_calls(calls: list, layer_names: list[str]) -> list[list[str]]:
    """The groups of :func:`discover_groups` from one forward's recorded calls."""
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


def capture_inputs(block: nn.Module, layer_names: list[str], run, *, stop: bool = True):
    """``(inputs, output)``: the inputs (samples × in_features, after any input transform) of the named
    layers in one forward, and the forward's output — or None with ``stop``, which ends the forward as
    soon as every input is captured."""
    captured: dict[str, torch.Tensor] = {}

    def capture(name):
        def hook(module, args):
            captured[name] = layer_input_matrix(module, args[0]).detach()
            if stop and len(captured) == len(layer_names):
                raise StopForward

        return hook

    output = None
    with temporary_hooks(named_modules(block, layer_names), capture), torch.no_grad():
        if stop:
            run_until_stopped(run)
        else:
            output = run()
    return captured, output


class PhaseTimer:
    """Seconds spent per phase of the pipeline (``with timer.phase("statistics"): ...``): the PHASES always,
    others (a data-parallel run's ``reduce`` and ``broadcast``) once used."""

    PHASES = ("float_forward", "quantized_forward", "statistics", "gradients", "solve")

    def __init__(self):
        self.seconds = dict.fromkeys(self.PHASES, 0.0)

    @contextlib.contextmanager
    def phase(self, name: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start


def _transform_key(module: nn.Module) -> str:
    return json.dumps([hook.spec() for hook in module._forward_pre_hooks.values() if isinstance(hook, InputTransform)])


def _stats_sharing(group: list[str], modules: dict[str, nn.Module]) -> list[list[str]]:
    """Members of a group (same input tensor) whose input transforms agree see identical X and X̃, so
    they share one LayerStats: sub-lists of ``group`` in order."""
    by_key: dict[str, list[str]] = {}
    for name in group:
        by_key.setdefault(_transform_key(modules[name]), []).append(name)
    return list(by_key.values())


def solve_layer(layer: nn.Module, stats: LayerStats | None, recipe: Recipe, *, name: str | None = None,
                errors: bool = True):
    """Round the layer's weight with the shared recipe (:func:`qronos_linalg.recipe.solve`) in float64;
    returns ``(result, report dict)``. The layer's weight is left unchanged. ``stats`` may be None for a
    recipe that needs no statistics (RTN without errors)."""
    result, report = solve(layer_weight_matrix(layer).to(torch.float64), stats, recipe.grid, recipe.solver,
                           name=name, errors=errors)
    return result, report.to_dict()


def float_copy(block: nn.Module) -> nn.Module:
    """A deep copy of ``block`` whose input transforms keep their online rotation but drop activation
    quantization (the float model's inputs are never quantized)."""
    clone = copy.deepcopy(block)
    for module in clone.modules():
        for key, hook in list(module._forward_pre_hooks.items()):
            if isinstance(hook, InputTransform):
                module._forward_pre_hooks[key] = InputTransform(hook.rotation, None)
    return clone


def needed_statistics(recipe: Recipe, errors: bool) -> tuple[str, ...]:
    """The layer statistics a run collects: the solver's, and G and H_float for the report's errors (YAQA's
    Kronecker factors H, H_out serve its errors too; yaqa-qronos' H_out comes with the stream statistics)."""
    spec = recipe.solver
    if spec.solver.rounds_with_gradient_factors_only:
        return spec.statistics
    needed = set(spec.statistics) | ({"H", "G", "H_float"} if errors else set())
    return tuple(name for name in (*STATISTIC_NAMES, "H_out") if name in needed)


def quantize_layers_in_block(
    float_block: nn.Module | None,
    quant_block: nn.Module,
    float_runs: list | None,
    quant_runs: list,
    recipe: Recipe,
    *,
    prefix: str = "",
    layer_names: list[str] | None = None,
    stats_dtype: str = "float64",
    product_dtype: str | None = None,
    errors: bool = True,
    keep_float_outputs: bool = False,
    advance: bool = False,
    on_layer=None,
    timer: PhaseTimer | None = None,
    parallel=None,
    output_factors: dict | None = None,
):
    """Quantize the supported layers of ``quant_block`` in place, group after group; returns
    ``({name: (result, report)}, float outputs, quantized outputs)``.

    ``float_runs[i]()`` / ``quant_runs[i]()`` forward calibration batch i through ``float_block`` /
    ``quant_block``. X (needed for G and for the errors only) comes from one float forward per batch that
    captures the inputs of every group at once; with ``keep_float_outputs`` it runs to the end and its
    outputs (the float stream's next state) are returned, else it stops after the last capture and None
    is returned. X̃ comes from the quantized block, once per group after the earlier groups are quantized,
    each forward stopped as soon as the group's inputs are captured; a submodule whose layers are all
    quantized by then runs once more per batch and its output is reused by the later forwards
    (:class:`~.reuse.OutputReuse`: a Llama block's attention runs twice per batch, not three times).
    Where X̃ equals X bitwise (the first
    group when X is the float block on the quantized stream), the statistics take one product for both.
    With ``advance`` the quantized block's outputs (the quantized stream's next state) are returned too:
    when the last group is one Linear whose output is added to the block's output (a residual block;
    checked on batch 0 against a full forward), from the last group's forward, which then runs to the
    end, plus ``X̃ (Q − W)ᵀ``; otherwise from one more forward per batch.
    Layers of a group with the same input transform share one LayerStats, which keeps only the statistics
    the solver needs (plus G and H_float with ``errors``). Names are prefixed by ``prefix``;
    ``on_layer(name)`` is called after each layer; ``timer`` collects the seconds per phase.
    ``parallel`` (a :class:`~.distributed.DataParallel`): the runs are this rank's share of the calibration;
    statistics are reduced to each layer's owner rank, which solves it and broadcasts the solution.
    ``output_factors``: ``{prefix + name: H_out}`` of every layer, for a solver that also needs H_out
    (yaqa-qronos); each is dropped once its layer is solved.
    """
    timer = timer or PhaseTimer()
    if layer_names is None:
        layer_names = list(supported_layers(quant_block))
    if not layer_names:
        return {}, None, ([hidden_of(run()) for run in quant_runs] if advance else None)
    statistics = needed_statistics(recipe, errors)
    if "H_out" in statistics and output_factors is None:
        raise ValueError(f"{recipe.solver.algorithm} needs each layer's output-side factor H_out (output_factors)")
    stream_statistics = tuple(name for name in statistics if name in STATISTIC_NAMES)
    needs_x = "G" in statistics or "H_float" in statistics
    if needs_x and (float_block is None or float_runs is None):
        raise ValueError(f"{recipe.solver.algorithm} (with errors={errors}) needs the float model's inputs X")
    float_inputs, float_outputs = None, None
    if needs_x:  # X does not depend on the quantized block: one float forward per batch serves every group,
        # and the first one also tells the groups (the inputs of a Linear are views: capturing all costs nothing)
        calls: list = []
        with timer.phase("float_forward"):
            with temporary_hooks(named_modules(float_block, layer_names), call_recorder(calls)):
                captures = [capture_inputs(float_block, layer_names, float_runs[0], stop=not keep_float_outputs)]
            groups = groups_from_calls(calls, layer_names)
            del calls
            captures += [capture_inputs(float_block, layer_names, run, stop=not keep_float_outputs)
                         for run in float_runs[1:]]
        float_inputs = [inputs for inputs, _ in captures]
        float_outputs = [hidden_of(output) for _, output in captures] if keep_float_outputs else None
        del captures
    else:
        with timer.phase("quantized_forward"):
            groups = discover_groups(quant_block, layer_names, quant_runs[0])
    quant_modules = dict(quant_block.named_modules())
    sharings = [_stats_sharing(group, quant_modules) for group in groups]
    # settled[p]: the submodules with every layer quantized before group p (e.g. self_attn once o is); one is
    # kept while group p runs if the next forward can reuse it (it is still among the largest settled there)
    settled = [settled_modules(quant_block, layer_names, {name for group in groups[:p] for name in group})
               for p in range(len(groups) + 1)]
    outcome, quant_outputs = {}, None
    with OutputReuse(quant_block) as reuse:
        runs = reuse.runs(quant_runs)
        for position, (group, sharing) in enumerate(zip(groups, sharings)):
            last = position == len(groups) - 1
            correct = advance and last and len(group) == 1 and isinstance(quant_modules[group[0]], nn.Linear)
            reuse.keep([name for name in settled[position] if name in settled[position + 1]])
            stats = {}
            for members in sharing:
                label = prefix + members[0] + (f" (shared by {', '.join(members[1:])})" if len(members) > 1 else "")
                in_features = layer_weight_matrix(quant_modules[members[0]]).shape[1]
                shared = LayerStats(in_features, dtype=stats_dtype, product_dtype=product_dtype, name=label,
                                    statistics=stream_statistics)
                stats.update({name: shared for name in members})
            representatives = [members[0] for members in sharing]
            last_inputs, last_outputs = [], []
            for batch, quant_run in enumerate(runs):
                with timer.phase("quantized_forward"):
                    X_tilde, output = capture_inputs(quant_block, representatives, quant_run, stop=not correct)
                if correct:
                    last_inputs.append(X_tilde[representatives[0]])
                    last_outputs.append(hidden_of(output))
                with timer.phase("statistics"):
                    for name in representatives:
                        X = None if float_inputs is None else float_inputs[batch][name]
                        same = X is not None and torch.equal(X, X_tilde[name])
                        stats[name].update(X if X is not None else X_tilde[name], None if same else X_tilde[name])
                    for name in group if float_inputs is not None else ():
                        del float_inputs[batch][name]  # this group's X is no longer needed
            if output_factors is not None:
                stats = {name: WithOutputFactor(stats[name], output_factors.pop(prefix + name)) for name in group}
            solved = _solve_group(group, sharing, stats, quant_modules, recipe, prefix, errors, parallel, timer)
            for name in group:
                layer = quant_modules[name]
                result, report = solved[prefix + name]
                change = (result.weight.to(layer.weight.dtype) - layer_weight_matrix(layer)).T if correct else None
                set_layer_weight(layer, result.weight)
                outcome[prefix + name] = (result, report)
                if on_layer is not None:
                    on_layer(prefix + name)
            if correct:
                with timer.phase("quantized_forward"):
                    quant_outputs = _corrected_outputs(runs, last_inputs, last_outputs, change)
        if advance and quant_outputs is None:
            with timer.phase("quantized_forward"), torch.no_grad():
                quant_outputs = [hidden_of(run()) for run in runs]
    return outcome, float_outputs, quant_outputs


class WithOutputFactor:
    """A layer's stream statistics (H, G, …: a shared :class:`~qronos_linalg.LayerStats`) with its own
    output-side factor ``H_out``, as :func:`~qronos_linalg.recipe.solve` reads them."""

    def __init__(self, stats: LayerStats, H_out):
        self.stats, self.H_out = stats, H_out

    def __getattr__(self, name):
        return getattr(self.stats, name)


def _solve_group(group, sharing, stats, modules, recipe: Recipe, prefix: str, errors: bool, parallel,
                 timer: PhaseTimer) -> dict:
    """``{prefix + name: (result, report)}`` of a group's layers. Data-parallel: each shared LayerStats is
    reduced to the owners of its layers, each owner solves its layers, and the solutions are broadcast."""
    if parallel is None:
        with timer.phase("solve"):
            return {prefix + name: solve_layer(modules[name], stats[name], recipe, name=prefix + name, errors=errors)
                    for name in group}
    owners = {name: parallel.owner(prefix + name, *reversed(layer_weight_matrix(modules[name]).shape))
              for name in group}
    with timer.phase("reduce"):
        for members in sharing:
            shared = stats[members[0]]
            shared.count = parallel.reduce(list(shared.sums.values()), shared.count,
                                           {owners[name] for name in members}, prefix + members[0])
    with timer.phase("solve"):
        mine = {prefix + name: solve_layer(modules[name], stats[name], recipe, name=prefix + name, errors=errors)
                for name in group if owners[name] == parallel.rank}
    with timer.phase("broadcast"):
        return parallel.share_solutions([prefix + name for name in group], mine)


#: The residual check of the last layer's correction: ``max|true − corrected| ≤ RESIDUAL_CHECK_RTOL · max|true|``
#: on batch 0 (float32 rounding of the two sums is about 1e-7; a block whose last layer is not added to its
#: output, e.g. through a norm, misses by order 1).
RESIDUAL_CHECK_RTOL = 1e-4


def hidden_of(output) -> torch.Tensor:
    """A block's output hidden states (blocks return them alone or first in a tuple)."""
    return output[0] if isinstance(output, (tuple, list)) else output


def _corrected_outputs(quant_runs, inputs, outputs, change):
    """The block outputs with the last layer quantized, ``output + X̃ (Q − W)ᵀ``, if batch 0 confirms that
    the block adds that layer's output to its own; else None. Every batch, batch 0 included, takes the
    corrected value, so a window's stream does not depend on its position (a data-parallel share)."""
    with torch.no_grad():
        corrected = [output + (x @ change).reshape(output.shape) for x, output in zip(inputs, outputs)]
        true = hidden_of(quant_runs[0]())
    scale = float(true.abs().max())
    if float((true - corrected[0]).abs().max()) > RESIDUAL_CHECK_RTOL * max(scale, 1e-30):
        return None
    return corrected


def _forward_call(module: nn.Module, batch):
    if isinstance(batch, dict):
        return lambda: module(**batch)
    if isinstance(batch, (tuple, list)):
        return lambda: module(*batch)
    return lambda: module(batch)


def quantize_module(model: nn.Module, calibration, recipe: Recipe, *, stats_dtype: str = "float64",
                    on_layer=None) -> dict[str, tuple]:
    """Quantize every Linear/Conv1d/Conv2d of ``model`` in place (generic, any ``nn.Module``).

    ``calibration``: a list of batches (a tensor, a tuple of positional args or a dict of kwargs). A float
    copy of the model gives X; one forward per batch and layer group through each copy, stopped early
    after the group's inputs are captured. With ``recipe.act_bits`` every quantized layer's input is
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
    if not isinstance(recipe, Recipe):
        raise TypeError(f"recipe must be a qronos_linalg.recipe.Recipe, got {type(recipe).__name__}")
    if recipe.act_bits is not None:
        for layer in layers.values():
            layer.register_forward_pre_hook(InputTransform(None, recipe.act_bits))
    outcome, _, _ = quantize_layers_in_block(
        float_model, model,
        [_forward_call(float_model, batch) for batch in calibration],
        [_forward_call(model, batch) for batch in calibration],
        recipe, layer_names=list(layers), stats_dtype=stats_dtype, on_layer=on_layer,
    )
    return outcome
