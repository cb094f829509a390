"""Layer-wise onloading: a tiny Llama whose checkpoint is split across shards, quantized one block at a
time, gives the in-memory run's folder exactly, with at most one block resident."""

import json

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("accelerate")

from _torch_tiny import byte_tokenizer, recipe, tiny_llama, token_batch  # noqa: E402

from qronos_linalg.adapters.torch import onload  # noqa: E402
from qronos_linalg.adapters.torch.lm import quantize_causal_lm  # noqa: E402
from qronos_linalg.adapters.torch.save import (REPORT_JSON, load_quantization_tensors, load_quantized,  # noqa: E402
                                               save_quantized)

LAYERS = 3


@pytest.fixture(scope="module")
def sharded(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sharded") / "llama"
    tiny_llama(layers=LAYERS, tie=False).save_pretrained(folder, max_shard_size="40KB")
    byte_tokenizer().save_pretrained(folder)
    assert len(list(folder.glob("model-*.safetensors"))) > 2
    return folder


@pytest.mark.parametrize("options", [{"algo": "qronos", "bits": 3, "group_size": 16},
                                     {"algo": "optq", "bits": 4, "act_bits": 8},
                                     {"algo": "rtn", "bits": 3}])
def test_onloaded_quantization_writes_the_in_memory_folder(sharded, tmp_path, monkeypatch, options):
    from transformers import AutoModelForCausalLM

    calibration = token_batch(3, 12)
    errors = options["algo"] != "rtn"
    model = AutoModelForCausalLM.from_pretrained(sharded, dtype=torch.float32).eval()
    report = quantize_causal_lm(model, calibration, recipe(**options), progress=False, errors=errors)
    save_quantized(model, tmp_path / "memory", report)

    resident, load = [], onload.BlockOnloader.load

    def counting_load(self, index):
        load(self, index)
        resident.append(len(self.loaded))
    monkeypatch.setattr(onload.BlockOnloader, "load", counting_load)
    summary = onload.quantize_causal_lm_onloaded(sharded, calibration, recipe(**options), tmp_path / "onloaded",
                                                 progress=False, errors=errors)
    assert resident and max(resident) == 1  # one block at a time (for RTN: no calibration forward at all)
    # the recording pass stops before the last block runs; then each block once more to be quantized
    assert len(resident) == (LAYERS if options["algo"] == "rtn" else 2 * LAYERS - 1)
    assert len(list((tmp_path / "onloaded").glob("model-*-of-*.safetensors"))) == LAYERS + 1
    ours, theirs = (load_quantized(tmp_path / name)[0].state_dict() for name in ("onloaded", "memory"))
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[key], theirs[key]) for key in theirs)
    codes = [load_quantization_tensors(tmp_path / name) for name in ("onloaded", "memory")]
    assert codes[0].keys() == codes[1].keys() and all(torch.equal(codes[0][k], codes[1][k]) for k in codes[1])
    stored = json.loads((tmp_path / "onloaded" / REPORT_JSON).read_text())
    assert [layer["rel_error"] for layer in stored["layers"]] == [layer["rel_error"] for layer in report["layers"]]
    assert summary["layers"] == stored["layers"] and "results" not in summary
    assert load_quantized(tmp_path / "onloaded")[1]["layers"] == load_quantized(tmp_path / "memory")[1]["layers"]


def test_onloading_refuses_yaqa_and_folders_without_safetensors(sharded, tmp_path):
    with pytest.raises(ValueError, match="YAQA needs the gradients of the whole model"):
        onload.quantize_causal_lm_onloaded(sharded, token_batch(2, 8), recipe(algo="yaqa"), tmp_path / "y")
    with pytest.raises(FileNotFoundError, match="has no model.safetensors or model.safetensors.index.json"):
        onload.Checkpoint(tmp_path)
    assert not (tmp_path / "y").exists()


def test_quantize_lm_onload_flag_writes_the_same_codes_and_refuses_what_it_cannot_do(sharded, tmp_path, capsys):
    from qronos_linalg import cli

    text = tmp_path / "corpus.txt"
    text.write_text("\n\n".join(f"Paragraph {i} counts {i * i} foxes over {i + 7} dogs." for i in range(60)))
    common = ["quantize-lm", str(sharded), "--algo", "qronos", "--bits", "3", "--group-size", "16", "--text-file",
              str(text), "--seq-len", "32", "--windows", "3", "--quiet"]
    assert cli.main([*common, "--onload", "-o", str(tmp_path / "onloaded")]) == 0
    assert cli.main([*common, "--format", "dense", "-o", str(tmp_path / "memory")]) == 0
    codes = [load_quantization_tensors(tmp_path / name) for name in ("onloaded", "memory")]
    assert codes[0].keys() == codes[1].keys() and all(torch.equal(codes[0][k], codes[1][k]) for k in codes[1])
    capsys.readouterr()
    for extra, message in ((["--hadamard"], "transform the whole model"), (["--algo", "yaqa"], "yaqa needs the gradients"),
                           (["--algo", "yaqa-qronos"], "yaqa-qronos needs the gradients"),
                           (["--format", "gguf"], "writes the dense folder")):
        assert cli.main([*common, "--onload", *extra, "-o", str(tmp_path / "refused")]) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "refused").exists()
