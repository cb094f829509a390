"""CLI subcommands ``quantize-lm`` and ``eval-ppl`` (registered by ``qronos_linalg.cli``)."""

from __future__ import annotations

import argparse
import json
import math
import resource
import sys
import time
from pathlib import Path

from .actquant import SUPPORTED_ACT_BITS
from .layerwise import ALGORITHMS, QuantConfig
from .lm import X_MODES

__all__ = ["register", "quantize_lm", "eval_ppl", "DEFAULT_SEQ_LEN", "DEFAULT_CALIB_WINDOWS", "DEFAULT_EVAL_WINDOWS"]

DEFAULT_SEQ_LEN = 512
DEFAULT_CALIB_WINDOWS = 32
DEFAULT_EVAL_WINDOWS = 40


def _add_text_options(parser: argparse.ArgumentParser, default_windows: int, what: str) -> None:
    parser.add_argument("--seq-len", type=int, default=DEFAULT_SEQ_LEN, help="tokens per window")
    parser.add_argument("--windows", type=int, default=default_windows, help=f"number of {what} windows")
    parser.add_argument("--text-file", type=Path, default=None,
                        help="plain-text file used instead of the gensim Wikipedia sample; its blank-line "
                             "separated paragraphs are the articles of the documented split")


def register(subparsers) -> None:
    quantize = subparsers.add_parser("quantize-lm", help="quantize a causal LM block by block and save it")
    quantize.add_argument("model", help="'smollm2' (packaged SmolLM2-135M-Instruct), 'gemma3-270m' (packaged "
                                        "Gemma-3-270M) or a Hugging Face folder")
    quantize.add_argument("--algo", choices=ALGORITHMS, default="qronos")
    quantize.add_argument("--bits", type=int, default=4)
    quantize.add_argument("--group-size", type=int, default=None)
    quantize.add_argument("--symmetric", action="store_true")
    quantize.add_argument("--shrink", type=float, default=1.0, help="β of scaled min-max (e.g. 0.8)")
    quantize.add_argument("--damp", type=float, default=None, help="relative damping (solver default if absent)")
    quantize.add_argument("--act-order", action="store_true")
    quantize.add_argument("--act-bits", type=int, choices=SUPPORTED_ACT_BITS, default=None,
                          help="per-token dynamic asymmetric activation quantization of quantized linears")
    quantize.add_argument("--hadamard", action="store_true", help="randomized Hadamard rotation (QuaRot-style)")
    quantize.add_argument("--hadamard-seed", type=int, default=0)
    quantize.add_argument("--smoothquant", type=float, default=None, metavar="ALPHA")
    quantize.add_argument("--magr", type=float, default=None, metavar="ALPHA")
    quantize.add_argument("--x-mode", choices=X_MODES, default="float",
                          help="X = true float model ('float') or float block on quantized inputs ('block')")
    quantize.add_argument("--blocks", default=None, help="dotted path of the decoder-block ModuleList")
    quantize.add_argument("-o", "--output", type=Path, required=True)
    quantize.add_argument("--onnx", type=Path, default=None, metavar="FILE",
                          help="also export the quantized (weight-only) model to ONNX, input (1, --seq-len) → logits, "
                               "for `qronos quantize`")
    quantize.add_argument("--overwrite", action="store_true")
    quantize.add_argument("--quiet", action="store_true", help="no progress bars")
    _add_text_options(quantize, DEFAULT_CALIB_WINDOWS, "calibration")
    quantize.set_defaults(func=quantize_lm)

    evaluate = subparsers.add_parser("eval-ppl", help="perplexity of a (quantized or float) causal LM")
    evaluate.add_argument("model", help="'smollm2', 'gemma3-270m' or a folder written by quantize-lm / any HF folder")
    evaluate.add_argument("--json", type=Path, default=None, help="also write the result as JSON here")
    evaluate.add_argument("--overwrite", action="store_true")
    evaluate.add_argument("--quiet", action="store_true")
    _add_text_options(evaluate, DEFAULT_EVAL_WINDOWS, "evaluation")
    evaluate.set_defaults(func=eval_ppl)


