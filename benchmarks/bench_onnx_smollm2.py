"""ONNX adapter benchmark on SmolLM2-135M-Instruct exported with ``torch.onnx.export(..., dynamo=True)``.

Rows: the float export; ``qronos_linalg`` (``quantize_onnx``) per algorithm at W4 asymmetric, groups of
128 along K, MatMulNBits output, every layer including the tied lm_head; the same with the lm_head left
float (``exclude``), as onnxruntime leaves it; onnxruntime's ``MatMulNBitsQuantizer`` with its default RTN
and with its bundled GPTQ (``GPTQWeightOnlyQuantConfig``) at the same bits, block and calibration; and
symmetric rows (onnxruntime's GPTQ cannot write asymmetric 576-wide layers at block 128). Columns:
perplexity computed from the ONNX logits with onnxruntime on held-out Wikipedia windows, quantization
wall time, file size, inference time over the evaluation windows. Then the growth of the Qronos time
with depth (the first k of the L quantized layers, k = L/4, L/2, L, selected with ``include``).

W4 g128 rather than g32: the packaged model was distributed as GGUF Q4_1 (4-bit asymmetric, blocks of
32), so re-quantizing at W4 asymmetric g32 is lossless and would compare nothing.

The export, the token windows and each finished row are cached in ``--cache`` (default
``$QRONOS_CACHE/onnx-smollm2`` or ``~/.cache/qronos_linalg/onnx-smollm2``), never in the repository; a
rerun reuses finished rows unless ``--fresh``. Writes docs/results_onnx_smollm2.md (temp + rename).

    OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 NUMBA_NUM_THREADS=1 python benchmarks/bench_onnx_smollm2.py

About 75 minutes on 2 shared cores (onnxruntime's GPTQ alone takes 27 of them; ``--no-ort-gptq`` skips it).
Everything runs on ``--threads`` threads (default 1): BLAS/numba through the environment variables (set to
1 here if unset), torch through ``torch.set_num_threads``, the adapter's stage sessions through
``quantize_onnx(..., threads=)``, this script's evaluation sessions through the adapter's
``session_options``. onnxruntime's own quantizer takes no thread count: only while it runs, its
``SessionOptions`` default is set to the same count (:func:`onnxruntime_threads`).
"""

from __future__ import annotations

import os

for _variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ.setdefault(_variable, "1")

import argparse  # noqa: E402
import contextlib  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import math  # noqa: E402
import pathlib  # noqa: E402
import platform  # noqa: E402
import re  # noqa: E402
import shlex  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402

from qronos_linalg.adapters.onnx.staging import session_options  # noqa: E402
from qronos_linalg.adapters.torch.onnx_export import INPUT_NAME as INPUT  # noqa: E402
from qronos_linalg.adapters.torch.onnx_export import OUTPUT_NAME as OUTPUT  # noqa: E402
from qronos_linalg.adapters.torch.onnx_export import export_causal_lm_onnx  # noqa: E402
from qronos_linalg.io import atomic_output, write_text_atomic  # noqa: E402
from qronos_linalg.adapters.onnx.config import ALGORITHMS  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "results_onnx_smollm2.md"
BITS, GROUP = 4, 128
DEFAULT_ALGORITHMS = ALGORITHMS
DEPTH_ALGORITHM = "qronos"
INFERENCE_REPEATS = 2
THREADS = 1  # set from --threads in main()


def limit_threads(threads: int) -> None:
    """``threads`` for torch, the adapter's stage sessions and this script's sessions."""
    import torch

    global THREADS
    THREADS = threads
    torch.set_num_threads(threads)


@contextlib.contextmanager
def onnxruntime_threads(threads: int):
    """While onnxruntime's MatMulNBitsQuantizer runs (it takes no thread count), sessions it opens with
    ``ort.SessionOptions()`` default to ``threads`` intra- and inter-op threads."""
    original = ort.SessionOptions

    class Limited(original):
        def __init__(self):
            super().__init__()
            self.intra_op_num_threads = threads
            self.inter_op_num_threads = threads

    ort.SessionOptions = Limited
    try:
        yield
    finally:
        ort.SessionOptions = original


