"""Brevitas 0.13 worker: GPTQ, GPFQ or Qronos on the decoder-block linears of the float model.

    python benchmarks/peers/brevitas_worker.py --windows FILE --setting {w4pc,w3g128} \
        --algo {rtn,gptq,gpfq,qronos} --out results.jsonl --threads 1 [--gpxq-mode block|model] [--act-order]

Runs in its own virtual environment (see benchmarks/peers/README.md). It follows Brevitas' own LLM
entry point (``brevitas_examples/llm/main.py``) step by step, without its data loading:

1. quantizers from ``brevitas_examples.common.generative.quantize.generate_quantizers`` with
   ``weight_quant_format='int'``, ``weight_scale_precision='float_scale'``, ``weight_param_method='stats'``
   (min-max), ``weight_quant_type='asym'``, granularity ``per_channel`` (w4pc) or ``per_group`` with
   ``weight_group_size=128`` (w3g128), ``weight_scaling_impl_type='parameter_from_stats'`` (main.py's
   default: the scale and zero point are computed once from the float weights and then frozen),
   ``scaling_min_val=1e-4`` (the CLI default) and ``quantize_weight_zero_point=True`` (integer zero
   point, like our grid; the CLI default is False = float zero point; ``--float-zero-point`` restores it);
2. ``layerwise_quantize`` with the ``lm_head`` black-listed and ``quantize_embedding=False``;
3. one forward on the first calibration window initialises the frozen scales (as main.py does);
4. ``apply_gptq`` / ``apply_gpfq`` / ``apply_qronos`` from ``brevitas_examples.llm.llm_quant.gpxq``
   with ``block_name='model.layers'`` (``--gpxq-mode block``, Brevitas' fast path) or ``None``
   (``--gpxq-mode model``: the whole model is re-run for every layer; very slow on CPU), with the CLI
   defaults ``act_order=False`` (``--act-order`` turns it on), ``use_quant_activations=False``,
   ``create_weight_orig=True``, ``qronos_alpha=1e-6``; the calibration loader yields one window per
   batch (``--calibration-batch-size`` default 1).

Brevitas' block path moves tensors to ``'cuda'`` (``send_to_device(args, 'cuda')``); on this CPU-only
machine that module-level helper is redirected to the CPU, nothing else is changed.

The quantized linears are then replaced by plain ``nn.Linear`` holding Brevitas' dequantized weights
(the integer codes, scales and zero points are checked for consistency and reported), so the evaluation
runs the same Hugging Face model code as every other peer.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

ALGOS = ["rtn", "gptq", "gpfq", "qronos"]


def build_quantizers(torch, bits: int, group_size, integer_zero_point: bool, scaling_min_val: float):
    """The layer map main.py builds, from the LLM CLI defaults with our weight settings substituted."""
    from brevitas_examples.common.generative.quantize import generate_quant_maps, generate_quantizers
    from brevitas_examples.llm.llm_args import create_args_parser

    a = create_args_parser().parse_args([])  # input/attention quantization stays off (input_bit_width=None)
    quantizers = generate_quantizers(
        weight_bit_width=bits,
        weight_param_method="stats",
        weight_scale_precision="float_scale",
        weight_quant_type="asym",
        weight_quant_granularity="per_channel" if group_size is None else "per_group",
        weight_group_size=group_size if group_size is not None else a.weight_group_size,
        weight_group_dim=a.weight_group_dim,
        weight_scaling_impl_type="parameter_from_stats",
        quantize_weight_zero_point=integer_zero_point,
        weight_quant_format="int",
        input_bit_width=a.input_bit_width,
        input_quant_format=a.input_quant_format,
        input_scale_precision=a.input_scale_precision,
        input_scale_type=a.input_scale_type,
        input_param_method=a.input_param_method,
        input_quant_type=a.input_quant_type,
        input_quant_granularity=a.input_quant_granularity,
        input_group_size=a.input_group_size,
        attn_quant_config=a.attn_quant_config,
        attn_bit_width=a.attn_bit_width,
        attn_quant_format=a.attn_quant_format,
        attn_scale_precision=a.attn_scale_precision,
        attn_scale_type=a.attn_scale_type,
        attn_param_method=a.attn_param_method,
        attn_quant_type=a.attn_quant_type,
        attn_quant_granularity=a.attn_quant_granularity,
        attn_group_size=a.attn_group_size,
        quantize_input_zero_point=a.quantize_input_zero_point,
        scale_rounding_func_type=a.scale_rounding_func_type,
        quant_attn_mode="sdpa",
        scaling_min_val=scaling_min_val,
        weight_kwargs={},
        input_kwargs={},
    )
    if a.input_bit_width is not None:
        raise AssertionError("Brevitas CLI default changed: input quantization would be on")
    return generate_quant_maps(**quantizers, dtype=torch.float32, device="cpu", quantize_embedding=False)


def patch_cpu_block_path():
    """brevitas_examples' block_optimization sends cached block inputs to 'cuda'; keep them on the CPU."""
    import brevitas_examples.llm.llm_quant.gpxq as gpxq_mod

    original = gpxq_mod.send_to_device
    gpxq_mod.send_to_device = lambda obj, device, *a, **k: original(obj, "cpu", *a, **k)


