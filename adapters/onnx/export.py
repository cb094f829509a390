"""Writers: MatMulNBits (com.microsoft) and standard QDQ (DequantizeLinear, opset 21), plus safe saving.

Scales, zero points and codes written are exactly ``result.grid.scale``, ``result.grid.zero`` and
``result.codes`` of the solver: nothing is re-derived.
"""

from __future__ import annotations

import os
import pathlib
import shutil

import numpy as np
import onnx
from onnx import helper, numpy_helper, version_converter
from onnx.external_data_helper import uses_external_data
from qronos_linalg.io import check_output, temporary_sibling

from .errors import InvalidModelError, OutputExistsError
from .graph import all_names, load_all_external_data, remove_dead_nodes, unique_name

#: Block sizes onnxruntime's MatMulNBits accepts (measured on onnxruntime 1.32).
MATMULNBITS_BLOCK_SIZES = (16, 32, 64, 128, 256)
#: Bit widths onnxruntime 1.32 accepts in MatMulNBits; other widths go to QDQ.
MATMULNBITS_BITS = (2, 4, 8)
MS_DOMAIN = "com.microsoft"
MS_DOMAIN_VERSION = 1
QDQ_OPSET = 21
QDQ_MIN_IR_VERSION = 10
UINT4_MAX_BITS = 4
BITS_PER_BYTE = 8
#: Above this many bytes of tensors the output is saved with external data (protobuf's 2 GB limit).
EXTERNAL_DATA_THRESHOLD = 2**31 - 2**26
#: Tensors at least this large go to the external data file.
EXTERNAL_DATA_MIN_TENSOR_BYTES = 1024


def stacked_grid(outcome):
    """(codes, scale, zero) of a layer in the core layout (out × in, out × groups), groups stacked."""
    codes = np.concatenate([np.asarray(r.codes) for r in outcome.results], axis=0)
    scale = np.concatenate([np.asarray(r.grid.scale) for r in outcome.results], axis=0)
    zero = np.concatenate([np.asarray(r.grid.zero) for r in outcome.results], axis=0)
    return codes, scale, zero


def choose_format(outcome, config) -> tuple:
    """("matmulnbits" | "qdq", reason for a QDQ fallback or None)."""
    layer = outcome.layer
    if config.format == "qdq":
        return "qdq", None
    grid = outcome.results[0].grid
    group_size = grid.group_size
    if layer.op == "Conv":
        return "qdq", "Conv is written as per-channel QDQ"
    if any(c.attributes.get("transA", 0) for c in layer.consumers):
        return "qdq", "Gemm with transA=1 is written as QDQ"
    if group_size not in MATMULNBITS_BLOCK_SIZES:
        return "qdq", f"group size {group_size} is not a MatMulNBits block size {MATMULNBITS_BLOCK_SIZES}"
    if grid.bits not in MATMULNBITS_BITS:
        return "qdq", f"{grid.bits}-bit weights are written as QDQ (MatMulNBits here: {MATMULNBITS_BITS} bits)"
    return "matmulnbits", None