def session(source) -> ort.InferenceSession:
    return ort.InferenceSession(str(source), session_options(THREADS), providers=["CPUExecutionProvider"])


# ----------------------------------------------------------------------------------------------- data


def cache_folder(given: str | None) -> pathlib.Path:
    if given:
        folder = pathlib.Path(given)
    else:
        root = pathlib.Path(os.environ.get("QRONOS_CACHE", pathlib.Path.home() / ".cache" / "qronos_linalg"))
        folder = root / "onnx-smollm2"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def export_onnx(cache: pathlib.Path, seq_len: int) -> pathlib.Path:
    """The SmolLM2 export (input_ids (1, seq_len) int64 → logits), created once with the dynamo exporter."""
    path = cache / f"smollm2-135m-instruct.seq{seq_len}.onnx"
    if path.exists():
        return path
    from qronos_linalg.adapters.torch.data import load_model

    model, _, _ = load_model("smollm2")
    return export_causal_lm_onnx(model, path, seq_len=seq_len)


def token_windows(cache: pathlib.Path, seq_len: int, calib: int, evaluation: int) -> tuple:
    """(calibration, evaluation) int64 arrays (windows × seq_len) from the adapter's Wikipedia split."""
    path = cache / f"windows.seq{seq_len}.c{calib}.e{evaluation}.npz"
    if not path.exists():
        from qronos_linalg.adapters.torch.data import load_model, text_windows

        _, tokenizer, _ = load_model("smollm2")
        arrays = {
            "calibration": text_windows(tokenizer, "calibration", seq_len, calib).numpy(),
            "evaluation": text_windows(tokenizer, "evaluation", seq_len, evaluation).numpy(),
        }
        with atomic_output(path, overwrite=True) as temporary, open(temporary, "wb") as stream:
            np.savez(stream, **arrays)
    with np.load(path) as archive:
        return archive["calibration"], archive["evaluation"]


def feeds(windows: np.ndarray) -> list:
    return [{INPUT: windows[k : k + 1].astype(np.int64)} for k in range(windows.shape[0])]


# ----------------------------------------------------------------------------------------- evaluation


def evaluate(path: pathlib.Path, windows: np.ndarray) -> dict:
    """Perplexity from the ONNX logits (each window predicts its seq_len − 1 next tokens), timed."""
    runner = session(path)
    runner.run([OUTPUT], {INPUT: windows[:1]})  # warm-up (first-run allocations)
    nll, tokens, seconds = 0.0, 0, 0.0
    for k in range(windows.shape[0]):
        window = windows[k : k + 1]
        start = time.perf_counter()
        logits = runner.run([OUTPUT], {INPUT: window})[0]
        seconds += time.perf_counter() - start
        z = logits[0, :-1].astype(np.float64)
        peak = z.max(axis=-1, keepdims=True)
        log_norm = peak[:, 0] + np.log(np.exp(z - peak).sum(axis=-1))
        targets = window[0, 1:]
        nll += float((log_norm - z[np.arange(len(targets)), targets]).sum())
        tokens += len(targets)
    return {"perplexity": math.exp(nll / tokens), "infer_s": seconds, "size_mb": path.stat().st_size / 1e6}


def inference_times(paths: dict, windows: np.ndarray, repeats: int) -> dict:
    """Per model, the best over ``repeats`` rounds of the time to run every window once (batch 1).

    Within a round the models take turns, so a burst of load on the shared machine hits all of them;
    session creation and one warm-up window are not timed.
    """
    best = {name: float("inf") for name in paths}
    for _ in range(repeats):
        for name, path in paths.items():
            runner = session(path)
            runner.run([OUTPUT], {INPUT: windows[:1]})
            start = time.perf_counter()
            for k in range(windows.shape[0]):
                runner.run([OUTPUT], {INPUT: windows[k : k + 1]})
            best[name] = min(best[name], time.perf_counter() - start)
            del runner
    return best


def torch_perplexity(windows: np.ndarray) -> float:
    """The same windows through the PyTorch model (checks the export)."""
    import torch

    from qronos_linalg.adapters.torch import perplexity
    from qronos_linalg.adapters.torch.data import load_model

    model, _, _ = load_model("smollm2")
    return perplexity(model, torch.from_numpy(windows), progress=False)


