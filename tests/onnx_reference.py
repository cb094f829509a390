"""Independent NumPy decoding of quantized ONNX weights (MatMulNBits and DequantizeLinear)."""

import numpy as np
import onnx
from onnx import numpy_helper


def unpack_low_first(packed: np.ndarray, bits: int, count: int) -> np.ndarray:
    """Unpack the last axis (``8 // bits`` values per byte, first value in the lowest bits)."""
    per_byte = 8 // bits
    mask = (1 << bits) - 1
    values = np.stack([(packed >> (bits * j)) & mask for j in range(per_byte)], axis=-1)
    return values.reshape(packed.shape[:-1] + (-1,))[..., :count]


def matmulnbits_weight(model: onnx.ModelProto, node: onnx.NodeProto) -> np.ndarray:
    """The dequantized B (K, N) of a MatMulNBits node."""
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    k, n, bits, block = attrs["K"], attrs["N"], attrs["bits"], attrs["block_size"]
    packed, scales = inits[node.input[1]], inits[node.input[2]].reshape(n, -1)
    k_blocks = scales.shape[1]
    codes = unpack_low_first(packed, bits, block).reshape(n, k_blocks * block)[:, :k].astype(np.float32)
    zero_bytes = inits[node.input[3]].reshape(n, -1)
    zeros = unpack_low_first(zero_bytes, bits, k_blocks).astype(np.float32)
    rep = np.repeat(np.arange(k_blocks), block)[:k]
    return ((codes - zeros[:, rep]) * scales[:, rep]).T


def dequantize_linear_weight(model: onnx.ModelProto, node: onnx.NodeProto) -> np.ndarray:
    """The output of a DequantizeLinear node whose inputs are initializers (per-axis or blocked)."""
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    codes = inits[node.input[0]].astype(np.float32)
    scale, zero = inits[node.input[1]], inits[node.input[2]].astype(np.float32)
    axis, block = attrs.get("axis", 1), attrs.get("block_size", 0)
    if block:
        rep = np.repeat(np.arange(scale.shape[axis]), block)[: codes.shape[axis]]
        scale, zero = np.take(scale, rep, axis=axis), np.take(zero, rep, axis=axis)
    else:
        shape = [1] * codes.ndim
        shape[axis] = -1
        scale, zero = scale.reshape(shape), zero.reshape(shape)
    return (codes - zero) * scale


def fake_quant_float_model(model: onnx.ModelProto) -> onnx.ModelProto:
    """A plain float model computing what the quantized one computes, weights decoded in NumPy."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    decoded = {}
    for node in list(graph.node):
        if node.op_type == "DequantizeLinear":
            decoded[node.output[0]] = dequantize_linear_weight(model, node)
            graph.node.remove(node)
    for position, node in enumerate(list(graph.node)):
        if node.op_type == "MatMulNBits":
            name = node.input[1] + "_decoded"
            decoded[name] = matmulnbits_weight(model, node)
            graph.node.remove(node)
            graph.node.insert(position, onnx.helper.make_node("MatMul", [node.input[0], name], list(node.output)))
    graph.initializer.extend(numpy_helper.from_array(v.astype(np.float32), k) for k, v in decoded.items())
    return out
