"""Regenerate the language-model tables: perplexity and KL to the float model on two texts, per recipe.

Tables (``--table``): ``smollm2`` (docs/results_lm.md: every algorithm at its defaults, per setting),
``smollm2-defaults`` (docs/results_lm_defaults.md: the measurements the defaults were chosen from),
``smollm2-calibration`` (docs/results_lm_calibration.md: perplexity against the number of calibration
windows) and ``gemma3-270m`` (docs/results_lm_gemma3.md). A row is a setting (grid, transforms) and a
variant (algorithm, X mode, act-order, damping); every row runs in its own subprocess (its peak RSS is its
own): load the fp32 model, apply the transforms, quantize (as ``qronos quantize-lm`` does, no per-layer
errors), evaluate perplexity and mean per-token KL(p_float ‖ p_quant) on the first windows of the
in-domain Wikipedia evaluation articles (``wiki``) and of the out-of-domain news (``news``). The float
model's log-probabilities of the evaluation windows are computed once per table and kept as float16
memory maps in the cache (``$QRONOS_CACHE`` or ``~/.cache/qronos_linalg``).

Finished rows are stored in the table's ``.json`` (a run skips stored rows; ``--rerun`` runs them again),
and the table is rebuilt after every row under a file lock, so runs started side by side (one per core,
with disjoint ``--only`` selections) keep each other's rows.

    python benchmarks/lm_table.py --table smollm2 --threads 1                  # every missing row
    python benchmarks/lm_table.py --table smollm2-defaults --only "W3 g128 asym | qronos X block"
    python benchmarks/lm_table.py --table smollm2 --list                       # the row ids
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
from dataclasses import dataclass, field
from pathlib import Path

import torch

from qronos_linalg.io import write_text_atomic
from qronos_linalg.recipe import SOLVERS
from qronos_linalg.adapters.torch import default_x_mode

ROOT = Path(__file__).resolve().parents[1]
FLOAT = "float"
SETTINGS = {
    "W4 per-channel asym": {"bits": 4},
    "W3 g128 asym": {"bits": 3, "group_size": 128},
    "W2 g64 + Hadamard + MagR + β=0.8": {"bits": 2, "group_size": 64, "hadamard": True, "magr": 0.001, "shrink": 0.8},
    "W4A8 per-channel + Hadamard": {"bits": 4, "act_bits": 8, "hadamard": True},
    "W4A4 per-channel + Hadamard": {"bits": 4, "act_bits": 4, "hadamard": True},
}
TEXTS = ("wiki", "news")


@dataclass(frozen=True)
class Variant:
    """An algorithm and how it is run; fields left None take the adapter's defaults."""

    algorithm: str
    x_mode: str | None = None
    act_order: bool | None = None
    damp: float | None = None
    damp_mode: str | None = None
    #: Statistics products (``quantize_causal_lm(product_dtype=...)``): None = float64, the default.
    products: str | None = None

    @property
    def label(self) -> str:
        if self.algorithm == FLOAT:
            return FLOAT
        parts = [self.algorithm]
        if self.x_mode is not None:
            parts.append(f"X {self.x_mode}")
        if self.act_order is not None:
            parts.append("act-order" if self.act_order else "no act-order")
        if self.damp is not None:
            parts.append(f"damp {self.damp:g}" + (" spectral" if self.damp_mode == "spectral" else ""))
        if self.products is not None:
            parts.append(self.products.replace("float", "fp") + " products")
        return " ".join(parts)

    def options(self) -> dict:
        options = {"algo": self.algorithm}
        options.update({key: value for key, value in (("act_order", self.act_order), ("damp", self.damp),
                                                      ("damp_mode", self.damp_mode)) if value is not None})
        return options


@dataclass(frozen=True)
class Table:
    name: str
    model: str
    title: str
    page: str
    description: str
    calib_windows: int
    eval_windows: int
    rows: tuple  # (setting, Variant, calibration windows or None for the table's)
    seq_len: int = 512
    notes: tuple = field(default=())

    @property
    def path(self) -> Path:
        return ROOT / "docs" / f"{self.page}.md"

    @property
    def results(self) -> Path:
        return self.path.with_suffix(".json")


def row_id(setting: str, variant: Variant, windows: int | None = None) -> str:
    return FLOAT if variant.algorithm == FLOAT else \
        f"{setting} | {variant.label}" + ("" if windows is None else f" | {windows} windows")


def _defaults_rows(setting: str) -> list:
    """Each algorithm at the adapter's defaults (what `qronos quantize-lm --algo A` does)."""
    return [(setting, Variant(algorithm), None) for algorithm in SOLVERS]


