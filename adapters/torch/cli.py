"""CLI subcommands ``quantize-lm`` and ``eval-ppl`` (entry points of the ``qronos`` command)."""

from __future__ import annotations

import importlib.util
import math
import resource
import tempfile
import time
from pathlib import Path

from qronos_linalg.cli import HelpFormatter, Settings, add_common_arguments, emit, layer_table, require, set_threads
from qronos_linalg.io import check_output, status, write_json_atomic
from qronos_linalg.options import parse_choice, parse_float, parse_int, parse_optional_int, parse_optional_float
from qronos_linalg.recipe import Recipe

from . import DEFAULT_DIST_TIMEOUT_S, DEFAULT_HESSIAN_SEQUENCES, SOLVER_X_MODES, X_MODES

__all__ = ["register", "quantize_lm", "evaluate_lm", "DEFAULT_SEQ_LEN", "DEFAULT_CALIB_WINDOWS",
           "DEFAULT_EVAL_WINDOWS", "DEFAULT_RECIPE"]

DEFAULT_SEQ_LEN = 512
DEFAULT_CALIB_WINDOWS = 128
DEFAULT_EVAL_WINDOWS = 40
#: The adapter's default recipe: Qronos, 4-bit asymmetric per-channel.
DEFAULT_RECIPE = Recipe()
#: Output formats of quantize-lm: ``auto`` = compressed-tensors where the recipe fits it, else dense.
OUTPUT_FORMATS = ("auto", "dense", "compressed-tensors", "gguf")
#: The dtype a format stores the grid's scales in, when the recipe freezes none (exact for fp32 models).
FORMAT_SCALE_DTYPES = {"compressed-tensors": "float32", "gguf": "float16"}
#: Names of the built-in evaluation texts (``data.EVALUATION_TEXTS``; listed here so that help needs no torch).
EVALUATION_TEXT_NAMES = ("wiki", "news")
MODEL_HELP = "'smollm2' (packaged SmolLM2-135M-Instruct), 'gemma3-270m' (packaged Gemma-3-270M) or a Hugging Face folder"


def _add_text_options(settings: Settings, parser, default_windows: int, what: str) -> None:
    group = parser.add_argument_group(f"{what} text")
    settings.add("--seq-len", dest="seq_len", default=DEFAULT_SEQ_LEN, type=parse_int, help="tokens per window",
                 metavar="N", group=group)
    settings.add("--windows", dest="windows", default=default_windows, type=parse_int,
                 help=f"number of {what} windows", metavar="N", group=group)
    settings.add("--text-file", dest="text_file", default=None, type=Path, metavar="FILE", group=group,
                 help="plain-text file instead of the gensim Wikipedia sample; its blank-line separated "
                      "paragraphs are the articles of the documented split (none: Wikipedia)")


