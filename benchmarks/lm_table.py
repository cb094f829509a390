"""Regenerate docs/results_lm.md (SmolLM2-135M-Instruct) or docs/results_lm_gemma3.md (Gemma-3-270M):
perplexity after quantization.

A row is (setting, algorithm, x_mode). x_mode is the meaning of X, the float target that GPFQ, GPTAQ and
Qronos fit (float: the true float model; block: the float block applied to the quantized stream, as
Brevitas does); RTN and OPTQ do not use X, so their rows have no x_mode.

Each row runs in its own subprocess (so its peak RSS is its own): load the fp32 model, apply the
transforms, quantize block by block, evaluate perplexity on the evaluation windows of the documented
Wikipedia split (adapters/torch/data.py). Finished rows are stored in the table's .json; a run skips
the selected rows already stored there (a failed row is run again; --rerun runs them anyway) and, after
every row, rebuilds the table from all stored rows (temp + rename, under a file lock), so an interrupted
run keeps what it finished and runs started side by side (say one per core) keep each other's rows.

    python benchmarks/lm_table.py --calib-windows 16 --eval-windows 20            # every missing row
    python benchmarks/lm_table.py --calib-windows 16 --eval-windows 20 \\
        --only "W3 g128 asym" --algorithms qronos --x-modes block --threads 1     # one row
    python benchmarks/lm_table.py --model gemma3-270m --calib-windows 16 --eval-windows 20 --threads 1
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from qronos_linalg.adapters.torch import X_MODES
from qronos_linalg.io import write_text_atomic
from qronos_linalg.recipe import ALGORITHMS, SOLVERS

ROOT = Path(__file__).resolve().parents[1]

FLOAT = "float"
SETTINGS = {
    "W4 per-channel asym": {"bits": 4},
    "W3 g128 asym": {"bits": 3, "group_size": 128},
    "W2 g64 + Hadamard + MagR + β=0.8": {"bits": 2, "group_size": 64, "hadamard": True, "magr": 0.001,
                                         "shrink": 0.8},
    "W4A8 per-channel + Hadamard": {"bits": 4, "act_bits": 8, "hadamard": True},
    "W4A4 per-channel + Hadamard": {"bits": 4, "act_bits": 4, "hadamard": True},
    # The same settings with ten times the default damping, for the damped solvers only (RTN and GPFQ
    # have no damping): Qronos' first-step re-fit over-fits 16 calibration windows at damp 0.01.
    "W3 g128 asym, damp 0.1": {"bits": 3, "group_size": 128, "damp": 0.1},
    "W4A4 per-channel + Hadamard, damp 0.1": {"bits": 4, "act_bits": 4, "hadamard": True, "damp": 0.1},
}
DAMPED = tuple(name for name, solver in SOLVERS.items() if solver.damped)
USES_X = tuple(name for name, solver in SOLVERS.items() if solver.uses_float_inputs)
#: Keys of the windows that make stored rows comparable; a results file with other values is refused.
WINDOW_KEYS = ("calib_windows", "eval_windows", "seq_len")


@dataclass(frozen=True)
class Model:
    """A packaged model (adapters/torch/data.py name), its table and the settings it supports."""

    name: str
    title: str
    table_name: str
    description: str
    settings: tuple[str, ...]

    @property
    def table(self) -> Path:
        return ROOT / "docs" / f"{self.table_name}.md"

    @property
    def results(self) -> Path:
        return self.table.with_suffix(".json")


DEFAULT_MODEL = "smollm2"
MODELS = {model.name: model for model in (
    Model(
        DEFAULT_MODEL, "SmolLM2-135M-Instruct", "results_lm",
        "SmolLM2-135M-Instruct (packaged GGUF, dequantized to fp32). All 210 linears of the 30 decoder blocks "
        "quantized; embeddings and lm_head stay float. W4 asymmetric g32 is lossless for this model (its GGUF "
        "grid) and is therefore not used.",
        tuple(SETTINGS),
    ),
    Model(
        "gemma3-270m", "Gemma-3-270M", "results_lm_gemma3",
        "Gemma-3-270M base (packaged Q4_K_M GGUF, dequantized to fp32; 18 blocks alternating sliding-window and "
        "global attention, hidden 640). All 126 linears of the decoder blocks quantized; embeddings and the "
        "tied lm_head (vocabulary 262,144: 63% of the parameters) stay float. Every window starts with BOS "
        "(511 text tokens). Weight-only settings only: Gemma's norms on the residual branches do not commute "
        "with the QuaRot rotation, which refuses these blocks.",
        ("W4 per-channel asym", "W3 g128 asym"),
    ),
)}


def all_rows(model: Model) -> list[tuple[str, str, str | None]]:
    """Every (setting, algorithm, x_mode) of the model's table, in order; x_mode is None where X is unused."""
    rows = [(FLOAT, FLOAT, None)]
    for setting in model.settings:
        for algorithm in DAMPED if "damp" in SETTINGS[setting] else ALGORITHMS:
            x_modes = X_MODES if algorithm in USES_X else (None,)
            rows += [(setting, algorithm, x_mode) for x_mode in x_modes]
    return rows


