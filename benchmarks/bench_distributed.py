"""Data-parallel calibration: wall time of ``qronos quantize-lm`` on 1 rank vs N ranks, with the time split.

Each run is ``torchrun --standalone --nproc-per-node N -m qronos_linalg quantize-lm MODEL ...`` (1 thread
per rank, dense output into a scratch folder, rank 0's report); the table gives the wall time of the
whole command, rank 0's split (forwards, statistics, reduce, solve, broadcast), the speed-up over one
rank, the layers each rank owned, and the bytes the statistics reductions moved per block (float64
``in × in`` matrices per shared statistics object). Rows go to ``docs/results_distributed.json`` as they
finish (a rerun skips them) and the page ``docs/results_distributed.md`` is rebuilt after each.

    python benchmarks/bench_distributed.py                                   # SmolLM2, Qronos, 64 windows, 1 and 2 ranks
    python benchmarks/bench_distributed.py --algorithms optq --windows 16    # a quick look
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from qronos_linalg.io import write_text_atomic

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "results_distributed.json"
PHASES = ("float_forward", "quantized_forward", "statistics", "reduce", "solve", "broadcast")
#: Bytes of one float64 running sum per input feature squared.
FLOAT64_BYTES = 8


def run(model: str, algorithm: str, windows: int, seq_len: int, ranks: int) -> dict:
    """One quantize-lm launch; returns its row."""
    with tempfile.TemporaryDirectory() as scratch:
        out, report = Path(scratch) / "out", Path(scratch) / "report.json"
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(ranks),
                   "-m", "qronos_linalg", "quantize-lm", model, "--algo", algorithm, "--windows", str(windows),
                   "--seq-len", str(seq_len), "--threads", "1", "--format", "dense", "--quiet", "--json", "-o", str(out)]
        if algorithm != "optq":  # OPTQ's row without errors (its default); the others need G and H_float anyway
            command += ["--report", str(report)]
        environment = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1"}
        start = time.perf_counter()
        finished = subprocess.run(command, capture_output=True, text=True, env=environment)
        wall = time.perf_counter() - start
        if finished.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed:\n{finished.stderr[-3000:]}")
        stored = json.loads((out / "quantization_report.json").read_text())
    layers = stored["layers"]
    statistics = len(stored.get("statistics") or ["H"])
    shared = {}
    for layer in layers:  # layers of a block sharing one LayerStats have the same samples and input width
        block = layer["name"].rsplit(".", 2)[0]
        shared.setdefault((block, layer["shape"][1], layer["samples"]), layer["shape"][1])
    blocks = len({key[0] for key in shared})
    reduced = sum(width**2 * FLOAT64_BYTES * statistics for width in shared.values()) / max(blocks, 1)
    return {"model": model, "algorithm": algorithm, "windows": windows, "seq_len": seq_len, "ranks": ranks,
            "wall_s": wall,
            "quantization_s": stored.get("quantization_time_s"), "split_s": stored.get("time_split_s", {}),
            "owned_layers": dict(Counter(str(layer.get("owner", 0)) for layer in layers)),
            "reduced_mib_per_block": reduced / 2**20 if ranks > 1 else 0.0,
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs"}


def page(rows: list[dict]) -> str:
    lines = ["# Data-parallel calibration (torch.distributed, gloo)", "",
             "`python benchmarks/bench_distributed.py` — `torchrun --standalone --nproc-per-node N -m qronos_linalg "
             "quantize-lm`, 1 thread per rank, on this machine; rank 0's split. See [scaling](scale.md).", "",
             "| model | algorithm | windows | ranks | wall s | speed-up | " + " | ".join(PHASES) +
             " | layers per rank | reduced MiB / block |",
             "|---|---|---:|---:|---:|---:|" + "---:|" * len(PHASES) + "---|---:|"]
    for row in rows:
        single = next((other for other in rows if other["ranks"] == 1 and other["algorithm"] == row["algorithm"]
                       and other["windows"] == row["windows"] and other["model"] == row["model"]), None)
        speedup = f"{single['wall_s'] / row['wall_s']:.2f}" if single else "–"
        split = " | ".join(f"{row['split_s'].get(phase, 0.0):.1f}" for phase in PHASES)
        owned = ", ".join(f"{rank}: {count}" for rank, count in sorted(row["owned_layers"].items()))
        lines.append(f"| {row['model']} | {row['algorithm']} | {row['windows']} | {row['ranks']} | {row['wall_s']:.1f} | "
                     f"{speedup} | {split} | {owned} | {row['reduced_mib_per_block']:.1f} |")
    machines = sorted({row["machine"] for row in rows})
    lines += ["", f"Machine: {'; '.join(machines)}."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--algorithms", default="qronos", help="comma-separated (default: qronos)")
    parser.add_argument("--windows", type=int, default=64)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--results", type=Path, default=RESULTS, help="rows (JSON); the page is beside it (.md)")
    parser.add_argument("--ranks", default="1,2", help="comma-separated world sizes (default: 1,2)")
    parser.add_argument("--rerun", action="store_true", help="run stored rows again")
    args = parser.parse_args(argv)
    results, page_path = args.results, args.results.with_suffix(".md")
    rows = json.loads(results.read_text())["rows"] if results.exists() else []
    for algorithm in args.algorithms.split(","):
        for ranks in (int(text) for text in args.ranks.split(",")):
            key = (args.model, algorithm, args.windows, ranks)
            if not args.rerun and any((r["model"], r["algorithm"], r["windows"], r["ranks"]) == key for r in rows):
                continue
            print(f"running {key} ...", flush=True)
            row = run(args.model, algorithm, args.windows, args.seq_len, ranks)
            rows = [r for r in rows if (r["model"], r["algorithm"], r["windows"], r["ranks"]) != key] + [row]
            write_text_atomic(results, json.dumps({"rows": rows}, indent=1) + "\n", overwrite=True)
            write_text_atomic(page_path, page(rows), overwrite=True)
            print(json.dumps(row), flush=True)
    print(page(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
