"""A quantized causal LM exported to ONNX computes the same logits in onnxruntime, and the ONNX adapter
finds every linear of it (the hand-off from the PyTorch adapter to the ONNX one)."""

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("onnxscript")
ort = pytest.importorskip("onnxruntime")

from _torch_tiny import recipe, tiny_llama, token_batch  # noqa: E402

from qronos_linalg.adapters.torch import quantize_causal_lm  # noqa: E402
from qronos_linalg.adapters.torch.onnx_export import INPUT_NAME, OUTPUT_NAME, export_causal_lm_onnx  # noqa: E402


SEQ_LEN = 16
#: fp32 logits of the same graph in torch and onnxruntime agree to this absolute tolerance.
LOGITS_ATOL = 1e-4


def _quantized_tiny_llama(act_bits=None):
    model = tiny_llama()
    quantize_causal_lm(model, token_batch(3, SEQ_LEN), recipe(algo="qronos", bits=3, act_bits=act_bits),
                       progress=False)
    return model


def test_exported_quantized_model_reproduces_the_logits_and_is_found_by_the_onnx_adapter(tmp_path):
    import onnx

    from qronos_linalg.adapters.onnx.graph import find_layers, topological_nodes

    model = _quantized_tiny_llama()
    path = export_causal_lm_onnx(model, tmp_path / "tiny.onnx", seq_len=SEQ_LEN)
    ids = token_batch(1, SEQ_LEN, seed=5)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run([OUTPUT_NAME], {INPUT_NAME: ids.numpy()})[0]
    with torch.no_grad():
        expected = model(input_ids=ids, use_cache=False).logits.numpy()
    np.testing.assert_allclose(got, expected, rtol=0, atol=LOGITS_ATOL)
    linears = sum(isinstance(m, torch.nn.Linear) for m in model.modules())
    exported = onnx.load(str(path))
    layers, _skipped = find_layers(exported, topological_nodes(exported.graph))
    assert len(layers) == linears  # 2 blocks × 7 + the tied lm_head
    assert [p.name for p in tmp_path.iterdir()] == ["tiny.onnx"]  # no temporary left behind


def test_export_refuses_activation_quantized_models_and_existing_files(tmp_path):
    with pytest.raises(ValueError, match="input transforms"):
        export_causal_lm_onnx(_quantized_tiny_llama(act_bits=8), tmp_path / "a.onnx", seq_len=SEQ_LEN)
    (tmp_path / "taken.onnx").write_bytes(b"keep")
    with pytest.raises(FileExistsError, match="overwrite"):
        export_causal_lm_onnx(tiny_llama(), tmp_path / "taken.onnx", seq_len=SEQ_LEN)
    assert (tmp_path / "taken.onnx").read_bytes() == b"keep"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken.onnx"]