def _study_rows(setting: str) -> list:
    """The measurements behind the defaults: act-order, X mode and damping."""
    rows = [(setting, Variant("rtn"), None)]
    rows += [(setting, Variant("optq", act_order=flag), None) for flag in (False, True)]
    for algorithm in ("gpfq", "gptaq", "qronos"):
        rows += [(setting, Variant(algorithm, x_mode=mode, act_order=True), None) for mode in ("float", "block")]
    rows += [(setting, Variant("qronos", x_mode=mode, act_order=True, damp=damp, damp_mode=damp_mode), None)
             for mode in ("float", "block") for damp, damp_mode in ((0.1, "relative"), (1e-6, "spectral"))]
    rows += [(setting, Variant("optq", act_order=True, damp=0.1), None),
             (setting, Variant("gptaq", x_mode="float", act_order=True, damp=0.1), None)]
    rows += [(setting, Variant("yaqa", act_order=flag), None) for flag in (False, True)]
    rows += [(setting, Variant("optq", act_order=True, products="float32"), None)]  # how far a tiny perturbation moves
    return rows


SMOLLM2_DESCRIPTION = ("SmolLM2-135M-Instruct (packaged GGUF, dequantized to fp32). All 210 linears of the 30 "
                       "decoder blocks quantized; embeddings and lm_head stay float. W4 asymmetric g32 is "
                       "lossless for this model (its GGUF grid) and is therefore not used.")
TABLES = {table.name: table for table in (
    Table("smollm2", "smollm2", "SmolLM2-135M-Instruct: perplexity and KL after quantization", "results_lm",
          SMOLLM2_DESCRIPTION, 128, 40,
          tuple([(FLOAT, Variant(FLOAT), None)] + [row for setting in SETTINGS for row in _defaults_rows(setting)])),
    Table("smollm2-defaults", "smollm2", "SmolLM2-135M-Instruct: the measurements behind the defaults",
          "results_lm_defaults", SMOLLM2_DESCRIPTION, 128, 40,
          tuple([(FLOAT, Variant(FLOAT), None)] + [row for setting in ("W4 per-channel asym", "W3 g128 asym")
                                                   for row in _study_rows(setting)]),
          notes=("", "`fp32 products`: the statistics' products in float32 over chunks of 2,048 rows summed in "
                     "float64 (as the peers accumulate H in float32) instead of float64 — the same algorithm "
                     "perturbed by rounding alone, so its distance to the float64 row is the scale below which "
                     "two implementations of one algorithm (ours and a peer's) cannot be told apart.")),
    Table("smollm2-calibration", "smollm2", "SmolLM2-135M-Instruct: calibration size", "results_lm_calibration",
          SMOLLM2_DESCRIPTION, 128, 40,
          tuple([(FLOAT, Variant(FLOAT), None)] + [("W3 g128 asym", Variant(algorithm), windows)
                                                   for algorithm in ("optq", "qronos") for windows in (16, 32, 128, 256)])),
    Table("gemma3-270m", "gemma3-270m", "Gemma-3-270M: perplexity and KL after quantization", "results_lm_gemma3",
          "Gemma-3-270M base (packaged Q4_K_M GGUF, dequantized to fp32; 18 blocks alternating sliding-window and "
          "global attention, hidden 640). All 126 linears of the decoder blocks quantized; embeddings and the tied "
          "lm_head (vocabulary 262,144: 63% of the parameters) stay float. Every window starts with BOS (511 text "
          "tokens). Weight-only settings only: Gemma's norms on the residual branches do not commute with the "
          "QuaRot rotation, which refuses these blocks.", 128, 20,
          tuple([(FLOAT, Variant(FLOAT), None)] + [row for setting in ("W4 per-channel asym", "W3 g128 asym")
                                                   for row in _defaults_rows(setting)])),
)}
#: Float16 log-probability caches above this size are not kept (Gemma: 262k vocabulary): the reference
#: model then runs beside the quantized one.
MAX_REFERENCE_CACHE_BYTES = 6 * 2**30


def cache_root() -> Path:
    return Path(os.environ.get("QRONOS_CACHE", Path.home() / ".cache" / "qronos_linalg"))


def resolved_options(setting: str, variant: Variant) -> dict:
    """The row's full recipe options: the CLI defaults, then the setting's grid, then the variant's changes,
    with the solver's defaults written out (:func:`filled_recipe`)."""
    from qronos_linalg.adapters.torch.cli import DEFAULT_RECIPE
    from qronos_linalg.options import recipe_to_options

    options = {key: value for key, value in SETTINGS[setting].items() if key != "hadamard"}
    return filled_recipe({**recipe_to_options(DEFAULT_RECIPE), **options, **variant.options()})


