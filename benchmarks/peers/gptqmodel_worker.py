"""GPTQModel 7.7 worker: ``GPTQModel.load(..., GPTQConfig)`` + ``model.quantize(calibration)`` on the CPU.

    python benchmarks/peers/gptqmodel_worker.py --windows FILE --setting {w4pc,w3g128} --algo gptq \
        --out results.jsonl --threads 1 [--static-groups] [--desc-act] [--no-gar] [--damp-percent 0.05]

Runs in its own virtual environment (see benchmarks/peers/README.md): gptqmodel 7.7.0 declares
torch>=2.14.1 (the CUDA 13 wheel, ~5 GB with its nvidia-* wheels; with no GPU it runs on the CPU); installed
with ``--no-deps`` next to torch 2.13.0+cpu (and without torchao/maturin/ninja) it gives bit-identical
results on this path.

Config: ``GPTQConfig(bits, group_size=-1 (w4pc) | 128 (w3g128), sym=False)`` — asymmetric min-max
(``Quantizer.find_params``: lo = min(min w, 0), hi = max(max w, 0), scale = (hi − lo)/(2^b − 1),
zero = round(−lo/scale); q = clamp(round(w/scale) + zero, 0, 2^b − 1)), the last group of the 576-wide
layers ragged (64 columns). Left at GPTQConfig's defaults unless a flag says otherwise:
``damp_percent=0.05`` (× mean diag H; auto-increment 0.01 on Cholesky failure), ``desc_act=False``,
``act_group_aware=True`` (GAR: group-aware reordering; forced off for per-channel, where GPTQModel
rejects it), ``static_groups=False`` (group scales are computed when GPTQ reaches each group, from the
error-updated weights — not frozen from the float weights; ``--static-groups`` freezes them up front and
turns GAR off, because GPTQModel's static-group lookup ignores the GAR permutation), ``true_sequential``,
block size 128, ``mse=0`` (plain min-max), ``offload_to_disk=False``. Calibration: the windows as
``{"input_ids", "attention_mask"}`` dicts, batch size 1, ``calibration_sort=None`` (file order).

CPU-only adjustments, nothing else: GPTQModel's device thread pool asks for 2 'model_loader:cpu'
workers but sizes the 'cpu' pool to (cores+1)//2 = 1 on this 2-core machine and refuses to start; the
pool is rebuilt with 1 worker each. The quantized model is saved and reloaded (GPTQModel's own route; the
in-memory model right after ``quantize()`` is off by one zero-point step, see below), the packed
``TorchLinear`` modules (fp16 on reload, as GPTQModel requires) are dequantized with the eager
``PackableQuantLinear.dequantize_weight`` (no torch.compile), and their weights, rebuilt in fp32 from the
integer codes and the stored fp16 scales, are put into a fresh fp32 float model for the evaluation.
"""

from __future__ import annotations

import gc
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

ALGOS = ["gptq"]


def patch_thread_pool():
    import gptqmodel
    from gptqmodel.utils.linalg_warmup import run_torch_linalg_warmup
    from gptqmodel.utils.threadx import DeviceThreadPool, WarmUpCtx, WarmupTask

    def build():
        return DeviceThreadPool(
            inference_mode=True,
            warmups={"cpu": WarmupTask(run_torch_linalg_warmup, scope=WarmUpCtx.THREAD_AND_DEVICE)},
            workers={"cuda:per": 4, "xpu:per": 1, "npu:per": 1, "mps": 8, "cpu": 1, "model_loader:cpu": 1},
            empty_cache_every_n=512,
        )

    gptqmodel._build_device_thread_pool = build


def extract_weights(torch, hf_model, bits: int):
    """{block-linear name: fp32 (out, in) weight} from the packed modules of the reloaded GPTQModel model.

    The packed weight is dequantized by GPTQModel itself (eager ``PackableQuantLinear.dequantize_weight``,
    checked against the module's forward), in fp16 like its kernel. The fp32 weight is then
    ``round(w16 / scale) · scale`` with the stored (fp16) scale: the integer ``code − zero`` is recovered
    exactly and only the final product is formed in fp32."""
    from gptqmodel.nn_modules.qlinear import PackableQuantLinear

    weights = {}
    worst_grid = 0.0
    span_max = 0
    levels_max = 0
    scale_dtype = None
    with torch.no_grad():
        for name, child in hf_model.named_modules():
            if not isinstance(child, PackableQuantLinear):
                continue
            if not name.startswith(common.BLOCKS + "."):
                raise AssertionError(f"unexpected quantized layer outside the blocks: {name}")
            w16 = PackableQuantLinear.dequantize_weight(child).detach().t().contiguous()  # GPTQ layout is (in, out)
            if not weights:
                probe = torch.randn(3, child.in_features, dtype=w16.dtype)
                ref = child(probe) - (child.bias if child.bias is not None else 0)
                if not torch.allclose((probe.float() @ w16.float().t()), ref.float(), rtol=1e-2, atol=1e-2):
                    raise AssertionError(f"dequantized weight of {name} does not reproduce its forward")
            out_f, in_f = w16.shape
            scale_dtype = str(child.scales.dtype)
            scales = child.scales.detach().float().t().reshape(out_f, -1)  # (out, n_groups)
            g_idx = child.g_idx.detach().long()
            k = w16.float() / scales[:, g_idx]  # = code − zero, integral up to the fp16 product rounding
            worst_grid = max(worst_grid, float((k - torch.round(k)).abs().max()))
            k = torch.round(k)
            for g in range(scales.shape[1]):
                kg = k[:, g_idx == g]
                span_max = max(span_max, int((kg.max(1).values - kg.min(1).values).max()))
            w = k * scales[:, g_idx]
            levels_max = max(levels_max, max(len(torch.unique(r)) for r in w[: min(8, out_f)]))
            weights[name] = w
    return weights, {
        "n_quantized_linears": len(weights),
        "max_abs_noninteger_code": worst_grid,  # |w16/scale − round(w16/scale)|
        "codes_in_range": span_max <= 2 ** bits - 1,
        "max_code_span": span_max,
        "n_levels_used_max": levels_max,
        "scale_dtype": scale_dtype,
    }


