"""llm-compressor 0.14 worker: ``oneshot`` with ``GPTQModifier`` (or RTN through ``QuantizationModifier``).

    python benchmarks/peers/llmcompressor_worker.py --windows FILE --setting {w4pc,w3g128} \
        --algo {gptq,rtn} --out results.jsonl --threads 1 [--actorder static|none] [--group-strategy block|group]

Runs in its own virtual environment (see benchmarks/peers/README.md); llm-compressor 0.14.0.1 pins
transformers<=5.17 and compressed-tensors==0.19.0.

Recipe: weights-only, ``type='int'``, ``symmetric=False`` (asymmetric min-max observer, the default
``observer=None`` → min-max), targets ``Linear`` with ``lm_head`` ignored (embeddings are not Linear).
w4pc: ``num_bits=4, strategy='channel'``. w3g128: ``num_bits=3`` and, because the hidden size 576 is not
a multiple of 128 and llm-compressor refuses ``strategy='group'`` then (see ``--group-strategy group``),
``strategy='block', block_structure=[1, 128]``: one (scale, zero) per output row and per 128 input
columns, the last block ragged (64 columns) — the same grid as groups of 128 with a ragged tail.
GPTQModifier defaults are kept: ``block_size=128``, ``dampening_frac=0.01`` (× mean diag H),
``actorder='static'`` (= 'weight': columns processed by decreasing diag H, groups stay in place).
The calibration windows are given as an already tokenized ``datasets.Dataset`` (``input_ids`` and an
all-ones ``attention_mask``), batch size 1, in file order (``shuffle_calibration_samples=False``);
pipeline = the default ('independent' → 'sequential' for GPTQ: one decoder layer at a time,
``propagate_error=True``).

Afterwards every quantized Linear is replaced by an ``nn.Linear`` holding the dequantized weight (codes,
scales and zero points are checked), and the model is evaluated by the shared code in common.py.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

ALGOS = ["gptq", "rtn"]


def weight_args(bits: int, group_size, group_strategy: str) -> dict:
    args = {"num_bits": bits, "type": "int", "symmetric": False}
    if group_size is None:
        args["strategy"] = "channel"
    elif group_strategy == "group":
        args.update(strategy="group", group_size=group_size)
    else:
        args.update(strategy="block", block_structure=[1, group_size])
    return args


def materialize(torch, model, bits: int, group_size):
    checks = []
    n = 0
    with torch.no_grad():
        for parent_name, parent in list(model.named_modules()):
            for child_name, child in list(parent.named_children()):
                if not isinstance(child, torch.nn.Linear) or not hasattr(child, "weight_scale"):
                    continue
                full = f"{parent_name}.{child_name}" if parent_name else child_name
                if not full.startswith(common.BLOCKS + "."):
                    raise AssertionError(f"unexpected quantized layer outside the blocks: {full}")
                w = child.weight.detach().float()
                out_f, in_f = w.shape
                scale = child.weight_scale.detach().float().reshape(out_f, -1)
                zp = child.weight_zero_point.detach().float().reshape(out_f, -1)
                cols = torch.arange(in_f)
                groups = torch.zeros_like(cols) if scale.shape[1] == 1 else cols // group_size
                bit_min = -(2 ** (bits - 1))  # compressed-tensors INT range is signed [-2^(b-1), 2^(b-1)-1]
                codes = torch.round(w / scale[:, groups] + zp[:, groups]) - bit_min
                zero = zp - bit_min  # zero point on the unsigned code range [0, 2^b-1]
                codes = codes.clamp(0, 2 ** bits - 1)
                # GPTQ leaves the dequantized weight in module.weight; RTN (QuantizationModifier) leaves the float
                # weight and fake-quantizes at run time. Either way the weight we evaluate is (codes − zero)·scale.
                deq = (codes - zero[:, groups]) * scale[:, groups]
                checks.append(common.check_grid(deq, codes, scale, zero, bits, None if scale.shape[1] == 1 else group_size))
                checks[-1]["weight_vs_dequant"] = float((deq - w).abs().max())
                setattr(parent, child_name, common.plain_linear(child, deq))
                n += 1
    return common.grid_summary(checks, n,
        max_abs_weight_vs_dequant=max(c["weight_vs_dequant"] for c in checks))


def main(argv=None):
    threads = common.limit_threads(argv)
    parser = common.base_parser("llm-compressor GPTQ worker", ALGOS)
    parser.add_argument("--actorder", choices=["static", "none"], default="static",
                        help="GPTQModifier.actorder (default 'static' = llm-compressor's default)")
    parser.add_argument("--dampening-frac", type=float, default=0.01)
    parser.add_argument("--block-size", type=int, default=128)
    parser.add_argument("--group-strategy", choices=["block", "group"], default="block",
                        help="w3g128 as strategy='block' [1,128] (ragged tail allowed) or 'group' (refused for 576)")
    args = parser.parse_args(argv)
    torch = common.setup_torch(threads)
    from datasets import Dataset
    from llmcompressor import oneshot
    from llmcompressor.modifiers.quantization import GPTQModifier, QuantizationModifier

    setting = common.SETTINGS[args.setting]
    bits, group_size = setting["bits"], setting["group_size"]
    calibration, evals = common.load_windows(args.windows, args.n_calibration, args.n_eval)

    with common.Timer() as t_load:
        model = common.load_float_model(args.model)
    n_linears = len(common.block_linears(model))

    config_groups = {"group_0": {"targets": ["Linear"], "weights": weight_args(bits, group_size, args.group_strategy)}}
    if args.algo == "gptq":
        recipe = GPTQModifier(config_groups=config_groups, ignore=["lm_head"], block_size=args.block_size,
                              dampening_frac=args.dampening_frac,
                              actorder=None if args.actorder == "none" else args.actorder)
    else:
        recipe = QuantizationModifier(config_groups=config_groups, ignore=["lm_head"])
    dataset = Dataset.from_dict({
        "input_ids": calibration.tolist(),
        "attention_mask": torch.ones_like(calibration).tolist(),
    })
    with common.Timer() as t_quant:
        with common.Timer() as t_algo:
            model = oneshot(
                model=model,
                dataset=dataset,
                recipe=recipe,
                num_calibration_samples=calibration.shape[0],
                max_seq_length=calibration.shape[1],
                shuffle_calibration_samples=False,
                batch_size=1,
            )
        grid = materialize(torch, model, bits, group_size)
    common.finish(model, args, grid, n_linears, evals, calibration, peer="llmcompressor", options={
        "weights": weight_args(bits, group_size, args.group_strategy),
        "actorder": args.actorder if args.algo == "gptq" else None,
        "dampening_frac": args.dampening_frac if args.algo == "gptq" else None,
        "block_size": args.block_size if args.algo == "gptq" else None,
        "pipeline": "sequential (default inferred), propagate_error=True"},
                  timers={"quant": t_quant, "algo": t_algo, "load": t_load}, threads=threads, packages=["torch", "llmcompressor", "compressed-tensors", "transformers", "accelerate"])


if __name__ == "__main__":
    main()