def resolved_x_mode(variant: Variant) -> str | None:
    if variant.algorithm == FLOAT or not SOLVERS[variant.algorithm].uses_float_inputs:
        return None
    return variant.x_mode or default_x_mode(variant.algorithm)


def filled_recipe(options: dict) -> dict:
    """Recipe options with the solver's defaults written out (act_order None → that solver's default)."""
    import dataclasses

    from qronos_linalg.options import recipe_from_options, recipe_to_options

    recipe = recipe_from_options(options)
    return recipe_to_options(dataclasses.replace(recipe, solver=recipe.solver.resolved()))


def is_current(spec: tuple, row: dict) -> bool:
    """Whether a stored row measured what the spec means now (a default changed since: it is stale)."""
    setting, variant, _ = spec
    if "error" in row:
        return False
    if variant.algorithm == FLOAT:
        return True
    return (filled_recipe(row["recipe"]), row["x_mode"], row.get("products")) == \
        (resolved_options(setting, variant), resolved_x_mode(variant), variant.products)


def same_measurement(table: Table, spec: tuple) -> dict | None:
    """A stored row of another table that is this row's measurement: same model, windows and evaluation, same
    setting, the same resolved recipe and X (e.g. ``smollm2``'s "optq" and ``smollm2-defaults``' "optq
    act-order" while act-order is the default; the float model's row). Returned as this table's row, with
    ``measured_in`` naming the source."""
    setting, variant, windows = spec
    key = None if variant.algorithm == FLOAT else (setting, resolved_options(setting, variant),
                                                   resolved_x_mode(variant), variant.products,
                                                   windows or table.calib_windows)
    for other in TABLES.values():
        if other is table or (other.model, other.eval_windows, other.seq_len) != \
                (table.model, table.eval_windows, table.seq_len):
            continue
        for row in load_rows(other).values():
            if "error" in row or row.get("measured_in") or (row["algorithm"] == FLOAT) != (key is None):
                continue
            if key is None or (row["setting"], filled_recipe(row["recipe"]), row["x_mode"], row.get("products"),
                               row["calibration_windows"]) == key:
                return {**row, "id": row_id(setting, variant, windows), "variant": variant.label,
                        "measured_in": other.page}
    return None


def run_row(table: Table, setting: str, variant: Variant, windows: int | None, windows_file: Path) -> dict:
    """Quantize (unless float) and evaluate one row in this process (``windows``: the row's calibration
    windows, None for the table's)."""
    from qronos_linalg.adapters.torch import quantize_causal_lm
    from qronos_linalg.adapters.torch.data import load_model
    from qronos_linalg.adapters.torch.lm import evaluate
    from qronos_linalg.adapters.torch.rotation import rotate_llama
    from qronos_linalg.options import recipe_from_options

    import numpy as np

    torch.manual_seed(0)
    calib_windows = windows or table.calib_windows
    data = torch.load(windows_file)
    model, _tokenizer, _folder = load_model(table.model)
    quant_time, options, split = 0.0, None, None
    if variant.algorithm != FLOAT:
        options = resolved_options(setting, variant)
        recipe = recipe_from_options(options)
        start = time.perf_counter()
        if SETTINGS[setting].get("hadamard", False):
            rotate_llama(model, seed=0)
        report = quantize_causal_lm(model, data["calibration"][:calib_windows], recipe,
                                    x_mode=variant.x_mode, errors=False, progress=False,
                                    product_dtype=variant.products)
        quant_time, split = time.perf_counter() - start, report["time_split_s"]
    reference = None if data["log_probs"] else load_model(table.model)[0]
    scores = {}
    for text in TEXTS:
        start = time.perf_counter()
        log_probs = np.load(data["log_probs"][text], mmap_mode="r") if data["log_probs"] else None
        if variant.algorithm == FLOAT:
            result = evaluate(model, data["eval"][text], progress=False)
            result["kl"] = 0.0
        else:
            result = evaluate(model, data["eval"][text], reference=reference, reference_log_probs=log_probs,
                              progress=False)
        scores[text] = {**result, "eval_s": time.perf_counter() - start}
    return {
        "id": row_id(setting, variant, windows),
        "setting": setting, "variant": variant.label, "algorithm": variant.algorithm,
        "x_mode": resolved_x_mode(variant),
        "recipe": options, "products": variant.products, "calibration_windows": calib_windows,
        "scores": scores, "quantization_time_s": quant_time, "time_split_s": split,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "threads": torch.get_num_threads(),
    }


