"""Block-sequential two-stream quantization of a causal language model.

The calibration hidden states are held twice: the **float stream** (inputs of block b in the float
model) and the **quantized stream** (inputs of block b in the model whose blocks < b are quantized).
For each block, its linears are quantized group after group (q/k/v, o, gate/up, down for a Llama
block), with ``X̃`` from the quantized block on the quantized stream and ``X`` from

- ``x_mode="float"``: the float block on the float stream (the true float model), or
- ``x_mode="block"``: the float block on the quantized stream (as Brevitas does);

``x_mode=None`` takes the solver's default (:data:`~qronos_linalg.adapters.torch.SOLVER_X_MODES`: block for
Qronos, by measurement; float for GPFQ and GPTAQ);

then both streams advance through their block. Memory: one block's inputs for the calibration set per
stream, plus one float copy of the current block.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections import Counter
from pathlib import Path

import torch
from torch import nn

from qronos_linalg.io import progress as progress_bar
from qronos_linalg.recipe import Recipe

from . import X_MODES, default_x_mode
from .actquant import InputTransform
from .hessians import kronecker_factors
from .hooks import StopForward, run_until_stopped, temporary_hooks
from .layerwise import PhaseTimer, float_copy, layer_weight_matrix, needed_statistics, quantize_layers_in_block, \
    set_layer_weight, solve_layer, supported_layers

__all__ = [
    "find_block_list",
    "resolve_block_list",
    "capture_block_inputs",
    "quantize_causal_lm",
    "evaluate",
    "reference_log_probs",
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


def capture_block_inputs(model: nn.Module, block_list: nn.ModuleList, windows: torch.Tensor, batch_size: int,
                         onloader=None):
    """``(hidden, contexts)``: the hidden states entering the first block, one tensor per batch of token
    windows (n × seq), and ``contexts[b][i] = (other positional args, keyword args)`` that block b receives
    for batch i. Blocks may differ in these (Gemma 3 alternates sliding-window and global attention, with
    different masks and rotary tables), so each block's are recorded. They depend on the batch's shape
    only (causal masks and rotary tables of token ids without padding), so one float forward, stopped at
    the last block, records them for the first batch of each shape, and every other batch runs only the
    embeddings (it stops at the first block). The contexts are shared references, not copies. With an
    ``onloader`` (:class:`~.onload.BlockOnloader`) each block that runs is loaded just before and released
    after."""
    hidden, contexts = [], [[] for _ in block_list]
    recorded: dict[tuple, list] = {}  # batch shape → the (args, kwargs) of every block
    last = len(block_list) - 1

    def recorder(index: int):
        def hook(module, args, kwargs):
            if not args:
                raise ValueError(f"{type(module).__name__} received no positional hidden-states argument")
            shape = tuple(args[0].shape)
            if index == 0:
                hidden.append(args[0])
                if shape in recorded:
                    raise StopForward
                recorded[shape] = []
            recorded[shape].append((args[1:], kwargs))
            if index == last:
                raise StopForward

        return hook

    blocks = dict(enumerate(block_list))
    load, release = onloader.hooks() if onloader is not None else (None, None)
    with contextlib.ExitStack() as stack, torch.no_grad():
        stack.enter_context(temporary_hooks(blocks, recorder, with_kwargs=True))
        if onloader is not None:  # after the recorder, which may stop the forward before the block runs
            stack.enter_context(temporary_hooks(blocks, load, with_kwargs=True))
            stack.enter_context(temporary_hooks(blocks, release, kind="post", with_kwargs=True))
        for start in range(0, windows.shape[0], batch_size):
            batch = windows[start : start + batch_size]
            run_until_stopped(lambda: model(input_ids=batch, use_cache=False))
    for state in hidden:
        for index, context in enumerate(recorded[tuple(state.shape)]):
            contexts[index].append(context)
    return hidden, contexts


def _block_call(block: nn.Module, hidden: torch.Tensor, context: tuple):
    args, kwargs = context
    return lambda: block(hidden, *args, **kwargs)


def _checked(states: list, label: str, block_name: str) -> list:
    for state in states:
        if not torch.isfinite(state).all():
            raise ValueError(f"non-finite hidden states in the {label} stream after block {block_name!r}")
    return states


def quantize_causal_lm(
    model: nn.Module,
    calibration: torch.Tensor | None,
    recipe: Recipe,
    *,
    blocks: str | None = None,
    x_mode: str | None = None,
    batch_size: int = 1,
    stats_dtype: str = "float64",
    product_dtype: str | None = None,
    errors: bool = True,
    gradient_windows: int | None = None,
    seed: int = 0,
    progress: bool = True,
    on_block=None,
    parallel=None,
    onloader=None,
) -> dict:
    """Quantize every supported layer inside the decoder blocks of ``model`` in place.

    ``calibration``: token windows (n_windows × seq_len, int64). Layers outside the blocks (embeddings,
    lm_head) stay float. With ``recipe.act_bits`` a per-token activation quantizer is installed on every
    quantized layer (kept after the call: evaluation uses it). ``errors``: the report's per-layer output
    errors (they need G and H_float, hence the float stream, for every solver). Work done per block: the
    float stream (only where X is needed: G, or the errors) advances by one forward that also captures X
    for every layer; the quantized stream runs once per layer group, stopped at the group, and once more
    to advance (a submodule whose layers are all quantized runs once more per batch, its output reused
    by the later runs). A recipe that needs no statistics (RTN) without errors runs no calibration forward at
    all, and ``calibration`` may then be None. YAQA (``recipe`` needing H_out) instead takes each layer's
    Kronecker factors from one forward and backward of the float model per calibration window (the first
    ``gradient_windows``; None: all), with labels sampled from its own softmax (``seed``; :mod:`.hessians`),
    and rounds every layer with them; its report's errors are YAQA's objective from the same factors.
    ``yaqa-qronos`` takes H_out from that gradient pass and H, G from the two streams, like Qronos (not
    data-parallel or onloaded yet). ``on_block(index, float_stream, quant_stream)`` sees both
    streams (lists of hidden-state batches; the float one None where it is not kept) after each block.
    ``parallel`` (a :class:`~.distributed.DataParallel`, one per rank): this rank runs on its share of
    ``calibration`` (the same full set on every rank), statistics are reduced to each layer's owner, which
    solves it and broadcasts the solution; every rank ends with the same quantized model and report (its
    layers record their ``owner``), and only rank 0 shows progress. ``onloader`` (a
    :class:`~.onload.BlockOnloader`; ``model`` then a skeleton on ``meta``): each block is read from the
    checkpoint before it runs and written and freed once quantized; the report's ``results`` stay empty.
    Returns the report (``layers``: one entry per layer; ``results``: ``{name: QuantResult}``;
    ``time_split_s``: seconds per phase).
    """
    if not isinstance(recipe, Recipe):
        raise TypeError(f"recipe must be a qronos_linalg.recipe.Recipe, got {type(recipe).__name__}")
    x_mode = default_x_mode(recipe.solver.algorithm) if x_mode is None else x_mode
    if x_mode not in X_MODES:
        raise ValueError(f"x_mode must be one of {X_MODES}, got {x_mode!r}")
    statistics = needed_statistics(recipe, errors)
    if statistics and (not isinstance(calibration, torch.Tensor) or calibration.ndim != 2
                       or calibration.shape[0] == 0):
        raise ValueError("calibration must be a non-empty 2-D tensor of token ids (n_windows × seq_len)")
    if gradient_windows is not None and gradient_windows < 1:
        raise ValueError(f"gradient_windows must be at least 1 (or None: every window), got {gradient_windows}")
    gradients = "H_out" in statistics  # YAQA's factors from the float model's gradients
    streams = bool(statistics) and not recipe.solver.solver.rounds_with_gradient_factors_only
    if gradients and streams and (parallel is not None or onloader is not None):
        raise ValueError(f"{recipe.solver.algorithm} runs in one process with the whole model loaded "
                         "(not data-parallel, no onloading)")
    if gradients and not streams:  # the gradient windows are all this run needs
        calibration = calibration[:gradient_windows]
    blocks_name, block_list = resolve_block_list(model, blocks)
    windows = calibration
    if parallel is not None:
        progress = progress and parallel.is_main
        if statistics:
            calibration = parallel.share(calibration)
    model.eval()
    start = time.perf_counter()
    timer = PhaseTimer()
    factors = None
    if gradients and onloader is not None:
        raise ValueError("YAQA needs the gradients of the whole model, not one block at a time")
    if gradients:  # the float model's gradients, before any activation quantizer exists
        with timer.phase("gradients"):
            factors = kronecker_factors(model, calibration[:gradient_windows], _block_layers(block_list, blocks_name),
                                        seed=seed, progress=progress, average=parallel is None,
                                        first_window=0 if parallel is None else parallel.first_window(windows))
    if recipe.act_bits is not None:
        for block in block_list:
            for layer in supported_layers(block).values():
                _add_act_quantizer(layer, recipe.act_bits)
    bar = progress_bar(sum(len(supported_layers(b)) for b in block_list), "quantize", "layer", enabled=progress)
    if factors is not None and not streams:
        outcome = _round_with_factors(block_list, blocks_name, recipe, factors, errors, timer, bar, parallel)
    elif streams:
        output_factors = None if factors is None else {name: factor.H_out for name, factor in factors.items()}
        del factors  # yaqa-qronos keeps H_out only (its H and G come from the streams)
        outcome = _two_stream_pipeline(model, block_list, blocks_name, calibration, recipe, x_mode=x_mode,
                                       batch_size=batch_size, stats_dtype=stats_dtype, product_dtype=product_dtype,
                                       errors=errors, timer=timer, bar=bar, on_block=on_block, parallel=parallel,
                                       onloader=onloader, output_factors=output_factors)
    else:
        outcome = _round_without_calibration(block_list, blocks_name, recipe, timer, bar, onloader)
    results = {name: result for name, (result, _) in outcome.items() if result is not None}
    reports = [report for _, report in outcome.values()]
    bar.close()
    return {
        "blocks": blocks_name,
        "x_mode": x_mode,
        "calibration_windows": 0 if windows is None else int(windows.shape[0]),
        "calibration_seq_len": 0 if windows is None else int(windows.shape[1]),
        "world_size": 1 if parallel is None else parallel.world_size,
        "calibration_forwards": bool(statistics),
        "recipe": recipe.resolved().to_dict(),
        "statistics": list(statistics),
        "quantization_time_s": time.perf_counter() - start,
        "time_split_s": dict(timer.seconds),
        "algorithms": dict(Counter(report["algorithm"] for report in reports)),
        "layers": reports,
        "results": results,
    }


def _block_layers(block_list, blocks_name: str) -> dict:
    """``{full name: layer}`` of every supported layer inside the blocks."""
    return {f"{blocks_name}.{index}.{name}": layer for index, block in enumerate(block_list)
            for name, layer in supported_layers(block).items()}


def _round_with_factors(block_list, blocks_name: str, recipe: Recipe, factors: dict, errors: bool, timer: PhaseTimer,
                        bar, parallel=None) -> dict:
    """YAQA: every layer rounded with its Kronecker factors (from the float model; no streams needed).
    Data-parallel: the ranks' factor sums are reduced to each layer's owner, which averages them and solves
    its layers while the others solve theirs; then the solutions are broadcast."""
    layers = _block_layers(block_list, blocks_name)
    owned = layers
    if parallel is not None:
        owners = {name: parallel.owner(name, *reversed(layer_weight_matrix(layer).shape))
                  for name, layer in layers.items()}
        with timer.phase("reduce"):
            for name, factor in factors.items():
                factor.count = parallel.reduce([factor.H, factor.H_out], factor.count, {owners[name]}, name)
        owned = {name: layer for name, layer in layers.items() if owners[name] == parallel.rank}
    outcome = {}
    for name, layer in owned.items():
        factor = factors.pop(name)
        with timer.phase("solve"):
            outcome[name] = solve_layer(layer, factor if parallel is None else factor.finish(), recipe, name=name,
                                        errors=errors)
        bar.update(1)
    if parallel is not None:
        with timer.phase("broadcast"):
            outcome = parallel.share_solutions(list(layers), outcome)
        bar.update(len(layers) - len(owned))
    for name, (result, _) in outcome.items():
        set_layer_weight(layers[name], result.weight)
    return outcome


def _round_without_calibration(block_list, blocks_name: str, recipe: Recipe, timer: PhaseTimer, bar,
                               onloader=None) -> dict:
    """A recipe without statistics (RTN, no errors): every layer rounded from its weights alone."""
    outcome = {}
    for index, block in enumerate(block_list):
        if onloader is not None:
            onloader.load(index)
        solved = {}
        for name, layer in supported_layers(block).items():
            with timer.phase("solve"):
                result, report = solve_layer(layer, None, recipe, name=f"{blocks_name}.{index}.{name}", errors=False)
                set_layer_weight(layer, result.weight)
            solved[report["name"]] = (result, report)
            bar.update(1)
        outcome.update(_stored(index, solved, onloader))
    return outcome


def _stored(index: int, solved: dict, onloader) -> dict:
    """``solved`` as the outcome keeps it: as is, or with an onloader written out, freed, reports only."""
    if onloader is None:
        return solved
    onloader.store(index, solved)
    return {name: (None, report) for name, (_, report) in solved.items()}


def _two_stream_pipeline(model, block_list, blocks_name: str, calibration, recipe: Recipe, *, x_mode: str,
                         batch_size: int, stats_dtype: str, product_dtype, errors: bool, timer: PhaseTimer, bar,
                         on_block, parallel, onloader, output_factors=None) -> dict:
    """Block after block: statistics from the float and the quantized stream, solves, both streams advance
    (the float one only where X is needed). ``output_factors``: each layer's H_out (yaqa-qronos)."""
    needs_x = any(name in needed_statistics(recipe, errors) for name in ("G", "H_float"))
    with timer.phase("float_forward"):
        quant_stream, contexts = capture_block_inputs(model, block_list, calibration, batch_size, onloader)
    float_stream = (list(quant_stream) if x_mode == "float" else quant_stream) if needs_x else None
    outcome = {}
    for index, block in enumerate(block_list):
        prefix = f"{blocks_name}.{index}."
        if onloader is not None:
            onloader.load(index)
        float_block = float_copy(block) if needs_x else None
        source = float_stream if x_mode == "float" else quant_stream
        solved, float_outputs, quant_outputs = quantize_layers_in_block(
            float_block, block,
            [_block_call(float_block, *run) for run in zip(source, contexts[index])] if needs_x else None,
            [_block_call(block, *run) for run in zip(quant_stream, contexts[index])],
            recipe, prefix=prefix, stats_dtype=stats_dtype, product_dtype=product_dtype, errors=errors,
            keep_float_outputs=needs_x and x_mode == "float", advance=True, on_layer=lambda name: bar.update(1),
            timer=timer, parallel=parallel, output_factors=output_factors,
        )
        outcome.update(_stored(index, solved, onloader))
        if float_outputs is not None:
            float_stream = _checked(float_outputs, "float", prefix[:-1])
        quant_stream = _checked(quant_outputs, "quantized", prefix[:-1])
        if needs_x and x_mode == "block":
            float_stream = quant_stream
        del float_block, float_outputs, quant_outputs
        contexts[index] = None
        if on_block is not None:
            on_block(index, float_stream, quant_stream)
    return outcome


