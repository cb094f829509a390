"""Solver speed and memory, as multiples of a GEMM floor measured in the same run.

For each layer size (in = out and out = 4·in; ``--out-multiples``) and backend, times every solver on fixed
statistics and divides by the time of one (out × in)·(in × in) product in the same dtype ("GEMM floor"); YAQA
also gets a synthetic output-side factor H_out (out × out, the second moment of correlated random
"gradients"). Reports peak traced memory (NumPy: tracemalloc; torch CUDA: max_memory_allocated) as a multiple of
(in² + out·in)·itemsize. Then the speedup of each efficient solver over its direct form from data.

    python benchmarks/bench_solvers.py                       # the full table (several minutes)
    python benchmarks/bench_solvers.py --sizes 512 1024 --direct-sizes 64 128 --output docs/results_solvers.md
    python benchmarks/bench_solvers.py --sizes 1024 2048 4096 --out-multiples 1 --solvers optq yaqa --direct-sizes
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
import tracemalloc

import numpy as np

from qronos_linalg import LayerStats, UniformGrid, gpfq, gptaq, optq, qronos, rtn
from qronos_linalg.io import write_text_atomic
from qronos_linalg.naive import gpfq_naive, optq_naive, qronos_naive
from qronos_linalg.yaqa import yaqa

BITS = 4
GROUP_SIZE = 128
#: Calibration samples per input feature used to build the statistics.
SAMPLES_PER_FEATURE = 2
SOLVERS = {
    "rtn": lambda W, H, G, H_out, grid: rtn(W, grid),
    "optq": lambda W, H, G, H_out, grid: optq(W, H, grid),
    "gpfq": lambda W, H, G, H_out, grid: gpfq(W, H, G, grid),
    "gptaq": lambda W, H, G, H_out, grid: gptaq(W, H, G, grid),
    "qronos": lambda W, H, G, H_out, grid: qronos(W, H, G, grid),
    "yaqa": lambda W, H, G, H_out, grid: yaqa(W, H, H_out, grid),
}
#: Solvers whose time is also reported over OPTQ's.
OVER_OPTQ = ("qronos", "yaqa")


def layer_statistics(in_features, out_features, seed=0, dtype=np.float32):
    """Random layer with correlated inputs and perturbed quantized-model inputs: (W, H, G, X, X̃)."""
    rng = np.random.default_rng(seed)
    samples = SAMPLES_PER_FEATURE * in_features
    X = rng.standard_normal((samples, in_features)).astype(dtype)
    X += 0.5 * np.roll(X, 1, axis=1)
    X_tilde = X + 0.05 * rng.standard_normal(X.shape).astype(dtype)
    stats = LayerStats(in_features, dtype="float32" if dtype == np.float32 else "float64")
    stats.update(X, X_tilde)
    W = rng.standard_normal((out_features, in_features)).astype(dtype)
    return W, stats.H, stats.G, X, X_tilde


def output_statistics(out_features, seed=1, dtype=np.float32):
    """Synthetic output-side factor for YAQA: ``H_out = GᵀG`` of correlated random "gradients" G
    (2·out samples × out)."""
    rng = np.random.default_rng(seed)
    grads = rng.standard_normal((SAMPLES_PER_FEATURE * out_features, out_features)).astype(dtype)
    grads += 0.5 * np.roll(grads, 1, axis=1)
    return grads.T @ grads


def best_time(fn, repeats):
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def to_backend(arrays, backend):
    if backend == "numpy":
        return arrays
    import torch

    device = "cuda" if backend == "torch-cuda" else "cpu"
    return [torch.from_numpy(np.ascontiguousarray(a)).to(device) for a in arrays]


def synchronize(backend):
    if backend == "torch-cuda":
        import torch

        torch.cuda.synchronize()


def measure(backend, name, W, H, G, H_out, grid, repeats):
    """(seconds, peak bytes or None) of one solver call."""
    solve = SOLVERS[name]

    def run():
        solve(W, H, G, H_out, grid)
        synchronize(backend)

    run()  # warm-up: Numba compilation / caches, CUDA context
    seconds = best_time(run, repeats)
    peak = None
    if backend == "numpy":
        tracemalloc.start()
        run()
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    elif backend == "torch-cuda":
        import torch

        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        run()
        peak = torch.cuda.max_memory_allocated() - base
    return seconds, peak


def speed_table(sizes, out_multiples, backends, solvers, repeats, out):
    out("| backend | in | out | GEMM floor [s] | " + " | ".join(f"{s} ×floor" for s in solvers)
        + " | " + " | ".join(f"{s} / optq" for s in OVER_OPTQ) + " | "
        + " | ".join(f"{s} mem ×(in²+out·in)" for s in solvers) + " |")
    out("|" + "---|" * (4 + 2 * len(solvers) + len(OVER_OPTQ)))
    for in_features in sizes:
        for out_features in (multiple * in_features for multiple in out_multiples):
            W, H, G, _, _ = layer_statistics(in_features, out_features)
            H_out = output_statistics(out_features)
            for backend in backends:
                Wb, Hb, Gb, H_outb = to_backend([W, H, G, H_out], backend)
                grid = UniformGrid.fit(Wb, BITS, group_size=GROUP_SIZE)
                floor = best_time(lambda: (Wb @ Hb, synchronize(backend)), max(repeats, 3))
                times, mems = {}, {}
                for name in solvers:
                    times[name], peak = measure(backend, name, Wb, Hb, Gb, H_outb, grid, repeats)
                    base = (in_features**2 + out_features * in_features) * W.itemsize
                    mems[name] = "—" if peak is None else f"{peak / base:.2f}"
                ratios = [times[s] / times["optq"] if {s, "optq"} <= set(times) else float("nan") for s in OVER_OPTQ]
                out(f"| {backend} | {in_features} | {out_features} | {floor:.3f} | "
                    + " | ".join(f"{times[s] / floor:.2f}" for s in solvers)
                    + " | " + " | ".join(f"{ratio:.2f}" for ratio in ratios) + " | "
                    + " | ".join(mems[s] for s in solvers) + " |")


def direct_table(sizes, out):
    out("| in = out | samples | optq direct/efficient | gpfq direct/efficient | qronos direct/efficient |")
    out("|---|---|---|---|---|")
    for n in sizes:
        W, H, G, X, X_tilde = layer_statistics(n, n, dtype=np.float64)
        grid = UniformGrid.fit(W, BITS, group_size=min(GROUP_SIZE, n))
        pairs = {
            "optq": (lambda: optq(W, X.T @ X, grid, damp=0), lambda: optq_naive(W, X, grid)),
            "gpfq": (lambda: gpfq(W, H, G, grid), lambda: gpfq_naive(W, X, X_tilde, grid)),
            "qronos": (lambda: qronos(W, H, G, grid, damp=0), lambda: qronos_naive(W, X, X_tilde, grid)),
        }
        cells = []
        for efficient, direct in pairs.values():
            efficient()
            cells.append(f"{best_time(direct, 1) / best_time(efficient, 3):.0f}×")
        out(f"| {n} | {X.shape[0]} | " + " | ".join(cells) + " |")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 1024, 2048, 4096])
    parser.add_argument("--out-multiples", type=int, nargs="+", default=[1, 4], help="out_features = k · in_features")
    parser.add_argument("--direct-sizes", type=int, nargs="*", default=[64, 128, 256, 512])
    parser.add_argument("--backends", nargs="+", default=None, help="numpy, torch-cpu, torch-cuda")
    parser.add_argument("--solvers", nargs="+", default=list(SOLVERS), choices=list(SOLVERS))
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--output", help="also write the tables to this Markdown file")
    args = parser.parse_args(argv)
    backends = args.backends
    if backends is None:
        backends = ["numpy"]
        try:
            import torch

            backends.append("torch-cpu")
            if torch.cuda.is_available():
                backends.append("torch-cuda")
        except ImportError:
            pass
    lines = []

    def out(line=""):
        print(line, flush=True)
        lines.append(line)

    out(f"# Solver benchmark\n\nfloat32, {BITS}-bit asymmetric, groups of {GROUP_SIZE}, "
        f"{SAMPLES_PER_FEATURE}·in calibration samples; {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs. Command: `python benchmarks/{os.path.basename(__file__)} "
        + " ".join(sys.argv[1:] if argv is None else argv) + "`\n")
    import numba

    threads = f"numba {numba.get_num_threads()} threads, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}"
    try:
        import torch

        threads += f", torch {torch.get_num_threads()} threads"
    except ImportError:
        pass
    out(f"Threads: {threads}. For one-thread figures on a shared machine, run with "
        "`OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 NUMBA_NUM_THREADS=1`.\n")
    out("Times are best-of-repeats multiples of one (out × in)·(in × in) product in the same run and backend;"
        " memory is peak traced allocation over (in² + out·in)·4 bytes.\n")
    speed_table(args.sizes, args.out_multiples, backends, args.solvers, args.repeats, out)
    if args.direct_sizes:
        out("\n## Direct (from data) vs efficient (from statistics), float64, NumPy\n")
        direct_table(args.direct_sizes, out)
    if args.output:
        write_text_atomic(args.output, "\n".join(lines) + "\n", overwrite=True)


if __name__ == "__main__":
    main()
