"""Functions that spawned ranks run in tests/test_distributed.py (module level, so that ``spawn`` finds them)."""

import os
from pathlib import Path

import torch

from _torch_tiny import recipe, tiny_llama, token_batch

#: The tiny run every rank and the single process quantize: 5 windows (shares of 3 and 2 on 2 ranks).
WINDOWS, SEQ_LEN = 5, 12
ALGORITHMS = ("optq", "qronos", "yaqa")


def run_options(algorithm: str) -> dict:
    return {"algo": algorithm, "bits": 3, "group_size": 16}


def quantize_once(algorithm: str, parallel=None) -> dict:
    """Codes and layer reports of the tiny Llama quantized with ``algorithm`` (data-parallel with ``parallel``)."""
    from qronos_linalg.adapters.torch.lm import quantize_causal_lm

    report = quantize_causal_lm(tiny_llama(), token_batch(WINDOWS, SEQ_LEN), recipe(**run_options(algorithm)),
                                progress=False, parallel=parallel)
    return {"codes": {name: torch.as_tensor(result.codes) for name, result in report["results"].items()},
            "weights": {name: torch.as_tensor(result.weight) for name, result in report["results"].items()},
            "layers": report["layers"], "world_size": report["world_size"], "time_split_s": report["time_split_s"]}


def _join(rank: int, world_size: int, store: str, timeout_s: float):
    from qronos_linalg.adapters.torch.distributed import DataParallel

    torch.set_num_threads(1)
    return DataParallel.initialize(backend="gloo", init_method=f"file://{store}", rank=rank, world_size=world_size,
                                   timeout_s=timeout_s)


def quantize_in_ranks(rank: int, world_size: int, store: str, out: str) -> None:
    """Every algorithm data-parallel, then a settings check that differs between ranks; saves what it saw."""
    parallel = _join(rank, world_size, store, 120)
    seen = {algorithm: quantize_once(algorithm, parallel) for algorithm in ALGORITHMS}
    try:
        parallel.check_same({"bits": 3 + rank, "model": "tiny"})
        seen["mismatch"] = None
    except ValueError as error:
        seen["mismatch"] = str(error)
    try:
        parallel.share(token_batch(1, SEQ_LEN))
        seen["too_few"] = None
    except ValueError as error:
        seen["too_few"] = str(error)
    seen["owners"] = dict(parallel.owners)
    torch.save(seen, Path(out) / f"rank{rank}.pt")
    parallel.close()


def die_in_rank_one(rank: int, world_size: int, store: str, out: str) -> None:
    """Rank 1 dies right after joining; rank 0 records how its quantization ended."""
    from qronos_linalg.adapters.torch.distributed import DistributedError

    parallel = _join(rank, world_size, store, 30)
    if rank == 1:
        os._exit(3)
    try:
        quantize_once("optq", parallel)
        outcome = "finished"
    except DistributedError as error:
        outcome = str(error)
    (Path(out) / "rank0.txt").write_text(outcome)