def register(subparsers) -> None:
    """Add ``quantize-lm`` and ``eval-ppl`` (ModuleNotFoundError if torch or transformers is missing)."""
    require("torch", "transformers")
    quantize = subparsers.add_parser(
        "quantize-lm", help="quantize a causal LM block by block and save it", formatter_class=HelpFormatter,
        description="Quantize every linear of a causal LM's decoder blocks with the two-stream block pipeline "
                    "(docs/torch.md) and save a Hugging Face folder with the exact codes and grids.")
    quantize.add_argument("model", help=MODEL_HELP)
    quantize.add_argument("-o", "--output", type=Path, required=True, help="output folder (must not exist unless "
                                                                           "--overwrite; its parent must)")
    quantize.add_argument("--format", choices=OUTPUT_FORMATS, default="auto",
                          help="output format: compressed-tensors pack-quantized (vLLM, transformers), GGUF (llama.cpp; "
                               "see --gguf-type), or dense (fp32 weights + codes); auto = compressed-tensors for 4- and "
                               "8-bit weight-only recipes whose groups fit, else dense (default: auto; docs/deploy.md)")
    quantize.add_argument("--gguf-type", default=None, metavar="TYPE",
                          help="GGUF block type (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0; default: the grid's natural one)")
    quantize.add_argument("--onnx", type=Path, default=None, metavar="FILE",
                          help="also export the quantized (weight-only) model to ONNX, input (1, --seq-len) → logits, "
                               "for `qronos quantize`")
    settings = Settings(quantize, DEFAULT_RECIPE)
    lm_group = quantize.add_argument_group("language-model pipeline")
    settings.add("--x-mode", dest="x_mode", default=None, type=_parse_x_mode, group=lm_group,
                 metavar="{" + ",".join(("default",) + X_MODES) + "}",
                 help="X = the true float model ('float') or the float block on quantized inputs ('block'); "
                      "default: the solver's (" + (", ".join(f"{name} {mode}" for name, mode in SOLVER_X_MODES.items())
                                                   + ", " if SOLVER_X_MODES else "") + "float otherwise)")
    settings.add_switch("--hadamard", "hadamard", False, "randomized Hadamard rotation first (QuaRot-style)",
                        off=("--no-hadamard", "no rotation"), group=lm_group)
    settings.add("--hadamard-seed", dest="hadamard_seed", default=0, type=parse_int, metavar="N", group=lm_group,
                 help="seed of the Hadamard signs")
    settings.add("--smoothquant", dest="smoothquant", default=None, type=parse_optional_float, metavar="ALPHA",
                 group=lm_group, help="SmoothQuant migration strength α in [0, 1] (none: off)")
    settings.add("--blocks", dest="blocks", default=None, metavar="PATH", group=lm_group,
                 help="dotted path of the decoder-block ModuleList (none: found automatically)")
    settings.add("--hessian-sequences", dest="hessian_sequences", default=DEFAULT_HESSIAN_SEQUENCES,
                 type=parse_optional_int, metavar="N", group=lm_group,
                 help="YAQA and yaqa-qronos: the first N calibration windows give the Kronecker factors (one "
                      "forward and backward of the float model each; none: every calibration window)")
    settings.add_switch("--onload", "onload", False, "read one decoder block at a time from the checkpoint's "
                        "safetensors, write it out and free it (memory independent of depth; dense output in "
                        "shards; docs/scale.md)", off=("--no-onload", "load the whole model (default)"),
                        group=lm_group)
    settings.add("--dist-timeout", dest="dist_timeout", default=DEFAULT_DIST_TIMEOUT_S, type=parse_float, metavar="S",
                 group=lm_group, help="under torchrun (data-parallel calibration, docs/scale.md): seconds a collective "
                                      "waits for the other ranks before the run fails")
    _add_text_options(settings, quantize, DEFAULT_CALIB_WINDOWS, "calibration")
    add_common_arguments(quantize, settings, report_help="also write the per-layer JSON report here, with each "
                         "layer's output errors against RTN: they need the float stream and G, H_float, so RTN "
                         "and OPTQ run calibration forwards they otherwise skip (the folder always gets the report, "
                         "without errors unless --report)")
    quantize.set_defaults(func=quantize_lm, settings=settings)

    evaluate = subparsers.add_parser(
        "eval", aliases=["eval-ppl"], formatter_class=HelpFormatter,
        help="perplexity and KL to the float model of a (quantized or float) causal LM, on two texts",
        description="Perplexity and mean per-token KL(p_float ‖ p_model) on the in-domain Wikipedia evaluation "
                    "articles ('wiki') and on out-of-domain news ('news'); see docs/torch.md.")
    evaluate.add_argument("model", help=MODEL_HELP + ", or a folder written by quantize-lm")
    eval_settings = Settings(evaluate)
    eval_group = evaluate.add_argument_group("evaluation")
    eval_settings.add("--texts", dest="texts", default=",".join(EVALUATION_TEXT_NAMES), type=_text_names,
                      metavar="NAMES", group=eval_group,
                      help=f"comma-separated evaluation texts: {', '.join(EVALUATION_TEXT_NAMES)} (ignored with "
                           f"--text-file)")
    eval_settings.add("--reference", dest="reference", default="auto", metavar="MODEL|auto|none", group=eval_group,
                      help="the float model of the KL: 'auto' = the base model recorded by quantize-lm (none for a "
                           "float model), 'none' = no KL, or a packaged name / Hugging Face folder")
    _add_text_options(eval_settings, evaluate, DEFAULT_EVAL_WINDOWS, "evaluation")
    add_common_arguments(evaluate, eval_settings, report_help="also write the result as JSON here")
    evaluate.set_defaults(func=evaluate_lm, settings=eval_settings)


