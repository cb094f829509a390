"""Quantized ONNX output: onnxruntime runs it and computes exactly the NumPy fake-quant of the codes."""

import numpy as np
import onnx
import onnx_graph_builders as gb
import onnxruntime as ort
import pytest
from onnx import numpy_helper
from onnx_reference import fake_quant_float_model, matmulnbits_weight

import qronos_linalg as ql
from qronos_linalg.adapters.onnx import OutputExistsError, quantize_onnx, save_model

BITS = 4
GROUP = 16
FLOAT_BYTES = 4
#: onnxruntime's blocked kernels accumulate in another order than a float MatMul.
RTOL, ATOL = 1e-4, 1e-5
#: accuracy_level 4 quantizes activations to int8 per block: a relative error of about 1%.
INT8_ACTIVATION_REL_ERROR = 0.05

GRAPHS = gb.EXPORT_GRAPHS


def run(model, feed):
    """Run without graph rewrites: onnxruntime would otherwise fuse blocked DequantizeLinear + MatMul
    into MatMulNBits with int8 activations (session.qdq_matmulnbits_accuracy_level, default 4)."""
    source = model if isinstance(model, str) else model.SerializeToString()
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
    return session.run(None, feed)


@pytest.mark.parametrize("fmt", ["qdq", "matmulnbits"])
@pytest.mark.parametrize("graph", sorted(GRAPHS))
def test_output_equals_numpy_fake_quant_and_weights_shrink(graph, fmt):
    rng = np.random.default_rng(10)
    build, shape = GRAPHS[graph]
    model = build(rng)
    calibration = gb.samples(rng, shape, 6)
    quantized, report = quantize_onnx(model, calibration, {"algo": "optq", "bits": BITS, "group_size": GROUP, "format": fmt})
    onnx.checker.check_model(quantized)
    feed = gb.samples(rng, shape, 1)[0]
    np.testing.assert_allclose(run(quantized, feed)[0], run(fake_quant_float_model(quantized), feed)[0], rtol=RTOL, atol=ATOL)
    float_weights = {t.name: t for t in model.graph.initializer}
    quantized_bytes = sum(len(t.raw_data) for t in quantized.graph.initializer if t.name not in float_weights)
    float_bytes = sum(FLOAT_BYTES * np.prod(layer["shape"]) for layer in report["layers"])
    params = sum(np.prod(layer["shape"]) for layer in report["layers"])
    assert quantized_bytes >= params * BITS / 8  # the codes themselves
    per_channel_floor = 1 / GROUP if graph != "conv" else 0
    assert quantized_bytes <= float_bytes * (BITS / 32 + (FLOAT_BYTES + 1) * per_channel_floor / 4) + 512
    if fmt == "matmulnbits":
        kinds = {node.op_type for node in quantized.graph.node}
        expected = "DequantizeLinear" if graph == "conv" else "MatMulNBits"
        assert expected in kinds


def test_rtn_writes_exactly_the_grid_codes_and_scales():
    rng = np.random.default_rng(11)
    model = gb.mlp(rng, [40, 24])
    quantized, _ = quantize_onnx(model, gb.samples(rng, (1, 4, 40), 2), {"algo": "rtn", "group_size": GROUP, "format": "qdq"})
    W = numpy_helper.to_array(model.graph.initializer[0]).T
    grid = ql.UniformGrid.fit(W, BITS, group_size=GROUP)
    inits = {t.name: numpy_helper.to_array(t) for t in quantized.graph.initializer}
    (dq,) = [n for n in quantized.graph.node if n.op_type == "DequantizeLinear"]
    np.testing.assert_array_equal(inits[dq.input[0]].T, grid.quantize(W))
    np.testing.assert_array_equal(inits[dq.input[1]].T, grid.scale)
    np.testing.assert_array_equal(inits[dq.input[2]].T, grid.zero.astype(np.uint8))
    assert quantized.opset_import[0].version == 21


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_matmulnbits_odd_number_of_blocks_asymmetric(bits):
    """K = 576 with block 128: five blocks per row, so zero points end inside a byte (2 and 4 bits)."""
    rng = np.random.default_rng(12)
    model = gb.mlp(rng, [576, 32])
    calibration = gb.samples(rng, (1, 8, 576), 2)
    quantized, report = quantize_onnx(model, calibration, {"algo": "rtn", "bits": bits, "group_size": 128})
    (node,) = [n for n in quantized.graph.node if n.op_type == "MatMulNBits"]
    W = numpy_helper.to_array(model.graph.initializer[0]).T
    grid = ql.UniformGrid.fit(W, bits, group_size=128)
    np.testing.assert_array_equal(matmulnbits_weight(quantized, node), grid.fake_quantize(W).T)
    feed = calibration[0]
    np.testing.assert_allclose(run(quantized, feed)[0], run(fake_quant_float_model(quantized), feed)[0], rtol=RTOL, atol=ATOL)


