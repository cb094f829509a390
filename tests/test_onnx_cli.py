"""``qronos quantize``: one dialect, every bad input exits 2 with one line and writes nothing."""

import json
import os
import signal

import numpy as np
import onnx
import onnx_graph_builders as gb
import pytest

from qronos_linalg import cli

WIDTH = 16


@pytest.fixture
def workspace(tmp_path):
    """A folder with a two-layer MLP (m.onnx) and its calibration data (cal.npz)."""
    rng = np.random.default_rng(60)
    onnx.save_model(gb.mlp(rng, [WIDTH, 12, 8]), str(tmp_path / "m.onnx"))
    np.savez(tmp_path / "cal.npz", x=rng.standard_normal((4, 3, WIDTH)).astype(np.float32))
    return tmp_path


def run(workspace, *flags, model="m.onnx", calibration="cal.npz", output="q.onnx"):
    argv = ["quantize", str(workspace / model), "--quiet"]
    argv += [] if output is None else ["-o", str(workspace / output)]
    argv += [] if calibration is None else ["--calibration", str(workspace / calibration)]
    return cli.main(argv + [str(flag) for flag in flags])


def assert_refused(code, capsys, workspace, *needles, before=None):
    """Exit 2, one line on stderr naming the problem, nothing new in the folder."""
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, err
    assert len(err) == 1, err
    assert all(needle in err[0] for needle in needles), err[0]
    assert "Traceback" not in err[0]
    if before is not None:
        assert sorted(p.name for p in workspace.iterdir()) == before


@pytest.mark.parametrize("flags, needles", [
    (["--bits", "1"], ["bits must be an integer in [2, 8]", "got 1"]),
    (["--bits", "9"], ["bits must be an integer in [2, 8]", "got 9"]),
    (["--bits", "four"], ["--bits", "must be an integer"]),
    (["--group-size", "0"], ["group_size must be a positive integer"]),
    (["--damp", "-1"], ["damp must be a finite number >= 0", "-1"]),
    (["--damp", "inf"], ["damp must be a finite number >= 0", "inf"]),
    (["--damp", "nan"], ["damp must be a finite number >= 0"]),
    (["--block-size", "0"], ["block_size must be a positive integer"]),
    (["--shrink", "1.5"], ["shrink must be in (0, 1]"]),
    (["--act-bits", "1"], ["act_bits"]),
    (["--algo", "gptq2"], ["--algo", "must be one of"]),
    (["--algo", "rtn", "--damp", "0.1"], ["rtn has no damping"]),
    (["--include", "("], ["include is not a valid regular expression"]),
    (["--accuracy-level", "9"], ["accuracy_level must be one of"]),
    (["--nsamples", "0"], ["nsamples must be a positive integer"]),
    (["--threads", "0"], ["threads must be a positive integer"]),
])
def test_bad_settings_exit_2_before_reading_the_model(workspace, capsys, flags, needles):
    before = sorted(p.name for p in workspace.iterdir())
    assert_refused(run(workspace, *flags), capsys, workspace, *needles, before=before)


@pytest.mark.parametrize("case, needles", [
    ("missing calibration", ["calibration data", "does not exist"]),
    ("unreadable calibration", ["not a readable .npz"]),
    ("missing model", ["model file", "does not exist"]),
    ("existing output", ["q.onnx exists", "--overwrite"]),
    ("missing output folder", ["does not exist"]),
    ("report folder is a file", ["does not exist"]),
    ("report is the output", ["is the model output"]),
    ("unknown config key", ["unknown configuration key 'kernel'"]),
    ("config not yaml", ["not valid YAML"]),
    ("config value", ["bits must be an integer"]),
])
def test_bad_paths_and_files_exit_2_and_write_nothing(workspace, capsys, case, needles):
    kwargs, flags = {}, []
    if case == "missing calibration":
        kwargs["calibration"] = "absent.npz"
    elif case == "unreadable calibration":
        (workspace / "garbage.npz").write_bytes(b"\x00not an npz")
        kwargs["calibration"] = "garbage.npz"
    elif case == "missing model":
        kwargs["model"] = "absent.onnx"
    elif case == "existing output":
        (workspace / "q.onnx").write_bytes(b"keep")
    elif case == "missing output folder":
        kwargs["output"] = "no/such/folder/q.onnx"
    elif case == "report folder is a file":
        (workspace / "afile").write_text("x")
        flags = ["--report", workspace / "afile" / "r.json"]
    elif case == "report is the output":
        flags = ["--report", workspace / "q.onnx"]
    else:
        text = {"unknown config key": "kernel: 3\n", "config not yaml": "bits: [4\n",
                "config value": "bits: many\n"}[case]
        (workspace / "c.yaml").write_text(text)
        flags = ["--config", workspace / "c.yaml"]
    before = sorted(p.name for p in workspace.iterdir())
    assert_refused(run(workspace, *flags, **kwargs), capsys, workspace, *needles, before=before)
    if case == "existing output":
        assert (workspace / "q.onnx").read_bytes() == b"keep"


