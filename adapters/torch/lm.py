"""Block-sequential two-stream quantization of a causal language model.

The calibration hidden states are held twice: the **float stream** (inputs of block b in the float
model) and the **quantized stream** (inputs of block b in the model whose blocks < b are quantized).
For each block, its linears are quantized group after group (q/k/v, o, gate/up, down for a Llama
block), with ``X̃`` from the quantized block on the quantized stream and ``X`` from

- ``x_mode="float"`` (default): the float block on the float stream (the true float model), or
- ``x_mode="block"``: the float block on the quantized stream (as Brevitas does);

then both streams advance through their block. Memory: one block's inputs for the calibration set per
stream, plus one float copy of the current block.
"""

from __future__ import annotations

import math
import sys
import time
from collections import Counter

import torch
from torch import nn

from .actquant import InputTransform
from qronos_linalg.recipe import Recipe

from . import X_MODES
from .hooks import StopForward, run_until_stopped, temporary_hooks
from .layerwise import float_copy, quantize_layers_in_block, supported_layers

__all__ = [
    "find_block_list",
    "resolve_block_list",
    "capture_block_inputs",
    "quantize_causal_lm",
    "perplexity",
]

def find_block_list(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The longest ``nn.ModuleList`` whose entries all have one class and contain a supported layer."""
    candidates = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.ModuleList) or len(module) == 0:
            continue
        if len({type(block) for block in module}) != 1:
            continue
        if not any(supported_layers(block) for block in module):
            continue
        candidates.append((len(module), name, module))
    if not candidates:
        raise ValueError(
            f"no list of decoder blocks found in {type(model).__name__} (looked for an nn.ModuleList of "
            f"same-class blocks containing Linear/Conv layers); pass it explicitly, e.g. "
            f"blocks='model.layers' (CLI: --blocks model.layers)"
        )
    length, name, module = max(candidates, key=lambda candidate: candidate[0])
    return name, module


def resolve_block_list(model: nn.Module, blocks: str | None) -> tuple[str, nn.ModuleList]:
    """``blocks`` as a dotted module path (None: :func:`find_block_list`)."""
    if blocks is None:
        return find_block_list(model)
    modules = dict(model.named_modules())
    if blocks not in modules or not isinstance(modules[blocks], nn.ModuleList):
        lists = [name for name, module in modules.items() if isinstance(module, nn.ModuleList)]
        raise ValueError(f"blocks={blocks!r} is not an nn.ModuleList of the model; its ModuleLists: {lists}")
    return blocks, modules[blocks]


def capture_block_inputs(model: nn.Module, block_list: nn.ModuleList, windows: torch.Tensor, batch_size: int):
    """``(hidden, contexts)``: the hidden states entering the first block, one tensor per batch of token
    windows (n × seq), and ``contexts[b][i] = (other positional args, keyword args)`` that block b receives
    for batch i. Blocks may differ in these (Gemma 3 alternates sliding-window and global attention, with
    different masks and rotary tables), so each block's are recorded from one float forward per batch that
    stops at the last block; they hold shared references, not copies per block."""
    hidden, contexts = [], [[] for _ in block_list]
    last = len(block_list) - 1

    def recorder(index: int):
        def hook(module, args, kwargs):
            if not args:
                raise ValueError(f"{type(module).__name__} received no positional hidden-states argument")
            if index == 0:
                hidden.append(args[0])
            contexts[index].append((args[1:], kwargs))
            if index == last:
                raise StopForward

        return hook

    with temporary_hooks(dict(enumerate(block_list)), recorder, with_kwargs=True), torch.no_grad():
        for start in range(0, windows.shape[0], batch_size):
            batch = windows[start : start + batch_size]
            run_until_stopped(lambda: model(input_ids=batch, use_cache=False))
    return hidden, contexts


def _block_call(block: nn.Module, hidden: torch.Tensor, context: tuple):
    args, kwargs = context
    return lambda: block(hidden, *args, **kwargs)


def _advance(block: nn.Module, stream: list, contexts: list, label: str, block_name: str) -> list:
    advanced = []
    with torch.no_grad():
        for hidden, context in zip(stream, contexts):
            output = _block_call(block, hidden, context)()
            hidden = output[0] if isinstance(output, (tuple, list)) else output
            if not torch.isfinite(hidden).all():
                raise ValueError(f"non-finite hidden states in the {label} stream after block {block_name!r}")
            advanced.append(hidden)
    return advanced


def quantize_causal_lm(
    model: nn.Module,
    calibration: torch.Tensor,
    recipe: Recipe,
    *,
    blocks: str | None = None,
    x_mode: str = "float",
    batch_size: int = 1,
    stats_dtype: str = "float64",
    progress: bool = True,
    on_block=None,
) -> dict:
    """Quantize every supported layer inside the decoder blocks of ``model`` in place.

    ``calibration``: token windows (n_windows × seq_len, int64). Layers outside the blocks (embeddings,
    lm_head) stay float. With ``recipe.act_bits`` a per-token activation quantizer is installed on every
    quantized layer (kept after the call: evaluation uses it). ``on_block(index, float_stream,
    quant_stream)`` sees both streams (lists of hidden-state batches) after each block advances. Returns the report (``layers``: one
    entry per layer, and ``results``: ``{name: QuantResult}``).
    """
    from tqdm import tqdm

    if not isinstance(recipe, Recipe):
        raise TypeError(f"recipe must be a qronos_linalg.recipe.Recipe, got {type(recipe).__name__}")
    if x_mode not in X_MODES:
        raise ValueError(f"x_mode must be one of {X_MODES}, got {x_mode!r}")
    if not isinstance(calibration, torch.Tensor) or calibration.ndim != 2 or calibration.shape[0] == 0:
        raise ValueError("calibration must be a non-empty 2-D tensor of token ids (n_windows × seq_len)")
    blocks_name, block_list = resolve_block_list(model, blocks)
    model.eval()
    start = time.perf_counter()
    if recipe.act_bits is not None:
        for block in block_list:
            for layer in supported_layers(block).values():
                _add_act_quantizer(layer, recipe.act_bits)
    quant_stream, contexts = capture_block_inputs(model, block_list, calibration, batch_size)
    float_stream = quant_stream if x_mode == "block" else list(quant_stream)
    results, reports = {}, []
    bar = tqdm(total=sum(len(supported_layers(b)) for b in block_list), desc="quantize", unit="layer",
               file=sys.stderr, disable=not progress)
    for index, block in enumerate(block_list):
        prefix = f"{blocks_name}.{index}."
        float_block = float_copy(block)
        outcome = quantize_layers_in_block(
            float_block, block,
            [_block_call(float_block, *run) for run in zip(float_stream, contexts[index])],
            [_block_call(block, *run) for run in zip(quant_stream, contexts[index])],
            recipe, prefix=prefix, stats_dtype=stats_dtype, on_layer=lambda name: bar.update(1),
        )
        for name, (result, report) in outcome.items():
            results[name] = result
            reports.append(report)
        if x_mode == "float":
            float_stream = _advance(float_block, float_stream, contexts[index], "float", prefix[:-1])
        quant_stream = _advance(block, quant_stream, contexts[index], "quantized", prefix[:-1])
        if x_mode == "block":
            float_stream = quant_stream
        del float_block
        contexts[index] = None
        if on_block is not None:
            on_block(index, float_stream, quant_stream)
    bar.close()
    return {
        "blocks": blocks_name,
        "x_mode": x_mode,
        "calibration_windows": int(calibration.shape[0]),
        "calibration_seq_len": int(calibration.shape[1]),
        "recipe": recipe.to_dict(),
        "quantization_time_s": time.perf_counter() - start,
        "algorithms": dict(Counter(report["algorithm"] for report in reports)),
        "layers": reports,
        "results": results,
    }


def _add_act_quantizer(layer: nn.Module, act_bits: int) -> None:
    """Give the layer's input transform (creating one if absent) ``act_bits``-bit activation quantization."""
    for hook in layer._forward_pre_hooks.values():
        if isinstance(hook, InputTransform):
            hook.act_bits = act_bits
            return
    layer.register_forward_pre_hook(InputTransform(None, act_bits))


def perplexity(model: nn.Module, windows: torch.Tensor, *, batch_size: int = 1, progress: bool = True) -> float:
    """``exp(mean token negative log-likelihood)`` over non-overlapping windows (each predicts seq−1 tokens)."""
    from tqdm import tqdm

    if windows.ndim != 2 or windows.shape[0] == 0 or windows.shape[1] < 2:
        raise ValueError("perplexity needs a non-empty n_windows × seq_len tensor with seq_len >= 2")
    model.eval()
    total_nll, total_tokens = 0.0, 0
    with torch.no_grad():
        for start in tqdm(range(0, windows.shape[0], batch_size), desc="perplexity", unit="batch",
                          file=sys.stderr, disable=not progress):
            batch = windows[start : start + batch_size]
            logits = model(input_ids=batch, use_cache=False).logits[:, :-1].float()
            nll = torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1), reduction="sum"
            )
            total_nll += float(nll)
            total_tokens += batch[:, 1:].numel()
    return math.exp(total_nll / total_tokens)
