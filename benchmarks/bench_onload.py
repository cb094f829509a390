"""Peak memory of ``qronos quantize-lm`` with the whole model resident vs ``--onload`` (one block at a time).

Each row runs ``qronos quantize-lm MODEL --algo ALGO --windows N --format dense [--onload]`` in its own
process (its peak RSS is its own, as the command reports it) and checks that both folders hold the same
codes. The page ``docs/results_onload.md`` is rewritten at the end.

    python benchmarks/bench_onload.py                          # smollm2 and gemma3-270m, OPTQ, 8 windows
    python benchmarks/bench_onload.py --models smollm2 --windows 4
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "results_onload.md"


def quantize(model: str, algorithm: str, windows: int, out: Path, onload: bool) -> dict:
    command = [sys.executable, "-m", "qronos_linalg", "quantize-lm", model, "--algo", algorithm, "--windows",
               str(windows), "--threads", "1", "--format", "dense", "--quiet", "--json", "-o", str(out)]
    if onload:
        command.append("--onload")
    finished = subprocess.run(command, capture_output=True, text=True,
                              env={**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"})
    if finished.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{finished.stderr[-3000:]}")
    return json.loads(finished.stdout.strip().splitlines()[-1])


def same_codes(first: Path, second: Path) -> bool:
    import torch

    from qronos_linalg.adapters.torch.save import load_quantization_tensors

    a, b = load_quantization_tensors(first), load_quantization_tensors(second)
    return a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="smollm2,gemma3-270m")
    parser.add_argument("--algorithm", default="optq")
    parser.add_argument("--windows", type=int, default=8)
    args = parser.parse_args(argv)
    lines = ["# Layer-wise onloading: peak memory", "",
             f"`python benchmarks/bench_onload.py` — `qronos quantize-lm MODEL --algo {args.algorithm} --windows "
             f"{args.windows} --format dense [--onload]`, 1 thread, peak RSS of each process as the command reports "
             f"it; {platform.machine()}, {os.cpu_count()} CPUs.", "",
             "| model | fully loaded MiB | --onload MiB | saved MiB | onload / loaded | same codes | time loaded s | "
             "time onload s |", "|---|---:|---:|---:|---:|---|---:|---:|"]
    for model in args.models.split(","):
        with tempfile.TemporaryDirectory() as scratch:
            loaded = quantize(model, args.algorithm, args.windows, Path(scratch) / "loaded", False)
            onloaded = quantize(model, args.algorithm, args.windows, Path(scratch) / "onloaded", True)
            same = same_codes(Path(scratch) / "loaded", Path(scratch) / "onloaded")
        full, low = loaded["peak_memory_mib"], onloaded["peak_memory_mib"]
        row = (f"| {model} | {full:.0f} | {low:.0f} | {full - low:.0f} | {low / full:.2f} | {'yes' if same else 'NO'} | "
               f"{loaded['quantization_time_s']:.1f} | {onloaded['quantization_time_s']:.1f} |")
        print(row, flush=True)
        lines.append(row)
    lines += ["", "Fully loaded, the process holds the float32 model, and every layer's result (codes, grid and its "
              "float64 weight) until the folder is written; onloaded, one block, its float copy and the tensors "
              "outside the blocks (embeddings), each block written as soon as it is quantized."]
    from qronos_linalg.io import write_text_atomic

    write_text_atomic(PAGE, "\n".join(lines) + "\n", overwrite=True)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
