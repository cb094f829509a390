"""``qronos quantize``: quantize an ONNX model (default: the packaged MiniLM with built-in sentences)."""

from __future__ import annotations

import pathlib
import time

from qronos_linalg.cli import HelpFormatter, Settings, add_common_arguments, emit, layer_table, require, set_threads
from qronos_linalg.io import check_output, status, write_json_atomic
from qronos_linalg.options import parse_choice, parse_optional_int

from .config import DEFAULT_RECIPE, FORMATS, QuantConfig
from .errors import OnnxAdapterError

#: Settings of QuantConfig besides the recipe, in the order of its fields.
ADAPTER_KEYS = ("format", "accuracy_level", "nsamples", "include", "exclude", "external_data")


def register(subparsers) -> None:
    """Add the ``quantize`` subcommand (ModuleNotFoundError if onnx or onnxruntime is missing)."""
    require("onnx", "onnxruntime")
    p = subparsers.add_parser(
        "quantize",
        help="quantize an ONNX model's MatMul/Gemm/Conv weights (default: packaged MiniLM)",
        description="Quantize an ONNX model (default: the packaged MiniLM with built-in sentences).\n\nWrites MatMulNBits (onnxruntime) or QDQ with exactly the solver's scales, "
                    "zero points and codes. Every setting can also come from --config FILE (flags win).",
        formatter_class=HelpFormatter,
    )
    p.add_argument("model", nargs="?", help="input .onnx (omit to quantize the packaged paraphrase-MiniLM-L3-v2)")
    p.add_argument("-o", "--output", help="output .onnx (default for the MiniLM job: a name from the settings)")
    p.add_argument("--calibration", help=".npz (one array per input, first axis = samples) or a folder of "
                                         "test_data_set_* (required with MODEL)")
    settings = Settings(p, DEFAULT_RECIPE)
    onnx_group = p.add_argument_group("ONNX output and graph selection")
    defaults = QuantConfig()
    settings.add("--format", dest="format", default=defaults.format, type=parse_choice(FORMATS),
                 help="MatMulNBits (com.microsoft, onnxruntime) or standard QDQ (DequantizeLinear, opset 21)",
                 metavar="{" + ",".join(FORMATS) + "}", group=onnx_group)
    settings.add("--accuracy-level", dest="accuracy_level", default=None, type=parse_optional_int,
                 help="MatMulNBits accuracy_level attribute (0-4)", metavar="L", group=onnx_group)
    settings.add("--nsamples", dest="nsamples", default=None, type=parse_optional_int,
                 help="use a seeded random subset of this many calibration samples (none: all)", metavar="N",
                 group=onnx_group)
    settings.add("--include", dest="include", default=None, help="regex: quantize only nodes whose name matches",
                 metavar="REGEX", group=onnx_group)
    settings.add("--exclude", dest="exclude", default=None, help="regex: skip nodes whose name matches",
                 metavar="REGEX", group=onnx_group)
    settings.add_switch("--external-data", "external_data", None, "always save the tensors to OUT.data beside OUT "
                        "(default: only above protobuf's 2 GB limit)", off=("--no-external-data", "never use "
                        "external data"), group=onnx_group)
    add_common_arguments(p, settings, report_help="write the per-layer JSON report here")
    p.set_defaults(func=run_quantize, settings=settings)


def build_config(args) -> tuple[QuantConfig, dict]:
    """(QuantConfig, resolved settings): defaults, then the --config file, then explicit flags."""
    values = args.settings.resolve(args)
    recipe = args.settings.recipe(values)
    config = QuantConfig(recipe=recipe, seed=values["seed"], **{key: values[key] for key in ADAPTER_KEYS})
    return config, values


def default_output_name(config: QuantConfig) -> str:
    grid = config.recipe.grid
    groups = "pc" if grid.group_size is None else f"g{grid.group_size}"
    return f"paraphrase-MiniLM-L3-v2.{config.recipe.solver.algorithm}.w{grid.bits}{groups}.{config.format}.onnx"