def _add_act_quantizer(layer: nn.Module, act_bits: int) -> None:
    """Give the layer's input transform (creating one if absent) ``act_bits``-bit activation quantization."""
    for hook in layer._forward_pre_hooks.values():
        if isinstance(hook, InputTransform):
            hook.act_bits = act_bits
            return
    layer.register_forward_pre_hook(InputTransform(None, act_bits))


def evaluate(model: nn.Module, windows: torch.Tensor, *, reference: nn.Module | None = None,
             reference_log_probs=None, batch_size: int = 1, progress: bool = True) -> dict:
    """Perplexity and KL to a reference over non-overlapping windows, in one pass.

    Each window of n tokens predicts its last n − 1 tokens from the logits at positions 0 … n − 2:
    ``perplexity = exp(mean −log p(token))`` and, with ``reference`` (the float model),
    ``kl = mean over the same positions of KL(p_ref ‖ p) = Σ_v p_ref(v) (log p_ref(v) − log p(v))``, the
    metric of the YAQA paper. Instead of the model, ``reference_log_probs[i]`` may give the reference's
    log-probabilities of window i (n − 1 × vocabulary, e.g. a float16 memory map computed once, see
    :func:`reference_log_probs`). Returns ``{"perplexity", "kl" (None without reference), "tokens"}``.
    """
    if windows.ndim != 2 or windows.shape[0] == 0 or windows.shape[1] < 2:
        raise ValueError("evaluation needs a non-empty n_windows × seq_len tensor with seq_len >= 2")
    model.eval()
    if reference is not None:
        reference.eval()
    total_nll, total_kl, total_tokens = 0.0, 0.0, 0
    bar = progress_bar(windows.shape[0], "evaluate", "window", enabled=progress)
    with torch.no_grad():
        for start in range(0, windows.shape[0], batch_size):
            batch = windows[start : start + batch_size]
            log_p = _log_probs(model, batch)
            targets = batch[:, 1:]
            total_nll -= float(log_p.gather(-1, targets.unsqueeze(-1)).sum())
            if reference is not None:
                log_ref = _log_probs(reference, batch)
            elif reference_log_probs is not None:  # renormalised: float16 rounding leaves Σ p ≠ 1
                log_ref = torch.log_softmax(torch.stack([
                    torch.from_numpy(reference_log_probs[i].astype("float32"))
                    for i in range(start, start + batch.shape[0])]), dim=-1)
            if reference is not None or reference_log_probs is not None:
                total_kl += float((log_ref.exp() * (log_ref - log_p)).sum())
            total_tokens += targets.numel()
            bar.update(batch.shape[0])
    bar.close()
    has_reference = reference is not None or reference_log_probs is not None
    return {"perplexity": math.exp(total_nll / total_tokens),
            "kl": total_kl / total_tokens if has_reference else None, "tokens": total_tokens}


