"""CLI subcommands quantize-lm and eval-ppl on a tiny Llama folder with a byte-level tokenizer."""

import json

import pytest

pytest.importorskip("transformers")

from _torch_tiny import byte_tokenizer, tiny_llama  # noqa: E402

from qronos_linalg import cli  # noqa: E402
from qronos_linalg.adapters.torch.save import QUANTIZATION_JSON, REPORT_JSON  # noqa: E402

SEQ_LEN = 32
PARAGRAPH = "The quick brown fox jumps over the lazy dog while numbers {} and {} are counted."


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny") / "llama"
    tiny_llama().save_pretrained(folder)
    byte_tokenizer().save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("text") / "corpus.txt"
    path.write_text("\n\n".join(PARAGRAPH.format(i, i * i) for i in range(40)))
    return path


def test_quantize_then_evaluate(tmp_path, model_folder, text_file, capsys):
    out = tmp_path / "q"
    assert cli.main(["quantize-lm", str(model_folder), "--algo", "qronos", "--bits", "3", "--group-size", "16",
                     "--act-bits", "8", "--hadamard", "--text-file", str(text_file), "--seq-len", str(SEQ_LEN),
                     "--windows", "4", "-o", str(out), "--quiet", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["layers"] == 14
    report = json.loads((out / REPORT_JSON).read_text())
    assert {"name", "shape", "algorithm", "samples", "damp", "rel_error_rtn", "rel_error", "time_s"} <= set(report["layers"][0])
    assert json.loads((out / QUANTIZATION_JSON).read_text())["transforms"]["hadamard"]["seed"] == 0
    assert cli.main(["eval", str(out), "--text-file", str(text_file), "--seq-len", str(SEQ_LEN), "--windows", "2",
                     "--quiet", "--report", str(tmp_path / "ppl.json")]) == 0
    result = json.loads((tmp_path / "ppl.json").read_text())
    scores = result["texts"]["corpus.txt"]
    assert 1 < scores["perplexity"] < float("inf") and scores["windows"] == 2
    assert scores["kl"] > 0 and result["reference"] == "auto"  # against the recorded base model


def test_kl_of_the_float_model_to_itself_is_zero_and_eval_ppl_is_an_alias(tmp_path, model_folder, text_file, capsys):
    assert cli.main(["eval-ppl", str(model_folder), "--reference", str(model_folder), "--text-file", str(text_file),
                     "--seq-len", str(SEQ_LEN), "--windows", "2", "--quiet", "--json"]) == 0
    scores = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["texts"]["corpus.txt"]
    assert scores["kl"] == 0.0 and scores["tokens"] == 2 * (SEQ_LEN - 1)


def test_existing_output_is_refused_without_overwrite(tmp_path, model_folder, text_file, capsys):
    (tmp_path / "q").mkdir()
    assert cli.main(["quantize-lm", str(model_folder), "--text-file", str(text_file), "--seq-len", str(SEQ_LEN),
                     "--windows", "1", "-o", str(tmp_path / "q"), "--quiet"]) == 2
    assert "--overwrite" in capsys.readouterr().err


def test_calibration_shorter_than_one_window_is_an_error(tmp_path, model_folder, text_file, capsys):
    assert cli.main(["quantize-lm", str(model_folder), "--text-file", str(text_file), "--seq-len", "100000",
                     "--windows", "1", "-o", str(tmp_path / "q"), "--quiet"]) == 2
    assert "shorter than one window" in capsys.readouterr().err
    assert not (tmp_path / "q").exists()


def test_weight_only_model_is_exported_to_onnx_and_activation_quantized_one_refused(tmp_path, model_folder,
                                                                                    text_file, capsys):
    pytest.importorskip("onnxscript")
    ort = pytest.importorskip("onnxruntime")
    common = [str(model_folder), "--algo", "optq", "--bits", "4", "--text-file", str(text_file),
              "--seq-len", str(SEQ_LEN), "--windows", "2", "--quiet"]
    assert cli.main(["quantize-lm", *common, "--act-bits", "8", "-o", str(tmp_path / "a"),
                     "--onnx", str(tmp_path / "a.onnx")]) == 2
    assert "weight-only" in capsys.readouterr().err and not (tmp_path / "a").exists()
    assert cli.main(["quantize-lm", *common, "-o", str(tmp_path / "w"), "--onnx", str(tmp_path / "w.onnx")]) == 0
    session = ort.InferenceSession(str(tmp_path / "w.onnx"), providers=["CPUExecutionProvider"])
    assert [i.shape for i in session.get_inputs()] == [[1, SEQ_LEN]]


@pytest.mark.parametrize("flags, needles", [
    (["--bits", "1"], ["bits must be an integer in [2, 8]"]),
    (["--bits", "9"], ["bits must be an integer in [2, 8]"]),
    (["--group-size", "0"], ["group_size must be a positive integer"]),
    (["--damp", "-1"], ["damp must be a finite number >= 0"]),
    (["--damp", "inf"], ["damp must be a finite number >= 0"]),
    (["--smoothquant", "2"], ["SmoothQuant alpha must be in [0, 1]"]),
    (["--x-mode", "both"], ["--x-mode", "must be one of"]),
    (["--dist-timeout", "0"], ["--dist-timeout must be positive"]),
    (["--text-file", "absent.txt"], ["--text-file absent.txt does not exist"]),
    (["--windows", "0"], ["--windows must be at least 1"]),
    (["--windows", "1000"], ["asked for 1000 windows"]),
    ([], ["neither a packaged model", "no config.json"]),
    (["-o", "no/such/folder/q"], ["does not exist"]),
])
def test_bad_quantize_lm_inputs_exit_2_with_one_line_and_write_nothing(tmp_path, model_folder, text_file, capsys,
                                                                       monkeypatch, flags, needles):
    monkeypatch.chdir(tmp_path)
    model = "not-a-model" if not flags else str(model_folder)
    argv = ["quantize-lm", model, "--text-file", str(text_file), "--seq-len", str(SEQ_LEN), "--windows", "2",
            "-o", "q", "--quiet", *flags]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("qronos quantize-lm: error: "), err
    assert all(needle in err[0] for needle in needles), err[0]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("case, needles", [
    ("missing model", ["neither a packaged model"]),
    ("missing text", ["does not exist"]),
    ("zero windows", ["--windows must be at least 1"]),
    ("existing report", ["already exists", "--overwrite"]),
])
def test_bad_eval_inputs_exit_2_with_one_line(tmp_path, model_folder, text_file, capsys, case, needles):
    model = "absent" if case == "missing model" else str(model_folder)
    text = tmp_path / "absent.txt" if case == "missing text" else text_file
    windows = "0" if case == "zero windows" else "1"
    (tmp_path / "r.json").write_text("keep")
    report = ["--report", str(tmp_path / "r.json")] if case == "existing report" else []
    assert cli.main(["eval-ppl", model, "--text-file", str(text), "--seq-len", str(SEQ_LEN), "--windows", windows,
                     "--quiet", *report]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and all(needle in err[0] for needle in needles), err
    assert (tmp_path / "r.json").read_text() == "keep"


def test_quantize_lm_with_yaqa_uses_the_first_hessian_sequences_windows(tmp_path, model_folder, text_file, capsys):
    out = tmp_path / "y"
    assert cli.main(["quantize-lm", str(model_folder), "--algo", "yaqa", "--bits", "3", "--group-size", "16",
                     "--text-file", str(text_file), "--seq-len", str(SEQ_LEN), "--windows", "4",
                     "--hessian-sequences", "2", "-o", str(out), "--quiet", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    report = json.loads((out / REPORT_JSON).read_text())
    assert summary["layers"] == 14 and report["calibration_windows"] == 2
    assert {layer["objective"] for layer in report["layers"]} == {"kronecker"}
    assert summary["mean_rel_error"] < summary["mean_rel_error_rtn"]
    assert cli.main(["quantize-lm", str(model_folder), "--algo", "rtn", "--act-order", "--text-file",
                     str(text_file), "-o", str(tmp_path / "z"), "--quiet"]) == 2
    assert "has no act-order" in capsys.readouterr().err


def test_quantize_lm_yaqa_takes_every_window_by_default_and_yaqa_qronos_also_runs_the_streams(
        tmp_path, model_folder, text_file, capsys):
    common = ["--bits", "3", "--group-size", "16", "--text-file", str(text_file), "--seq-len", str(SEQ_LEN),
              "--windows", "4", "--quiet"]
    assert cli.main(["quantize-lm", str(model_folder), "--algo", "yaqa", *common, "-o", str(tmp_path / "y")]) == 0
    assert json.loads((tmp_path / "y" / REPORT_JSON).read_text())["calibration_windows"] == 4
    assert cli.main(["quantize-lm", str(model_folder), "--algo", "yaqa-qronos", "--hessian-sequences", "2", *common,
                     "-o", str(tmp_path / "h"), "--report", str(tmp_path / "h.json")]) == 0
    report = json.loads((tmp_path / "h" / REPORT_JSON).read_text())
    assert report["calibration_windows"] == 4 and report["x_mode"] == "block"  # the streams use every window
    assert {layer["objective"] for layer in report["layers"]} == {"output"}
    assert report["time_split_s"]["gradients"] > 0 and report["time_split_s"]["quantized_forward"] > 0
    assert cli.main(["quantize-lm", str(model_folder), "--algo", "yaqa-qronos", *common, "--hessian-sequences", "0",
                     "-o", str(tmp_path / "bad")]) == 2
    assert "--hessian-sequences must be at least 1, got 0" in capsys.readouterr().err
