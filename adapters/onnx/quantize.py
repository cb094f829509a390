"""Layer-by-layer quantization of an ONNX graph: ``quantize_onnx(model, calibration, config)``."""

from __future__ import annotations

import dataclasses
import functools
import sys
import time

import numpy as np
import onnx
import qronos_linalg as ql
from onnx import numpy_helper
from qronos_linalg.activations import fake_quantize_per_token
from qronos_linalg.io import progress as progress_bar
from qronos_linalg.recipe import GridSpec, LayerReport, solve

from .calibration import load_calibration
from .capture import layer_inputs, token_feature_axis
from .config import QuantConfig
from .errors import ConfigError, NoQuantizableLayerError, NonFiniteActivationError
from .export import export_model, model_bytes
from .graph import external_base, find_layers, load_model, topological_nodes, with_weights_as_initializers
from .staging import StageRunner, StreamInitializers, plan_stages

ACTQ_SUFFIX = "_qronos_actq"
#: Rows gathered before one LayerStats update (bounds memory, amortizes the n × n accumulation).
ROWS_PER_UPDATE = 4096


@dataclasses.dataclass
class LayerOutcome:
    """A solved layer: per weight group, the solver results; plus the report (statistics-based errors).

    The results keep codes and grid, not the dequantized weight (``weight`` is None: every layer's float64
    copy would otherwise stay in memory until the export); :func:`quantized_weight` makes it when needed."""

    layer: object
    results: list
    report: dict


def layer_grid(layer, config: QuantConfig) -> GridSpec:
    """The grid spec of a layer: the configured one, per channel (no groups) for Conv."""
    grid = config.recipe.grid
    return dataclasses.replace(grid, group_size=None) if layer.op == "Conv" else grid


def solve_layer(layer, stats_per_group: list, config: QuantConfig) -> LayerOutcome:
    """Solve each weight group with the shared recipe (:func:`qronos_linalg.recipe.solve`); one report."""
    W = layer.core_weight()
    rows = W.shape[0] // layer.groups
    grid = layer_grid(layer, config)
    solved = [solve(np.ascontiguousarray(W[g * rows : (g + 1) * rows]), stats, grid, config.recipe.solver)
              for g, stats in enumerate(stats_per_group)]
    report = LayerReport.combine([r for _, r in solved], name=layer.name)
    extras = {"op": layer.op, "nodes": [c.node_name for c in layer.consumers], "weight": layer.weight_name,
              "groups": layer.groups}
    return LayerOutcome(layer, [dataclasses.replace(result, weight=None) for result, _ in solved],
                        {**report.to_dict(), **extras})


def quantized_weight(outcome: LayerOutcome) -> np.ndarray:
    """The dequantized weights of a solved layer, in its ONNX layout and dtype: ``grid.dequantize(codes)`` in
    float64, which is exactly the solver's ``weight``, cast to the layer's dtype."""
    Q = np.concatenate([r.grid.dequantize(r.codes, "float64") for r in outcome.results], axis=0)
    return outcome.layer.to_onnx_layout(Q.astype(outcome.layer.dtype))


def quantized_tensor(outcome: LayerOutcome) -> onnx.TensorProto:
    """The dequantized weights of a solved layer as the initializer its nodes read."""
    return numpy_helper.from_array(quantized_weight(outcome), outcome.layer.weight_name)


def _check_finite(array: np.ndarray, layer, stream: str) -> None:
    if not np.all(np.isfinite(array)):
        raise NonFiniteActivationError(
            f"the input of layer {layer.name!r} contains NaN or inf in the {stream} model during calibration"
        )


def quantize_onnx(model_or_path, calibration, config: QuantConfig | dict | None = None, *, observer=None,
                  threads: int | None = None, progress: bool | None = None):
    """Quantize every selected MatMul/Gemm/Conv weight; returns ``(onnx.ModelProto, report)``.

    ``calibration``: see :func:`load_calibration`. ``config``: a :class:`QuantConfig` or a dict of
    its options (recipe keys and the adapter's). ``observer(layer_name, X_rows, X_tilde_rows)``, if
    given, sees the rows captured for each layer and sample (first weight group), e.g. to check
    propagation. ``threads``: onnxruntime threads of the stage sessions (None: its default).
    ``progress``: a progress bar on stderr (None: when stderr is a terminal).
    """
    if config is None:
        config = QuantConfig()
    elif isinstance(config, dict):
        config = QuantConfig.from_mapping(config)
    elif not isinstance(config, QuantConfig):
        raise ConfigError(f"config must be a QuantConfig or a dict of options, got {type(config).__name__}")
    started = time.perf_counter()
    model = load_model(model_or_path)
    base_dir = external_base(model_or_path)
    nodes = topological_nodes(model.graph)
    layers, skipped = find_layers(model, nodes, config.include, config.exclude, base_dir)
    if not layers:
        reasons = "; ".join(f"{s.name} ({s.op}): {s.reason}" for s in skipped) or "the graph has no MatMul, Gemm or Conv"
        raise NoQuantizableLayerError(f"no quantizable layer found: {reasons}")
    working = with_weights_as_initializers(model, nodes, layers)
    samples = load_calibration(calibration, working.graph, config.nsamples, config.seed)
    show = sys.stderr.isatty() if progress is None else progress
    with progress_bar(len(layers), "quantize", "layer", enabled=show) as bar:
        outcomes = _run_layers(working, base_dir, layers, samples, config, observer, bar, threads)
    exported, formats = export_model(working, outcomes, config, base_dir)
    report = {
        "config": config.to_dict(),
        "calibration_samples": len(samples),
        "layers": [dict(o.report, format=formats[o.layer.weight_name]) for o in outcomes],
        "skipped": [dataclasses.asdict(s) for s in skipped],
        "float_ops": sorted({n.op_type for n in working.graph.node} - {"MatMul", "Gemm", "Conv"}),
        "size_before_bytes": model_bytes(model),
        "size_after_bytes": exported.ByteSize(),
        "time_s": time.perf_counter() - started,
    }
    return exported, report


