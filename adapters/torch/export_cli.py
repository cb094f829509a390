"""CLI subcommand ``qronos export``: a folder written by ``quantize-lm`` → compressed-tensors or GGUF.

    qronos export DIR --format {compressed-tensors,gguf} [--gguf-type Q4_0|Q4_1|Q5_0|Q5_1|Q8_0]
                      [--dtype auto|float32|float16|bfloat16] [--gguf-template FILE] [--verify] -o OUT

The codes and grids are stored as they are (no re-quantization); every check runs before anything is
written and the output folder appears atomically (``adapters/torch/export.py``, docs/deploy.md).
"""

from __future__ import annotations

import time
from pathlib import Path

from qronos_linalg.cli import HelpFormatter, Settings, add_common_arguments, emit, require, set_threads
from qronos_linalg.io import check_output, status
from qronos_linalg.options import parse_choice, parse_int

__all__ = ["register", "export_lm", "FORMAT_NAMES", "GGUF_TYPE_NAMES", "DTYPE_CHOICES", "DEFAULT_VERIFY_WINDOWS",
           "DEFAULT_VERIFY_SEQ_LEN"]

#: The formats, block types and dtypes of ``export.py`` (repeated here so that ``--help`` imports no torch;
#: a test checks that they agree).
FORMAT_NAMES = ("compressed-tensors", "gguf")
GGUF_TYPE_NAMES = ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0")
AUTO = "auto"
DTYPE_CHOICES = (AUTO, "float32", "float16", "bfloat16")
#: --verify: windows of the Wikipedia evaluation articles the reloaded model is compared on.
DEFAULT_VERIFY_WINDOWS = 2
DEFAULT_VERIFY_SEQ_LEN = 128


def register(subparsers) -> None:
    """Add ``export`` (ModuleNotFoundError if torch, transformers or gguf is missing; compressed-tensors is
    checked when that format is asked for)."""
    require("torch", "transformers", "gguf", "safetensors")
    parser = subparsers.add_parser(
        "export", help="convert a quantize-lm folder to compressed-tensors (vLLM) or GGUF (llama.cpp)",
        formatter_class=HelpFormatter,
        description="Write the exact codes and grids of a folder saved by `qronos quantize-lm` in a format "
                    "inference engines load: compressed-tensors pack-quantized (vLLM, transformers; int4/int8, "
                    "group size dividing in_features) or GGUF (llama.cpp, ollama, LM Studio; Q4_0/Q5_0/Q8_0 for "
                    "symmetric grids, Q4_1/Q5_1 for asymmetric ones whose offsets are fp16 numbers; groups of 32 "
                    "or multiples). Quantize with --scale-dtype float16 (GGUF, or a float16 checkpoint) or "
                    "bfloat16 so that the stored scales are the solver's. See docs/deploy.md.")
    parser.add_argument("folder", metavar="DIR", type=Path, help="folder written by qronos quantize-lm")
    parser.add_argument("--format", required=True, choices=FORMAT_NAMES, help="output format")
    parser.add_argument("-o", "--output", type=Path, required=True,
                        help="output folder (must not exist unless --overwrite; its parent must)")
    settings = Settings(parser)
    group = parser.add_argument_group("format")
    settings.add("--gguf-type", dest="gguf_type", default=None, type=parse_choice(GGUF_TYPE_NAMES), group=group,
                 metavar="{" + ",".join(GGUF_TYPE_NAMES) + "}",
                 help="GGUF block type of every quantized linear (none: each grid's own: Q4_0/Q5_0/Q8_0 "
                      "symmetric, Q4_1/Q5_1 asymmetric)")
    settings.add("--dtype", dest="dtype", default=AUTO, type=parse_choice(DTYPE_CHOICES), group=group,
                 metavar="{" + ",".join(DTYPE_CHOICES) + "}",
                 help="dtype of the scales and float tensors (compressed-tensors) or of the unquantized 2-D "
                      "tensors (GGUF: float16/float32); auto: the dtype the scales were frozen in (GGUF: float16)")
    settings.add("--gguf-template", dest="gguf_template", default=None, type=Path, metavar="FILE", group=group,
                 help="the model's original GGUF, whose architecture and tokenizer metadata are copied (none: the "
                      "packaged model's own for smollm2 / gemma3-270m, else generated from the config for Llama)")
    check = parser.add_argument_group("verification")
    settings.add_switch("--verify", "verify", False, "reload the output with its reader (transformers + "
                        "compressed-tensors, or transformers' GGUF loader) and compare weights and logits",
                        off=("--no-verify", "no reload"), group=check)
    settings.add("--verify-windows", dest="verify_windows", default=DEFAULT_VERIFY_WINDOWS, type=parse_int,
                 metavar="N", group=check, help="Wikipedia evaluation windows of the logit comparison")
    settings.add("--verify-seq-len", dest="verify_seq_len", default=DEFAULT_VERIFY_SEQ_LEN, type=parse_int,
                 metavar="N", group=check, help="tokens per verification window")
    add_common_arguments(parser, settings, report_help="also write the summary (sizes, verification) as JSON here")
    parser.set_defaults(func=export_lm, settings=settings)