# --------------------------------------------------------------------------------------- quantizers


def graph_summary(path: pathlib.Path) -> dict:
    model = onnx.load(str(path), load_external_data=False)
    ops = {}
    for node in model.graph.node:
        ops[node.op_type] = ops.get(node.op_type, 0) + 1
    return {"MatMulNBits": ops.get("MatMulNBits", 0), "MatMul": ops.get("MatMul", 0)}


def float_model_facts(path: pathlib.Path) -> dict:
    """Opset, MatMuls with an initializer weight, their distinct inputs, the Gather table's size."""
    model = onnx.load(str(path))
    initializers = {t.name: t for t in model.graph.initializer}
    matmuls = [n for n in model.graph.node if n.op_type == "MatMul"]
    with_initializer = [n for n in matmuls if n.input[1] in initializers]
    gather = next(n for n in model.graph.node if n.op_type == "Gather" and n.input[0] in initializers)
    transposed = {n.output[0]: n.input[0] for n in model.graph.node if n.op_type == "Transpose" and n.input[0] in initializers}
    head = next(n for n in matmuls if n.input[1] in transposed)
    return {
        "lm_head_node": head.name,
        "lm_head_weight": transposed[head.input[1]],
        "opset": next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")),
        "matmul_initializer_weight": len(with_initializer),
        "distinct_inputs": len({n.input[0] for n in with_initializer}),
        "embedding": (gather.input[0], list(initializers[gather.input[0]].dims),
                      initializers[gather.input[0]].ByteSize() / 1e6),
    }


def lm_head_layer(layers: list) -> dict | None:
    """The report entry of the (tied) lm_head: the layer with as many output rows as the vocabulary."""
    return next((layer for layer in layers if layer["shape"][0] == max(l["shape"][0] for l in layers)), None)


def ours(algo: str, model_path: pathlib.Path, calibration: list, folder: pathlib.Path, *, sym: bool = False,
         include: str | None = None, exclude: str | None = None, tag: str | None = None) -> dict:
    """``quantize_onnx`` at W4, groups of 128, MatMulNBits; saved as ``folder/tag.onnx`` unless ``include``."""
    from qronos_linalg.adapters.onnx import quantize_onnx, save_model

    config = {"algo": algo, "bits": BITS, "group_size": GROUP, "sym": sym, "format": "matmulnbits",
              "include": include, "exclude": exclude}
    start = time.perf_counter()
    model, report = quantize_onnx(model_path, calibration, config, threads=THREADS)
    elapsed = time.perf_counter() - start
    layers = report["layers"]
    row = {
        "quant_s": elapsed,
        "layers": len(layers),
        "names": [layer["name"] for layer in layers],
        "mean_layer_rel_error": float(np.mean([layer["rel_error"] for layer in layers])),
        "mean_layer_rel_error_rtn": float(np.mean([layer["rel_error_rtn"] for layer in layers])),
        "formats": sorted({layer["format"] for layer in layers}),
        "skipped": [(s["name"], s["op"], s["reason"]) for s in report["skipped"]],
        "layer_solve_s": float(sum(layer["time_s"] for layer in layers)),
    }
    head = lm_head_layer(layers)
    row["lm_head"] = None if head is None else {k: head[k] for k in ("name", "shape", "format", "rel_error", "rel_error_rtn", "time_s")}
    if include is not None:
        return row
    path = folder / f"{tag or algo}.onnx"
    save_model(model, path, overwrite=True)
    del model
    row["graph"] = graph_summary(path)
    return row | {"path": str(path)}