def run_gpxq(torch, model, calibration, algo: str, mode: str, act_order: bool, alpha: float):
    from brevitas_examples.llm.llm_quant.gpxq import apply_gpfq, apply_gptq, apply_qronos

    loader = [{"input_ids": calibration[i:i + 1]} for i in range(calibration.shape[0])]
    block_name = common.BLOCKS if mode == "block" else None
    if algo == "gptq":
        apply_gptq(model, loader, act_order=act_order, use_quant_activations=False, create_weight_orig=True,
                   block_name=block_name, buffer_device="cpu")
    elif algo == "gpfq":
        apply_gpfq(model, loader, act_order=act_order, block_name=block_name, buffer_device="cpu")
    elif algo == "qronos":
        apply_qronos(model, loader, alpha=alpha, act_order=act_order, block_name=block_name, buffer_device="cpu")


def materialize(torch, model, bits: int, group_size):
    """Swap every QuantLinear for an nn.Linear with its dequantized weight; return grid checks."""
    import brevitas.nn as qnn

    checks = []
    n_layers = 0
    with torch.no_grad():
        for parent_name, parent in list(model.named_modules()):
            for child_name, child in list(parent.named_children()):
                if not isinstance(child, qnn.QuantLinear):
                    continue
                full = f"{parent_name}.{child_name}" if parent_name else child_name
                if not full.startswith(common.BLOCKS + "."):
                    raise AssertionError(f"unexpected quantized layer outside the blocks: {full}")
                qt = child.quant_weight()
                if group_size is None:
                    value, scale, zero = qt.value, qt.scale, qt.zero_point  # (out,in), (out,1), (out,1)
                else:
                    value = qt.value  # expanded (out, in)
                    scale = qt.scale_.reshape(value.shape[0], -1)  # (out, n_groups)
                    zero = qt.zero_point_.reshape(value.shape[0], -1)
                cols = torch.arange(value.shape[1])
                groups = torch.zeros_like(cols) if group_size is None else cols // group_size
                codes = torch.round(value / scale.reshape(value.shape[0], -1)[:, groups]
                                    + zero.reshape(value.shape[0], -1)[:, groups])
                checks.append(common.check_grid(value, codes, scale, zero, bits, group_size))
                setattr(parent, child_name, common.plain_linear(child, value))
                n_layers += 1
    return common.grid_summary(checks, n_layers)


def main(argv=None):
    threads = common.limit_threads(argv)
    parser = common.base_parser("Brevitas GPxQ/Qronos worker", ALGOS)
    parser.add_argument("--gpxq-mode", choices=["block", "model"], default="block",
                        help="block: model.layers one by one (cached quantized inputs); model: whole model per layer")
    parser.add_argument("--act-order", action="store_true", help="Brevitas --gpxq-act-order (default off)")
    parser.add_argument("--qronos-alpha", type=float, default=1e-6)
    parser.add_argument("--float-zero-point", action="store_true",
                        help="Brevitas CLI default: zero point not rounded to an integer")
    parser.add_argument("--scaling-min-val", type=float, default=1e-4)
    args = parser.parse_args(argv)
    torch = common.setup_torch(threads)
    import warnings

    warnings.filterwarnings("ignore", message=".*fast_hadamard_transform.*")
    setting = common.SETTINGS[args.setting]
    bits, group_size = setting["bits"], setting["group_size"]
    calibration, evals = common.load_windows(args.windows, args.n_calibration, args.n_eval)

    with common.Timer() as t_load:
        model = common.load_float_model(args.model)
    n_linears = len(common.block_linears(model))

    with common.Timer() as t_quant:
        from brevitas.graph.quantize import layerwise_quantize

        layer_map = build_quantizers(torch, bits, group_size, not args.float_zero_point, args.scaling_min_val)
        model = layerwise_quantize(model=model, compute_layer_map=layer_map, name_blacklist=["lm_head"])
        model.eval()
        model.tie_weights()
        with torch.no_grad():  # initialise the frozen (parameter_from_stats) scales, as main.py does
            model(input_ids=calibration[:1], use_cache=False)
        patch_cpu_block_path()
        with common.Timer() as t_algo:
            run_gpxq(torch, model, calibration, args.algo, args.gpxq_mode, args.act_order, args.qronos_alpha)
        grid = materialize(torch, model, bits, group_size)
    common.finish(model, args, grid, n_linears, evals, calibration, peer="brevitas", options={
        "gpxq_mode": args.gpxq_mode if args.algo != "rtn" else None, "act_order": args.act_order,
        "qronos_alpha": args.qronos_alpha if args.algo == "qronos" else None,
        "integer_zero_point": not args.float_zero_point, "scaling_min_val": args.scaling_min_val,
        "weight_scaling_impl_type": "parameter_from_stats"},
                  timers={"quant": t_quant, "algo": t_algo, "load": t_load}, threads=threads, packages=["torch", "brevitas", "transformers", "accelerate"])


if __name__ == "__main__":
    main()