def _run_layers(working, base_dir, layers, samples, config: QuantConfig, observer, bar, threads) -> list:
    """Solve the layers in order, stage by stage; each stage's sessions read only that stage's initializers
    (from ``base_dir`` where they are external data), and quantized weights are made when a stage needs them."""
    consumer_at = {c.node_index: (layer, c) for layer in layers for c in layer.consumers}
    activations = {index: c.activation for index, (_, c) in consumer_at.items()}
    stages = plan_stages(working.graph, list(consumer_at), activations)
    initializers = StreamInitializers({t.name: t for t in working.graph.initializer}, base_dir)
    float_carry = samples
    quant_carry = samples
    quant_initializers = initializers.copy()
    outcomes, solved = [], set()
    for stage in stages:
        replaced = {}
        if stage.start_node is not None:
            layer, consumer = consumer_at[stage.start_node]
            quant_carry, replaced = _quantize_activation(consumer, quant_carry, config)
            if layer.weight_name not in solved:
                stats = _collect(layer, float_carry, quant_carry, replaced, config, observer)
                outcome = solve_layer(layer, stats, config)
                outcomes.append(outcome)
                solved.add(layer.weight_name)
                quant_initializers.replace(layer.weight_name, functools.partial(quantized_tensor, outcome))
                bar.update(1)
        float_runner = StageRunner(working, stage, initializers, float_carry[0], threads=threads)
        float_next = [float_runner.run(feed, stage.keep_after) for feed in float_carry]
        if quant_carry is float_carry and not replaced and not outcomes:
            quant_next = float_next  # identical streams before the first quantized layer
        else:
            quant_runner = StageRunner(working, stage, quant_initializers, quant_carry[0], replaced, threads=threads)
            quant_next = [quant_runner.run(feed, stage.keep_after) for feed in quant_carry]
        float_carry, quant_carry = float_next, quant_next
    return outcomes


def _quantize_activation(consumer, quant_carry, config: QuantConfig):
    """With act_bits: add the fake-quantized activation to each quantized-stream feed and reroute the node."""
    act_bits = config.recipe.act_bits
    if act_bits is None:
        return quant_carry, {}
    name = consumer.activation + ACTQ_SUFFIX
    axis = token_feature_axis(consumer)
    fed = [dict(feed, **{name: fake_quantize_per_token(feed[consumer.activation], act_bits, axis)})
           for feed in quant_carry]
    return fed, {consumer.node_index: {consumer.activation: name}}


def _collect(layer, float_carry, quant_carry, replaced, config: QuantConfig, observer) -> list:
    """LayerStats per weight group from every consumer whose input is available at this boundary.

    Rows are buffered up to ``ROWS_PER_UPDATE`` per group before each (costly) statistics update.
    """
    stats = [ql.LayerStats(layer.in_features, name=layer.name) for _ in range(layer.groups)]
    pending = [([], []) for _ in range(layer.groups)]

    def flush(group):
        rows, rows_tilde = pending[group]
        if rows:
            stats[group].update(np.concatenate(rows), np.concatenate(rows_tilde))
            pending[group] = ([], [])

    for consumer in layer.consumers:
        if consumer.activation not in float_carry[0]:
            continue  # a later consumer depends on this layer's output: it cannot contribute here
        quant_name = replaced.get(consumer.node_index, {}).get(consumer.activation, consumer.activation)
        for float_feed, quant_feed in zip(float_carry, quant_carry):
            x = float_feed[consumer.activation]
            x_tilde = quant_feed.get(quant_name)
            if x_tilde is None:  # another consumer's activation, not fake-quantized yet
                x_tilde = quant_feed[consumer.activation]
                if config.recipe.act_bits is not None:
                    x_tilde = fake_quantize_per_token(x_tilde, config.recipe.act_bits, token_feature_axis(consumer))
            _check_finite(x, layer, "float")
            _check_finite(x_tilde, layer, "partially quantized")
            rows = layer_inputs(layer, consumer, x)
            rows_tilde = layer_inputs(layer, consumer, x_tilde)
            if observer is not None:
                observer(layer.name, rows[0], rows_tilde[0])
            for group, (r, rt) in enumerate(zip(rows, rows_tilde)):
                pending[group][0].append(r)
                pending[group][1].append(rt)
                if sum(len(block) for block in pending[group][0]) >= ROWS_PER_UPDATE:
                    flush(group)
    for group in range(layer.groups):
        flush(group)
    return stats