def onnxruntime_quantizer(kind: str, model_path: pathlib.Path, calibration: list, folder: pathlib.Path,
                          *, sym: bool = False) -> dict:
    """onnxruntime's MatMulNBitsQuantizer: ``rtn`` (its default, DefaultWeightOnlyQuantConfig) or ``gptq``."""
    from onnxruntime.quantization.matmul_nbits_quantizer import GPTQWeightOnlyQuantConfig, MatMulNBitsQuantizer

    logging.getLogger("onnxruntime.quantization").setLevel(logging.WARNING)  # one INFO line per node otherwise
    start = time.perf_counter()
    if kind == "rtn":
        quantizer = MatMulNBitsQuantizer(onnx.load(str(model_path)), bits=BITS, block_size=GROUP, is_symmetric=sym)
    else:
        # percdamp 0.01 and solver block 128 as ours; perchannel=True means one (min, max) per output column
        # within each group of `block_size` rows, i.e. the same grid layout as ours.
        algo_config = GPTQWeightOnlyQuantConfig(calibration_data_reader=list(calibration), percdamp=0.01,
                                                block_size=128, actorder=False, mse=False, perchannel=True)
        quantizer = MatMulNBitsQuantizer(onnx.load(str(model_path)), bits=BITS, block_size=GROUP,
                                         is_symmetric=sym, algo_config=algo_config)
    with onnxruntime_threads(THREADS):
        quantizer.process()
    elapsed = time.perf_counter() - start
    path = folder / f"onnxruntime-{kind}{'-sym' if sym else ''}.onnx"
    onnx.save_model(quantizer.model.model, str(path))
    del quantizer
    return {"quant_s": elapsed, "graph": graph_summary(path), "path": str(path)}


def onnxruntime_gptq_propagates() -> bool:
    """Whether onnxruntime's bundled ``gptq`` changes anything against no error feedback (identity Hessian).

    A small random problem with correlated inputs, where real GPTQ differs from RTN on the same grid.
    """
    from onnxruntime.quantization.neural_compressor.weight_only import gptq

    rng = np.random.default_rng(0)
    X = rng.standard_normal((2048, 256)) @ rng.standard_normal((256, 256))
    W = rng.standard_normal((256, 64))  # onnxruntime's layout: in × out
    args = dict(num_bits=BITS, group_size=GROUP, scheme="asym", blocksize=128, percdamp=0.01)
    with_h = gptq(W.copy(), X.T @ X / len(X), **args)
    without = gptq(W.copy(), np.eye(256), **args)
    return not np.allclose(with_h, without)


def include_regex(names: list) -> str:
    return "^(" + "|".join(re.escape(name) for name in names) + ")$"


# ----------------------------------------------------------------------------------------------- main


class Rows:
    """Finished rows, saved to the cache after each one (a rerun reuses them)."""

    def __init__(self, path: pathlib.Path, fresh: bool, report_only: bool = False):
        self.path = path
        self.report_only = report_only
        self.rows = {} if fresh or not path.exists() else json.loads(path.read_text())

    def total_seconds(self) -> float:
        return sum(row.get("row_wall_s", 0.0) for row in self.rows.values())

    def get(self, key, compute):
        """The cached row, else ``compute()`` (saved at once); None for a missing row with report_only."""
        if key not in self.rows and self.report_only:
            return None
        if key not in self.rows:
            print(f"[{time.strftime('%H:%M:%S')}] {key} ...", flush=True)
            start = time.perf_counter()
            self.rows[key] = compute()
            self.rows[key]["row_wall_s"] = time.perf_counter() - start
            write_text_atomic(self.path, json.dumps(self.rows, indent=1), overwrite=True)
            shown = {k: v for k, v in self.rows[key].items() if k not in ("names", "skipped")}
            print(f"[{time.strftime('%H:%M:%S')}] {key}: {shown}", flush=True)
        return self.rows[key]