def prepare(table: Table, scratch: Path, progress: bool) -> Path:
    """Token windows (calibration and both evaluation texts) and the float log-probability caches."""
    from qronos_linalg.adapters.torch.data import EVALUATION_TEXTS, load_model, text_windows
    from qronos_linalg.adapters.torch.lm import reference_log_probs

    model, tokenizer, _ = load_model(table.model)
    most = max(windows or table.calib_windows for _, _, windows in table.rows)
    evaluation = {text: text_windows(tokenizer, EVALUATION_TEXTS[text], table.seq_len, table.eval_windows)
                  for text in TEXTS}
    vocabulary = model.get_output_embeddings().weight.shape[0]
    size = table.eval_windows * (table.seq_len - 1) * vocabulary * 2
    log_probs = {}
    if size <= MAX_REFERENCE_CACHE_BYTES:
        for text, windows in evaluation.items():
            path = cache_root() / f"logprobs-{table.model}-{text}-{table.eval_windows}x{table.seq_len}.npy"
            reference_log_probs(model, windows, path, progress=progress)
            log_probs[text] = str(path)
    data = {"calibration": text_windows(tokenizer, "calibration", table.seq_len, most), "eval": evaluation,
            "log_probs": log_probs}
    windows_file = scratch / "windows.pt"
    torch.save(data, windows_file)
    return windows_file


def run_child(table: Table, row: tuple, windows_file: Path, threads: int) -> dict:
    """run_row in a subprocess; a crash becomes a row with an ``error``."""
    setting, variant, windows = row
    spec = json.dumps({"setting": setting, "variant": variant.__dict__, "windows": windows})
    command = [sys.executable, __file__, "--table", table.name, "--threads", str(threads), "--one", spec,
               str(windows_file)]
    child = subprocess.run(command, capture_output=True, text=True)
    if child.returncode == 0:
        return json.loads(child.stdout.strip().splitlines()[-1])
    stderr = child.stderr.strip().splitlines()
    return {"id": row_id(setting, variant, windows), "setting": setting, "variant": variant.label,
            "error": stderr[-1] if stderr else f"exit status {child.returncode}", "threads": threads}


def load_rows(table: Table) -> dict:
    if not table.results.exists():
        return {}
    stored = json.loads(table.results.read_text())
    return {row["id"]: row for row in stored["rows"]}