def _windows(tokenizer, args, split: str):
    from .data import split_articles, text_windows, token_windows, window_bos

    if args.text_file is None:
        return text_windows(tokenizer, split, args.seq_len, args.windows)
    if not args.text_file.is_file():
        raise FileNotFoundError(f"--text-file {args.text_file} does not exist")
    paragraphs = [p.strip() for p in args.text_file.read_text().split("\n\n") if p.strip()]
    calibration, evaluation = split_articles(paragraphs)
    chosen = calibration if split == "calibration" else evaluation
    token_ids = tokenizer("\n\n".join(chosen), add_special_tokens=False)["input_ids"]
    return token_windows(token_ids, args.seq_len, args.windows, bos_token_id=window_bos(tokenizer))


def _peak_memory_mib() -> float:
    """Peak resident set size of this process (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def quantize_lm(args) -> int:
    import torch

    from .data import load_model
    from .lm import quantize_causal_lm
    from .rotation import rotate_llama
    from .save import save_quantized
    from .smoothquant import smooth_llama

    for target in (args.output, args.onnx):
        if target is not None and target.exists() and not args.overwrite:
            print(f"error: {target} already exists; pass --overwrite to replace it", file=sys.stderr)
            return 2
    if args.onnx is not None and (args.act_bits is not None or args.hadamard):
        print("error: --onnx exports weight-only models (no --act-bits, no --hadamard)", file=sys.stderr)
        return 2
    torch.manual_seed(0)
    config = QuantConfig(
        algorithm=args.algo, bits=args.bits, group_size=args.group_size, symmetric=args.symmetric,
        shrink=args.shrink, damp=args.damp, act_order=args.act_order, act_bits=args.act_bits,
        magr_alpha=args.magr,
    )
    model, tokenizer, folder = load_model(args.model)
    calibration = _windows(tokenizer, args, "calibration")
    start = time.perf_counter()
    transforms = {}
    if args.smoothquant is not None:
        transforms["smoothquant"] = smooth_llama(model, calibration, args.smoothquant)
    if args.hadamard:
        transforms["hadamard"] = rotate_llama(model, args.hadamard_seed)
    report = quantize_causal_lm(model, calibration, config, blocks=args.blocks, x_mode=args.x_mode,
                                progress=not args.quiet)
    report["total_time_s"] = time.perf_counter() - start
    report["peak_memory_mib"] = _peak_memory_mib()
    save_quantized(model, args.output, report, tokenizer=tokenizer, transforms=transforms,
                   base_model=str(folder), overwrite=args.overwrite)
    if args.onnx is not None:
        from .onnx_export import export_causal_lm_onnx

        export_causal_lm_onnx(model, args.onnx, seq_len=args.seq_len, overwrite=args.overwrite)
    errors = [layer["rel_error"] for layer in report["layers"]]
    print(json.dumps({
        "output": str(args.output), "onnx": None if args.onnx is None else str(args.onnx), "layers": len(errors), "quantization_time_s": round(report["total_time_s"], 2),
        "peak_memory_mib": round(report["peak_memory_mib"], 1),
        "mean_rel_error": sum(errors) / len(errors),
        "mean_rel_error_rtn": sum(layer["rel_error_rtn"] for layer in report["layers"]) / len(errors),
    }))
    return 0


def eval_ppl(args) -> int:
    from .data import PACKAGED_MODELS, load_model
    from .lm import perplexity
    from .save import load_quantized, write_json_atomic

    if args.json is not None and args.json.exists() and not args.overwrite:
        print(f"error: {args.json} already exists; pass --overwrite to replace it", file=sys.stderr)
        return 2
    if args.model in PACKAGED_MODELS:
        model, tokenizer, _ = load_model(args.model)
    else:
        from transformers import AutoTokenizer

        model, _record = load_quantized(args.model)
        tokenizer = AutoTokenizer.from_pretrained(args.model)
    windows = _windows(tokenizer, args, "evaluation")
    start = time.perf_counter()
    value = perplexity(model, windows, progress=not args.quiet)
    result = {
        "model": str(args.model), "perplexity": value, "windows": int(windows.shape[0]),
        "seq_len": int(windows.shape[1]), "eval_time_s": time.perf_counter() - start,
    }
    if not math.isfinite(value):
        print(f"error: perplexity is not finite ({value})", file=sys.stderr)
        return 1
    if args.json is not None:
        write_json_atomic(args.json, result, overwrite=args.overwrite)
    print(json.dumps(result))
    return 0
