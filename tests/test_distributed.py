"""Data-parallel calibration: 2 gloo ranks on the tiny Llama give the single process's codes and errors."""

import multiprocessing
import sys
import time

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from qronos_linalg.adapters.torch.distributed import DataParallel, solve_cost  # noqa: E402

import _distributed_workers as workers  # noqa: E402

#: Seconds a spawned pair of ranks may take (imports, three tiny quantizations) before the test fails.
RANKS_TIMEOUT_S = 240
#: ``torchrun`` with two local ranks running this project's CLI.
TORCHRUN_TWO_RANKS = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m",
                      "qronos_linalg"]


def corpus_file(folder):
    """A small text for --text-file (60 paragraphs)."""
    text = folder / "corpus.txt"
    text.write_text("\n\n".join(f"Paragraph {i} counts {i * i} foxes over {i + 7} dogs." for i in range(60)))
    return text


def _spawn(target, tmp_path, world_size=2):
    """Run ``target(rank, world_size, store, out)`` in ``world_size`` spawned processes; their exit codes."""
    context = multiprocessing.get_context("spawn")
    processes = [context.Process(target=target, args=(rank, world_size, str(tmp_path / "store"), str(tmp_path)))
                 for rank in range(world_size)]
    for process in processes:
        process.start()
    deadline = time.monotonic() + RANKS_TIMEOUT_S
    for process in processes:
        process.join(max(deadline - time.monotonic(), 1))
    hung = [rank for rank, process in enumerate(processes) if process.is_alive()]
    for process in processes:
        process.kill() if process.is_alive() else None
    assert not hung, f"ranks {hung} still running after {RANKS_TIMEOUT_S} s"
    return [process.exitcode for process in processes]


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("ranks")
    assert _spawn(workers.quantize_in_ranks, tmp_path) == [0, 0]
    return [torch.load(tmp_path / f"rank{rank}.pt", weights_only=False) for rank in range(2)]


@pytest.mark.parametrize("algorithm", workers.ALGORITHMS)
def test_two_ranks_give_the_single_process_codes_and_errors(two_ranks, algorithm):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the ranks: float32 forwards on more threads round differently
    try:
        single = workers.quantize_once(algorithm)
    finally:
        torch.set_num_threads(threads)
    for seen in two_ranks:
        run = seen[algorithm]
        assert run["world_size"] == 2
        assert run["codes"].keys() == single["codes"].keys()
        agree = sum(int((run["codes"][name] == codes).sum()) for name, codes in single["codes"].items())
        total = sum(codes.numel() for codes in single["codes"].values())
        assert agree / total >= 0.999
        if agree == total:  # the same codes: the same weights bit for bit, owner or not
            assert all(torch.equal(run["weights"][name], weight) for name, weight in single["weights"].items())
        for ours, theirs in zip(run["layers"], single["layers"]):
            assert ours["name"] == theirs["name"] and ours["samples"] == theirs["samples"]
            for key in ("rel_error", "rel_error_rtn"):
                assert ours[key] == pytest.approx(theirs[key], rel=1e-9, abs=1e-15)
    assert [layer["owner"] for layer in two_ranks[0][algorithm]["layers"]] == \
        [layer["owner"] for layer in two_ranks[1][algorithm]["layers"]]
    assert {layer["owner"] for layer in two_ranks[0][algorithm]["layers"]} == {0, 1}
    assert two_ranks[0][algorithm]["time_split_s"]["reduce"] > 0 < two_ranks[0][algorithm]["time_split_s"]["broadcast"]
    assert "reduce" not in single["time_split_s"]


def test_ranks_with_different_settings_or_too_few_windows_are_refused(two_ranks):
    for rank, seen in enumerate(two_ranks):
        assert "disagree on their settings (bits)" in seen["mismatch"]
        assert f"rank {rank} has bits={3 + rank}" in seen["mismatch"]
        assert "2 ranks but only 1 calibration windows" in seen["too_few"]


def test_a_rank_that_dies_fails_the_others_with_an_error_not_a_hang(tmp_path):
    started = time.monotonic()
    codes = _spawn(workers.die_in_rank_one, tmp_path)
    assert codes[1] == 3
    outcome = (tmp_path / "rank0.txt").read_text()
    assert outcome.startswith("rank 0 of 2: ") and "failed: another rank stopped" in outcome
    assert time.monotonic() - started < RANKS_TIMEOUT_S


def test_owners_balance_the_solve_cost_greedily_and_the_shares_cover_the_windows():
    parallel = DataParallel(rank=1, world_size=3)
    shapes = {"a": (64, 64), "b": (64, 64), "c": (32, 64), "d": (128, 32), "e": (32, 32)}
    owners = {name: parallel.owner(name, *shape) for name, shape in shapes.items()}
    assert owners == {"a": 0, "b": 1, "c": 2, "d": 2, "e": 0}  # e: ranks 0 and 1 tie, the lower one
    assert parallel.loads == [solve_cost(64, 64) + solve_cost(32, 32), solve_cost(64, 64),
                              solve_cost(32, 64) + solve_cost(128, 32)]
    assert parallel.owner("a", 1, 1) == 0  # assigned once
    windows = torch.arange(7 * 2).reshape(7, 2)
    shares = [DataParallel(rank=r, world_size=3).share(windows) for r in range(3)]
    assert torch.equal(torch.cat(shares), windows) and [len(s) for s in shares] == [3, 2, 2]
    assert [DataParallel(rank=r, world_size=3).first_window(windows) for r in range(3)] == [0, 3, 5]
    with pytest.raises(ValueError, match="rank must be in"):
        DataParallel(rank=3, world_size=3)