def store_row(table: Table, row: dict) -> None:
    """Add (or replace) one row under a lock, so concurrent runs keep each other's rows; rebuild the page."""
    with open(table.results.with_name(f".{table.results.name}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        rows = load_rows(table)
        rows[row["id"]] = row
        order = {row_id(*spec): index for index, spec in enumerate(table.rows)}
        ordered = sorted(rows.values(), key=lambda r: order.get(r["id"], len(order)))
        write_text_atomic(table.results, json.dumps({"rows": ordered}, indent=1, ensure_ascii=False) + "\n",
                          overwrite=True)
        write_text_atomic(table.path, page(table, ordered), overwrite=True)


def page(table: Table, rows: list) -> str:
    lines = [
        f"# {table.title}",
        "",
        f"Generated by `benchmarks/lm_table.py --table {table.name}` from the rows stored in "
        f"`{table.results.name}`; do not edit by hand.",
        "",
        f"- Model: {table.description}",
        f"- Calibration: {table.calib_windows} windows × {table.seq_len} tokens from the calibration articles "
        "(gensim Wikipedia sample; article i is calibration iff i % 4 == 0) unless the row says otherwise. "
        f"Evaluation: the first {table.eval_windows} non-overlapping {table.seq_len}-token windows of the "
        "Wikipedia **evaluation** articles (`wiki`, in-domain) and of gensim's Lee news corpus (`news`: 300 "
        "ABC news articles, another domain, sharing no text with the calibration articles).",
        "- ppl = perplexity; KL = mean per-token KL(p_float ‖ p_quant) in nats over the same predicted positions "
        "(the float model's log-probabilities kept in float16, renormalised: exact to about 1e-4 relative).",
        "- Recipe: the `qronos quantize-lm` defaults (docs/cli.md) unless the variant names a change; grids "
        "asymmetric min-max fitted before rounding. X (GPFQ, GPTAQ, Qronos): `float` = the true float model, "
        "`block` = the float block applied to the quantized stream (Brevitas' definition). A8/A4 settings "
        "fake-quantize every quantized linear's input per token (calibration and evaluation); Hadamard settings "
        "rotate the model first (seed 0; included in the quantization time).",
        f"- Times on {os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}) shared with other "
        f"jobs, torch {torch.__version__}, with the row's torch threads (1 unless noted); peak RSS of the row's "
        "process.",
        "",
        "| setting | variant | wiki ppl | wiki KL | news ppl | news KL | quantize (s) | peak RSS (MiB) |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    specs = {row_id(*spec): spec for spec in table.rows}
    for row in rows:
        stale = row["id"] in specs and "error" not in row and not is_current(specs[row["id"]], row)
        head = f"| {row['setting']} | {row['variant']}" + (" (stale: measured under an earlier default)" if stale else "") + (
            f" ({row['calibration_windows']} windows)" if row.get("calibration_windows") not in (None, table.calib_windows)
            and row["algorithm"] != FLOAT else "") + (" ‡" if row.get("measured_in") else "") + " |"
        if "error" in row:
            lines.append(f"{head} failed: {row['error']} | | | | | |".replace("\n", " "))
            continue
        wiki, news = row["scores"]["wiki"], row["scores"]["news"]
        lines.append(f"{head} {wiki['perplexity']:.2f} | {wiki['kl']:.4f} | {news['perplexity']:.2f} | "
                     f"{news['kl']:.4f} | {row['quantization_time_s']:.0f} | {row['peak_rss_mib']:.0f} |")
    missing = [row_id(*spec) for spec in table.rows if row_id(*spec) not in {row["id"] for row in rows}]
    if missing:
        lines += ["", "Not measured yet: " + "; ".join(missing) + "."]
    sources = sorted({row["measured_in"] for row in rows if row.get("measured_in")})
    if sources:
        lines += ["", "‡ The same recipe on the same windows as a row of " +
                  ", ".join(f"[{source}.md]({source}.md)" for source in sources) +
                  ": that measurement, copied (`--rerun` runs it again)."]
    lines += list(table.notes)
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--table", choices=list(TABLES), default="smollm2")
    parser.add_argument("--only", action="append", metavar="ROW_ID",
                        help="a row id to run (repeatable, run in the order given; see --list)")
    parser.add_argument("--match", help="run the rows whose id contains this text")
    parser.add_argument("--list", action="store_true", help="print the row ids and whether they are stored")
    parser.add_argument("--rerun", action="store_true", help="run selected rows even if stored")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of each row (default 1)")
    parser.add_argument("--one", nargs=2, metavar=("ROW_JSON", "WINDOWS_FILE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    table = TABLES[args.table]
    if args.one:
        spec = json.loads(args.one[0])
        variant = Variant(**spec["variant"])
        row = run_row(table, spec["setting"], variant, spec["windows"], Path(args.one[1]))
        print(json.dumps(row))
        return 0
    stored = load_rows(table)
    ids = [row_id(*spec) for spec in table.rows]
    current = {row_id(*spec) for spec in table.rows if row_id(*spec) in stored and is_current(spec, stored[row_id(*spec)])}
    if args.list:
        for spec in table.rows:
            identifier = row_id(*spec)
            state = "stored " if identifier in current else "stale  " if identifier in stored else "missing "
            print(state + identifier)
        return 0
    unknown = sorted(set(args.only or []) - set(ids))
    if unknown:
        parser.error(f"unknown row ids {unknown}; see --list")
    selected = [spec for spec in table.rows if not args.match or args.match in row_id(*spec)]
    if args.only:  # in the order given
        by_id = {row_id(*spec): spec for spec in selected}
        selected = [by_id[identifier] for identifier in args.only if identifier in by_id]
    todo = [spec for spec in selected if args.rerun or row_id(*spec) not in current]
    if not args.rerun:
        for spec in list(todo):
            copied = same_measurement(table, spec)
            if copied is not None:
                print(f"{copied['id']}: the same measurement as {copied['measured_in']}.json, copied", flush=True)
                store_row(table, copied)
                todo.remove(spec)
    print(f"{len(todo)} row(s) to run, {len(stored)} stored", flush=True)
    if not todo:
        return 0
    with tempfile.TemporaryDirectory() as scratch:
        windows_file = prepare(table, Path(scratch), progress=False)
        for spec in todo:
            row = run_child(table, spec, windows_file, args.threads)
            print(json.dumps(row, ensure_ascii=False), flush=True)
            store_row(table, row)
    return 0


if __name__ == "__main__":
    sys.exit(main())