def test_group_size_none_flag_overrides_the_config_file_and_yaml_numbers_are_numbers(workspace, capsys):
    (workspace / "c.yaml").write_text("algo: optq\ngroup_size: 8\ndamp: 1e-2\n")  # YAML 1.1 reads 1e-2 as text
    assert run(workspace, "--config", workspace / "c.yaml", "--group-size", "none", "--report", workspace / "r.json") == 0
    report = json.loads((workspace / "r.json").read_text())
    assert {layer["group_size"] for layer in report["layers"]} == {None}
    assert report["config"]["group_size"] is None and report["config"]["damp"] == 0.01
    assert {layer["damp"] for layer in report["layers"]} == {0.01}
    assert run(workspace, "--config", workspace / "c.yaml", "--group-size", "channel", "--overwrite") == 0
    assert run(workspace, "--config", workspace / "c.yaml", "--overwrite", "--report", workspace / "r.json") == 0
    assert {layer["group_size"] for layer in json.loads((workspace / "r.json").read_text())["layers"]} == {8}


def test_all_zero_calibration_leaves_every_layer_at_rtn_and_says_so(workspace, capsys):
    np.savez(workspace / "zeros.npz", x=np.zeros((3, 2, WIDTH), np.float32))
    assert run(workspace, "--calibration", workspace / "zeros.npz", "--report", workspace / "r.json",
               calibration=None) == 0
    out = capsys.readouterr().out
    report = json.loads((workspace / "r.json").read_text())
    assert [layer["note"] for layer in report["layers"]] == ["H = 0 (every calibration input of this layer was zero): "
                                                             "left at RTN"] * 2
    assert all(layer["algorithm"] == "qronos" and layer["damp"] is None for layer in report["layers"])
    assert "left at RTN" in out
    rtn = onnx.load(str(workspace / "q.onnx"))
    assert run(workspace, "--algo", "rtn", "-o", workspace / "rtn.onnx", output=None) == 0
    weights = lambda model: sorted(t.raw_data for t in model.graph.initializer)  # noqa: E731
    assert weights(rtn) == weights(onnx.load(str(workspace / "rtn.onnx")))


@pytest.mark.parametrize("samples, needles", [
    ("lengths", ["inputs 'ids' and 'mask' disagree on dimension 'seq' (5 vs 4)"]),
    ("vocabulary", ["input 'ids' indexes a table of 50 rows", "out of vocabulary"]),
])
def test_ids_and_mask_of_different_lengths_and_ids_out_of_vocabulary(tmp_path, capsys, samples, needles):
    rng = np.random.default_rng(61)
    onnx.save_model(gb.token_embedding_mlp(rng), str(tmp_path / "m.onnx"))
    feeds = gb.token_samples(rng, 3, 5)
    if samples == "lengths":
        feeds[1]["mask"] = feeds[1]["mask"][:, :4]
        np.savez(tmp_path / "cal.npz", ids=np.concatenate([f["ids"] for f in feeds]),
                 mask=np.ones((3, 4), np.float32))
    else:
        ids = np.concatenate([f["ids"] for f in feeds])
        ids[2, 1] = 50
        np.savez(tmp_path / "cal.npz", ids=ids, mask=np.ones((3, 5), np.float32))
    before = sorted(p.name for p in tmp_path.iterdir())
    assert_refused(run(tmp_path), capsys, tmp_path, *needles, before=before)


def test_overwrite_without_external_data_removes_the_replaced_files_data(workspace, capsys):
    rng = np.random.default_rng(63)
    onnx.save_model(gb.mlp(rng, [WIDTH, 64, 8]), str(workspace / "m.onnx"))  # a 16 × 64 weight: 1 kB of codes
    assert run(workspace, "--external-data", "--format", "qdq", "--bits", "8") == 0
    assert (workspace / "q.onnx.data").exists()
    assert run(workspace, "--overwrite") == 0
    assert not (workspace / "q.onnx.data").exists()
    onnx.checker.check_model(str(workspace / "q.onnx"))


def test_sigterm_becomes_an_interrupt_so_temporaries_are_removed():
    with pytest.raises(KeyboardInterrupt), cli._sigterm_as_interrupt():
        os.kill(os.getpid(), signal.SIGTERM)
        signal.sigtimedwait([], 1)  # give the handler a chance to run
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_help_states_every_default_and_the_table_keeps_full_layer_names(workspace, capsys):
    assert cli.main(["quantize", "--help"]) == 0
    text = capsys.readouterr().out
    parser = cli.build_parser()
    quantize = parser._subparsers._group_actions[0].choices["quantize"]
    for action in quantize._actions:
        if action.option_strings and action.nargs != 0 and action.dest not in ("help", "config", "report", "output",
                                                                               "calibration"):
            assert "(default:" in action.help, action.option_strings
    assert "--group-size G|none" in text
    assert cli.main(["--version"]) == 0 and "qronos_linalg" in capsys.readouterr().out
    long_names = gb.mlp(np.random.default_rng(62), [WIDTH, 8])
    long_names.graph.node[0].name = "encoder/" + "very_long_layer_name_" * 5 + "fc0"
    onnx.save_model(long_names, str(workspace / "long.onnx"))
    assert run(workspace, model="long.onnx") == 0
    assert long_names.graph.node[0].name in capsys.readouterr().out