def test_quantize_lm_under_torchrun_writes_once_what_one_process_writes(tmp_path):
    """``torchrun --nproc-per-node 2 -m qronos_linalg quantize-lm``: rank 0 alone prints and writes, and its
    codes and errors are the single process's; with more ranks than windows every rank exits 2 at once."""
    import json
    import subprocess

    from safetensors.torch import load_file

    from _torch_tiny import byte_tokenizer, tiny_llama
    from qronos_linalg import cli
    from qronos_linalg.adapters.torch.save import QUANTIZATION_TENSORS, REPORT_JSON

    folder = tmp_path / "llama"
    tiny_llama().save_pretrained(folder)
    byte_tokenizer().save_pretrained(folder)
    text = corpus_file(tmp_path)
    common = ["quantize-lm", str(folder), "--algo", "qronos", "--bits", "3", "--group-size", "16", "--text-file",
              str(text), "--seq-len", "32", "--threads", "1", "--format", "dense", "--quiet", "--json"]
    launch = TORCHRUN_TWO_RANKS
    ran = subprocess.run([*launch, *common, "--windows", "5", "-o", str(tmp_path / "ranks")], capture_output=True,
                         text=True, timeout=RANKS_TIMEOUT_S)
    assert ran.returncode == 0, ran.stderr[-2000:]
    summaries = [line for line in ran.stdout.splitlines() if line.startswith("{")]
    assert len(summaries) == 1 and json.loads(summaries[0])["world_size"] == 2
    assert cli.main([*common, "--windows", "5", "-o", str(tmp_path / "one")]) == 0
    ranks, one = (json.loads((tmp_path / name / REPORT_JSON).read_text())["layers"] for name in ("ranks", "one"))
    assert [layer["owner"] for layer in ranks].count(1) >= 1
    for ours, theirs in zip(ranks, one):
        assert ours["name"] == theirs["name"] and ours["samples"] == theirs["samples"]
    codes = {name: load_file(tmp_path / name / QUANTIZATION_TENSORS) for name in ("ranks", "one")}
    assert all(torch.equal(codes["ranks"][key], codes["one"][key]) for key in codes["one"] if key.endswith(".codes"))
    refused = subprocess.run([*launch, *common, "--windows", "1", "-o", str(tmp_path / "few")], capture_output=True,
                             text=True, timeout=RANKS_TIMEOUT_S)
    assert refused.returncode != 0 and "2 ranks but only 1 calibration windows" in refused.stderr
    assert not (tmp_path / "few").exists()


def test_onloaded_quantize_lm_under_torchrun_writes_the_single_process_folder(tmp_path):
    """``--onload`` under ``torchrun --nproc-per-node 2``: each rank reads one block at a time from the shards;
    rank 0 writes the same codes and weights as one onloading process."""
    import subprocess

    from _torch_tiny import byte_tokenizer, tiny_llama
    from qronos_linalg import cli
    from qronos_linalg.adapters.torch.save import load_quantization_tensors, load_quantized

    folder = tmp_path / "llama"
    tiny_llama(layers=3, tie=False).save_pretrained(folder, max_shard_size="40KB")
    byte_tokenizer().save_pretrained(folder)
    assert len(list(folder.glob("model-*.safetensors"))) > 2
    text = corpus_file(tmp_path)
    common = ["quantize-lm", str(folder), "--algo", "optq", "--bits", "3", "--group-size", "16", "--text-file",
              str(text), "--seq-len", "32", "--windows", "4", "--threads", "1", "--onload", "--quiet"]
    launch = TORCHRUN_TWO_RANKS
    ran = subprocess.run([*launch, *common, "-o", str(tmp_path / "ranks")], capture_output=True, text=True,
                         timeout=RANKS_TIMEOUT_S)
    assert ran.returncode == 0, ran.stderr[-8000:]
    assert cli.main([*common, "-o", str(tmp_path / "one")]) == 0
    codes = [load_quantization_tensors(tmp_path / name) for name in ("ranks", "one")]
    assert codes[0].keys() == codes[1].keys()
    assert all(torch.equal(codes[0][key], codes[1][key]) for key in codes[1] if key.endswith(".codes"))
    weights = [load_quantized(tmp_path / name)[0].state_dict() for name in ("ranks", "one")]
    assert all(torch.equal(weights[0][key], weights[1][key]) for key in weights[1])
    assert sorted(p.name for p in (tmp_path / "ranks").iterdir()) == sorted(p.name for p in (tmp_path / "one").iterdir())