def _log_probs(model: nn.Module, batch: torch.Tensor) -> torch.Tensor:
    """log p(next token) at positions 0 … n − 2 of each window (batch × n − 1 × vocabulary, float32)."""
    return torch.log_softmax(model(input_ids=batch, use_cache=False).logits[:, :-1].float(), dim=-1)


def reference_log_probs(model: nn.Module, windows: torch.Tensor, path, *, progress: bool = True):
    """The float model's log-probabilities of every window, stored once as a float16 ``.npy`` memory map at
    ``path`` (windows × n − 1 × vocabulary; float16 keeps log p to about 1e-3 down to p = 1e-12, so the KL
    is exact to about 1e-4) and returned read-only; an existing file of the right shape is reused."""
    import numpy as np

    from qronos_linalg.io import atomic_output

    path = Path(path)
    vocabulary = int(model.get_output_embeddings().weight.shape[0])
    shape = (windows.shape[0], windows.shape[1] - 1, vocabulary)
    if path.exists():
        stored = np.load(path, mmap_mode="r")
        if stored.shape == shape:
            return stored
    bar = progress_bar(windows.shape[0], "float log-probs", "window", enabled=progress)
    with atomic_output(path, overwrite=True) as temporary, torch.no_grad():
        target = np.lib.format.open_memmap(temporary, mode="w+", dtype=np.float16, shape=shape)
        for index in range(windows.shape[0]):
            target[index] = _log_probs(model, windows[index : index + 1])[0].to(torch.float16).numpy()
            bar.update(1)
        target.flush()
        del target
    bar.close()
    return np.load(path, mmap_mode="r")


def perplexity(model: nn.Module, windows: torch.Tensor, *, batch_size: int = 1, progress: bool = True) -> float:
    """``exp(mean token negative log-likelihood)`` over non-overlapping windows (see :func:`evaluate`)."""
    return evaluate(model, windows, batch_size=batch_size, progress=progress)["perplexity"]