def _algorithms(text: str) -> list:
    return [a for a in text.split(",") if a]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--calib-windows", type=int, default=32)
    parser.add_argument("--eval-windows", type=int, default=20)
    parser.add_argument("--algos", default=",".join(DEFAULT_ALGORITHMS),
                        help="qronos_linalg algorithms, asymmetric, every layer including the lm_head")
    parser.add_argument("--head-float-algos", default="rtn,optq,qronos",
                        help="qronos_linalg algorithms, asymmetric, lm_head left float (as onnxruntime does)")
    parser.add_argument("--sym-algos", default="optq,qronos",
                        help="qronos_linalg algorithms, symmetric, lm_head float (against onnxruntime's symmetric GPTQ)")
    parser.add_argument("--no-ort-gptq", action="store_true", help="skip onnxruntime's GPTQ rows")
    parser.add_argument("--no-sym", action="store_true", help="skip the symmetric rows")
    parser.add_argument("--no-depth", action="store_true", help="skip the growth-with-depth table")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--cache", help="folder for the export, windows, quantized models and finished rows")
    parser.add_argument("--fresh", action="store_true", help="recompute rows already in the cache")
    parser.add_argument("--output", default=str(RESULTS))
    parser.add_argument("--report-only", action="store_true", help="only rewrite the page from the cached rows")
    args = parser.parse_args(argv)
    command = " ".join(["python benchmarks/bench_onnx_smollm2.py"] + [shlex.quote(a) for a in (argv or sys.argv[1:])])
    limit_threads(args.threads)
    cache = cache_folder(args.cache)
    tag = f"seq{args.seq_len}.c{args.calib_windows}.e{args.eval_windows}.w{BITS}g{GROUP}"
    rows = Rows(cache / f"rows.{tag}.json", args.fresh, args.report_only)
    models = cache / f"models.{tag}"
    models.mkdir(exist_ok=True)

    model_path = pathlib.Path(rows.get("export", lambda: {"path": str(export_onnx(cache, args.seq_len))})["path"])
    facts = float_model_facts(model_path)
    head_regex = include_regex([facts["lm_head_node"]])
    calibration_windows, evaluation_windows = token_windows(cache, args.seq_len, args.calib_windows, args.eval_windows)
    calibration = feeds(calibration_windows)

    def evaluated(key, compute):
        def run():
            try:
                row = compute()
            except Exception as error:  # onnxruntime's quantizer: report the failure in the table
                return {"error": f"{type(error).__name__}: {error}"}
            return row | evaluate(pathlib.Path(row["path"]), evaluation_windows)
        return rows.get(key, run)

    results = []  # (method, weights, lm_head, row), rows missing with --report-only left out

    def add(method, weights, head, row):
        if row is not None:
            results.append((method, weights, head, row))

    float_row = evaluated("float", lambda: {"path": str(model_path), "quant_s": None, "graph": graph_summary(model_path)})
    torch_row = rows.get("torch float", lambda: {"perplexity": torch_perplexity(evaluation_windows)})
    float_row["torch_perplexity"] = None if torch_row is None else torch_row["perplexity"]
    add("float", "fp32", "fp32", float_row)
    settings = [("asym", False)] + ([] if args.no_sym else [("sym", True)])
    for label, sym in settings:
        weights = f"W{BITS} {label} g{GROUP}"
        if not sym:
            for algo in _algorithms(args.algos):
                add(f"qronos_linalg {algo}", weights, "W4 (own copy)", evaluated(
                    algo, lambda algo=algo: ours(algo, model_path, calibration, models)))
        for algo in _algorithms(args.sym_algos if sym else args.head_float_algos):
            key = f"{label} head-float {algo}"
            add(f"qronos_linalg {algo}", weights, "fp32 (excluded)", evaluated(
                key, lambda algo=algo, key=key: ours(algo, model_path, calibration, models, sym=sym,
                                                     exclude=head_regex, tag=key.replace(" ", "-"))))
        suffix = " sym" if sym else ""
        kinds = ["rtn"] + ([] if args.no_ort_gptq else ["gptq"])
        for kind in kinds:
            add(f"onnxruntime MatMulNBitsQuantizer {kind.upper()}", weights, "fp32 (not handled)", evaluated(
                f"onnxruntime {kind}{suffix}",
                lambda kind=kind: onnxruntime_quantizer(kind, model_path, calibration, models, sym=sym)))
    depth = []
    full = None if args.no_depth else rows.get(DEPTH_ALGORITHM, lambda: ours(DEPTH_ALGORITHM, model_path, calibration, models))
    if full is not None:
        names = full["names"]
        total = len(names)
        for k in (total // 4, total // 2):
            row = rows.get(f"depth {DEPTH_ALGORITHM} {k}", lambda k=k: ours(
                DEPTH_ALGORITHM, model_path, calibration, models, include=include_regex(names[:k])))
            if row is not None:
                depth.append((k, row["quant_s"], row["layer_solve_s"]))
        depth.append((total, full["quant_s"], full["layer_solve_s"]))
    timed = {row["path"]: row["path"] for _, _, _, row in results if "path" in row}
    best = rows.get(f"inference best of {INFERENCE_REPEATS}, {len(timed)} models",
                    lambda: inference_times(timed, evaluation_windows, INFERENCE_REPEATS)) or {}
    for _, _, _, row in results:
        row["infer_best_s"] = best.get(row.get("path"))
    text = write_results(pathlib.Path(args.output), results, depth, facts, args, command, rows.total_seconds())
    print(text)


def _fmt(value, digits=1):
    return "–" if value is None else f"{value:.{digits}f}"


def write_results(path: pathlib.Path, results: list, depth: list, facts: dict, args, command: str,
                  elapsed: float) -> str:
    import torch
    import transformers

    float_row = results[0][3]
    full = [(method, row) for method, _, head, row in results if head.startswith("W4") and "error" not in row]
    embedding_name, embedding_shape, embedding_mb = facts["embedding"]
    lines = [
        "# SmolLM2-135M-Instruct in ONNX: qronos_linalg vs onnxruntime's MatMulNBitsQuantizer",
        "",
        "Generated by `benchmarks/bench_onnx_smollm2.py`; do not edit by hand. Command (about "
        f"{elapsed / 60:.0f} min of wall time in all, the export not counted):",
        "",
        f"    OMP_NUM_THREADS={args.threads} MKL_NUM_THREADS={args.threads} NUMBA_NUM_THREADS={args.threads} {command}",
        "",
        f"- Model: SmolLM2-135M-Instruct (the packaged GGUF, dequantized to fp32 by the torch adapter's loader), exported "
        f"with `torch.onnx.export(..., dynamo=True)` (torch {torch.__version__}, transformers {transformers.__version__}, "
        f"onnxscript optimizer, opset {facts['opset']}): input `input_ids` int64 (1, {args.seq_len}), output `logits` "
        f"(1, {args.seq_len}, {embedding_shape[0]}); no attention mask, no KV cache. {float_row['graph']['MatMul']} MatMul "
        f"nodes: {facts['matmul_initializer_weight']} with an initializer weight (30 blocks × 7 linears), the lm_head "
        f"`{facts['lm_head_node']}` = `MatMul(x, Transpose({facts['lm_head_weight']}))` (tied: the embedding `Gather` "
        "reads the same table), and 60 attention products of two activations.",
        f"- Weights: W{BITS}, groups of {GROUP} along K (K = 576 or 1536; a 576-wide row has 5 groups, the last of 64 "
        "columns), min-max grid, asymmetric unless marked sym, MatMulNBits output, `accuracy_level` unset (fp32 "
        "compute). Not g32: the model was distributed as GGUF Q4_1 (4-bit asymmetric, blocks of 32), so W4 asym g32 "
        "re-quantizes it losslessly.",
        f"- Calibration: {args.calib_windows} windows × {args.seq_len} tokens from the calibration articles of the torch "
        "adapter's Wikipedia split (gensim sample; article i is calibration iff i % 4 == 0); the same feeds for every "
        f"calibrated method. Evaluation: the first {args.eval_windows} non-overlapping {args.seq_len}-token windows of "
        "the evaluation articles; perplexity = exp(mean next-token NLL) from the ONNX logits run by onnxruntime "
        f"({args.seq_len - 1} predictions per window). The float PyTorch model gives "
        f"{_fmt(float_row['torch_perplexity'], 3)} on the same windows (float ONNX: {float_row['perplexity']:.3f}). Windows of "
        f"{args.seq_len} tokens, not 512 as in results_lm.md, so the perplexities are not comparable with that page.",
        f"- Machine: {platform.machine()}, {os.cpu_count()} CPU cores shared with other people's jobs; onnxruntime "
        f"{ort.__version__}, numpy {np.__version__}. One process at a time, {args.threads} thread: BLAS and numba via the "
        "environment, torch via `set_num_threads`, every onnxruntime session (evaluation, the adapter's stage "
        f"sessions, onnxruntime's GPTQ calibration session) with {args.threads} intra-op and inter-op thread. Timings "
        "vary by ±20 % with the other jobs' load.",
        "",
        f"| method | weights | lm_head | perplexity | quantize (s) | file (MB) | inference, {args.eval_windows} windows (s) |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for method, weights, head, row in results:
        if "error" in row:
            lines.append(f"| {method} | {weights} | {head} | fails (see notes) | – | – | – |")
            continue
        lines.append(f"| {method} | {weights} | {head} | {row['perplexity']:.2f} | {_fmt(row['quant_s'])} | "
                     f"{row['size_mb']:.1f} | {_fmt(row['infer_best_s'], 2)} |")
    lines += ["", "Notes:", ""]
    if full:
        head = full[0][1]["lm_head"]
        skipped = full[0][1]["skipped"]
        lines.append(
            f"- lm_head: the adapter folds `Transpose({facts['lm_head_weight']})` (a tensor computed from constants) and "
            f"quantizes it ({head['shape'][0]} × {head['shape'][1]}) into a MatMulNBits of its own; the `Gather` keeps "
            f"the float table ({embedding_mb:.0f} MB), so the file holds both (\"W4 (own copy)\"). {full[0][1]['layers']} "
            f"layers quantized, {len(skipped)} nodes skipped, all because: {'; '.join(sorted({r for _, _, r in skipped}))}. "
            "onnxruntime's quantizer only takes MatMuls whose weight is an initializer, so it leaves the lm_head float "
            "(\"not handled\"); the rows marked \"excluded\" leave it float in qronos_linalg too (`exclude` = its "
            "node name), which is the like-for-like comparison.")
        lines.append("- Mean per-layer relative output error ‖XWᵀ − X̃Qᵀ‖/‖XWᵀ‖ over the 211 layers, from the adapter's "
                     "report (X̃ from the partially quantized model, so it includes the error carried from earlier "
                     "layers; in parentheses RTN on the same statistics): " + ", ".join(
                         f"{m.split()[-1]} {r['mean_layer_rel_error']:.3f} ({r['mean_layer_rel_error_rtn']:.3f})"
                         for m, r in full) + "; lm_head alone: " + ", ".join(
                         f"{m.split()[-1]} {r['lm_head']['rel_error']:.3f}" for m, r in full) + ".")
        lines.append("- qronos_linalg quantize time = `quantize_onnx` wall time (load and check the 542 MB model, fold, "
                     "two-stream stage runs with onnxruntime, statistics, solvers, export; not the save). Solver share "
                     "(sum of the per-layer times in the report): " + ", ".join(
                         f"{m.split()[-1]} {r['layer_solve_s']:.0f} s" for m, r in full) + "; the rest is mostly "
                     "running the graph twice over the calibration windows and accumulating the statistics.")
    asym = f"W{BITS} asym g{GROUP}"
    by = {(m, w, h.split()[0]): r for m, w, h, r in results if "error" not in r}
    pairs = [(m.split()[-1], by[(m, asym, "W4")]["perplexity"], by[(m, asym, "fp32")]["perplexity"])
             for m, w, h, _ in results if w == asym and h.startswith("W4") and (m, asym, "fp32") in by]
    if pairs:
        lines.append("- Perplexity with the lm_head float → also quantized (W4 asym g128): " + ", ".join(
            f"{algo} {flt:.2f} → {q:.2f} (+{q - flt:.2f})" for algo, q, flt in pairs) + f". For RTN the 4-bit "
            f"lm_head costs {'more' if pairs[0][1] - pairs[0][2] > pairs[0][2] - float_row['perplexity'] else 'less'} "
            f"than the 210 block layers together (+{pairs[0][2] - float_row['perplexity']:.2f}); the calibrated "
            "solvers lose much less on it.")
    head_float = [(m, w, r["perplexity"]) for m, w, h, r in results
                  if "error" not in r and h.startswith("fp32") and m != "float"]
    rtn_best = []
    for weights in sorted({w for _, w, _ in head_float}):
        here = sorted((p, m) for m, w, p in head_float if w == weights)
        if len(here) > 1 and "RTN" in here[0][1].upper():
            rtn_best.append(weights)
    if rtn_best:
        lines.append(
            f"- With the lm_head float, RTN has the lowest perplexity of all methods at {' and '.join(rtn_best)}: "
            "the calibrated solvers lower the mean per-layer output error on the calibration windows (errors "
            f"above) but not the perplexity, with this calibration set ({args.calib_windows} × {args.seq_len} tokens "
            "of the Wikipedia sample).")
    ort_rtn = by.get(("onnxruntime MatMulNBitsQuantizer RTN", asym, "fp32"))
    our_rtn = by.get(("qronos_linalg rtn", asym, "fp32"))
    if ort_rtn and our_rtn:
        lines.append(f"- Same grid check: qronos_linalg RTN with the lm_head float gives {our_rtn['perplexity']:.3f}, "
                     f"onnxruntime's RTN {ort_rtn['perplexity']:.3f} (both min-max asymmetric, groups of {GROUP}).")
    failures = [(method, weights, row["error"]) for method, weights, _, row in results if "error" in row]
    for method, weights, error in failures:
        lines.append(
            f"- {method} at {weights} fails: `{error}`. Its bundled GPTQ (`onnxruntime.quantization.neural_compressor`) "
            "packs the 4-bit zero points of all rows into one flat array of ceil(N·k_blocks/2) bytes and reshapes "
            "it to (N, −1), which is impossible when k_blocks is odd: K = 576 has 5 blocks of 128 (also 9 of 64, 3 "
            "of 256). Its RTN (C++ packer) is not affected. The symmetric rows below it (no zero points) are the "
            "GPTQ comparison.")
    if not args.no_ort_gptq:
        lines.append(
            "- onnxruntime's GPTQ (`GPTQWeightOnlyQuantConfig`, bundled with onnxruntime, nothing else to install, "
            "runs offline; percdamp 0.01, block 128, no act-order, as ours) takes every Hessian from the float model "
            "only (no propagation of earlier layers' quantization error) and runs the whole model once per "
            f"calibration window for each of the {facts['distinct_inputs']} distinct MatMul inputs, hence its time.")
        if not onnxruntime_gptq_propagates():
            lines.append(
                f"- onnxruntime {ort.__version__}'s bundled `gptq()` (quantization/neural_compressor/weight_only.py) "
                "does not propagate the rounding error: with U the upper Cholesky factor of H⁻¹ it updates the "
                "rows after row i with U[i:, i] (and the later blocks with U[i2:, i1:i2]), columns of an upper "
                "triangular matrix, zero below the diagonal. Its result is exactly RTN on its own grid (checked by "
                "this script on a random problem: identical outputs with the true H and with H = I). When packing, "
                "it re-fits the grid on these fake-quantized weights (symmetric: scale = 2·max|w|/15 both times, "
                "but the max is now a grid point), a second rounding: its perplexity ends above its RTN's.")
    timed = [r["infer_best_s"] for _, _, _, r in results if r.get("infer_best_s")]
    spread = f" All models within {100 * (max(timed) / min(timed) - 1):.0f} % of each other." if len(timed) > 1 else ""
    lines.append(f"- Inference: per model, one onnxruntime session ({args.threads} thread), one warm-up window, then "
                 f"the {args.eval_windows} windows one by one (batch 1, {args.seq_len} tokens each); the best of "
                 f"{INFERENCE_REPEATS} rounds, the models taking turns within a round.{spread}")
    if depth:
        total = depth[-1][0]
        lines += [
            "",
            f"## Growth with depth ({DEPTH_ALGORITHM}, W{BITS} asym g{GROUP}, lm_head included)",
            "",
            f"Only the first k of the L = {total} quantized layers (topological order; the lm_head is the last) "
            "selected with `include` (a regex of their node names); stages after the last selected layer are not "
            "run. k = L is the full run of the table above.",
            "",
            "| k | quantize (s) | s per layer | ratio to k = L/4 | k / (L/4) | solver share (s) |",
            "|---:|---:|---:|---:|---:|---:|",
        ]
        for k, seconds, solve in depth:
            lines.append(f"| {k} | {seconds:.1f} | {seconds / k:.2f} | {seconds / depth[0][1]:.2f} | "
                         f"{k / depth[0][0]:.2f} | {solve:.1f} |")
        lines += ["", "The time grows linearly with the number of layers (each node runs once per stream); the "
                  "fixed cost of loading, checking and folding the model is included in every row."]
    text = "\n".join(lines) + "\n"
    write_text_atomic(path, text, overwrite=True)
    return text


if __name__ == "__main__":
    main()