def selected_rows(model: Model, settings: list[str], algorithms: list[str], x_modes: list[str]) -> list[tuple]:
    return [
        (setting, algorithm, x_mode) for setting, algorithm, x_mode in all_rows(model)
        if setting in settings and algorithm in algorithms and (x_mode is None or x_mode in x_modes)
    ]


def row_key(row: dict) -> tuple:
    return row["setting"], row["algorithm"], row["x_mode"]


def run_one(model_name: str, setting: str, algorithm: str, x_mode: str | None, windows_file: Path) -> dict:
    """Quantize (unless float) and evaluate one configuration in this process."""
    from qronos_linalg.adapters.torch import perplexity, quantize_causal_lm
    from qronos_linalg.adapters.torch.data import load_model
    from qronos_linalg.adapters.torch.rotation import rotate_llama
    from qronos_linalg.options import recipe_from_options

    torch.manual_seed(0)
    windows = torch.load(windows_file)
    model, _tokenizer, _folder = load_model(model_name)
    quant_time = 0.0
    if algorithm != FLOAT:
        options = dict(SETTINGS[setting])
        hadamard = options.pop("hadamard", False)
        start = time.perf_counter()
        if hadamard:
            rotate_llama(model, seed=0)
        # x_mode only matters for the algorithms that use X; pass the adapter default for the others.
        quantize_causal_lm(model, windows["calibration"], recipe_from_options({"algo": algorithm, **options}),
                           x_mode=x_mode or "float", progress=False)
        quant_time = time.perf_counter() - start
    start = time.perf_counter()
    value = perplexity(model, windows["evaluation"], progress=False)
    return {
        "setting": setting, "algorithm": algorithm, "x_mode": x_mode, "perplexity": value,
        "quantization_time_s": quant_time, "eval_time_s": time.perf_counter() - start,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "threads": torch.get_num_threads(),
    }


def run_child(model_name: str, setting: str, algorithm: str, x_mode: str | None, windows_file: Path,
              threads: int) -> dict:
    """run_one in a subprocess; a crash becomes a row with an ``error`` instead of a perplexity."""
    command = [sys.executable, __file__, "--model", model_name, "--threads", str(threads),
               "--one", setting, algorithm, x_mode or "-", str(windows_file)]
    child = subprocess.run(command, capture_output=True, text=True)
    if child.returncode == 0:
        return json.loads(child.stdout.strip().splitlines()[-1])
    stderr = child.stderr.strip().splitlines()
    reason = stderr[-1] if stderr else f"exit status {child.returncode}"
    return {"setting": setting, "algorithm": algorithm, "x_mode": x_mode, "error": reason, "threads": threads}


