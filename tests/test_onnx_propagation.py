"""The partially quantized stream is real: X̃ of each layer equals an independent forward pass."""

import numpy as np
import onnx_graph_builders as gb
import onnxruntime as ort
import pytest
from onnx_reference import dequantize_linear_weight

from qronos_linalg.activations import fake_quantize_per_token
from qronos_linalg.adapters.onnx import quantize_onnx

ACT_BITS = 4
DEPTH_WIDTHS = [24] * 7  # six MatMul layers


def test_each_layer_sees_the_input_of_the_partially_quantized_graph_with_activation_quantization():
    rng = np.random.default_rng(20)
    model = gb.mlp(rng, DEPTH_WIDTHS)
    calibration = gb.samples(rng, (1, 6, DEPTH_WIDTHS[0]), 4)
    seen = {}
    quantized, report = quantize_onnx(
        model, calibration, {"algo": "optq", "bits": 3, "group_size": 8, "format": "qdq", "act_bits": ACT_BITS},
        observer=lambda name, x, x_tilde: seen.setdefault(name, []).append((x, x_tilde)),
    )
    dequantized = [dequantize_linear_weight(quantized, n) for n in quantized.graph.node if n.op_type == "DequantizeLinear"]
    floats = [gb_weight(model, f"B{k}") for k in range(len(dequantized))]
    names = [layer["name"] for layer in report["layers"]]
    assert len(names) == len(dequantized) == len(DEPTH_WIDTHS) - 1
    for sample, feed in enumerate(calibration):
        h_float, h_quant = feed["x"].reshape(-1, DEPTH_WIDTHS[0]), feed["x"].reshape(-1, DEPTH_WIDTHS[0])
        for k, name in enumerate(names):
            x, x_tilde = seen[name][sample]
            expected_tilde = fake_quantize_per_token(h_quant, ACT_BITS)
            np.testing.assert_allclose(x, h_float, rtol=1e-5, atol=1e-5)
            np.testing.assert_allclose(x_tilde, expected_tilde, rtol=1e-5, atol=1e-5)
            h_float, h_quant = h_float @ floats[k], expected_tilde @ dequantized[k]
            if k < len(names) - 1:
                h_float, h_quant = np.maximum(h_float, 0), np.maximum(h_quant, 0)
        assert not np.allclose(h_float, h_quant, atol=1e-3)  # the two streams really differ


def gb_weight(model, name):
    from onnx import numpy_helper

    return next(numpy_helper.to_array(t) for t in model.graph.initializer if t.name == name)


def end_to_end_error(model, quantized, feeds):
    """Relative output error; graph rewrites off so that QDQ is not fused into int8-activation kernels."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL

    def run(m):
        session = ort.InferenceSession(m.SerializeToString(), options, providers=["CPUExecutionProvider"])
        return np.concatenate([session.run(None, f)[0] for f in feeds])

    reference, output = run(model), run(quantized)
    return np.linalg.norm(output - reference) / np.linalg.norm(reference)


@pytest.mark.parametrize("seed", [0, 1])
def test_qronos_end_to_end_error_below_optq_and_rtn(seed):
    rng = np.random.default_rng(30 + seed)
    model = gb.mlp(rng, [32, 48, 48, 48, 32])
    calibration = gb.samples(rng, (1, 16, 32), 24)
    held_out = gb.samples(rng, (1, 16, 32), 8)
    errors = {}
    for algo in ("rtn", "optq", "qronos"):
        quantized, _ = quantize_onnx(model, calibration, {"algo": algo, "bits": 3, "group_size": None, "format": "qdq"})
        errors[algo] = end_to_end_error(model, quantized, held_out)
    assert errors["qronos"] < errors["optq"] < errors["rtn"], errors


def test_gemm_trans_a_rows_are_tokens_and_activation_quantization_is_per_token():
    rng = np.random.default_rng(21)
    fan_in, fan_out = 20, 12
    from onnx import helper, numpy_helper

    weight = rng.standard_normal((fan_out, fan_in)).astype(np.float32)
    nodes = [
        helper.make_node("Transpose", ["x"], ["xt"], name="t", perm=[1, 0]),
        helper.make_node("Gemm", ["xt", "W"], ["y"], name="gemm", transA=1, transB=1),
    ]
    model = gb.make_model(nodes, [gb.float_input("x", ["n", fan_in])], [gb.float_output("y", 2)],
                          [numpy_helper.from_array(weight, "W")])
    calibration = gb.samples(rng, (5, fan_in), 3)
    seen = []
    quantize_onnx(model, calibration, {"algo": "optq", "act_bits": ACT_BITS, "group_size": None, "format": "qdq"},
                  observer=lambda name, x, x_tilde: seen.append((x, x_tilde)))
    for feed, (x, x_tilde) in zip(calibration, seen):
        np.testing.assert_array_equal(x, feed["x"])
        np.testing.assert_allclose(x_tilde, fake_quantize_per_token(feed["x"], ACT_BITS), rtol=1e-6, atol=1e-6)


def patches_by_loops(x, kernel, stride, pads, channels):
    """im2col written with explicit loops: rows (n, oy, ox), columns (c, ky, kx) of ``channels``."""
    top, left, bottom, right = pads
    padded = np.pad(x, [(0, 0), (0, 0), (top, bottom), (left, right)])
    rows = []
    for n in range(x.shape[0]):
        for oy in range(0, padded.shape[2] - kernel + 1, stride):
            for ox in range(0, padded.shape[3] - kernel + 1, stride):
                rows.append(padded[n, channels, oy : oy + kernel, ox : ox + kernel].reshape(-1))
    return np.array(rows)


def test_conv_rows_are_unfolded_patches_and_activations_are_quantized_per_pixel():
    rng = np.random.default_rng(22)
    model = gb.conv_net(rng, channels=8, groups=2)
    calibration = gb.samples(rng, (1, 3, 12, 12), 2)
    seen = {}
    quantize_onnx(model, calibration, {"algo": "optq", "act_bits": ACT_BITS, "format": "qdq"},
                  observer=lambda name, x, x_tilde: seen.setdefault(name, []).append((x, x_tilde)))
    float_model = gb.make_model(list(model.graph.node), list(model.graph.input),
                                [gb.float_output("r1", 4)], list(model.graph.initializer))
    session = ort.InferenceSession(float_model.SerializeToString(), providers=["CPUExecutionProvider"])
    for sample, feed in enumerate(calibration):
        x = feed["x"]
        conv1_x, conv1_x_tilde = seen["conv1"][sample]
        np.testing.assert_array_equal(conv1_x, patches_by_loops(x, 3, 2, (1, 1, 1, 1), slice(0, 3)))
        per_pixel = fake_quantize_per_token(x.transpose(0, 2, 3, 1), ACT_BITS).transpose(0, 3, 1, 2)
        np.testing.assert_allclose(conv1_x_tilde, patches_by_loops(per_pixel, 3, 2, (1, 1, 1, 1), slice(0, 3)), atol=1e-6)
        r1 = session.run(None, feed)[0]  # conv2: groups of 4 channels, 3x3 SAME_UPPER, stride 1
        np.testing.assert_allclose(seen["conv2"][sample][0], patches_by_loops(r1, 3, 1, (1, 1, 1, 1), slice(0, 4)), rtol=1e-5, atol=1e-6)
