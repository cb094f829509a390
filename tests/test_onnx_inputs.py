"""Bad input to the ONNX adapter: a clear exception naming what is wrong, nothing written."""

import json

import numpy as np
import onnx
import onnx_graph_builders as gb
import pytest
from onnx import helper, numpy_helper

from qronos_linalg import cli
from qronos_linalg.adapters.onnx import (
    CalibrationError,
    ConfigError,
    InvalidModelError,
    NoQuantizableLayerError,
    NonFiniteActivationError,
    quantize_onnx,
)

WIDTH = 16


@pytest.fixture
def mlp():
    return gb.mlp(np.random.default_rng(40), [WIDTH, 12, 8])


def calibration(count=3, dtype=np.float32, width=WIDTH):
    rng = np.random.default_rng(41)
    return [{"x": rng.standard_normal((1, 4, width)).astype(dtype)} for _ in range(count)]


def test_not_onnx_and_truncated_files_are_rejected(tmp_path, mlp):
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"this is not a protobuf \xff\xfe")
    with pytest.raises(InvalidModelError, match="garbage.onnx is not a valid ONNX model"):
        quantize_onnx(garbage, calibration())
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(mlp.SerializeToString()[:-300])
    with pytest.raises(InvalidModelError, match="truncated.onnx is not a valid ONNX model"):
        quantize_onnx(truncated, calibration())


@pytest.mark.parametrize(
    "samples, message",
    [
        ([{"y": np.zeros((1, 4, WIDTH), np.float32)}], r"missing \['x'\], unexpected \['y'\]"),
        (calibration(dtype=np.float64), "has dtype float64, the graph expects float32"),
        (calibration(width=WIDTH + 1), r"has shape \[1, 4, 17\], the graph expects \['\?', '\?', 16\]"),
    ],
)
def test_calibration_must_match_graph_inputs(mlp, samples, message):
    with pytest.raises(CalibrationError, match=message):
        quantize_onnx(mlp, samples)


def test_no_quantizable_layer_lists_the_reasons():
    nodes = [helper.make_node("MatMul", ["x", "x"], ["y"], name="square")]
    model = gb.make_model(nodes, [gb.float_input("x", [WIDTH, WIDTH])], [gb.float_output("y", 2)], [])
    with pytest.raises(NoQuantizableLayerError, match="square .MatMul.: weight is not constant"):
        quantize_onnx(model, [{"x": np.eye(WIDTH, dtype=np.float32)}])


def test_non_finite_activation_names_the_layer():
    rng = np.random.default_rng(42)
    inits = [numpy_helper.from_array(rng.standard_normal((WIDTH, WIDTH)).astype(np.float32), n) for n in ("B0", "B1")]
    nodes = [
        helper.make_node("MatMul", ["x", "B0"], ["h"], name="first"),
        helper.make_node("Log", ["h"], ["l"], name="log"),  # log of negative values: NaN
        helper.make_node("MatMul", ["l", "B1"], ["y"], name="second"),
    ]
    model = gb.make_model(nodes, [gb.float_input("x", ["n", WIDTH])], [gb.float_output("y", 2)], inits)
    with pytest.raises(NonFiniteActivationError, match="layer 'second'"):
        quantize_onnx(model, [{"x": rng.standard_normal((4, WIDTH)).astype(np.float32)}])


@pytest.mark.parametrize("config, message", [({"algorithm": "optq"}, "unknown configuration key"), ({"algo": "gptq2"}, "algo must be one of")])
def test_bad_config_is_rejected(mlp, config, message):
    with pytest.raises(ConfigError, match=message):
        quantize_onnx(mlp, calibration(), config)


class Reader:
    """onnxruntime's CalibrationDataReader protocol."""

    def __init__(self, feeds):
        self.feeds = iter(feeds)

    def get_next(self):
        return next(self.feeds, None)


def test_npz_folder_and_reader_calibration_give_the_same_result(tmp_path, mlp):
    feeds = calibration(4)
    np.savez(tmp_path / "cal.npz", x=np.concatenate([f["x"] for f in feeds]))
    for k, feed in enumerate(feeds):
        folder = tmp_path / "zoo" / f"test_data_set_{k}"
        folder.mkdir(parents=True)
        (folder / "input_0.pb").write_bytes(numpy_helper.from_array(feed["x"], "x").SerializeToString())
    errors = []
    for source in (tmp_path / "cal.npz", tmp_path / "zoo", Reader(feeds), feeds):
        _, report = quantize_onnx(mlp, source, {"algo": "optq"})
        assert report["calibration_samples"] == 4
        errors.append([layer["rel_error"] for layer in report["layers"]])
    assert errors[0] == errors[1] == errors[2] == errors[3]
    _, subset = quantize_onnx(mlp, tmp_path / "cal.npz", {"algo": "optq", "nsamples": 2, "seed": 3})
    assert subset["calibration_samples"] == 2


def test_cli_config_file_flags_report_and_refusal_to_overwrite(tmp_path, mlp, capsys):
    model_path, output, report_path = tmp_path / "m.onnx", tmp_path / "q.onnx", tmp_path / "r.json"
    onnx.save_model(mlp, str(model_path))
    np.savez(tmp_path / "cal.npz", x=np.concatenate([f["x"] for f in calibration(4)]))
    (tmp_path / "c.yaml").write_text("algo: gpfq\nbits: 3\ngroup-size: none\nformat: qdq\n")
    argv = ["quantize", str(model_path), "-o", str(output), "--calibration", str(tmp_path / "cal.npz"),
            "--config", str(tmp_path / "c.yaml"), "--bits", "5", "--report", str(report_path)]
    assert cli.main(argv) == 0
    report = json.loads(report_path.read_text())
    assert [(l["name"], l["algorithm"], l["bits"], l["group_size"]) for l in report["layers"]] == [
        ("fc0", "gpfq", 5, None), ("fc1", "gpfq", 5, None)]
    assert all(0 <= l["rel_error"] and 0 <= l["rel_error_rtn"] and l["samples"] == 16 for l in report["layers"])
    assert "layers quantized: 2" in capsys.readouterr().out
    before = output.read_bytes()
    assert cli.main(argv) == 2
    assert "exists" in capsys.readouterr().err
    assert output.read_bytes() == before
    assert cli.main(argv + ["--overwrite"]) == 0


def test_cli_missing_calibration_is_an_error_and_writes_nothing(tmp_path, mlp, capsys):
    model_path = tmp_path / "m.onnx"
    onnx.save_model(mlp, str(model_path))
    assert cli.main(["quantize", str(model_path), "-o", str(tmp_path / "q.onnx")]) == 2
    assert "needs -o OUT.onnx and --calibration" in capsys.readouterr().err
    assert not (tmp_path / "q.onnx").exists()