def test_accuracy_level_is_written_and_int8_compute_stays_close():
    rng = np.random.default_rng(16)
    model = gb.mlp(rng, [64, 32])
    calibration = gb.samples(rng, (1, 8, 64), 2)
    quantized, _ = quantize_onnx(model, calibration, {"algo": "rtn", "group_size": 32, "accuracy_level": 4})
    (node,) = [n for n in quantized.graph.node if n.op_type == "MatMulNBits"]
    assert {a.name: a.i for a in node.attribute}["accuracy_level"] == 4
    exact = run(fake_quant_float_model(quantized), calibration[0])[0]
    int8 = run(quantized, calibration[0])[0]
    assert 0 < np.linalg.norm(int8 - exact) / np.linalg.norm(exact) < INT8_ACTIVATION_REL_ERROR


def test_group_sizes_matmulnbits_does_not_take_fall_back_to_qdq():
    rng = np.random.default_rng(13)
    model = gb.mlp(rng, [48, 24])
    quantized, report = quantize_onnx(model, gb.samples(rng, (1, 4, 48), 2), {"algo": "rtn", "group_size": 24})
    assert [n.op_type for n in quantized.graph.node].count("DequantizeLinear") == 1
    assert report["layers"][0]["format"].startswith("qdq (group size 24")


def test_external_data_points_only_at_the_outputs_own_file(tmp_path):
    rng = np.random.default_rng(14)
    model = gb.mlp(rng, [64, 64, 64])
    source = tmp_path / "source.onnx"
    onnx.save_model(model, str(source), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="source.onnx.data", size_threshold=0)
    quantized, _ = quantize_onnx(source, gb.samples(rng, (1, 4, 64), 2), {"format": "qdq", "algo": "rtn"})
    target = tmp_path / "out" / "quantized.onnx"
    target.parent.mkdir()
    written = save_model(quantized, target, external_data=True)
    assert written == [target, target.with_name("quantized.onnx.data")]
    saved = onnx.load(str(target), load_external_data=False)
    locations = {
        entry.value
        for tensor in saved.graph.initializer
        if tensor.data_location == onnx.TensorProto.EXTERNAL
        for entry in tensor.external_data
        if entry.key == "location"
    }
    assert locations == {"quantized.onnx.data"}
    feed = gb.samples(rng, (1, 4, 64), 1)[0]
    np.testing.assert_array_equal(run(str(target), feed)[0], run(quantized, feed)[0])
    assert sorted(p.name for p in target.parent.iterdir()) == ["quantized.onnx", "quantized.onnx.data"]


def test_save_refuses_to_overwrite_unless_asked_and_leaves_nothing_when_interrupted(tmp_path, monkeypatch):
    rng = np.random.default_rng(15)
    quantized, _ = quantize_onnx(gb.mlp(rng, [32, 16]), gb.samples(rng, (1, 2, 32), 2), {"algo": "rtn"})
    target = tmp_path / "q.onnx"
    target.write_bytes(b"keep me")
    with pytest.raises(OutputExistsError, match="q.onnx exists"):
        save_model(quantized, target)
    assert target.read_bytes() == b"keep me"
    save_model(quantized, target, overwrite=True)
    assert onnx.load(str(target)).graph.node

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(onnx, "save_model", interrupted)
    other = tmp_path / "other.onnx"
    with pytest.raises(KeyboardInterrupt):
        save_model(quantized, other)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["q.onnx"]


@pytest.mark.parametrize("fmt", ["qdq", "matmulnbits"])
def test_excluded_user_of_a_shared_weight_keeps_the_float_weight(fmt):
    rng = np.random.default_rng(17)
    model = gb.shared_weight(rng)
    calibration = gb.samples(rng, (4, 32), 3)
    quantized, report = quantize_onnx(model, calibration, {"algo": "optq", "exclude": "^right$", "format": fmt})
    assert [layer["nodes"] for layer in report["layers"]] == [["left"]]
    (right,) = [n for n in quantized.graph.node if n.name == "right"]
    assert right.op_type == "MatMul" and right.input[1] == "B"
    float_b = numpy_helper.to_array(next(t for t in quantized.graph.initializer if t.name == "B"))
    np.testing.assert_array_equal(float_b, gb_weight(model, "B"))
    feed = calibration[0]
    np.testing.assert_allclose(run(quantized, feed)[0], run(fake_quant_float_model(quantized), feed)[0], rtol=RTOL, atol=ATOL)


def gb_weight(model, name):
    return next(numpy_helper.to_array(t) for t in model.graph.initializer if t.name == name)
