"""Layer-by-layer quantization of an ONNX graph: ``quantize_onnx(model, calibration, config)``."""

from __future__ import annotations

import dataclasses
import math
import sys
import time

import numpy as np
import qronos_linalg as ql
from onnx import numpy_helper

from .calibration import load_calibration
from .capture import fake_quantize_tokens, layer_inputs, token_feature_axis
from .config import QuantConfig
from .errors import NoQuantizableLayerError, NonFiniteActivationError
from .export import export_model
from .graph import find_layers, load_model, topological_nodes, with_weights_as_initializers
from .staging import StageRunner, plan_stages

ACTQ_SUFFIX = "_qronos_actq"
#: Rows gathered before one LayerStats update (bounds memory, amortizes the n × n accumulation).
ROWS_PER_UPDATE = 4096


@dataclasses.dataclass
class LayerOutcome:
    """A solved layer: per weight group, the solver results; plus the statistics-based errors."""

    layer: object
    results: list
    report: dict


def layer_group_size(layer, config: QuantConfig) -> int | None:
    """Group size along the input features: the configured one, per channel (None) for Conv."""
    return None if layer.op == "Conv" else config.group_size


def _solve_group(W, stats, group_size, config: QuantConfig):
    """(result, rtn result) for one weight group, both on the same frozen grid."""
    grid = ql.UniformGrid.fit(
        W, config.bits, symmetric=config.sym, group_size=group_size,
        shrink=config.shrink, search="mse" if config.mse else "minmax",
    )
    W64 = W.astype(np.float64)
    baseline = ql.rtn(W64, grid)
    common = dict(act_order=config.act_order)
    if config.algo == "rtn":
        result = baseline
    elif config.algo == "optq":
        result = ql.optq(W64, stats.H, grid, damp=config.damping, block_size=config.block_size, **common)
    elif config.algo == "gpfq":
        result = ql.gpfq(W64, stats.H, stats.G, grid, **common)
    elif config.algo == "gptaq":
        result = ql.gptaq(W64, stats.H, stats.G, grid, damp=config.damping, block_size=config.block_size, **common)
    else:
        result = ql.qronos(W64, stats.H, stats.G, grid, damp=config.damping, block_size=config.block_size, **common)
    return result, baseline


def solve_layer(layer, stats_per_group: list, config: QuantConfig) -> LayerOutcome:
    """Fit grids, run the chosen solver and RTN per weight group; errors from the same statistics."""
    start = time.perf_counter()
    W = layer.core_weight()
    rows = W.shape[0] // layer.groups
    results, error, error_rtn, reference = [], 0.0, 0.0, 0.0
    for g, stats in enumerate(stats_per_group):
        Wg = np.ascontiguousarray(W[g * rows : (g + 1) * rows])
        result, baseline = _solve_group(Wg, stats, layer_group_size(layer, config), config)
        W64 = Wg.astype(np.float64)
        error += ql.output_error(W64, result.weight, stats.H, stats.G, stats.H_float)
        error_rtn += ql.output_error(W64, baseline.weight, stats.H, stats.G, stats.H_float)
        reference += ql.output_error(W64, 0 * W64, stats.H, stats.G, stats.H_float)
        results.append(result)
    damps = [r.damp for r in results if r.damp is not None]
    report = {
        "name": layer.name,
        "op": layer.op,
        "nodes": [c.node_name for c in layer.consumers],
        "weight": layer.weight_name,
        "shape": [int(W.shape[0]), int(W.shape[1])],
        "groups": layer.groups,
        "algorithm": config.algo,
        "bits": config.bits,
        "group_size": layer_group_size(layer, config),
        "samples": int(stats_per_group[0].count),
        "damp": max(damps) if damps else None,
        "rel_error_rtn": math.sqrt(error_rtn / reference) if reference > 0 else 0.0,
        "rel_error": math.sqrt(error / reference) if reference > 0 else 0.0,
        "time_s": time.perf_counter() - start,
    }
    return LayerOutcome(layer, results, report)


def quantized_weight(outcome: LayerOutcome) -> np.ndarray:
    """The dequantized weights of a solved layer, in its ONNX layout and dtype."""
    Q = np.concatenate([np.asarray(r.weight) for r in outcome.results], axis=0)
    return outcome.layer.to_onnx_layout(Q.astype(outcome.layer.weight.dtype))


