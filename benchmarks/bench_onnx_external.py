"""Peak memory of the ONNX adapter on SmolLM2-135M-Instruct: the model read from a file with external data
(tensor by tensor, as `qronos quantize` does) against the same model loaded into memory first.

The SmolLM2 export (``torch.onnx.export(..., dynamo=True)``, input_ids (1, seq_len) → logits) is saved once
with all tensors in ``<name>.data`` beside it (in ``--cache``, never in the repository). Each row runs in
its own subprocess, so its peak RSS (``ru_maxrss``) is its own:

- ``in memory``: ``onnx.load(path)`` (reads every tensor), then ``quantize_onnx(model, ...)``;
- ``from file``: ``quantize_onnx(path, ...)``, which keeps the references and reads each stage's tensors
  when the stage runs, and the float tensors that stay when the output is assembled.

Both rows quantize every MatMul with the same recipe and calibration and must give the same output
(a SHA-256 over the output's initializers, checked). Writes docs/results_onnx_external.md (temp + rename).

    python benchmarks/bench_onnx_external.py            # OPTQ, W4 g128, MatMulNBits, 8 windows × 128 tokens
"""

from __future__ import annotations

import os

for _variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ.setdefault(_variable, "1")

import argparse  # noqa: E402
import hashlib  # noqa: E402
import json  # noqa: E402
import pathlib  # noqa: E402
import platform  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import onnx  # noqa: E402

from qronos_linalg.io import write_text_atomic  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "results_onnx_external.md"
MODES = ("in memory", "from file")
MIB = 2**20


def cache_folder(given: str | None) -> pathlib.Path:
    root = pathlib.Path(os.environ.get("QRONOS_CACHE", pathlib.Path.home() / ".cache" / "qronos_linalg"))
    folder = pathlib.Path(given) if given else root / "onnx-external"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def prepare(cache: pathlib.Path, seq_len: int, windows: int) -> tuple:
    """(model path with external data, calibration .npy path), made once."""
    from qronos_linalg.adapters.torch.data import load_model, text_windows
    from qronos_linalg.adapters.torch.onnx_export import export_causal_lm_onnx

    path = cache / f"smollm2.seq{seq_len}.external.onnx"
    calibration = cache / f"calibration.seq{seq_len}.w{windows}.npy"
    if not path.exists() or not calibration.exists():
        model, tokenizer, _ = load_model("smollm2")
        if not path.exists():
            single = cache / f"smollm2.seq{seq_len}.onnx"
            if not single.exists():
                export_causal_lm_onnx(model, single, seq_len=seq_len)
            proto = onnx.load(str(single))
            scratch = path.with_name(path.name + ".partial")
            onnx.save_model(proto, str(scratch), save_as_external_data=True, all_tensors_to_one_file=True,
                            location=path.name + ".data", size_threshold=0)
            os.replace(scratch, path)
            single.unlink()
        np.save(calibration, text_windows(tokenizer, "calibration", seq_len, windows).numpy())
    return path, calibration


def peak_rss_mib() -> float:
    """This process's peak resident set (VmHWM). Not ``ru_maxrss``: Linux carries that across exec, so a child
    started by a large parent would report the parent's size."""
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024


def run_mode(mode: str, path: pathlib.Path, calibration: pathlib.Path, algo: str) -> dict:
    """One row in this process."""
    from qronos_linalg.adapters.onnx import quantize_onnx
    from qronos_linalg.adapters.onnx.export import model_bytes

    windows = np.load(calibration)
    feeds = [{"input_ids": windows[k : k + 1].astype(np.int64)} for k in range(windows.shape[0])]
    start = time.perf_counter()
    source = onnx.load(str(path)) if mode == "in memory" else path
    rss_loaded = peak_rss_mib()
    config = {"algo": algo, "bits": 4, "group_size": 128, "format": "matmulnbits"}
    model, report = quantize_onnx(source, feeds, config, threads=1, progress=False)
    seconds = time.perf_counter() - start
    digest = hashlib.sha256()
    for tensor in sorted(model.graph.initializer, key=lambda t: t.name):
        digest.update(tensor.name.encode() + tensor.SerializeToString())
    return {"mode": mode, "seconds": seconds, "peak_rss_mib": peak_rss_mib(),
            "rss_after_load_mib": rss_loaded, "layers": len(report["layers"]),
            "model_mib": model_bytes(onnx.load(str(path), load_external_data=False)) / MIB,
            "output_mib": model.ByteSize() / MIB, "output_sha256": digest.hexdigest()}


def page(rows: list, args) -> str:
    lines = [
        "# ONNX adapter: peak memory with external data (SmolLM2-135M-Instruct)",
        "",
        "Generated by `benchmarks/bench_onnx_external.py`; do not edit by hand.",
        "",
        f"SmolLM2-135M-Instruct exported to ONNX (dynamo exporter, input_ids (1, {args.seq_len}) → logits), every "
        f"tensor in external data ({rows[0]['model_mib']:.0f} MiB of tensors). `quantize_onnx` with "
        f"{args.algo.upper()}, 4-bit asymmetric, groups of 128, MatMulNBits output, all {rows[0]['layers']} "
        f"MatMul layers, {args.windows} calibration windows × {args.seq_len} tokens; onnxruntime and BLAS on 1 "
        f"thread, {os.cpu_count()} CPU cores ({platform.machine()}) shared with other jobs. Each row in its own "
        "process; peak RSS = that process's VmHWM (the input and output models and the imports included).",
        "",
        "| mode | peak RSS (MiB) | peak RSS once the input is read (MiB) | output (MiB) | time (s) |",
        "|---|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(f"| {row['mode']} | {row['peak_rss_mib']:.0f} | {row['rss_after_load_mib']:.0f} | "
                     f"{row['output_mib']:.0f} | {row['seconds']:.0f} |")
    same = len({row["output_sha256"] for row in rows}) == 1
    lines += ["", f"Outputs identical (SHA-256 of the initializers): {'yes' if same else 'NO'}. Peak ratio "
              f"from file / in memory: {rows[1]['peak_rss_mib'] / rows[0]['peak_rss_mib']:.2f}."]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--algo", default="optq")
    parser.add_argument("--windows", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--cache")
    parser.add_argument("--one", nargs=3, metavar=("MODE", "MODEL", "CALIBRATION"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_mode(args.one[0], pathlib.Path(args.one[1]), pathlib.Path(args.one[2]), args.algo)))
        return 0
    path, calibration = prepare(cache_folder(args.cache), args.seq_len, args.windows)
    rows = []
    for mode in MODES:
        child = subprocess.run([sys.executable, __file__, "--algo", args.algo, "--one", mode, str(path),
                                str(calibration)], capture_output=True, text=True, check=False)
        if child.returncode != 0:
            sys.stderr.write(child.stderr)
            return child.returncode
        rows.append(json.loads(child.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), flush=True)
    if len({row["output_sha256"] for row in rows}) != 1:
        print("outputs differ between the modes", file=sys.stderr)
    write_text_atomic(RESULTS, page(rows, args), overwrite=True)
    print(RESULTS.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