def load_results(model: Model, windows: dict) -> list[dict]:
    """Rows stored by earlier runs with the same windows (none if there is no results file)."""
    if not model.results.exists():
        return []
    stored = json.loads(model.results.read_text())
    stored_windows = {key: stored[key] for key in WINDOW_KEYS}
    if stored_windows != windows:
        raise SystemExit(f"{model.results} holds rows for {stored_windows}, not {windows}; "
                         "use the same options or move the file away to start a new table")
    return stored["rows"]


def store_row(model: Model, row: dict, windows: dict) -> None:
    """Add (or replace) one row in the results file, under a lock so that concurrent runs keep each
    other's rows, and rebuild the table."""
    with open(model.results.with_name(f".{model.results.name}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        stored = load_results(model, windows)
        save(model, [old for old in stored if row_key(old) != row_key(row)] + [row], windows)


def save(model: Model, rows: list[dict], windows: dict) -> None:
    """Store the rows (table order) and rebuild the table from them."""
    order = {key: index for index, key in enumerate(all_rows(model))}
    rows = sorted(rows, key=lambda row: order[row_key(row)])
    write_text_atomic(model.results, json.dumps({**windows, "rows": rows}, indent=1, ensure_ascii=False) + "\n",
                      overwrite=True)
    write_text_atomic(model.table, table(model, rows, windows), overwrite=True)


def table(model: Model, rows: list[dict], windows: dict) -> str:
    model_option = "" if model.name == DEFAULT_MODEL else f"--model {model.name} "
    transformed = any("act_bits" in SETTINGS[name] or "hadamard" in SETTINGS[name] for name in model.settings)
    transform_notes = [
        "- A8 / A4 rows fake-quantize the input of every quantized linear per token (dynamic asymmetric "
        "8 / 4-bit), in calibration (X̃) and evaluation; "
        "weight-only rows quantize no activations. Hadamard rows rotate the model first (seed 0); "
        "the rotation is included in the quantization time."
    ] if transformed else []
    lines = [
        f"# {model.title}: perplexity after quantization",
        "",
        f"Generated by `benchmarks/lm_table.py` from the rows stored in `{model.results.name}`; do not edit by "
        "hand. A run adds the rows it selects that are not stored yet; every row of this table is rerun by "
        f"moving `{model.results.name}` away and running",
        "",
        f"    python benchmarks/lm_table.py {model_option}--calib-windows {windows['calib_windows']} "
        f"--eval-windows {windows['eval_windows']} --seq-len {windows['seq_len']} --threads 1",
        "",
        f"- Model: {model.description}",
        f"- Calibration: {windows['calib_windows']} windows × {windows['seq_len']} tokens from the calibration "
        f"articles; evaluation: the first {windows['eval_windows']} non-overlapping {windows['seq_len']}-token "
        "windows of the evaluation articles (gensim Wikipedia sample; article i is calibration iff i % 4 == 0).",
        "- X (GPFQ, GPTAQ, Qronos only): `float` = the true float model; `block` = the float block applied "
        "to the quantized stream (Brevitas' definition). X̃ from the partially quantized model. Grids "
        "asymmetric min-max fitted before rounding; damping (OPTQ, GPTAQ, Qronos) 0.01, the solvers' default, "
        "unless the setting names another (such settings have rows for the damped solvers only).",
        *transform_notes,
        f"- Times on {os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}) shared with "
        f"other jobs, torch {torch.__version__}, with the row's torch threads; peak memory = peak RSS of the "
        "row's process.",
        "",
        "| setting | algorithm | X | perplexity | quantization time (s) | threads | peak RSS (MiB) |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    notes = []
    for row in rows:
        head = f"| {row['setting']} | {row['algorithm']} | {row['x_mode'] or '—'} |"
        if "error" in row:
            reason = row["error"].replace("|", r"\|")
            lines.append(f"{head} failed: {reason} | | {row['threads']} | |")
            continue
        marker = ""
        if "note" in row:  # a remark stored with the row, e.g. on how it was measured
            notes.append(row["note"])
            marker = f" ({len(notes)})"
        lines.append(f"{head} {row['perplexity']:.2f} | {row['quantization_time_s']:.0f}{marker} | "
                     f"{row['threads']} | {row['peak_rss_mib']:.0f} |")
    lines += [""] + [f"({index}) {note}" for index, note in enumerate(notes, 1)] if notes else []
    missing = [row for row in all_rows(model) if row not in {row_key(stored) for stored in rows}]
    if missing:
        lines += ["", "Not measured yet: " + "; ".join(
            f"{setting} {algorithm}" + (f" (X {x_mode})" if x_mode else "") for setting, algorithm, x_mode in missing
        ) + "."]
    return "\n".join(lines) + "\n"


def comma_list(choices):
    def parse(text: str) -> list[str]:
        items = [item.strip() for item in text.split(",") if item.strip()]
        unknown = sorted(set(items) - set(choices))
        if unknown:
            raise argparse.ArgumentTypeError(f"unknown {unknown}; choose from {list(choices)}")
        return items
    return parse


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    settings = (FLOAT, *SETTINGS)
    parser.add_argument("--only", action="append", choices=settings, metavar="SETTING",
                        help=f"a setting to run (repeatable; default all): {', '.join(map(repr, settings))}")
    algorithms = (FLOAT, *ALGORITHMS)
    parser.add_argument("--algorithms", type=comma_list(algorithms), default=list(algorithms),
                        help=f"comma-separated (default: {','.join(algorithms)})")
    parser.add_argument("--x-modes", type=comma_list(X_MODES), default=list(X_MODES),
                        help="comma-separated x_modes of the algorithms that use X (default: float,block)")
    parser.add_argument("--calib-windows", type=int, default=32)
    parser.add_argument("--eval-windows", type=int, default=40)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--rerun", action="store_true",
                        help="run the selected rows even if they are stored (the new result replaces the old)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(),
                        help="torch threads of each row (default: torch's, which follows OMP_NUM_THREADS)")
    parser.add_argument("--model", choices=list(MODELS), default=DEFAULT_MODEL,
                        help="packaged model (default: smollm2); its table lists the settings it supports")
    parser.add_argument("--one", nargs=4, metavar=("SETTING", "ALGORITHM", "X_MODE", "WINDOWS_FILE"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.one:
        setting, algorithm, x_mode, windows_file = args.one
        row = run_one(args.model, setting, algorithm, None if x_mode == "-" else x_mode, Path(windows_file))
        print(json.dumps(row))
        return 0

    model = MODELS[args.model]
    unsupported = sorted(set(args.only or []) - {FLOAT, *model.settings})
    if unsupported:
        parser.error(f"{model.title} does not support {unsupported}; its settings: {list(model.settings)}")
    windows = {key: getattr(args, key) for key in WINDOW_KEYS}
    stored = load_results(model, windows)
    done = {row_key(row) for row in stored if "error" not in row}
    todo = [row for row in selected_rows(model, args.only or [FLOAT, *model.settings], args.algorithms, args.x_modes)
            if args.rerun or row not in done]
    print(f"{len(todo)} row(s) to run, {len(done)} stored", flush=True)
    if not todo:
        save(model, stored, windows)
        return 0
    from qronos_linalg.adapters.torch.data import load_model, text_windows

    _model, tokenizer, _folder = load_model(model.name)
    token_windows = {
        "calibration": text_windows(tokenizer, "calibration", args.seq_len, args.calib_windows),
        "evaluation": text_windows(tokenizer, "evaluation", args.seq_len, args.eval_windows),
    }
    with tempfile.TemporaryDirectory() as scratch:
        windows_file = Path(scratch) / "windows.pt"
        torch.save(token_windows, windows_file)
        for setting, algorithm, x_mode in todo:
            row = run_child(model.name, setting, algorithm, x_mode, windows_file, args.threads)
            print(json.dumps(row, ensure_ascii=False), flush=True)
            store_row(model, row, windows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
