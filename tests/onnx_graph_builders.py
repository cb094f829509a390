"""Small ONNX graphs (built with onnx.helper) and calibration data for the ONNX adapter tests."""

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17


def make_model(nodes, inputs, outputs, initializers, opset=OPSET):
    graph = helper.make_graph(nodes, "test", inputs, outputs, initializer=initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def float_input(name, dims):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, dims)


def float_output(name, rank):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, [f"{name}_{i}" for i in range(rank)])


def mlp(rng, widths, relu=True):
    """x (batch, tokens, widths[0]) → MatMul → Relu → ... ; weights B_k of shape (in, out)."""
    nodes, inits, current = [], [], "x"
    for k, (fan_in, fan_out) in enumerate(zip(widths[:-1], widths[1:])):
        weight = (rng.standard_normal((fan_in, fan_out)) / np.sqrt(fan_in)).astype(np.float32)
        inits.append(numpy_helper.from_array(weight, f"B{k}"))
        nodes.append(helper.make_node("MatMul", [current, f"B{k}"], [f"h{k}"], name=f"fc{k}"))
        current = f"h{k}"
        if relu and k < len(widths) - 2:
            nodes.append(helper.make_node("Relu", [current], [f"r{k}"], name=f"relu{k}"))
            current = f"r{k}"
    nodes.append(helper.make_node("Identity", [current], ["y"], name="out"))
    return make_model(nodes, [float_input("x", ["batch", "tokens", widths[0]])], [float_output("y", 3)], inits)


def gemm_trans_b(rng, fan_in=48, fan_out=40):
    """y = Gemm(x, W, b, transB=1, alpha=0.5, beta=2) with W (out, in)."""
    weight = rng.standard_normal((fan_out, fan_in)).astype(np.float32)
    bias = rng.standard_normal(fan_out).astype(np.float32)
    node = helper.make_node("Gemm", ["x", "W", "b"], ["y"], name="gemm", transB=1, alpha=0.5, beta=2.0)
    inits = [numpy_helper.from_array(weight, "W"), numpy_helper.from_array(bias, "b")]
    return make_model([node], [float_input("x", ["batch", fan_in])], [float_output("y", 2)], inits)


def conv_net(rng, channels=8, groups=2):
    """Conv (3x3, stride 2, pads 1) → Relu → grouped Conv (3x3, dilation 1, groups) → Relu."""
    w1 = (rng.standard_normal((channels, 3, 3, 3)) / 5).astype(np.float32)
    w2 = (rng.standard_normal((channels, channels // groups, 3, 3)) / 5).astype(np.float32)
    b1 = rng.standard_normal(channels).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", strides=[2, 2], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], name="conv2", group=groups, auto_pad="SAME_UPPER"),
        helper.make_node("Relu", ["c2"], ["y"], name="relu2"),
    ]
    inits = [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(b1, "b1"), numpy_helper.from_array(w2, "w2")]
    return make_model(nodes, [float_input("x", ["batch", 3, 12, 12])], [float_output("y", 4)], inits)


def shared_weight(rng, width=32):
    """Two MatMuls on different inputs share B; their outputs are added."""
    weight = (rng.standard_normal((width, width)) / np.sqrt(width)).astype(np.float32)
    nodes = [
        helper.make_node("MatMul", ["x", "B"], ["a"], name="left"),
        helper.make_node("Tanh", ["x"], ["t"], name="tanh"),
        helper.make_node("MatMul", ["t", "B"], ["b"], name="right"),
        helper.make_node("Add", ["a", "b"], ["y"], name="add"),
    ]
    return make_model(nodes, [float_input("x", ["batch", width])], [float_output("y", 2)],
                      [numpy_helper.from_array(weight, "B")])


def constant_and_folded_weights(rng, width=32):
    """MatMul with B from a Constant node, then MatMul(x, Transpose(W_init)) (folded), plus a float branch
    MatMul of two activations (not quantizable)."""
    b_const = (rng.standard_normal((width, width)) / np.sqrt(width)).astype(np.float32)
    w_init = (rng.standard_normal((width, width)) / np.sqrt(width)).astype(np.float32)
    nodes = [
        helper.make_node("Constant", [], ["Bc"], name="const", value=numpy_helper.from_array(b_const, "Bc")),
        helper.make_node("MatMul", ["x", "Bc"], ["h"], name="from_constant"),
        helper.make_node("Transpose", ["W"], ["Wt"], name="transpose"),
        helper.make_node("MatMul", ["h", "Wt"], ["g"], name="from_folded"),
        helper.make_node("Transpose", ["x"], ["xt"], name="xt", perm=[1, 0]),
        helper.make_node("MatMul", ["xt", "g"], ["y"], name="activation_product"),
    ]
    return make_model(nodes, [float_input("x", ["batch", width])], [float_output("y", 2)],
                      [numpy_helper.from_array(w_init, "W")])


def samples(rng, shape, count):
    """Calibration feed dicts for a single float input named x."""
    return [{"x": rng.standard_normal(shape).astype(np.float32)} for _ in range(count)]


def token_embedding_mlp(rng, vocab=50, width=16, out=8):
    """ids (batch, seq) int64 → Gather(E) → · mask (batch, seq) → MatMul: two inputs sharing named dims."""
    table = rng.standard_normal((vocab, width)).astype(np.float32)
    weight = (rng.standard_normal((width, out)) / np.sqrt(width)).astype(np.float32)
    inits = [numpy_helper.from_array(table, "E"), numpy_helper.from_array(weight, "B"),
             numpy_helper.from_array(np.array([-1], np.int64), "last")]
    nodes = [
        helper.make_node("Gather", ["E", "ids"], ["emb"], name="embed"),
        helper.make_node("Unsqueeze", ["mask", "last"], ["mask3"], name="mask3"),
        helper.make_node("Mul", ["emb", "mask3"], ["masked"], name="apply_mask"),
        helper.make_node("MatMul", ["masked", "B"], ["y"], name="fc"),
    ]
    inputs = [helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", "seq"]),
              helper.make_tensor_value_info("mask", TensorProto.FLOAT, ["batch", "seq"])]
    return make_model(nodes, inputs, [float_output("y", 3)], inits)


def token_samples(rng, count, seq, vocab=50):
    return [{"ids": rng.integers(0, vocab, (1, seq)).astype(np.int64), "mask": np.ones((1, seq), np.float32)}
            for _ in range(count)]


#: One graph per kind of layer the export handles: name → (builder(rng), calibration input shape).
EXPORT_GRAPHS = {
    "mlp": (lambda rng: mlp(rng, [64, 48, 32]), (2, 5, 64)),
    "gemm_transB_bias": (lambda rng: gemm_trans_b(rng), (6, 48)),
    "conv": (lambda rng: conv_net(rng), (2, 3, 12, 12)),
    "shared_weight": (lambda rng: shared_weight(rng), (6, 32)),
    "constant_and_folded": (lambda rng: constant_and_folded_weights(rng), (6, 32)),
}