def main(argv=None):
    threads = common.limit_threads(argv)
    os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
    parser = common.base_parser("GPTQModel GPTQ worker", ALGOS)
    parser.add_argument("--damp-percent", type=float, default=None, help="default: GPTQConfig's (0.05)")
    parser.add_argument("--desc-act", action="store_true", help="act-order (GPTQConfig default False)")
    parser.add_argument("--no-gar", action="store_true", help="act_group_aware=False (default True for groups)")
    parser.add_argument("--scratch", default=None, help="folder for the temporary saved checkpoint")
    parser.add_argument("--static-groups", action="store_true",
                        help="freeze group scales from the float weights (implies --no-gar)")
    args = parser.parse_args(argv)
    torch = common.setup_torch(threads)
    import warnings

    warnings.filterwarnings("ignore")
    patch_thread_pool()
    from pathlib import Path

    import gptqmodel.looper.loop_processor as loop_processor
    from gptqmodel import BACKEND, GPTQConfig, GPTQModel

    # GPTQModel writes a per-run log into the relative folder ./logs; keep it out of the working directory
    loop_processor._PROJECT_LOG_DIR = Path(args.scratch or tempfile.gettempdir()) / "gptqmodel-logs"

    setting = common.SETTINGS[args.setting]
    bits, group_size = setting["bits"], setting["group_size"]
    calibration, evals = common.load_windows(args.windows, args.n_calibration, args.n_eval)

    gar = group_size is not None and not args.no_gar and not args.static_groups and not args.desc_act
    kwargs = dict(bits=bits, group_size=-1 if group_size is None else group_size, sym=False,
                  desc_act=args.desc_act, act_group_aware=gar, static_groups=args.static_groups,
                  offload_to_disk=False)
    if args.damp_percent is not None:
        kwargs["damp_percent"] = args.damp_percent
    cfg = GPTQConfig(**kwargs)
    cal = [{"input_ids": w.tolist(), "attention_mask": [1] * len(w)} for w in calibration]

    with common.Timer() as t_load:
        qmodel = GPTQModel.load(args.model, cfg, device="cpu", dtype=torch.float32)
    n_linears = len(common.block_linears(qmodel.model))
    with common.Timer() as t_quant:
        with common.Timer() as t_algo:
            qmodel.quantize(cal, batch_size=1, calibration_sort=None)
    # GPTQModel's route to a usable model is quantize -> save -> load: right after quantize() the packed
    # modules still hold GPTQ-v1 zero points (stored as zero − 1) that the in-memory Torch kernel reads as
    # v2, which shifts every weight by one step (measured: perplexity ~2e8); the load converts v1 -> v2.
    with common.Timer() as t_reload, tempfile.TemporaryDirectory(dir=args.scratch) as tmp:
        qmodel.save(tmp)
        del qmodel
        gc.collect()
        qmodel = GPTQModel.load(tmp, device="cpu", backend=BACKEND.TORCH, dtype=torch.float16)  # TorchLinear: fp16/bf16 only; the scales are saved in fp16
        weights, grid = extract_weights(torch, qmodel.model, bits)
        del qmodel
        gc.collect()
        # the evaluated model: the fp32 float model with the quantized block weights put in (GPTQModel's reload
        # is fp16 throughout, embeddings, norms and lm_head included)
        model = common.load_float_model(args.model)
        with torch.no_grad():
            for name, linear in common.block_linears(model):
                linear.weight.copy_(weights.pop(name))
        if weights:
            raise AssertionError(f"quantized weights without a target: {sorted(weights)[:3]}")
    common.finish(model, args, grid, n_linears, evals, calibration, peer="gptqmodel", options={
        "damp_percent": cfg.damp_percent, "damp_auto_increment": cfg.damp_auto_increment, "desc_act": cfg.desc_act,
        "act_group_aware": cfg.act_group_aware, "static_groups": cfg.static_groups,
        "true_sequential": cfg.true_sequential, "mse": cfg.mse},
                  timers={"quant": t_quant, "algo": t_algo, "load": t_load, "save_reload": t_reload}, threads=threads, packages=["torch", "gptqmodel", "transformers", "accelerate"])


if __name__ == "__main__":
    main()
