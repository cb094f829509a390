"""A model with external data is read tensor by tensor: same result as in memory, and the result stands alone."""

import numpy as np
import onnx
import onnx_graph_builders as gb
import onnxruntime as ort
import pytest
from onnx import numpy_helper
from onnx.external_data_helper import uses_external_data

from qronos_linalg.adapters.onnx import InvalidModelError, quantize_onnx
from qronos_linalg.adapters.onnx import graph as onnx_graph
from qronos_linalg.adapters.onnx.graph import load_model

GRAPHS = gb.EXPORT_GRAPHS


def save_external(model: onnx.ModelProto, path) -> None:
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    onnx.save_model(copy, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=path.name + ".data", size_threshold=0)


def run(model: onnx.ModelProto, feed: dict) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feed)[0]


@pytest.mark.parametrize("name", GRAPHS)
@pytest.mark.parametrize("algo", ["optq", "qronos"])
def test_external_data_model_quantizes_exactly_like_the_model_in_memory_and_the_result_stands_alone(tmp_path, name, algo):
    build, shape = GRAPHS[name]
    rng = np.random.default_rng(21)
    model = build(rng)
    samples = gb.samples(rng, shape, 3)
    source = tmp_path / "source.onnx"
    save_external(model, source)
    assert all(uses_external_data(t) for t in load_model(source).graph.initializer)  # references, no data read
    in_memory, report_memory = quantize_onnx(model, samples, {"algo": algo, "bits": 3, "format": "qdq"})
    streamed, report_streamed = quantize_onnx(source, samples, {"algo": algo, "bits": 3, "format": "qdq"})
    assert [layer["rel_error"] for layer in report_streamed["layers"]] == \
        [layer["rel_error"] for layer in report_memory["layers"]]
    assert report_streamed["size_before_bytes"] >= report_memory["size_before_bytes"] - 1024
    tensors = {t.name: numpy_helper.to_array(t) for t in in_memory.graph.initializer}
    for tensor in streamed.graph.initializer:
        assert not uses_external_data(tensor)
        np.testing.assert_array_equal(numpy_helper.to_array(tensor), tensors[tensor.name])
    assert set(tensors) == {t.name for t in streamed.graph.initializer}
    for path in tmp_path.iterdir():
        path.unlink()  # the quantized model no longer needs the source files
    np.testing.assert_array_equal(run(streamed, samples[0]), run(in_memory, samples[0]))


def test_each_external_tensor_is_read_only_when_a_stage_or_the_export_needs_it(tmp_path, monkeypatch):
    """The weights of the first layer's stage are read before the last layer is solved, the last layer's
    weight only after the first layer is solved; no tensor's data is kept in the working model."""
    rng = np.random.default_rng(22)
    model = gb.mlp(rng, [32, 32, 32, 32])
    source = tmp_path / "source.onnx"
    save_external(model, source)
    events = []
    read = onnx_graph.external_data_helper.load_external_data_for_tensor
    monkeypatch.setattr(onnx_graph.external_data_helper, "load_external_data_for_tensor",
                        lambda tensor, base: (events.append(("read", tensor.name)), read(tensor, base))[1])
    from qronos_linalg.adapters.onnx import quantize as onnx_quantize
    solve = onnx_quantize.solve_layer
    monkeypatch.setattr(onnx_quantize, "solve_layer",
                        lambda layer, *args: (events.append(("solve", layer.weight_name)), solve(layer, *args))[1])
    quantized, _ = quantize_onnx(source, gb.samples(rng, (1, 4, 32), 2), {"algo": "optq", "format": "qdq"})
    solved = [name for kind, name in events if kind == "solve"]
    assert len(solved) == 3
    first_solve = events.index(("solve", solved[0]))
    last_read_of_last = max(i for i, event in enumerate(events) if event == ("read", solved[-1]))
    assert last_read_of_last > first_solve  # read again when its own stage or solve needs it, not all up front
    assert all(not uses_external_data(t) for t in quantized.graph.initializer)


def test_missing_external_data_is_a_clear_error(tmp_path):
    rng = np.random.default_rng(23)
    source = tmp_path / "source.onnx"
    save_external(gb.mlp(rng, [16, 8]), source)
    (tmp_path / "source.onnx.data").unlink()
    with pytest.raises(InvalidModelError, match=r"source\.onnx|external data"):
        quantize_onnx(source, gb.samples(rng, (1, 2, 16), 1), {"algo": "rtn"})


def test_in_memory_model_with_dangling_external_references_names_the_tensor(tmp_path):
    rng = np.random.default_rng(24)
    source = tmp_path / "source.onnx"
    save_external(gb.mlp(rng, [16, 8]), source)
    references_only = onnx.load(str(source), load_external_data=False)
    with pytest.raises(InvalidModelError, match="B0"):  # the checker, or loaded_tensor, names the tensor
        quantize_onnx(references_only, gb.samples(rng, (1, 2, 16), 1), {"algo": "rtn"})