def pack_codes(codes: np.ndarray, bits: int) -> np.ndarray:
    """Pack the last axis of uint8 codes, ``8 // bits`` per byte, element 0 in the lowest bits."""
    per_byte = BITS_PER_BYTE // bits
    padded = -(-codes.shape[-1] // per_byte) * per_byte
    widened = np.zeros(codes.shape[:-1] + (padded,), np.uint8)
    widened[..., : codes.shape[-1]] = codes
    grouped = widened.reshape(codes.shape[:-1] + (padded // per_byte, per_byte)).astype(np.uint16)
    shifts = (np.arange(per_byte) * bits).astype(np.uint16)
    return (grouped << shifts).sum(axis=-1).astype(np.uint8)


def matmulnbits_tensors(codes, scale, zero, bits: int, block_size: int, dtype) -> tuple:
    """(B [N, k_blocks, blob], scales [N, k_blocks], zero points [N · ceil(k_blocks·bits/8)]) for MatMulNBits."""
    n, k = codes.shape
    k_blocks = -(-k // block_size)
    padded = np.zeros((n, k_blocks * block_size), np.uint8)
    padded[:, :k] = codes
    padded[:, k:] = zero[:, -1:].astype(np.uint8)  # padding rows of B never meet A: any code works
    packed = pack_codes(padded.reshape(n, k_blocks, block_size), bits)
    zero_points = pack_codes(zero.astype(np.uint8), bits).reshape(-1)
    return packed, scale.astype(dtype), zero_points


def _dq_tensor(name, codes_onnx: np.ndarray, bits: int) -> onnx.TensorProto:
    if bits <= UINT4_MAX_BITS:
        flat = codes_onnx.reshape(-1)
        return helper.make_tensor(name, onnx.TensorProto.UINT4, codes_onnx.shape, pack_codes(flat, UINT4_MAX_BITS).tobytes(), raw=True)
    return numpy_helper.from_array(codes_onnx.astype(np.uint8), name)


def qdq_layout(layer, codes, scale, zero, group_size):
    """(codes, scale, zero, axis, block_size) in the ONNX weight's layout for DequantizeLinear."""
    if scale.shape[1] == 1:
        group_size = None  # one group spanning all inputs: per channel
    if layer.op == "Conv":
        return codes.reshape(layer.shape), scale[:, 0], zero[:, 0], 0, None
    transposed = layer.consumers[0].transposed
    if group_size is None:
        return (codes if transposed else codes.T), scale[:, 0], zero[:, 0], (0 if transposed else 1), None
    if transposed:
        return codes, scale, zero, 1, group_size
    return codes.T, scale.T, zero.T, 0, group_size


def export_model(working: onnx.ModelProto, outcomes: list, config, base_dir: pathlib.Path | None = None) -> tuple:
    """The quantized model and, per layer weight name, the format written (with the fallback reason).

    ``base_dir``: where ``working``'s external data is; the float tensors that stay are read from there
    (after the replaced float weights are dropped), so the result stands alone."""
    choices = {o.layer.weight_name: choose_format(o, config) for o in outcomes}
    model = onnx.ModelProto()
    model.CopyFrom(working)
    if any(fmt == "qdq" for fmt, _ in choices.values()):
        model = to_qdq_opset(model)
    graph = model.graph
    taken = all_names(graph)
    new_nodes, formats = [], {}
    for outcome in outcomes:
        layer = outcome.layer
        fmt, reason = choices[layer.weight_name]
        formats[layer.weight_name] = fmt if reason is None else f"{fmt} ({reason})"
        grid = outcome.results[0].grid
        codes, scale, zero = stacked_grid(outcome)
        dtype = layer.dtype
        if fmt == "matmulnbits":
            _write_matmulnbits(graph, layer, (codes, scale, zero), grid, dtype, config, taken)
        else:
            new_nodes.append(_write_qdq(graph, layer, (codes, scale, zero), grid, dtype, taken))
    for node in reversed(new_nodes):
        graph.node.insert(0, node)
    if any(fmt == "matmulnbits" for fmt, _ in choices.values()):
        if not any(o.domain == MS_DOMAIN for o in model.opset_import):
            model.opset_import.append(helper.make_opsetid(MS_DOMAIN, MS_DOMAIN_VERSION))
    remove_dead_nodes(graph)
    load_all_external_data(model, base_dir)
    if tensor_bytes(model) <= EXTERNAL_DATA_THRESHOLD:  # larger models cannot be checked in memory
        onnx.checker.check_model(model)
    return model, formats


def tensor_bytes(model: onnx.ModelProto) -> int:
    """Serialized size of the model's initializers."""
    return sum(t.ByteSize() for t in model.graph.initializer)


def model_bytes(model: onnx.ModelProto) -> int:
    """Serialized size of the model with its external data counted (as if saved in one file)."""
    external = sum(int(np.prod(t.dims)) * helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
                   for t in model.graph.initializer if uses_external_data(t))
    return model.ByteSize() + external


def to_qdq_opset(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model converted to opset 21 by onnx.version_converter (unchanged if already ≥ 21)."""
    version = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if version is not None and version >= QDQ_OPSET:
        return model
    try:
        converted = version_converter.convert_version(model, QDQ_OPSET)
    except Exception as error:  # the converter raises RuntimeError or ConvertError depending on the op
        raise InvalidModelError(f"cannot convert the model from opset {version} to {QDQ_OPSET} for QDQ output: {error}") from error
    converted.ir_version = max(converted.ir_version, QDQ_MIN_IR_VERSION)
    return converted


def _consumer_nodes(graph, weight_name):
    return [node for node in graph.node if len(node.input) > 1 and node.input[1] == weight_name]


def _write_qdq(graph, layer, quantized, grid, dtype, taken) -> onnx.NodeProto:
    codes_onnx, scale_onnx, zero_onnx, axis, block_size = qdq_layout(layer, *quantized, grid.group_size)
    base = layer.weight_name
    names = [unique_name(f"{base}_{suffix}", taken) for suffix in ("quantized", "scale", "zero_point", "dequantized")]
    graph.initializer.extend([
        _dq_tensor(names[0], codes_onnx, grid.bits),
        numpy_helper.from_array(np.ascontiguousarray(scale_onnx).astype(dtype), names[1]),
        _dq_tensor(names[2], np.ascontiguousarray(zero_onnx).astype(np.uint8), grid.bits),
    ])
    attributes = {"axis": axis}
    if block_size is not None:
        attributes["block_size"] = block_size
    for node in _consumer_nodes(graph, base):
        node.input[1] = names[3]
    return helper.make_node("DequantizeLinear", names[:3], [names[3]], name=names[3], **attributes)


def _write_matmulnbits(graph, layer, quantized, grid, dtype, config, taken) -> None:
    codes, scale, zero = quantized
    block_size = grid.group_size
    packed, scales, zero_points = matmulnbits_tensors(codes, scale, zero, grid.bits, block_size, dtype)
    base = layer.weight_name
    names = [unique_name(f"{base}_{suffix}", taken) for suffix in ("Q", "scales", "zero_points")]
    graph.initializer.extend([
        numpy_helper.from_array(packed, names[0]),
        numpy_helper.from_array(scales, names[1]),
        numpy_helper.from_array(zero_points, names[2]),
    ])
    n, k = codes.shape
    attributes = {"K": k, "N": n, "bits": grid.bits, "block_size": block_size}
    if config.accuracy_level is not None:
        attributes["accuracy_level"] = config.accuracy_level
    for position, node in enumerate(list(graph.node)):
        if node.op_type not in ("MatMul", "Gemm") or len(node.input) < 2 or node.input[1] != base:
            continue
        replacements = _matmulnbits_nodes(graph, node, names, attributes, dtype, taken)
        graph.node.remove(node)
        for offset, replacement in enumerate(replacements):
            graph.node.insert(position + offset, replacement)


def _matmulnbits_nodes(graph, node, names, attributes, dtype, taken) -> list:
    """MatMulNBits for a MatMul; for a Gemm also ``· alpha`` and ``+ beta · C`` where needed."""
    if node.op_type == "MatMul":
        return [helper.make_node("MatMulNBits", [node.input[0]] + names, list(node.output), name=node.name,
                                 domain=MS_DOMAIN, **attributes)]
    gemm = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    alpha, beta = gemm.get("alpha", 1.0), gemm.get("beta", 1.0)
    bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
    steps = ["product"] + (["alpha"] if alpha != 1 else []) + (["bias"] if bias else [])
    outputs = [unique_name(f"{node.output[0]}_{step}", taken) for step in steps[:-1]] + [node.output[0]]
    nodes = [helper.make_node("MatMulNBits", [node.input[0]] + names, [outputs[0]], name=node.name,
                              domain=MS_DOMAIN, **attributes)]
    for k, step in enumerate(steps[1:], start=1):
        if step == "alpha":
            factor_name = unique_name(f"{node.name or node.output[0]}_alpha", taken)
            graph.initializer.append(numpy_helper.from_array(np.array(alpha, dtype), factor_name))
            nodes.append(helper.make_node("Mul", [outputs[k - 1], factor_name], [outputs[k]]))
            continue
        addend = bias
        if beta != 1:
            beta_name = unique_name(f"{node.name or node.output[0]}_beta", taken)
            addend = unique_name(f"{bias}_times_beta", taken)
            graph.initializer.append(numpy_helper.from_array(np.array(beta, dtype), beta_name))
            nodes.append(helper.make_node("Mul", [bias, beta_name], [addend]))
        nodes.append(helper.make_node("Add", [outputs[k - 1], addend], [outputs[k]]))
    return nodes


def output_files(path, external: bool) -> list:
    """The files a save writes: the model and, with external data, ``<name>.data`` beside it."""
    path = pathlib.Path(path)
    return [path] + ([path.with_name(path.name + ".data")] if external else [])


def check_outputs(path, *, overwrite: bool, external_data: bool | None) -> None:
    """Before any work: refuse existing outputs (unless ``overwrite``) and a missing or read-only folder."""
    for target in output_files(path, external_data is True):
        if target.exists() and not overwrite:
            raise OutputExistsError(f"output {target} exists (pass overwrite=True / --overwrite to replace it)")
        check_output(target, overwrite=True)


def save_model(model: onnx.ModelProto, path, *, overwrite: bool = False, external_data: bool | None = None) -> list:
    """Write atomically (a temporary folder beside the target, then renames); returns the paths written.

    ``external_data``: None = only above protobuf's 2 GB limit. External data goes to ``<name>.data``
    next to the model, and every external tensor points at that file. Replacing a model saved with
    external data by one without removes the old ``<name>.data``, which belonged to the replaced file.
    """
    path = pathlib.Path(path)
    external = tensor_bytes(model) > EXTERNAL_DATA_THRESHOLD if external_data is None else external_data
    written = output_files(path, external)
    check_outputs(path, overwrite=overwrite, external_data=external)
    stale_data = output_files(path, True)[1] if path.exists() and not external else None
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    scratch = temporary_sibling(path)
    scratch.mkdir()
    try:
        scratch_model = scratch / path.name
        if external:
            onnx.save_model(copy, str(scratch_model), save_as_external_data=True, all_tensors_to_one_file=True,
                            location=written[1].name, size_threshold=EXTERNAL_DATA_MIN_TENSOR_BYTES)
            if (scratch / written[1].name).exists():
                os.replace(scratch / written[1].name, written[1])
            else:  # every tensor was below EXTERNAL_DATA_MIN_TENSOR_BYTES: all stayed inline
                written = written[:1]
        else:
            onnx.save_model(copy, str(scratch_model))
        os.replace(scratch_model, path)
        if stale_data is not None and stale_data.exists():
            stale_data.unlink()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return written