def _text_names(text: str) -> tuple[str, ...]:
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    unknown = [name for name in names if name not in EVALUATION_TEXT_NAMES]
    if unknown or not names:
        raise ValueError(f"must be a comma-separated list of {EVALUATION_TEXT_NAMES}")
    return names


def _check_text_file(values: dict) -> None:
    text_file = values["text_file"]
    if text_file is not None and not Path(text_file).is_file():
        raise FileNotFoundError(f"--text-file {text_file} does not exist")
    for key in ("seq_len", "windows"):
        if values[key] < 1 or (key == "seq_len" and values[key] < 2):
            raise ValueError(f"--{key.replace('_', '-')} must be at least {2 if key == 'seq_len' else 1}, "
                             f"got {values[key]}")


def _windows(tokenizer, values: dict, split: str):
    """Windows of a split of the built-in texts (``data.SPLITS``), or of ``--text-file``'s split."""
    from .data import split_articles, text_windows, token_windows, window_bos

    if values["text_file"] is None:
        return text_windows(tokenizer, split, values["seq_len"], values["windows"])
    try:
        text = Path(values["text_file"]).read_text()
    except UnicodeDecodeError as error:
        raise ValueError(f"--text-file {values['text_file']} is not UTF-8 text: {error}") from None
    paragraphs = [p.strip() for p in text.split("\n\n") if p.strip()]
    calibration, evaluation = split_articles(paragraphs)
    chosen = calibration if split == "calibration" else evaluation
    token_ids = tokenizer("\n\n".join(chosen), add_special_tokens=False)["input_ids"]
    return token_windows(token_ids, values["seq_len"], values["windows"], bos_token_id=window_bos(tokenizer))