def _check_finite(array: np.ndarray, layer, stream: str) -> None:
    if not np.all(np.isfinite(array)):
        raise NonFiniteActivationError(
            f"the input of layer {layer.name!r} contains NaN or inf in the {stream} model during calibration"
        )


def _progress(total: int):
    try:
        from tqdm import tqdm
    except ModuleNotFoundError:
        return None
    return tqdm(total=total, desc="quantizing", unit="layer", file=sys.stderr, disable=not sys.stderr.isatty())


def quantize_onnx(model_or_path, calibration, config: QuantConfig | dict | None = None, *, observer=None):
    """Quantize every selected MatMul/Gemm/Conv weight; returns ``(onnx.ModelProto, report)``.

    ``calibration``: see :func:`load_calibration`. ``config``: a :class:`QuantConfig` or a dict of
    its fields. ``observer(layer_name, X_rows, X_tilde_rows)``, if given, sees the rows captured for
    each layer and sample (first weight group), e.g. to check propagation.
    """
    if config is None:
        config = QuantConfig()
    elif isinstance(config, dict):
        config = QuantConfig.from_mapping(config)
    started = time.perf_counter()
    model = load_model(model_or_path)
    nodes = topological_nodes(model.graph)
    layers, skipped = find_layers(model, nodes, config.include, config.exclude)
    if not layers:
        reasons = "; ".join(f"{s.name} ({s.op}): {s.reason}" for s in skipped) or "the graph has no MatMul, Gemm or Conv"
        raise NoQuantizableLayerError(f"no quantizable layer found: {reasons}")
    working = with_weights_as_initializers(model, nodes, layers)
    samples = load_calibration(calibration, working.graph, config.nsamples, config.seed)
    outcomes = _run_layers(working, layers, samples, config, observer)
    exported, formats = export_model(working, outcomes, config)
    report = {
        "config": dataclasses.asdict(config),
        "calibration_samples": len(samples),
        "layers": [dict(o.report, format=formats[o.layer.weight_name]) for o in outcomes],
        "skipped": [dataclasses.asdict(s) for s in skipped],
        "float_ops": sorted({n.op_type for n in working.graph.node} - {"MatMul", "Gemm", "Conv"}),
        "size_before_bytes": model.ByteSize(),
        "size_after_bytes": exported.ByteSize(),
        "time_s": time.perf_counter() - started,
    }
    return exported, report


def _run_layers(working, layers, samples, config: QuantConfig, observer) -> list:
    consumer_at = {c.node_index: (layer, c) for layer in layers for c in layer.consumers}
    activations = {index: c.activation for index, (_, c) in consumer_at.items()}
    stages = plan_stages(working.graph, list(consumer_at), activations)
    initializers = {t.name: t for t in working.graph.initializer}
    float_carry = samples
    quant_carry = samples
    quant_initializers = dict(initializers)
    outcomes, solved = [], set()
    progress = _progress(len(layers))
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
                quant_initializers[layer.weight_name] = numpy_helper.from_array(
                    quantized_weight(outcome), layer.weight_name
                )
                if progress is not None:
                    progress.update(1)
        float_runner = StageRunner(working, stage, initializers, float_carry[0])
        float_next = [float_runner.run(feed, stage.keep_after) for feed in float_carry]
        if quant_carry is float_carry and not replaced and not outcomes:
            quant_next = float_next  # identical streams before the first quantized layer
        else:
            quant_runner = StageRunner(working, stage, quant_initializers, quant_carry[0], replaced)
            quant_next = [quant_runner.run(feed, stage.keep_after) for feed in quant_carry]
        float_carry, quant_carry = float_next, quant_next
    if progress is not None:
        progress.close()
    return outcomes


def _quantize_activation(consumer, quant_carry, config: QuantConfig):
    """With act_bits: add the fake-quantized activation to each quantized-stream feed and reroute the node."""
    if config.act_bits is None:
        return quant_carry, {}
    name = consumer.activation + ACTQ_SUFFIX
    axis = token_feature_axis(consumer)
    fed = [dict(feed, **{name: fake_quantize_tokens(feed[consumer.activation], config.act_bits, axis)}) for feed in quant_carry]
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
                if config.act_bits is not None:
                    x_tilde = fake_quantize_tokens(x_tilde, config.act_bits, token_feature_axis(consumer))
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