def run_quantize(args) -> int:
    """Handler of ``qronos quantize``; every check happens before the model is read."""
    from . import minilm
    from .export import check_outputs, save_model
    from .quantize import quantize_onnx

    started = time.perf_counter()
    config, values = build_config(args)
    set_threads(values["threads"])
    if args.model is None:
        if args.calibration:
            raise OnnxAdapterError("--calibration needs a MODEL (the default MiniLM job has built-in sentences)")
        model, calibration = minilm.minilm_path(), minilm.calibration_feeds()
        output = pathlib.Path(args.output or default_output_name(config))
    else:
        if not args.output or not args.calibration:
            raise OnnxAdapterError("quantizing MODEL needs -o OUT.onnx and --calibration DATA")
        model, calibration, output = pathlib.Path(args.model), pathlib.Path(args.calibration), pathlib.Path(args.output)
        if not model.is_file():
            raise FileNotFoundError(f"model file {model} does not exist")
        if not calibration.exists():
            raise FileNotFoundError(f"calibration data {calibration} does not exist")
    check_outputs(output, overwrite=args.overwrite, external_data=config.external_data)
    report_path = None if args.report is None else check_output(args.report, overwrite=args.overwrite, what="report")
    if report_path is not None and report_path.resolve() == output.resolve():
        raise ValueError(f"--report {report_path} is the model output; choose another name")
    status(f"quantizing {model} with {config.recipe.solver.algorithm}, {config.recipe.grid.bits}-bit "
           f"{'per channel' if config.recipe.grid.group_size is None else f'groups of {config.recipe.grid.group_size}'}",
           enabled=not args.quiet)
    quantized, report = quantize_onnx(model, calibration, config, threads=values["threads"], progress=not args.quiet)
    written = save_model(quantized, output, overwrite=args.overwrite, external_data=config.external_data)
    report["output_files"] = [str(p) for p in written]
    report["size_after_file_bytes"] = sum(p.stat().st_size for p in written)
    if args.model is None:
        status("measuring sentence embeddings of float and quantized model", enabled=not args.quiet)
        float_embeddings = minilm.sentence_embeddings(model, minilm.evaluation_feeds())
        quant_embeddings = minilm.sentence_embeddings(output, minilm.evaluation_feeds())
        report["embedding_cosine_mean"] = float(minilm.cosine_similarities(float_embeddings, quant_embeddings).mean())
    report["total_time_s"] = time.perf_counter() - started
    if report_path is not None:
        write_json_atomic(report_path, report, overwrite=args.overwrite)
    emit(report, summary(report), args.json)
    return 0


def summary(report: dict) -> list[str]:
    """Human-readable table: each layer's errors, the skipped nodes and why, sizes."""
    layers = [dict(layer, format=layer["format"].split(" ")[0]) for layer in report["layers"]]
    lines = layer_table(layers, extra_columns=(("op", "op"), ("format", "format")))
    fallbacks = {layer["format"] for layer in report["layers"] if "(" in layer["format"]}
    lines += [f"  note: {f}" for f in sorted(fallbacks)]
    lines.append(f"layers quantized: {len(report['layers'])} ({report['config']['algo']}, "
                 f"{report['calibration_samples']} calibration samples, {report['time_s']:.1f} s)")
    lines.append(f"skipped: {len(report['skipped'])}")
    lines += [f"  {s['name']} ({s['op']}): {s['reason']}" for s in report["skipped"]]
    lines.append(f"ops left in float: {', '.join(report['float_ops'])}")
    after = report.get("size_after_file_bytes", report["size_after_bytes"])
    lines.append(f"size: {report['size_before_bytes'] / 1e6:.2f} MB -> {after / 1e6:.2f} MB")
    if "embedding_cosine_mean" in report:
        lines.append(f"sentence-embedding cosine similarity to float (32 held-out sentences): "
                     f"{report['embedding_cosine_mean']:.4f}")
    if "output_files" in report:
        lines.append(f"wrote {', '.join(report['output_files'])}")
    return lines


__all__ = ["register", "build_config", "run_quantize", "summary", "default_output_name"]
