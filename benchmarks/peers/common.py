"""Shared parts of the peer-tool workers: CLI, windows file, float reference, evaluation, JSON lines.

Depends on torch + transformers only (each peer runs in its own virtual environment, without
qronos_linalg), so every peer is loaded, evaluated and reported by exactly the same code.

Experiment (the same for every peer): the fp32 SmolLM2-135M-Instruct folder; all nn.Linear inside the
decoder blocks (``model.layers``; not the embeddings, not the tied lm_head) are quantized weight-only on
an asymmetric min-max grid, setting ``w4pc`` = 4-bit per output channel, ``w3g128`` = 3-bit with groups of
128 consecutive input columns. Calibration windows and evaluation texts come from a ``torch.save``d dict
``{"calibration": (n, seq) int64, "eval": {name: (m, seq) int64, ...}}``.

Evaluation, per text: perplexity = exp(mean next-token NLL over all seq−1 predicted positions of every
window), and the mean per-token KL(p_float ‖ p_quant) = Σ_vocab p_f (log p_f − log p_q), averaged over
the same positions; the float logits come from a second copy of the float model loaded *after*
quantization (so ``peak_rss_quant_mib`` is the peak up to the end of quantization, without it).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import sys
import time
from pathlib import Path

SETTINGS = {
    "w4pc": {"bits": 4, "group_size": None},
    "w3g128": {"bits": 3, "group_size": 128},
}
DEFAULT_MODEL = str(Path.home() / ".cache" / "qronos_linalg" / "smollm2-135m-instruct-fp32")
BLOCKS = "model.layers"


def limit_threads(argv=None) -> int:
    """Read ``--threads`` early and set the thread variables before torch is imported."""
    threads = 1
    argv = sys.argv[1:] if argv is None else argv
    for i, arg in enumerate(argv):
        if arg == "--threads" and i + 1 < len(argv):
            threads = int(argv[i + 1])
        elif arg.startswith("--threads="):
            threads = int(arg.split("=", 1)[1])
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
        os.environ[var] = str(threads)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    return threads


def base_parser(description: str, algos: list[str]) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--windows", required=True, help="torch.save'd dict {calibration, eval: {name: windows}}")
    p.add_argument("--setting", required=True, choices=sorted(SETTINGS))
    p.add_argument("--algo", required=True, choices=algos)
    p.add_argument("--out", required=True, help="JSON-lines file the result row is appended to")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--model", default=DEFAULT_MODEL, help="fp32 Hugging Face folder")
    p.add_argument("--n-calibration", type=int, default=None, help="use only the first N calibration windows")
    p.add_argument("--n-eval", type=int, default=None, help="use only the first N windows of each eval text")
    p.add_argument("--tag", default="", help="free text copied into the row")
    p.add_argument("--save-weights", default=None,
                   help="torch.save the dequantized block-linear weights {name: (out, in) fp32} to this file")
    return p


def setup_torch(threads: int):
    import torch

    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass
    torch.manual_seed(0)
    return torch


def load_windows(path: str, n_calibration: int | None, n_eval: int | None):
    import torch

    data = torch.load(path, map_location="cpu", weights_only=True)
    calibration = data["calibration"].to(torch.int64)
    if n_calibration is not None:
        calibration = calibration[:n_calibration]
    evals = {name: w.to(torch.int64)[:n_eval] if n_eval is not None else w.to(torch.int64)
             for name, w in data["eval"].items()}
    for name, w in [("calibration", calibration), *evals.items()]:
        if w.ndim != 2 or w.shape[0] == 0 or w.shape[1] < 2:
            raise ValueError(f"windows {name!r} must be a non-empty (n, seq>=2) tensor, got {tuple(w.shape)}")
    return calibration.contiguous(), {k: v.contiguous() for k, v in evals.items()}


def load_float_model(folder: str):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    model.config.use_cache = False
    return model.eval()


def block_linears(model):
    """(qualified name, module) of every nn.Linear inside the decoder blocks ``model.layers``."""
    import torch.nn as nn

    out = []
    for name, module in model.model.layers.named_modules():
        if isinstance(module, nn.Linear):
            out.append((f"{BLOCKS}.{name}", module))
    return out


def save_weights(model, path: str | None) -> None:
    if path:
        import torch

        torch.save({name: m.weight.detach().clone() for name, m in block_linears(model)}, path)


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def evaluate(quant_model, float_model, evals: dict, batch_size: int = 1) -> dict:
    """Per text: perplexity of both models, mean per-token KL(p_float ‖ p_quant) (nats), token count."""
    import torch
    import torch.nn.functional as F

    results = {}
    quant_model.eval()
    float_model.eval()
    with torch.no_grad():
        for name, windows in evals.items():
            nll_q = nll_f = kl = 0.0
            tokens = 0
            for start in range(0, windows.shape[0], batch_size):
                batch = windows[start:start + batch_size]
                target = batch[:, 1:].reshape(-1)
                lq = quant_model(input_ids=batch, use_cache=False).logits[:, :-1].float()
                lq = F.log_softmax(lq.reshape(-1, lq.shape[-1]), dim=-1)
                lf = float_model(input_ids=batch, use_cache=False).logits[:, :-1].float()
                lf = F.log_softmax(lf.reshape(-1, lf.shape[-1]), dim=-1)
                nll_q += float(F.nll_loss(lq, target, reduction="sum"))
                nll_f += float(F.nll_loss(lf, target, reduction="sum"))
                kl += float((lf.exp() * (lf - lq)).sum(dim=-1).double().sum())
                tokens += target.numel()
                del lq, lf
            results[name] = {
                "ppl": math.exp(nll_q / tokens),
                "ppl_float": math.exp(nll_f / tokens),
                "kl": kl / tokens,
                "tokens": tokens,
                "windows": int(windows.shape[0]),
                "seq_len": int(windows.shape[1]),
            }
    return results


def versions(names: list[str]) -> dict:
    from importlib import metadata

    out = {"python": platform.python_version()}
    for n in names:
        try:
            out[n] = metadata.version(n)
        except metadata.PackageNotFoundError:
            out[n] = None
    return out


def emit(row: dict, out_path: str) -> None:
    line = json.dumps(row, sort_keys=False)
    print(line, flush=True)
    Path(out_path).parent.mkdir(parents=True, exist_ok=True)
    with open(out_path, "a") as f:
        f.write(line + "\n")


class Timer:
    def __enter__(self):
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.start
        return False


def check_grid(weight, codes, scale, zero, bits: int, group_size: int | None) -> dict:
    """Consistency of a dequantized weight with its (codes, scale, zero): shapes (out, in), (out, n_groups)."""
    import torch

    out_f, in_f = weight.shape
    cols = torch.arange(in_f)
    groups = torch.zeros_like(cols) if group_size is None else cols // group_size
    s = scale.reshape(out_f, -1).double()[:, groups]
    z = zero.reshape(out_f, -1).double()[:, groups]
    recon = (codes.double() - z) * s
    return {
        "max_abs_recon_err": float((recon - weight.double()).abs().max()),
        "codes_min": int(codes.min()),
        "codes_max": int(codes.max()),
        "codes_in_range": bool(codes.min() >= 0 and codes.max() <= 2 ** bits - 1),
        "zero_is_integer": bool(torch.all(zero == torch.round(zero))),
        "n_levels_used_max": int(max(len(torch.unique(row)) for row in codes[: min(8, out_f)])),
    }


def weight_bias_check(quant_model, float_model) -> dict:
    """Systematic shift of the quantized block weights: max over layers of |mean(Wq − W)| / mean|Wq − W|
    (≈ 0 for an unbiased rounding, ≈ 1 if every weight moved the same way, e.g. an off-by-one zero point)."""
    import torch

    fl = dict(block_linears(float_model))
    worst = 0.0
    rel = []
    with torch.no_grad():
        for name, m in block_linears(quant_model):
            d = m.weight.double() - fl[name].weight.double()
            worst = max(worst, float(d.mean().abs() / d.abs().mean().clamp_min(1e-30)))
            rel.append(float(d.norm() / fl[name].weight.double().norm()))
    return {"max_rel_mean_shift": worst, "mean_rel_weight_err": sum(rel) / len(rel)}


def assert_float_outside_blocks(quant_model, float_model) -> None:
    """Embeddings, final norm and lm_head must be bit-identical to the float model."""
    import torch

    fs = dict(float_model.named_parameters())
    for name, p in quant_model.named_parameters():
        if name.startswith(BLOCKS + "."):
            continue
        if name in fs and not torch.equal(p.detach().cpu(), fs[name].detach().cpu()):
            raise AssertionError(f"parameter outside the decoder blocks changed: {name}")


def plain_linear(child, weight):
    """An ``nn.Linear`` with ``child``'s shape and bias holding ``weight`` (fp32): every peer is evaluated by the
    same Hugging Face forward."""
    import torch

    linear = torch.nn.Linear(child.in_features, child.out_features, bias=child.bias is not None)
    with torch.no_grad():
        linear.weight.copy_(weight.detach().float())
        if child.bias is not None:
            linear.bias.copy_(child.bias.detach().float())
    return linear


def grid_summary(checks: list, n_layers: int, **extra) -> dict:
    """The checks of every quantized linear (``check_grid`` results) summarised for the row."""
    return {
        "n_quantized_linears": n_layers,
        "max_abs_recon_err": max(c["max_abs_recon_err"] for c in checks),
        "codes_in_range": all(c["codes_in_range"] for c in checks),
        "zero_is_integer": all(c["zero_is_integer"] for c in checks),
        "n_levels_used_max": max(c["n_levels_used_max"] for c in checks),
        **extra,
    }


def finish(model, args, grid: dict, n_linears: int, evals: dict, calibration, *, peer: str, options: dict,
           timers: dict, threads: int, packages: list[str]) -> None:
    """The end every worker shares: peak RSS of quantization, optional weights, the count check, evaluation
    against a freshly loaded float model, the JSON row (``timers``: name → Timer, reported as ``<name>_seconds``)."""
    rss_quant = peak_rss_mib()
    save_weights(model, args.save_weights)
    if grid["n_quantized_linears"] != n_linears:
        raise AssertionError(f"quantized {grid['n_quantized_linears']} linears, expected {n_linears}")
    model.config.use_cache = False
    model.eval()
    with Timer() as t_eval:
        float_model = load_float_model(args.model)
        assert_float_outside_blocks(model, float_model)
        grid.update(weight_bias_check(model, float_model))
        metrics = evaluate(model, float_model, evals)
    row = {
        "peer": peer, "algo": args.algo, "setting": args.setting, "bits": SETTINGS[args.setting]["bits"],
        "group_size": SETTINGS[args.setting]["group_size"], "options": options,
        "calibration": list(calibration.shape), "eval": metrics,
        "kl_mean": sum(m["kl"] * m["tokens"] for m in metrics.values()) / sum(m["tokens"] for m in metrics.values()),
        **{f"{name}_seconds": timer.seconds for name, timer in timers.items()},
        "eval_seconds": t_eval.seconds, "peak_rss_quant_mib": rss_quant, "peak_rss_mib": peak_rss_mib(),
        "grid_check": grid, "threads": threads, "versions": versions(packages), "tag": args.tag,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    emit(row, args.out)
