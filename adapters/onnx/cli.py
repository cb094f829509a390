"""``qronos quantize``: quantize an ONNX model (default: the packaged MiniLM with built-in sentences)."""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

from .config import ALGORITHMS, FORMATS, QuantConfig, load_config_file
from .errors import OnnxAdapterError, OutputExistsError

PER_CHANNEL_WORDS = ("none", "channel", "per-channel")
EXIT_BAD_INPUT = 2


def _group_size(text: str):
    if text.lower() in PER_CHANNEL_WORDS:
        return None
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"group size must be positive or 'none', got {text}")
    return value


def register(subparsers) -> None:
    """Add the ``quantize`` subcommand."""
    p = subparsers.add_parser(
        "quantize",
        help="quantize an ONNX model's MatMul/Gemm/Conv weights (default: packaged MiniLM)",
        description=__doc__,
    )
    p.add_argument("model", nargs="?", help="input .onnx (omit to quantize the packaged paraphrase-MiniLM-L3-v2)")
    p.add_argument("-o", "--output", help="output .onnx (default for the MiniLM job: a name from the settings)")
    p.add_argument("--calibration", help=".npz (one array per input, first axis = samples) or a folder of test_data_set_*")
    p.add_argument("--config", help="YAML or JSON file with the same keys as the flags (flags win)")
    p.add_argument("--algo", choices=ALGORITHMS)
    p.add_argument("--bits", type=int)
    p.add_argument("--group-size", type=_group_size, help="columns per group, or 'none' for per channel")
    p.add_argument("--sym", dest="sym", action="store_const", const=True, help="symmetric grid")
    p.add_argument("--asym", dest="sym", action="store_const", const=False, help="asymmetric grid (default)")
    p.add_argument("--act-order", action="store_const", const=True, help="process columns by decreasing diag(H)")
    p.add_argument("--damp", type=float, help="relative damping (default per algorithm)")
    p.add_argument("--block-size", type=int, help="solver block size (columns)")
    p.add_argument("--shrink", type=float, help="scale the min-max range by this factor in (0, 1]")
    p.add_argument("--mse", action="store_const", const=True, help="per-group MSE search of the range")
    p.add_argument("--act-bits", type=int, help="fake-quantize quantized layers' inputs (per token) during calibration")
    p.add_argument("--format", choices=FORMATS)
    p.add_argument("--accuracy-level", type=int, help="MatMulNBits accuracy_level attribute (0-4)")
    p.add_argument("--nsamples", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--include", help="regex: quantize only nodes whose name matches")
    p.add_argument("--exclude", help="regex: skip nodes whose name matches")
    p.add_argument("--external-data", action="store_const", const=True, help="always save tensors to OUT.data")
    p.add_argument("--report", help="write the per-layer JSON report here")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    p.set_defaults(func=run_quantize)


CONFIG_FLAGS = (
    "algo", "bits", "group_size", "sym", "act_order", "damp", "block_size", "shrink", "mse", "act_bits",
    "format", "accuracy_level", "nsamples", "seed", "include", "exclude", "external_data",
)


def build_config(args) -> QuantConfig:
    """Defaults, then the --config file, then explicit flags."""
    values = load_config_file(args.config) if args.config else {}
    values = {str(k).replace("-", "_"): v for k, v in values.items()}
    if "group_size" in values and isinstance(values["group_size"], str):
        values["group_size"] = _group_size(values["group_size"])
    values.update({name: getattr(args, name) for name in CONFIG_FLAGS if getattr(args, name) is not None})
    return QuantConfig.from_mapping(values)


def default_output_name(config: QuantConfig) -> str:
    groups = "pc" if config.group_size is None else f"g{config.group_size}"
    return f"paraphrase-MiniLM-L3-v2.{config.algo}.w{config.bits}{groups}.{config.format}.onnx"


def run_quantize(args) -> int:
    """Handler of ``qronos quantize``; returns the exit code (2 on bad input, nothing written)."""
    from . import minilm
    from .export import save_model
    from .quantize import quantize_onnx

    try:
        config = build_config(args)
        if args.model is None:
            if args.calibration:
                raise OnnxAdapterError("--calibration needs a MODEL (the default MiniLM job has built-in sentences)")
            model, calibration = minilm.minilm_path(), minilm.calibration_feeds()
            output = pathlib.Path(args.output or default_output_name(config))
        else:
            if not args.output or not args.calibration:
                raise OnnxAdapterError("quantizing MODEL needs -o OUT.onnx and --calibration DATA")
            model, calibration, output = args.model, args.calibration, pathlib.Path(args.output)
        for target in (output, pathlib.Path(args.report) if args.report else None):
            if target is not None and target.exists() and not args.overwrite:
                raise OutputExistsError(f"output {target} exists (pass --overwrite to replace it)")
        quantized, report = quantize_onnx(model, calibration, config)
        written = save_model(quantized, output, overwrite=args.overwrite, external_data=config.external_data)
        report["output_files"] = [str(p) for p in written]
        report["size_after_file_bytes"] = sum(p.stat().st_size for p in written)
        if args.model is None:
            float_embeddings = minilm.sentence_embeddings(model, minilm.evaluation_feeds())
            quant_embeddings = minilm.sentence_embeddings(output, minilm.evaluation_feeds())
            report["embedding_cosine_mean"] = float(minilm.cosine_similarities(float_embeddings, quant_embeddings).mean())
        if args.report:
            _write_json(report, pathlib.Path(args.report))
    except (OnnxAdapterError, OSError) as error:
        print(f"qronos quantize: error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(summary(report))
    return 0


def _write_json(report: dict, path: pathlib.Path) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(json.dumps(report, indent=2, default=str))
    temporary.replace(path)


def summary(report: dict) -> str:
    """Human-readable table: each layer's errors, the skipped nodes and why, sizes."""
    lines = [f"{'layer':<60} {'op':<7} {'shape':<11} {'format':<12} {'rel err RTN':>11} {'rel err':>8} {'time s':>7}"]
    for layer in report["layers"]:
        shape = "x".join(str(d) for d in layer["shape"])
        fmt = layer["format"].split(" ")[0]
        lines.append(
            f"{layer['name'][-60:]:<60} {layer['op']:<7} {shape:<11} {fmt:<12} "
            f"{layer['rel_error_rtn']:>11.4f} {layer['rel_error']:>8.4f} {layer['time_s']:>7.2f}"
        )
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
    return "\n".join(lines)