def _peak_memory_mib() -> float:
    """Peak resident set size of this process (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def quantize_lm(args) -> int:
    """``qronos quantize-lm``; under torchrun (WORLD_SIZE > 1) one rank of a data-parallel run, in which
    rank 0 writes the outputs and prints the summary."""
    from .distributed import DataParallel, launched_distributed

    timeout_s = args.settings.resolve(args)["dist_timeout"]
    if not timeout_s > 0:
        raise ValueError(f"--dist-timeout must be positive, got {timeout_s}")
    parallel = DataParallel.initialize(timeout_s=timeout_s) if launched_distributed() else None
    try:
        status = _quantize_lm(args, parallel)
        if parallel is not None:
            parallel.finish()
        return status
    finally:
        if parallel is not None:
            parallel.close()


def _quantize_lm(args, parallel) -> int:
    import torch

    from .data import check_model_name, load_tokenizer, model_folder, quiet_transformers
    from .smoothquant import check_smoothquant_alpha

    started = time.perf_counter()
    values = args.settings.resolve(args)
    recipe = args.settings.recipe(values)
    check_smoothquant_alpha(values["smoothquant"])
    _check_text_file(values)
    if values["hessian_sequences"] is not None and values["hessian_sequences"] < 1:
        raise ValueError(f"--hessian-sequences must be at least 1, got {values['hessian_sequences']}")
    check_model_name(args.model)
    check_output(args.output, overwrite=args.overwrite, what="output folder")
    report_path = None if args.report is None else check_output(args.report, overwrite=args.overwrite, what="report")
    if args.onnx is not None:
        check_output(args.onnx, overwrite=args.overwrite, what="ONNX output")
        if recipe.act_bits is not None or values["hadamard"]:
            raise ValueError("--onnx exports weight-only models (no --act-bits, no --hadamard)")
        if importlib.util.find_spec("onnxscript") is None:
            raise ModuleNotFoundError("--onnx needs onnxscript: pip install 'qronos_linalg[lm]'")
    set_threads(values["threads"])
    torch.manual_seed(values["seed"])
    main_rank = parallel is None or parallel.is_main
    quiet = args.quiet or not main_rank
    if quiet:
        quiet_transformers()
    if args.gguf_type is not None and args.format != "gguf":
        raise ValueError("--gguf-type applies to --format gguf only")
    if values["onload"]:
        _check_onload(args, values, recipe)
    solver = recipe.solver.solver
    if parallel is not None and "H_out" in solver.statistics and not solver.rounds_with_gradient_factors_only:
        raise ValueError(f"--algo {recipe.solver.algorithm} does not run data-parallel yet: run one process")
    status(f"loading {args.model}", enabled=not quiet)
    folder = model_folder(args.model)
    tokenizer = load_tokenizer(folder)
    calibration = _windows(tokenizer, values, "calibration")
    if parallel is not None:
        parallel.check_same({**{key: str(value) for key, value in values.items()}, "model": args.model,
                             "output": str(args.output), "format": args.format, "gguf_type": args.gguf_type,
                             "report": str(args.report), "onnx": str(args.onnx),
                             "calibration": _fingerprint(calibration)})
        parallel.share(calibration if "H_out" not in recipe.solver.statistics
                       else calibration[: values["hessian_sequences"]])  # more ranks than windows: refused now
    start = time.perf_counter()
    if values["onload"]:
        from .onload import quantize_causal_lm_onloaded

        status("output format: dense (--onload: one block at a time from the checkpoint)", enabled=not quiet)
        report = quantize_causal_lm_onloaded(folder, calibration, recipe, args.output, tokenizer=tokenizer,
                                             overwrite=args.overwrite, base_model_name=args.model, parallel=parallel,
                                             x_mode=values["x_mode"], errors=report_path is not None,
                                             seed=values["seed"], progress=not quiet)
        report["total_time_s"] = time.perf_counter() - start
        if not main_rank:
            return 0
        report["peak_memory_mib"] = _peak_memory_mib()
    else:
        report = _quantize_in_memory(args, values, recipe, folder, tokenizer, calibration, report_path, parallel,
                                     quiet, start)
        if report is None:
            return 0
    layers = report["layers"]
    summary = {
        "output": str(args.output), "onnx": None if args.onnx is None else str(args.onnx), "layers": len(layers),
        "quantization_time_s": round(report["total_time_s"], 2), "peak_memory_mib": round(report["peak_memory_mib"], 1),
        "mean_rel_error": _mean(layer["rel_error"] for layer in layers),
        "mean_rel_error_rtn": _mean(layer["rel_error_rtn"] for layer in layers),
        "recipe": report["recipe"], "x_mode": report["x_mode"],
        "calibration_windows": report["calibration_windows"], "seq_len": report["calibration_seq_len"],
        "world_size": report["world_size"],
    }
    if report_path is not None:
        write_json_atomic(report_path, {**summary, "layers": layers}, overwrite=args.overwrite)
    lines = layer_table(layers) + [
        f"layers quantized: {len(layers)} ({recipe.solver.algorithm}, {summary['calibration_windows']} × {summary['seq_len']} "
        f"calibration tokens, x_mode {report['x_mode']}, {report['total_time_s']:.1f} s, peak RSS "
        f"{report['peak_memory_mib']:.0f} MiB" + (f", {report['world_size']} ranks" if parallel else "") + ")",
        f"mean relative output error: {summary['mean_rel_error']:.4f} (RTN on the same grids: "
        f"{summary['mean_rel_error_rtn']:.4f})" if summary["mean_rel_error"] is not None else
        "layer output errors: not computed (pass --report FILE for them)",
        f"wrote {args.output}" + (f" and {args.onnx}" if args.onnx is not None else ""),
        f"total {time.perf_counter() - started:.1f} s",
    ]
    emit(summary, lines, args.json)
    return 0


def _quantize_in_memory(args, values: dict, recipe: Recipe, folder, tokenizer, calibration, report_path, parallel,
                        quiet: bool, start: float) -> dict | None:
    """Load the whole model, quantize it and write the output in its format; the report (None on ranks
    other than 0, which write nothing)."""
    from .data import load_float_model
    from .lm import quantize_causal_lm
    from .rotation import rotate_llama
    from .smoothquant import smooth_llama

    model = load_float_model(folder)
    output_format, recipe = _output_format(args.format, args.gguf_type, recipe, values, model, values["blocks"])
    status(f"output format: {output_format}", enabled=not quiet)
    transforms = {}
    if values["smoothquant"] is not None:
        transforms["smoothquant"] = smooth_llama(model, calibration, values["smoothquant"])
    if values["hadamard"]:
        transforms["hadamard"] = rotate_llama(model, values["hadamard_seed"])
    report = quantize_causal_lm(model, calibration, recipe, blocks=values["blocks"], x_mode=values["x_mode"],
                                errors=report_path is not None or "H_out" in recipe.solver.statistics,
                                gradient_windows=values["hessian_sequences"], seed=values["seed"],
                                progress=not quiet, parallel=parallel)
    report["total_time_s"] = time.perf_counter() - start
    if parallel is not None and not parallel.is_main:
        return None
    report["peak_memory_mib"] = _peak_memory_mib()
    report["format"] = output_format
    _write_output(output_format, args, model, report, tokenizer, transforms, folder)
    if args.onnx is not None:
        from .onnx_export import export_causal_lm_onnx

        export_causal_lm_onnx(model, args.onnx, seq_len=values["seq_len"], overwrite=args.overwrite)
    return report


def _check_onload(args, values: dict, recipe: Recipe) -> None:
    """ValueError for what block-by-block onloading cannot do (before anything is loaded)."""
    if "H_out" in recipe.solver.statistics:
        raise ValueError(f"--onload: {recipe.solver.algorithm} needs the gradients of the whole model (YAQA's factors); "
                         "load it fully (no --onload)")
    if values["hadamard"] or values["smoothquant"] is not None:
        raise ValueError("--onload: the Hadamard rotation and SmoothQuant transform the whole model; load it fully")
    if args.format not in ("auto", "dense") or args.onnx is not None:
        raise ValueError("--onload writes the dense folder (in shards); convert it with `qronos export` "
                         "(no --format other than dense, no --onnx)")
    if values["blocks"] is not None:
        raise ValueError("--onload finds the decoder blocks itself (no --blocks)")


def _parse_x_mode(text: str) -> str | None:
    """One of X_MODES, or "default" (the solver's)."""
    return None if text.strip().lower() in ("default", "none") else parse_choice(X_MODES)(text)


def _fingerprint(windows) -> str:
    """A digest of the calibration token ids (the ranks must calibrate on the same text)."""
    import hashlib

    return hashlib.sha256(windows.numpy().tobytes()).hexdigest()


def _output_format(requested: str, gguf_type, recipe: Recipe, values: dict, model, blocks) -> tuple[str, Recipe]:
    """(format, recipe): ``auto`` resolved, and the grid frozen in the format's scale dtype; ValueError (before
    any calibration) where the recipe cannot be stored in the requested format."""
    import dataclasses

    from .export import check_grid_spec
    from .layerwise import supported_layers
    from .lm import resolve_block_list

    if requested == "dense":
        return "dense", recipe
    candidates = ("compressed-tensors",) if requested == "auto" else (requested,)
    reason = None
    if values["hadamard"]:
        reason = "no export format holds an online rotation"
    elif recipe.act_bits is not None and requested in ("auto", "gguf"):
        reason = ("GGUF stores weights only; compressed-tensors holds activation quantization "
                  "(--format compressed-tensors)" if requested == "gguf" else "activation quantization")
    _, block_list = resolve_block_list(model, blocks)
    widths = [layer.weight[0].numel() for block in block_list for layer in supported_layers(block).values()]
    for candidate in candidates:
        grid = recipe.grid
        if grid.scale_dtype is None:
            grid = dataclasses.replace(grid, scale_dtype=FORMAT_SCALE_DTYPES[candidate])
        try:
            if reason is None:
                check_grid_spec(candidate, grid, widths, gguf_type=gguf_type)
        except ValueError as error:
            reason = str(error)
        if reason is None:
            return candidate, dataclasses.replace(recipe, grid=grid)
    if requested == "auto":
        return "dense", recipe
    raise ValueError(f"--format {requested}: {reason}")


def _write_output(output_format: str, args, model, report: dict, tokenizer, transforms: dict, folder) -> None:
    """Write the quantized model as ``output_format`` at ``args.output`` (quantization.json and the
    per-layer report beside it in every format)."""
    from .save import quantization_record, save_quantized

    if output_format == "dense":
        save_quantized(model, args.output, report, tokenizer=tokenizer, transforms=transforms,
                       base_model=str(folder), base_model_name=args.model, overwrite=args.overwrite)
        return
    from . import export

    results = report["results"]
    record = quantization_record(report, layers=export.layer_records(results), input_transforms={},
                                 transforms=transforms, base_model=str(folder), base_model_name=args.model)
    summary = {key: value for key, value in report.items() if key != "results"}
    if output_format == "compressed-tensors":
        export.write_compressed_tensors(model, results, args.output, tokenizer=tokenizer, record=record,
                                        report=summary, overwrite=args.overwrite)
        return
    with tempfile.TemporaryDirectory() as scratch:
        template = export.packaged_template(record, Path(scratch))
        export.write_gguf(model, results, args.output, gguf_type=args.gguf_type, template=template,
                          tokenizer=tokenizer, record=record, report=summary, overwrite=args.overwrite)


def _mean(values) -> float | None:
    values = [value for value in values if value is not None]
    return sum(values) / len(values) if values else None


def _reference_model(model_argument: str, record: dict | None, choice: str):
    """The float model of the KL, or None (see ``--reference``)."""
    from .data import PACKAGED_MODELS, check_model_name, load_float_model, model_folder

    if choice == "none" or (choice == "auto" and record is None):
        return None
    if choice != "auto":
        check_model_name(choice)
        return load_float_model(model_folder(choice))
    name = record.get("base_model_name")
    if name in PACKAGED_MODELS:
        return load_float_model(model_folder(name))
    base = record.get("base_model")
    if not base or not (Path(base) / "config.json").is_file():
        raise FileNotFoundError(f"the base model recorded in {model_argument}/quantization.json ({base!r}) is not a "
                                "model folder here; pass --reference MODEL or --reference none")
    return load_float_model(Path(base))


def evaluate_lm(args) -> int:
    """Handler of ``qronos eval`` (alias ``eval-ppl``)."""
    from .data import EVALUATION_TEXTS, PACKAGED_MODELS, check_model_name, load_float_model, load_tokenizer, \
        model_folder, quiet_transformers
    from .lm import evaluate
    from .save import load_quantized

    values = args.settings.resolve(args)
    _check_text_file(values)
    check_model_name(args.model)
    if values["reference"] not in ("auto", "none"):
        check_model_name(values["reference"])
    report_path = None if args.report is None else check_output(args.report, overwrite=args.overwrite, what="report")
    set_threads(values["threads"])
    if args.quiet:
        quiet_transformers()
    status(f"loading {args.model}", enabled=not args.quiet)
    folder = model_folder(args.model)
    tokenizer = load_tokenizer(folder)
    if values["text_file"] is not None:
        texts = {Path(values["text_file"]).name: _windows(tokenizer, values, "evaluation")}
    else:
        texts = {name: _windows(tokenizer, values, EVALUATION_TEXTS[name]) for name in values["texts"]}
    if args.model in PACKAGED_MODELS:
        model, record = load_float_model(folder), None
    else:
        model, record = load_quantized(folder)
    reference = _reference_model(args.model, record, values["reference"])
    result = {"model": str(args.model), "reference": None if reference is None else values["reference"],
              "seq_len": values["seq_len"], "texts": {}}
    lines = []
    for name, windows in texts.items():
        start = time.perf_counter()
        scores = evaluate(model, windows, reference=reference, progress=not args.quiet)
        if not math.isfinite(scores["perplexity"]):
            raise ValueError(f"perplexity on {name} is not finite ({scores['perplexity']}): the model's outputs "
                             "overflow")
        result["texts"][name] = {**scores, "windows": int(windows.shape[0]), "eval_time_s": time.perf_counter() - start}
        kl = "" if scores["kl"] is None else f", KL to float {scores['kl']:.4f} nats/token"
        lines.append(f"{name}: perplexity {scores['perplexity']:.4f}{kl} ({windows.shape[0]} × {windows.shape[1]} "
                     f"tokens, {result['texts'][name]['eval_time_s']:.1f} s)")
    if report_path is not None:
        write_json_atomic(report_path, result, overwrite=args.overwrite)
    emit(result, lines, args.json)
    return 0