def _verification_windows(folder: Path, values: dict):
    """Token windows of the Wikipedia evaluation articles, tokenized with the folder's tokenizer."""
    from .data import text_windows
    from .export import _load_tokenizer

    tokenizer = _load_tokenizer(folder)
    if tokenizer is None:
        raise ValueError(f"--verify needs the tokenizer of {folder} (no tokenizer files there)")
    if values["verify_windows"] < 1 or values["verify_seq_len"] < 2:
        raise ValueError("--verify-windows must be at least 1 and --verify-seq-len at least 2")
    return text_windows(tokenizer, "evaluation", values["verify_seq_len"], values["verify_windows"])


def _size_line(sizes: dict) -> str:
    ratio = sizes["linears"] / sizes["linears_bf16"] if sizes["linears_bf16"] else float("nan")
    return (f"file {sizes['file'] / 2**20:.1f} MiB: quantized linears {sizes['linears'] / 2**20:.1f} MiB "
            f"({ratio:.3f} of their bf16 size), other tensors {sizes['other'] / 2**20:.1f} MiB")


def _verification_line(result: dict) -> str:
    return (f"reloaded with {result['reader']} in {result['load_s']:.1f} s: weights "
            f"{'exact' if result['weights_exact'] else 'DIFFER'} (grid values in {result['weight_dtype']}; max "
            f"|Δ| to float32 grid values {result['max_weight_diff']:.3g}), max |Δ logit| "
            f"{result['max_logit_diff']:.3g} to the stored model, {result['max_logit_diff_quantized']:.3g} to the "
            f"quantized model, top-1 agreement {result['top1_agreement']:.4f}")


def _scheme_text(scheme: dict) -> str:
    groups = "channel" if scheme["group_size"] is None else f"g{scheme['group_size']}"
    return f"{scheme['layers']} × int{scheme['bits']} {'sym' if scheme['symmetric'] else 'asym'} {groups}"


def export_lm(args) -> int:
    """Handler of ``qronos export``."""
    from .data import quiet_transformers
    from .export import export_folder

    started = time.perf_counter()
    values = args.settings.resolve(args)
    check_output(args.output, overwrite=args.overwrite, what="output folder")
    report_path = None if args.report is None else check_output(args.report, overwrite=args.overwrite, what="report")
    if not args.folder.is_dir():
        raise FileNotFoundError(f"quantized model folder {args.folder} does not exist")
    set_threads(values["threads"])
    if args.quiet:
        quiet_transformers()
    windows = _verification_windows(args.folder, values) if values["verify"] else None
    status(f"exporting {args.folder} to {args.format}", enabled=not args.quiet)
    summary = export_folder(args.folder, args.format, args.output, gguf_type=values["gguf_type"],
                            dtype=None if values["dtype"] == AUTO else values["dtype"],
                            template=values["gguf_template"], overwrite=args.overwrite, windows=windows)
    summary["total_time_s"] = time.perf_counter() - started
    if report_path is not None:
        from qronos_linalg.io import write_json_atomic

        write_json_atomic(report_path, summary, overwrite=args.overwrite)
    export = summary["export"]
    kind = ", ".join(f"{n} × {t}" for t, n in export["block_types"].items()) if args.format == "gguf" else \
        ", ".join(_scheme_text(scheme) for scheme in export["schemes"])
    lines = [f"wrote {args.output} ({args.format}: {kind}; float tensors {export['dtype']})",
             _size_line(summary["sizes"])]
    if summary["verification"] is not None:
        lines.append(_verification_line(summary["verification"]))
    lines.append(f"total {summary['total_time_s']:.1f} s")
    emit(summary, lines, args.json)
    return 0
