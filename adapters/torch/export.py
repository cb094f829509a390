"""Deployment formats for a quantized causal LM: compressed-tensors ``pack-quantized`` and GGUF.

Both writers store exactly the solver's codes and grids (never re-rounded), and refuse, before writing
anything, a grid the format cannot hold. A result is anything with ``codes`` (uint8, out × in, original
column order) and ``grid`` (:class:`~qronos_linalg.UniformGrid`), e.g. the ``QuantResult`` of
``quantize_causal_lm(...)["results"]`` or a :class:`LayerCodes`; grid values are ``(code − zero)·scale``.

**compressed-tensors** (``OUT/``: ``config.json`` with ``quantization_config``, ``model.safetensors``,
tokenizer files; the format of llm-compressor, loaded by vLLM and by transformers through the
``compressed-tensors`` package). Per quantized linear ``L``:

- ``L.weight_packed`` int32 (out × ⌈in·bits/32⌉): ``32/bits`` codes per word along the input dimension,
  element j of a word at bits ``bits·j``; the word holds ``code = signed + 2^(bits−1)``, so the signed value
  compressed-tensors unpacks is ``code − 2^(bits−1)`` in [−8, 7] for int4;
- ``L.weight_scale`` (out × n_groups) in the checkpoint dtype; ``L.weight_shape`` int64 ``[out, in]``;
- ``L.weight_zero_point`` (asymmetric grids only): ``zero − 2^(bits−1)`` packed the same way along the
  *output* dimension, int32 (⌈out·bits/32⌉ × n_groups).

Value: ``(signed − zero_point)·scale = (code − zero)·scale``. int4 and int8 only (vLLM's weight-only
kernels); the group size must divide ``in_features``. Every other float tensor is stored in the same dtype.

**GGUF** (``OUT/model.gguf``; llama.cpp, ollama, LM Studio; transformers reads it with ``gguf_file=``).
Blocks of 32 weights along the input dimension, one fp16 scale ``d`` (and offset ``m``) per block:
``Q4_0``/``Q5_0``: ``d·(q − 2^(bits−1))``; ``Q8_0``: ``d·q`` with int8 ``q = code − 128``; ``Q4_1``/``Q5_1``:
``d·q + m``. A grid fits when its group size is a multiple of 32 (or per channel), the scales are exactly
fp16 numbers (freeze them first: ``GridSpec(scale_dtype="float16")``) and, for Q4_1/Q5_1, every offset
``m = −zero·scale`` is an fp16 number too: a block using two codes or more has only this one Q4_1 encoding
(``d = scale``, ``m = −zero·scale``), so an offset fp16 cannot hold is refused rather than rounded. Llama's
q/k rows are permuted to llama.cpp's rotary order (codes and scales move with their rows); Gemma's norms
are stored as ``1 + w``; norms are F32, embeddings and an untied lm_head F16 or F32. The metadata
(architecture, tokenizer) is copied from ``template``, the model's original GGUF, or for a Llama without
one generated from its config and tokenizer.

Every output folder also holds ``quantization.json`` (the settings and per-layer record, with an
``export`` entry) and ``quantization_report.json`` when a report is given. :func:`export_folder` converts
a folder written by ``qronos quantize-lm``; :func:`load_exported` and :func:`verify_export` reload an
output with its third-party reader and compare it with the in-memory model.
"""

from __future__ import annotations

import copy
import json
import math
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from qronos_linalg import UniformGrid, __version__
from qronos_linalg.grid import round_to_dtype
from qronos_linalg.io import TEMPORARY_PREFIX, atomic_output, check_output

from .actquant import install_input_transforms

__all__ = [
    "FORMATS", "STORAGE_DTYPES", "CT_BITS", "GGUF_TYPES", "GGUF_BLOCK", "GGUF_FILE", "MODEL_FILE", "LayerCodes",
    "GGUFBlock", "check_compressed_tensors", "check_gguf", "write_compressed_tensors", "write_gguf",
    "export_folder", "read_dense_folder", "load_exported", "reader_weight_dtype", "verify_export", "export_sizes",
    "pack_int32", "pack_gguf_blocks", "format_of", "check_grid_spec", "layer_records", "packaged_template",
]

COMPRESSED_TENSORS = "compressed-tensors"
GGUF = "gguf"
FORMATS = (COMPRESSED_TENSORS, GGUF)
#: dtypes a checkpoint can store its scales and float tensors in.
STORAGE_DTYPES = ("float32", "float16", "bfloat16")
#: Order in which ``dtype=None`` looks for the dtype the grid was frozen in (narrowest mantissa first).
FROZEN_DTYPE_ORDER = ("bfloat16", "float16", "float32")
TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
#: Bit widths of compressed-tensors' int weight-only schemes that vLLM runs (W4A16, W8A16).
CT_BITS = (4, 8)
CT_FORMAT = "pack-quantized"
WORD_BITS = 32
MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
GGUF_FILE = "model.gguf"
#: Weights per GGUF block of the Q4_0 … Q8_0 types.
GGUF_BLOCK = 32
GGUF_SCALE_DTYPE = "float16"
#: dtypes of GGUF's unquantized 2-D tensors (1-D ones, the norms, are always F32).
GGUF_FLOAT_DTYPES = ("float32", "float16")
#: transformers' model_type → GGUF architecture, and architectures whose metadata can be generated.
GGUF_ARCHITECTURES = {"llama": "llama", "gemma3_text": "gemma3"}
GGUF_GENERATED_ARCHITECTURES = ("llama",)
#: GGUF architectures storing RMSNorm weights as 1 + w (transformers subtracts 1 on load).
GGUF_NORM_PLUS_ONE = ("gemma3",)
#: Metadata keys a writer sets itself rather than copying from the template.
GGUF_OWN_KEYS = ("general.architecture", "general.file_type", "general.quantization_version",
                 "general.quantized_by")
QUANTIZATION_JSON = "quantization.json"
REPORT_JSON = "quantization_report.json"
RECORD_FORMAT = "qronos_linalg.quantized_lm/1"


@dataclass(frozen=True)
class LayerCodes:
    """One quantized linear: ``codes`` (uint8 tensor, out × in) on ``grid``."""

    codes: torch.Tensor
    grid: UniformGrid


@dataclass(frozen=True)
class GGUFBlock:
    """A GGUF block type of ``GGUF_BLOCK`` weights: ``bits`` per code; ``with_min``: value ``d·q + m``
    (else ``d·(q − 2^(bits−1))``, Q8_0 storing ``q − 128`` as int8); ``file_type``: llama.cpp's
    ``LlamaFileType`` for a model mostly in this type."""

    name: str
    bits: int
    with_min: bool
    file_type: int
    description: str

    @property
    def block_bytes(self) -> int:
        """Bytes per block: fp16 d (and m), the codes, Q5's fifth bits."""
        codes = GGUF_BLOCK if self.bits == 8 else GGUF_BLOCK // 2 + (GGUF_BLOCK // 8 if self.bits == 5 else 0)
        return 2 + (2 if self.with_min else 0) + codes


GGUF_TYPES = {block.name: block for block in (
    GGUFBlock("Q4_0", 4, False, 2, "4-bit symmetric (zero 8)"),
    GGUFBlock("Q4_1", 4, True, 3, "4-bit asymmetric (offset −zero·scale exactly fp16)"),
    GGUFBlock("Q5_0", 5, False, 8, "5-bit symmetric (zero 16)"),
    GGUFBlock("Q5_1", 5, True, 9, "5-bit asymmetric (offset −zero·scale exactly fp16)"),
    GGUFBlock("Q8_0", 8, False, 7, "8-bit symmetric (zero 128)"),
)}


def _supported_gguf_types() -> str:
    return ", ".join(f"{block.name} ({block.description})" for block in GGUF_TYPES.values())


# ---------------------------------------------------------------------------------------------- checks


def _numpy(values) -> np.ndarray:
    return values.detach().cpu().numpy() if isinstance(values, torch.Tensor) else np.asarray(values)


def _codes_tensor(result) -> torch.Tensor:
    codes = result.codes
    return codes if isinstance(codes, torch.Tensor) else torch.from_numpy(np.asarray(codes))


def _check_result(name: str, result) -> tuple[int, int]:
    """(out, in) of a result whose codes are a 2-D array fitting its grid."""
    codes = result.codes
    if len(codes.shape) != 2:
        raise ValueError(f"layer {name}: codes must be 2-D (out × in), got shape {tuple(codes.shape)}")
    result.grid.check_fits(codes)
    return tuple(int(size) for size in codes.shape)


def _inexact_scales(grid: UniformGrid, dtype: str) -> int:
    """How many scales of ``grid`` are not exactly ``dtype`` numbers."""
    scale = _numpy(grid.scale).astype(np.float64)
    with np.errstate(over="ignore"):
        return int((round_to_dtype(scale, dtype) != scale).sum())


def _freeze_hint(dtypes: str) -> str:
    return (f"quantize with the scales frozen before rounding (qronos quantize-lm --scale-dtype {dtypes}, "
            f"GridSpec(scale_dtype=...))")


def _check_scales_in(name: str, grid: UniformGrid, dtype: str, what: str) -> None:
    """ValueError unless every scale of ``grid`` is exactly a ``dtype`` number (so ``what`` stores the grid)."""
    inexact = _inexact_scales(grid, dtype)
    if inexact:
        raise ValueError(f"layer {name}: {inexact} of {_numpy(grid.scale).size} grid scales are not exactly {dtype} "
                         f"numbers, so {what} cannot hold the grid the solver used; {_freeze_hint(dtype)}")


def resolve_storage_dtype(results: dict, dtype: str | None, what: str) -> str:
    """``dtype`` (checked to hold every scale exactly), or for None the first of FROZEN_DTYPE_ORDER that does:
    the dtype the grid was frozen in. ValueError naming the constraint otherwise."""
    if dtype is not None:
        if dtype not in STORAGE_DTYPES:
            raise ValueError(f"dtype must be one of {STORAGE_DTYPES} (or None: the dtype the scales were frozen in), "
                             f"got {dtype!r}")
        for name, result in results.items():
            _check_scales_in(name, result.grid, dtype, f"{what} in {dtype}")
        return dtype
    for candidate in FROZEN_DTYPE_ORDER:
        if all(_inexact_scales(result.grid, candidate) == 0 for result in results.values()):
            return candidate
    name = next(name for name, result in results.items() if _inexact_scales(result.grid, "float32"))
    raise ValueError(f"layer {name}: the grid's scales are not exactly float32, float16 or bfloat16 numbers (the "
                     f"grid was not frozen in a storage dtype), so {what} cannot hold the grid the solver used; "
                     f"{_freeze_hint('bfloat16|float16|float32')}")


def _check_not_empty(results: dict) -> None:
    if not results:
        raise ValueError("no quantized layers to export (results is empty)")


def check_compressed_tensors(results: dict, *, dtype: str | None = None) -> str:
    """Raise ValueError unless every result fits compressed-tensors ``pack-quantized``: bits in CT_BITS, a group
    size dividing in_features (or per channel), scales exactly ``dtype`` numbers. Returns the checkpoint dtype
    (``dtype``, or the dtype the grid was frozen in)."""
    _check_not_empty(results)
    for name, result in results.items():
        _, in_features = _check_result(name, result)
        bits, group_size = result.grid.bits, result.grid.group_size
        if bits not in CT_BITS:
            raise ValueError(f"layer {name}: {bits}-bit weights cannot be exported to compressed-tensors "
                             f"{CT_FORMAT}: supported bits are {' and '.join(map(str, CT_BITS))} (the int4/int8 "
                             "weight-only schemes vLLM runs)")
        if group_size is not None and in_features % group_size:
            divisors = [g for g in (32, 64, 128, 256) if in_features % g == 0]
            raise ValueError(f"layer {name}: group size {group_size} does not divide its {in_features} input "
                             f"features, and compressed-tensors needs whole groups; use a group size dividing "
                             f"{in_features} ({', '.join(map(str, divisors)) or 'none of 32-256'}) or per channel")
    return resolve_storage_dtype(results, dtype, "a compressed-tensors checkpoint")


def _natural_gguf_block(name: str, grid: UniformGrid) -> GGUFBlock:
    for block in GGUF_TYPES.values():
        if block.bits == grid.bits and block.with_min != grid.symmetric:
            return block
    raise ValueError(f"layer {name}: no GGUF block type holds a {grid.bits}-bit grid; supported: "
                     f"{_supported_gguf_types()}")


def _gguf_offsets(grid: UniformGrid) -> np.ndarray:
    """``m = −zero·scale`` per row and group, in float64 (exact: zero is a small integer)."""
    return -_numpy(grid.zero).astype(np.float64) * _numpy(grid.scale).astype(np.float64)


def _check_gguf_block(name: str, result, block: GGUFBlock) -> None:
    grid = result.grid
    _, in_features = _check_result(name, result)
    if grid.bits != block.bits:
        raise ValueError(f"layer {name}: a {grid.bits}-bit grid does not fit {block.name} ({block.bits} bits); "
                         f"supported: {_supported_gguf_types()}")
    if in_features % GGUF_BLOCK:
        raise ValueError(f"layer {name}: {in_features} input features are not a multiple of the GGUF block of "
                         f"{GGUF_BLOCK}")
    if grid.group_size is not None and grid.group_size % GGUF_BLOCK:
        raise ValueError(f"layer {name}: group size {grid.group_size} is not a multiple of the GGUF block of "
                         f"{GGUF_BLOCK} weights with one scale; use group size 32 (or a multiple, or per channel)")
    if not block.with_min and not grid.symmetric:
        with_min = {4: "Q4_1", 5: "Q5_1"}.get(grid.bits)
        other = f" or {with_min} (which needs every offset −zero·scale to be an fp16 number)" if with_min else ""
        raise ValueError(f"layer {name}: {block.name} stores symmetric grids (zero {2 ** (grid.bits - 1)} "
                         f"everywhere) but this grid is asymmetric; quantize with --sym, or export to "
                         f"compressed-tensors{other}")
    _check_scales_in(name, grid, GGUF_SCALE_DTYPE, f"GGUF {block.name} (fp16 block scales)")
    if block.with_min:
        offsets = _gguf_offsets(grid)
        with np.errstate(over="ignore"):
            inexact = int((round_to_dtype(offsets, GGUF_SCALE_DTYPE) != offsets).sum())
        if inexact:
            raise ValueError(
                f"layer {name}: {block.name} stores the offset m = −zero·scale of each block as an fp16 number, and "
                f"{inexact} of {offsets.size} offsets of this grid are not fp16 numbers (a block's only {block.name} "
                f"encoding is d = scale, m = −zero·scale, so it cannot be stored exactly); use a symmetric grid "
                f"(--sym) with {'Q4_0' if block.bits == 4 else 'Q5_0'}, or compressed-tensors, which stores "
                "integer zero points")


def check_gguf(results: dict, *, gguf_type: str | None = None, dtype: str | None = None) -> tuple[dict, str]:
    """Raise ValueError unless every result fits its GGUF block type (``gguf_type`` for all layers, or None:
    each grid's natural type, GGUF_TYPES). Returns ``({layer: GGUFBlock}, dtype of the float 2-D tensors)``."""
    _check_not_empty(results)
    if gguf_type is not None and gguf_type not in GGUF_TYPES:
        raise ValueError(f"gguf_type must be one of {tuple(GGUF_TYPES)}, got {gguf_type!r}")
    dtype = GGUF_SCALE_DTYPE if dtype is None else dtype
    if dtype not in GGUF_FLOAT_DTYPES:
        raise ValueError(f"GGUF stores unquantized tensors as {' or '.join(GGUF_FLOAT_DTYPES)}, got dtype {dtype!r}")
    blocks = {}
    for name, result in results.items():
        _check_result(name, result)
        block = GGUF_TYPES[gguf_type] if gguf_type is not None else _natural_gguf_block(name, result.grid)
        _check_gguf_block(name, result, block)
        blocks[name] = block
    return blocks, dtype


def check_grid_spec(format: str, grid, in_features, *, gguf_type: str | None = None,
                    dtype: str | None = None) -> None:
    """Before any rounding: ValueError unless ``format`` can hold grids of ``grid`` (a GridSpec) on layers with
    these ``in_features`` — what ``quantize-lm --format`` checks before calibrating. The checks on the fitted
    grid itself (GGUF Q4_1/Q5_1 offsets being fp16 numbers) run on the results, before writing."""
    if format not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {format!r}")
    widths = sorted(set(int(n) for n in in_features))
    if grid.scale_dtype is None:
        needed = GGUF_SCALE_DTYPE if format == GGUF else "bfloat16|float16|float32"
        raise ValueError(f"{format} stores the grid's scales in a float dtype: {_freeze_hint(needed)}")
    if format == COMPRESSED_TENSORS:
        if grid.bits not in CT_BITS:
            raise ValueError(f"{grid.bits}-bit weights cannot be exported to compressed-tensors {CT_FORMAT}: supported "
                             f"bits are {' and '.join(map(str, CT_BITS))}")
        bad = [n for n in widths if grid.group_size is not None and n % grid.group_size]
        if bad:
            raise ValueError(f"group size {grid.group_size} does not divide the input features {bad} of some layers; "
                             "compressed-tensors needs whole groups")
        if dtype is not None and dtype not in (grid.scale_dtype, "float32"):
            raise ValueError(f"scales frozen in {grid.scale_dtype} are not all {dtype} numbers; use dtype "
                             f"{grid.scale_dtype} or float32")
        return
    block = GGUF_TYPES.get(gguf_type) if gguf_type is not None else next(
        (b for b in GGUF_TYPES.values() if b.bits == grid.bits and b.with_min != grid.symmetric), None)
    if block is None or block.bits != grid.bits:
        raise ValueError(f"no GGUF block type {gguf_type or ''} holds a {grid.bits}-bit "
                         f"{'symmetric' if grid.symmetric else 'asymmetric'} grid; supported: {_supported_gguf_types()}")
    if not block.with_min and not grid.symmetric:
        raise ValueError(f"{block.name} stores symmetric grids; quantize with --sym")
    if grid.scale_dtype != GGUF_SCALE_DTYPE:
        raise ValueError(f"GGUF stores fp16 block scales: {_freeze_hint(GGUF_SCALE_DTYPE)}")
    if grid.group_size is not None and grid.group_size % GGUF_BLOCK or any(n % GGUF_BLOCK for n in widths):
        raise ValueError(f"GGUF blocks of {GGUF_BLOCK} weights need a group size that is a multiple of {GGUF_BLOCK} "
                         f"(or per channel) and input features that are multiples of {GGUF_BLOCK}; got group size "
                         f"{grid.group_size} and input features {widths}")
    if dtype is not None and dtype not in GGUF_FLOAT_DTYPES:
        raise ValueError(f"GGUF stores unquantized tensors as {' or '.join(GGUF_FLOAT_DTYPES)}, got dtype {dtype!r}")


def _check_model_layers(model: nn.Module, results: dict, *, activations: bool = False) -> None:
    """Every result names an ``nn.Linear`` of ``model`` without an online rotation (and, unless
    ``activations``, without activation quantization), whose weight is exactly the grid's values of its codes
    (what the model computes is what the file will hold)."""
    from .save import input_transform_specs

    modules = dict(model.named_modules())
    transforms = input_transform_specs(model)
    for name, result in results.items():
        module = modules.get(name)
        if not isinstance(module, nn.Linear):
            kind = "not a module of the model" if module is None else f"a {type(module).__name__}"
            raise ValueError(f"layer {name} is {kind}; the export formats store nn.Linear weights")
        spec = transforms.get(name)
        if spec is not None and (spec.get("online_hadamard") or (spec.get("act_bits") is not None and not activations)):
            raise ValueError(_transform_refusal(name, spec))
        weight = module.weight.detach()
        if tuple(weight.shape) != tuple(result.codes.shape):
            raise ValueError(f"layer {name}: codes of shape {tuple(result.codes.shape)} do not match its weight of "
                             f"shape {tuple(weight.shape)}")
        values = result.grid.dequantize(_codes_tensor(result)).to(weight.dtype)
        if not torch.equal(values.to(weight.device), weight):
            raise ValueError(f"layer {name}: the model's weight is not the grid's value of its codes (max |Δ| "
                             f"{(values.double() - weight.double().cpu()).abs().max().item():.3g}); export the model "
                             "as quantize_causal_lm left it")


# --------------------------------------------------------------------------------------- shared writing


def _unique_state(model: nn.Module) -> dict:
    """``model.state_dict()`` without the second name of a tied tensor (transformers re-ties it on load)."""
    state, seen = {}, set()
    for key, tensor in model.state_dict().items():
        identity = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape))
        if tensor.numel() and identity in seen:
            continue
        seen.add(identity)
        state[key] = tensor
    return state


def layer_records(results: dict) -> dict:
    """quantization.json's per-layer entries from the results alone."""
    return _layer_record(results, None)["layers"]


def _layer_record(results: dict, report: dict | None) -> dict:
    """A quantization.json record from the results alone (when the caller has none)."""
    layers = {}
    for name, result in results.items():
        grid = result.grid
        layers[name] = {"shape": list(result.codes.shape), "bits": grid.bits, "group_size": grid.group_size,
                        "narrow_range": grid.narrow_range, "symmetric": grid.symmetric,
                        "algorithm": getattr(result, "algorithm", None), "damp": getattr(result, "damp", None),
                        "input_transform": {"online_hadamard": None, "act_bits": None}}
    recipe = None if report is None else report.get("recipe")
    return {"format": RECORD_FORMAT, "recipe": recipe, "transforms": {}, "input_transforms": {}, "layers": layers}


def _write_records(folder: Path, results: dict, record: dict | None, report: dict | None, export: dict) -> None:
    """quantization.json (``record`` plus an ``export`` entry) and, with a report, quantization_report.json."""
    record = dict(record) if record is not None else _layer_record(results, report)
    record["export"] = {**export, "qronos_linalg": __version__}
    (folder / QUANTIZATION_JSON).write_text(json.dumps(record, indent=2, default=str))
    if report is not None:
        summary = {key: value for key, value in report.items() if key != "results"}
        (folder / REPORT_JSON).write_text(json.dumps(summary, indent=2, default=str))


def _save_tokenizer(tokenizer, folder: Path) -> None:
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)


# ------------------------------------------------------------------------------------ compressed-tensors


def pack_int32(values: torch.Tensor, bits: int) -> torch.Tensor:
    """Unsigned ``bits``-bit values (rows × cols, bits dividing 32) packed along the columns into int32 words:
    element j of a word at bits ``bits·j`` (rows × ⌈cols·bits/32⌉; the last word padded with zeros)."""
    if WORD_BITS % bits:
        raise ValueError(f"pack_int32 packs bit widths dividing {WORD_BITS}, got {bits}")
    per_word = WORD_BITS // bits
    rows, cols = values.shape
    padded = torch.zeros(rows, math.ceil(cols / per_word) * per_word, dtype=torch.int64)
    padded[:, :cols] = values.to(torch.int64)
    shifts = torch.arange(per_word, dtype=torch.int64) * bits
    words = (padded.reshape(rows, -1, per_word) << shifts).sum(-1)
    return torch.where(words >= 2 ** 31, words - 2 ** 32, words).to(torch.int32)


def _transform_refusal(name: str, spec: dict) -> str:
    what = "an online rotation" if spec.get("online_hadamard") else "activation quantization"
    where = ("no format stores it (quantize-lm without --hadamard)" if spec.get("online_hadamard") else
             "GGUF stores weights only; compressed-tensors holds it (--format compressed-tensors)")
    return f"layer {name} has {what} ({spec}): {where}"


def _ct_scheme(result, act_bits: int | None) -> tuple:
    grid = result.grid
    return grid.bits, grid.symmetric, grid.group_size, act_bits


def _ct_quantization_config(schemes: dict, ignore: list[str], actorder: bool) -> dict:
    """config.json's ``quantization_config``, built with compressed-tensors' own classes and dumped as its
    ``ModelCompressor.update_config`` does: one config group per (bits, symmetric, group size)."""
    import compressed_tensors
    from compressed_tensors.quantization import QuantizationArgs, QuantizationConfig, QuantizationScheme

    groups = {}
    for index, ((bits, symmetric, group_size, act_bits), names) in enumerate(sorted(schemes.items(), key=str)):
        weights = QuantizationArgs(num_bits=bits, type="int", symmetric=symmetric, dynamic=False,
                                   strategy="channel" if group_size is None else "group", group_size=group_size,
                                   actorder="weight" if actorder else None)
        # this project's activation quantizer: per token, dynamic, asymmetric min-max including 0
        inputs = None if act_bits is None else QuantizationArgs(num_bits=act_bits, type="int", symmetric=False,
                                                                dynamic=True, strategy="token")
        targets = ["Linear"] if len(schemes) == 1 else sorted(names)
        groups[f"group_{index}"] = QuantizationScheme(targets=targets, weights=weights, input_activations=inputs,
                                                      format=CT_FORMAT)
    config = QuantizationConfig(config_groups=groups, ignore=ignore, format=CT_FORMAT,
                                quantization_status="compressed")
    return {"version": compressed_tensors.__version__, "quant_method": "compressed-tensors", "sparsity_config": {},
            "transform_config": {}, **config.model_dump(exclude=["quant_method"])}


def _ct_layer_tensors(name: str, result, dtype: torch.dtype) -> dict:
    grid = result.grid
    codes = _codes_tensor(result)
    tensors = {
        f"{name}.weight_packed": pack_int32(codes, grid.bits),
        f"{name}.weight_scale": torch.as_tensor(_numpy(grid.scale)).to(dtype).contiguous(),
        f"{name}.weight_shape": torch.tensor(list(codes.shape), dtype=torch.int64),
    }
    if not grid.symmetric:
        zero = torch.as_tensor(_numpy(grid.zero)).to(torch.int64)
        tensors[f"{name}.weight_zero_point"] = pack_int32(zero.T, grid.bits).T.contiguous()
    return tensors


def _ct_tensors(model: nn.Module, results: dict, dtype: torch.dtype) -> dict:
    tensors = {}
    for key, tensor in _unique_state(model).items():
        module_name, _, parameter = key.rpartition(".")
        if module_name in results and parameter == "weight":
            tensors.update(_ct_layer_tensors(module_name, results[module_name], dtype))
        elif tensor.is_floating_point():
            tensors[key] = tensor.detach().to(dtype).contiguous()
        else:
            tensors[key] = tensor.detach().contiguous()
    return tensors


def _ignored_linears(model: nn.Module, results: dict) -> list[str]:
    return [name for name, module in model.named_modules() if isinstance(module, nn.Linear) and name not in results]


def _acts_in_order(record: dict | None) -> bool:
    recipe = (record or {}).get("recipe") or {}
    return bool((recipe.get("solver") or {}).get("act_order"))


def write_compressed_tensors(model: nn.Module, results: dict, out, *, tokenizer=None, dtype: str | None = None,
                             record: dict | None = None, report: dict | None = None, overwrite: bool = False) -> Path:
    """Write ``model`` with ``results`` as a compressed-tensors ``pack-quantized`` folder ``out`` (layout in the
    module docstring). ``dtype``: of the scales and every float tensor (None: the dtype the scales were frozen
    in); ``record``/``report``: quantization.json / the per-layer report written beside. All checks run before
    anything is written; the folder appears atomically."""
    out = check_output(out, overwrite=overwrite, what="output folder")
    dtype = check_compressed_tensors(results, dtype=dtype)
    from .save import input_transform_specs

    _check_model_layers(model, results, activations=True)
    act_bits = {name: spec.get("act_bits") for name, spec in input_transform_specs(model).items()}
    schemes: dict = {}
    for name, result in results.items():
        schemes.setdefault(_ct_scheme(result, act_bits.get(name)), []).append(name)
    quantization_config = _ct_quantization_config(schemes, _ignored_linears(model, results), _acts_in_order(record))
    config = copy.deepcopy(model.config)
    config.dtype = TORCH_DTYPES[dtype]
    config.quantization_config = quantization_config
    tensors = _ct_tensors(model, results, TORCH_DTYPES[dtype])
    from safetensors.torch import save_file

    with atomic_output(out, overwrite=overwrite) as temporary:
        temporary.mkdir()
        config.save_pretrained(temporary)
        save_file(tensors, str(temporary / MODEL_FILE), metadata={"format": "pt"})
        if getattr(model, "generation_config", None) is not None:
            model.generation_config.save_pretrained(temporary)
        _save_tokenizer(tokenizer, temporary)
        _write_records(temporary, results, record, report, {
            "format": COMPRESSED_TENSORS, "compression": CT_FORMAT, "dtype": dtype, "file": MODEL_FILE,
            "schemes": [{"bits": bits, "symmetric": symmetric, "group_size": group_size, "act_bits": act,
                         "layers": len(names)} for (bits, symmetric, group_size, act), names in schemes.items()]})
    return out


# ------------------------------------------------------------------------------------------------- GGUF


def pack_gguf_blocks(codes: np.ndarray, scale: np.ndarray, zero: np.ndarray, group_size: int | None,
                     block: GGUFBlock) -> np.ndarray:
    """Bytes (uint8, out × in/32·block bytes) of ``block``-type blocks holding ``codes`` (out × in) exactly:
    ``d`` = the group's scale as fp16, ``m = −zero·scale`` (types with a min), low nibbles of elements j and
    j + 16 in byte j, Q5's fifth bits as a little-endian uint32 (bit j of element j), Q8_0 ``code − 128``."""
    out, in_features = codes.shape
    n_blocks = in_features // GGUF_BLOCK
    group_of_block = np.zeros(n_blocks, dtype=np.int64) if group_size is None else \
        np.arange(n_blocks) * GGUF_BLOCK // group_size
    parts = [_fp16_bytes(scale[:, group_of_block])]
    if block.with_min:
        parts.append(_fp16_bytes(-zero[:, group_of_block] * scale[:, group_of_block]))
    q = codes.astype(np.uint8).reshape(out, n_blocks, GGUF_BLOCK)
    if block.bits == 8:
        parts.append((q.astype(np.int16) - 128).astype(np.int8).view(np.uint8))
    else:
        if block.bits == 5:
            parts.append(np.packbits((q >> 4) & 1, axis=-1, bitorder="little"))
        low = q & 0x0F
        half = GGUF_BLOCK // 2
        parts.append(low[..., :half] | (low[..., half:] << 4))
    return np.concatenate(parts, axis=-1).reshape(out, n_blocks * block.block_bytes)


def _fp16_bytes(values: np.ndarray) -> np.ndarray:
    """(out, n_blocks) values as fp16, their two bytes each: (out, n_blocks, 2)."""
    return np.ascontiguousarray(values.astype(np.float16)).view(np.uint8).reshape(*values.shape, 2)


def _gguf_arch(model: nn.Module, template) -> str:
    model_type = model.config.model_type
    arch = GGUF_ARCHITECTURES.get(model_type)
    if arch is None:
        raise ValueError(f"GGUF export supports the model types {sorted(GGUF_ARCHITECTURES)}, got {model_type!r}")
    if template is None and arch not in GGUF_GENERATED_ARCHITECTURES:
        raise ValueError(f"GGUF export of a {model_type} model needs its original GGUF as template (the tokenizer "
                         f"and architecture metadata are copied from it; generated only for "
                         f"{', '.join(GGUF_GENERATED_ARCHITECTURES)})")
    return arch


def _row_permutation(key: str, rows: int, arch: str, config) -> np.ndarray | None:
    """llama.cpp's rotary row order of Llama's q/k projections (convert_hf_to_gguf's ``permute``), or None."""
    if arch != "llama":
        return None
    if ".self_attn.q_proj." in key:
        heads = config.num_attention_heads
    elif ".self_attn.k_proj." in key:
        heads = config.num_key_value_heads
    else:
        return None
    return np.arange(rows).reshape(heads, 2, rows // heads // 2).swapaxes(1, 2).reshape(-1)


def _gguf_float(key: str, tensor: torch.Tensor, arch: str, dtype: str) -> np.ndarray:
    """An unquantized tensor as GGUF stores it: norms F32 (Gemma's as 1 + w), others in ``dtype``."""
    values = tensor.detach().to(torch.float32).cpu().numpy()
    if arch in GGUF_NORM_PLUS_ONE and key.endswith("norm.weight"):
        values = values + np.float32(1)
    return values if values.ndim == 1 else values.astype(dtype)


def _gguf_tensors(model: nn.Module, results: dict, blocks: dict, arch: str, dtype: str) -> dict:
    """{GGUF name: (array, raw type or None, logical shape in PyTorch order)} of every tensor of ``model``."""
    import gguf

    config = model.config
    architecture = next(key for key, value in gguf.MODEL_ARCH_NAMES.items() if value == arch)
    names = gguf.get_tensor_name_map(architecture, config.num_hidden_layers)
    tensors = {}
    for key, tensor in _unique_state(model).items():
        base, _, suffix = key.rpartition(".")
        gguf_name = names.get_name(base)
        if gguf_name is None:
            raise ValueError(f"tensor {key} has no GGUF name for the {arch} architecture")
        permutation = _row_permutation(key, tensor.shape[0], arch, config)
        if base in results and suffix == "weight":
            result, block = results[base], blocks[base]
            codes, scale = _numpy(_codes_tensor(result)), _numpy(result.grid.scale).astype(np.float64)
            zero = _numpy(result.grid.zero).astype(np.float64)
            if permutation is not None:
                codes, scale, zero = codes[permutation], scale[permutation], zero[permutation]
            data = pack_gguf_blocks(codes, scale, zero, result.grid.group_size, block)
            tensors[f"{gguf_name}.{suffix}"] = (data, gguf.GGMLQuantizationType[block.name], tuple(tensor.shape))
        else:
            values = _gguf_float(key, tensor, arch, dtype)
            values = values if permutation is None else values[permutation]
            tensors[f"{gguf_name}.{suffix}"] = (values, None, tuple(tensor.shape))
    return tensors


def _template_fields(template: Path) -> tuple[dict, dict]:
    """({key: (value, type, sub type)} of the metadata to copy, {tensor name: shape (HF order)})."""
    from gguf import GGUFReader, GGUFValueType

    reader = GGUFReader(template)
    fields = {}
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key in GGUF_OWN_KEYS:
            continue
        main = field.types[0]
        sub = field.types[-1] if main == GGUFValueType.ARRAY else None
        if main == GGUFValueType.ARRAY and len(field.types) > 2:
            raise ValueError(f"template {template}: nested array metadata {key!r} is not supported")
        fields[key] = (field.contents(), main, sub)
    shapes = {tensor.name: tuple(int(size) for size in reversed(tensor.shape.tolist())) for tensor in reader.tensors}
    return fields, shapes


def _check_template(template: Path, fields: dict, shapes: dict, tensors: dict, arch: str, model: nn.Module) -> None:
    """The template describes this model: same architecture hyperparameters and the same tensors and shapes."""
    config = model.config
    expected = {"block_count": config.num_hidden_layers, "embedding_length": config.hidden_size,
                "feed_forward_length": config.intermediate_size,
                "attention.head_count": config.num_attention_heads,
                "attention.head_count_kv": config.num_key_value_heads, "vocab_size": config.vocab_size}
    for suffix, value in expected.items():
        key = f"{arch}.{suffix}"
        if key in fields and fields[key][0] != value:
            raise ValueError(f"template {template} does not describe this model: {key} is {fields[key][0]}, the "
                             f"model has {value}")
    ours = {name: shape for name, (_, _, shape) in tensors.items()}
    missing, extra = sorted(set(shapes) - set(ours)), sorted(set(ours) - set(shapes))
    if missing or extra:
        raise ValueError(f"template {template} has other tensors than the model: only in the template "
                         f"{missing[:5]}, only in the model {extra[:5]}")
    for name, shape in ours.items():
        if shapes[name] != shape:
            raise ValueError(f"template {template}: tensor {name} has shape {shapes[name]}, the model's {shape}")


def _generated_fields(model: nn.Module, tokenizer, arch: str) -> dict:
    """Metadata of a Llama from its config (and vocabulary from ``tokenizer``), as convert_hf_to_gguf writes."""
    from gguf import GGUFValueType as T

    config = model.config
    rope = getattr(config, "rope_parameters", None) or {"rope_type": "default",
                                                         "rope_theta": getattr(config, "rope_theta", 10_000.0)}
    if rope.get("rope_type", "default") != "default":
        raise ValueError(f"rope type {rope.get('rope_type')!r} needs the model's original GGUF as template")
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    fields = {
        "general.name": (Path(getattr(config, "name_or_path", "") or "model").name or "model", T.STRING, None),
        f"{arch}.context_length": (config.max_position_embeddings, T.UINT32, None),
        f"{arch}.embedding_length": (config.hidden_size, T.UINT32, None),
        f"{arch}.block_count": (config.num_hidden_layers, T.UINT32, None),
        f"{arch}.feed_forward_length": (config.intermediate_size, T.UINT32, None),
        f"{arch}.attention.head_count": (config.num_attention_heads, T.UINT32, None),
        f"{arch}.attention.head_count_kv": (config.num_key_value_heads, T.UINT32, None),
        f"{arch}.attention.key_length": (head_dim, T.UINT32, None),
        f"{arch}.attention.value_length": (head_dim, T.UINT32, None),
        f"{arch}.rope.dimension_count": (head_dim, T.UINT32, None),
        f"{arch}.rope.freq_base": (float(rope["rope_theta"]), T.FLOAT32, None),
        f"{arch}.attention.layer_norm_rms_epsilon": (float(config.rms_norm_eps), T.FLOAT32, None),
        f"{arch}.vocab_size": (config.vocab_size, T.UINT32, None),
    }
    if tokenizer is not None:
        fields.update(_tokenizer_fields(tokenizer, config))
    return fields


def _tokenizer_fields(tokenizer, config) -> dict:
    """A byte-level BPE vocabulary (``tokenizer.ggml.model`` gpt2): tokens, types, merges, special ids."""
    from gguf import GGUFValueType as T

    vocab = tokenizer.get_vocab()
    by_id = {index: token for token, index in vocab.items()}
    size = config.vocab_size
    special = set(getattr(tokenizer, "all_special_ids", []))
    tokens = [by_id.get(index, f"[PAD{index}]") for index in range(size)]
    types = [3 if index in special else (5 if index not in by_id else 1) for index in range(size)]
    fields = {"tokenizer.ggml.model": ("gpt2", T.STRING, None), "tokenizer.ggml.pre": ("default", T.STRING, None),
              "tokenizer.ggml.tokens": (tokens, T.ARRAY, T.STRING),
              "tokenizer.ggml.token_type": (types, T.ARRAY, T.INT32)}
    backend = json.loads(tokenizer.backend_tokenizer.to_str()) if hasattr(tokenizer, "backend_tokenizer") else {}
    merges = backend.get("model", {}).get("merges", [])
    merges = [merge if isinstance(merge, str) else " ".join(merge) for merge in merges]
    if merges:
        fields["tokenizer.ggml.merges"] = (merges, T.ARRAY, T.STRING)
    for role, key in (("bos", "bos"), ("eos", "eos"), ("pad", "padding"), ("unk", "unknown")):
        index = getattr(tokenizer, f"{role}_token_id", None)
        if index is not None:
            fields[f"tokenizer.ggml.{key}_token_id"] = (int(index), T.UINT32, None)
    return fields


def _write_gguf_file(path: Path, arch: str, fields: dict, tensors: dict, file_type: int) -> None:
    from gguf import GGML_QUANT_VERSION, GGUFWriter

    writer = GGUFWriter(str(path), arch)
    for key, (value, main, sub) in fields.items():
        writer.add_key_value(key, value, main, sub_type=sub)
    writer.add_file_type(file_type)
    writer.add_quantization_version(GGML_QUANT_VERSION)
    writer.add_string("general.quantized_by", f"qronos_linalg {__version__}")
    for name, (data, raw_type, _) in tensors.items():
        writer.add_tensor(name, data, raw_dtype=raw_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def write_gguf(model: nn.Module, results: dict, out, *, gguf_type: str | None = None, template=None,
               tokenizer=None, dtype: str | None = None, record: dict | None = None, report: dict | None = None,
               overwrite: bool = False) -> Path:
    """Write ``model`` with ``results`` as a folder ``out`` holding ``model.gguf`` (layout in the module
    docstring). ``gguf_type``: one of GGUF_TYPES for every layer (None: each grid's natural type);
    ``template``: the model's original GGUF, whose metadata (architecture, tokenizer) is copied (None: generated,
    Llama only); ``dtype``: of the unquantized 2-D tensors (float16 unless given; norms are float32). All
    checks run before anything is written; the folder appears atomically."""
    out = check_output(out, overwrite=overwrite, what="output folder")
    blocks, dtype = check_gguf(results, gguf_type=gguf_type, dtype=dtype)
    template = None if template is None else Path(template)
    if template is not None and not template.is_file():
        raise FileNotFoundError(f"GGUF template {template} does not exist")
    arch = _gguf_arch(model, template)
    _check_model_layers(model, results)
    tensors = _gguf_tensors(model, results, blocks, arch, dtype)
    if template is not None:
        fields, shapes = _template_fields(template)
        _check_template(template, fields, shapes, tensors, arch, model)
    else:
        fields = _generated_fields(model, tokenizer, arch)
    file_type = Counter(block.file_type for block in blocks.values()).most_common(1)[0][0]
    with atomic_output(out, overwrite=overwrite) as temporary:
        temporary.mkdir()
        _write_gguf_file(temporary / GGUF_FILE, arch, fields, tensors, file_type)
        _save_tokenizer(tokenizer, temporary)  # also as Hugging Face files: every tokenizer loads from the folder
        _write_records(temporary, results, record, report, {
            "format": GGUF, "file": GGUF_FILE, "dtype": dtype, "template": None if template is None else str(template),
            "block_types": dict(Counter(block.name for block in blocks.values()))})
    return out


# ------------------------------------------------------------------------------------ dense folder → formats


def read_dense_folder(folder, *, activations: bool = False) -> tuple[dict, dict | None, dict]:
    """``(record, report, results)`` of a folder written by ``qronos quantize-lm`` (``save_quantized``):
    quantization.json, quantization_report.json (None if absent) and ``{layer: LayerCodes}`` from
    quantization.safetensors. Loads no model. Layers with activation quantization are refused unless
    ``activations`` (the target format holds it), with an online rotation always."""
    from .save import FORMAT, load_quantization_tensors

    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"quantized model folder {folder} does not exist")
    record_path = folder / QUANTIZATION_JSON
    if not record_path.is_file():
        raise FileNotFoundError(f"{folder} is not a folder written by qronos quantize-lm (no {QUANTIZATION_JSON})")
    record = json.loads(record_path.read_text())
    if record.get("format") != FORMAT:
        raise ValueError(f"{record_path}: unknown format {record.get('format')!r} (expected {FORMAT!r})")
    tensors = load_quantization_tensors(folder)
    results = {}
    for name, layer in record["layers"].items():
        transform = layer.get("input_transform") or {}
        if transform.get("online_hadamard") or (transform.get("act_bits") is not None and not activations):
            raise ValueError(_transform_refusal(name, transform))
        grid = UniformGrid(tensors[f"{name}.scale"], tensors[f"{name}.zero"], layer["bits"],
                           group_size=layer["group_size"], narrow_range=layer["narrow_range"])
        results[name] = LayerCodes(tensors[f"{name}.codes"], grid)
    report_path = folder / REPORT_JSON
    report = json.loads(report_path.read_text()) if report_path.is_file() else None
    return record, report, results


def packaged_template(record: dict, scratch: Path) -> Path | None:
    """The original GGUF of the packaged model the folder was quantized from (None for another model)."""
    from .data import PACKAGED_MODELS, _locate_gguf

    name = record.get("base_model_name")
    if name not in PACKAGED_MODELS:
        return None
    folder, file_name = _locate_gguf(name, scratch)
    return Path(folder) / file_name


def _load_tokenizer(folder: Path):
    from transformers import AutoTokenizer

    if not any((folder / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json")):
        return None
    return AutoTokenizer.from_pretrained(folder)


def export_folder(folder, format: str, out, *, gguf_type: str | None = None, dtype: str | None = None,
                  template=None, overwrite: bool = False, windows: torch.Tensor | None = None) -> dict:
    """Convert a folder written by ``qronos quantize-lm`` to ``format`` (FORMATS) at ``out`` without
    re-quantizing: its codes and grids are stored as they are. Every check (format, output path, bits, group
    sizes, frozen scales, block fit, input transforms) runs before the model is loaded or anything written.
    ``gguf_type``, ``template``, ``dtype``: as :func:`write_gguf` / :func:`write_compressed_tensors`; a folder
    quantized from a packaged model finds that model's GGUF as template by itself. With token ``windows``
    the output is reloaded by its reader and compared (:func:`verify_export`). Returns a summary: ``output``,
    ``format``, ``layers``, ``export`` (quantization.json's entry), ``sizes`` (:func:`export_sizes`),
    ``verification`` (None without ``windows``)."""
    from transformers import AutoModelForCausalLM

    if format not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {format!r}")
    if format != GGUF and (gguf_type is not None or template is not None):
        raise ValueError("gguf_type and template (--gguf-type, --gguf-template) apply to --format gguf only")
    out = check_output(out, overwrite=overwrite, what="output folder")
    if template is not None and not Path(template).is_file():
        raise FileNotFoundError(f"GGUF template {template} does not exist")
    folder = Path(folder)
    record, report, results = read_dense_folder(folder, activations=format == COMPRESSED_TENSORS)
    if format == COMPRESSED_TENSORS:
        _require_compressed_tensors()
        dtype = check_compressed_tensors(results, dtype=dtype)
    else:
        check_gguf(results, gguf_type=gguf_type, dtype=dtype)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    install_input_transforms(model, record.get("input_transforms") or {})
    common = dict(tokenizer=_load_tokenizer(folder), dtype=dtype, record=record, report=report, overwrite=overwrite)
    if format == COMPRESSED_TENSORS:
        write_compressed_tensors(model, results, out, **common)
    else:
        with tempfile.TemporaryDirectory(dir=out.parent, prefix=TEMPORARY_PREFIX) as scratch:
            found = template if template is not None else packaged_template(record, Path(scratch))
            write_gguf(model, results, out, gguf_type=gguf_type, template=found, **common)
    return {"output": str(out), "format": format, "layers": len(results),
            "export": json.loads((out / QUANTIZATION_JSON).read_text())["export"], "sizes": export_sizes(out),
            "verification": None if windows is None else verify_export(out, model, results, windows)}


def _require_compressed_tensors() -> None:
    import importlib.util

    if importlib.util.find_spec("compressed_tensors") is None:
        raise ModuleNotFoundError("compressed-tensors export needs the compressed-tensors package: "
                                  "pip install 'qronos_linalg[export]'", name="compressed_tensors")


# ------------------------------------------------------------------------------------------- verification


def format_of(out) -> str:
    """The format of an exported folder (from its files)."""
    out = Path(out)
    if (out / GGUF_FILE).is_file():
        return GGUF
    config = out / CONFIG_FILE
    if config.is_file() and (json.loads(config.read_text()).get("quantization_config") or {}).get(
            "quant_method") == COMPRESSED_TENSORS:
        return COMPRESSED_TENSORS
    raise ValueError(f"{out} is neither a GGUF nor a compressed-tensors export (no {GGUF_FILE}, no "
                     "compressed-tensors quantization_config)")


def _ct_is_symmetric(out: Path) -> bool:
    config = json.loads((out / CONFIG_FILE).read_text())["quantization_config"]
    return all(group["weights"]["symmetric"] for group in config["config_groups"].values())


def _reader_mode(out: Path, dequantize: bool | None) -> bool | None:
    """compressed-tensors: whether to dequantize at load (None: packed for symmetric checkpoints, dequantized
    for asymmetric ones); GGUF: None."""
    if format_of(out) == GGUF:
        return None
    return (not _ct_is_symmetric(out)) if dequantize is None else dequantize


def load_exported(out, *, dtype=torch.float32, dequantize: bool | None = None):
    """``(model, reader)``: the exported folder ``out`` loaded by its third-party reader in ``dtype``.
    compressed-tensors: transformers with the compressed-tensors package, packed (weights decompressed in
    ``dtype`` on the first forward) or ``dequantize=True`` (decompressed at load in the checkpoint's scale dtype,
    then cast); None: packed for symmetric checkpoints, dequantized for asymmetric ones (transformers 5 with
    compressed-tensors 0.20 sizes packed zero points wrongly in the packed mode, also in checkpoints that
    compressed-tensors writes itself). GGUF: transformers' ``gguf_file=`` (gguf-py dequantizes in float32)."""
    import warnings

    from transformers import AutoModelForCausalLM

    out = Path(out)
    dequantize = _reader_mode(out, dequantize)
    if dequantize is None:
        model = AutoModelForCausalLM.from_pretrained(out, gguf_file=GGUF_FILE, dtype=dtype)
        return model.eval(), "transformers gguf_file="
    from transformers import CompressedTensorsConfig

    options = {"quantization_config": CompressedTensorsConfig(dequantize=True)} if dequantize else {}
    with warnings.catch_warnings():  # "already has a quantization_config": the documented way to pass dequantize
        warnings.filterwarnings("ignore", message=".*already has a `quantization_config`.*")
        model = AutoModelForCausalLM.from_pretrained(out, dtype=dtype, **options)
    return model.eval(), f"transformers + compressed-tensors ({'dequantize=True' if dequantize else 'packed'})"


def reader_weight_dtype(out, dequantize: bool | None = None) -> str:
    """The dtype the reader of :func:`load_exported` (float32) computes ``(code − zero)·scale`` in: the
    checkpoint's dtype for compressed-tensors' ``dequantize=True``, float32 otherwise."""
    out = Path(out)
    if _reader_mode(out, dequantize):
        return json.loads((out / QUANTIZATION_JSON).read_text())["export"]["dtype"]
    return "float32"


def _grid_values(result, dtype: str) -> torch.Tensor:
    """The grid's values of the codes rounded once to ``dtype``, as float32 (exact in float64 first: the
    scales are at most float32 numbers and codes have at most 8 bits)."""
    return result.grid.dequantize(_codes_tensor(result)).to(torch.float64).to(TORCH_DTYPES[dtype]).to(torch.float32)


def _stored_reference(model: nn.Module, results: dict, out: Path, weight_dtype: str, activations: bool) -> nn.Module:
    """A copy of ``model`` holding what the reader computes from the file: unquantized float tensors through
    the export's storage and back (its dtype; GGUF: norms F32, Gemma's as (1 + w) − 1), quantized weights as
    the grid's values rounded to ``weight_dtype``, and activation quantization only if the reader applies it
    (``activations``)."""
    from .layerwise import float_copy

    record = json.loads((out / QUANTIZATION_JSON).read_text())["export"]
    reference = copy.deepcopy(model) if activations else float_copy(model)
    fmt, storage = record["format"], TORCH_DTYPES[record["dtype"]]
    arch = GGUF_ARCHITECTURES.get(model.config.model_type)
    modules = dict(reference.named_modules())
    with torch.no_grad():
        for name, result in results.items():
            modules[name].weight.copy_(_grid_values(result, weight_dtype))
        for key, parameter in _unique_state(reference).items():
            base, _, suffix = key.rpartition(".")
            if (base in results and suffix == "weight") or not parameter.is_floating_point():
                continue
            if fmt == COMPRESSED_TENSORS or parameter.ndim > 1:
                parameter.copy_(parameter.to(storage).to(parameter.dtype))
            elif arch in GGUF_NORM_PLUS_ONE and key.endswith("norm.weight"):
                parameter.copy_((parameter.to(torch.float32) + 1) - 1)
    return reference


def _logits(model: nn.Module, windows: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=windows, use_cache=False).logits.float()


def verify_export(out, model: nn.Module, results: dict, windows: torch.Tensor, *,
                  dequantize: bool | None = None) -> dict:
    """Reload ``out`` with its third-party reader (:func:`load_exported` in float32) and compare it with
    ``model``, the in-memory quantized model, on token ``windows`` (n × seq). Returns:

    - ``reader``, ``load_s``; ``weight_dtype``: what the reader computes ``(code − zero)·scale`` in;
    - ``weights_exact``: every quantized weight equals the grid's value of its code rounded once to
      ``weight_dtype`` (for float32: the grid's values themselves, as the in-memory model holds them);
      ``max_weight_diff``: max |loaded − grid value| (float32);
    - ``max_logit_diff``: to the in-memory model with the file's float tensors and weights (what the file
      describes; only summation order differs); ``max_logit_diff_quantized``: to ``model`` itself (adds the
      storage rounding of embeddings and norms); ``top1_agreement`` with ``model``;
    - ``activations``: for a model with activation quantization, whether the reader applies the file's
      activation scheme (compressed-tensors' packed mode does; ``dequantize=True`` loads a plain float model
      and drops it, so ``max_logit_diff`` then compares with the model without it); None without any.
    """
    import time

    out = Path(out)
    start = time.perf_counter()
    loaded, reader = load_exported(out, dequantize=dequantize)
    load_s = time.perf_counter() - start
    weight_dtype = reader_weight_dtype(out, dequantize)
    logits = _logits(loaded, windows)  # the packed mode decompresses on this first forward
    from .save import input_transform_specs

    quantizes_inputs = any(spec.get("act_bits") is not None for spec in input_transform_specs(model).values())
    applied = reader.endswith("(packed)")
    expected = _logits(_stored_reference(model, results, out, weight_dtype, quantizes_inputs and applied), windows)
    quantized = _logits(model, windows)
    modules = dict(loaded.named_modules())
    exact, weight_diff = True, 0.0
    for name, result in results.items():
        weight = modules[name].weight.detach().to(torch.float32)
        exact = exact and torch.equal(weight, _grid_values(result, weight_dtype))
        weight_diff = max(weight_diff, (weight.double() - _grid_values(result, "float32").double()).abs().max().item())
    return {"reader": reader, "load_s": load_s, "weight_dtype": weight_dtype, "weights_exact": exact,
            "max_weight_diff": weight_diff, "max_logit_diff": (logits - expected).abs().max().item(),
            "max_logit_diff_quantized": (logits - quantized).abs().max().item(),
            "top1_agreement": (logits.argmax(-1) == quantized.argmax(-1)).double().mean().item(),
            "activations": (("applied by the reader" if applied else "dropped by the reader") if quantizes_inputs
                            else None)}


def export_sizes(out) -> dict:
    """Bytes of an export: ``file`` (the model file), ``linears`` (the quantized linears: codes, scales,
    offsets), ``linears_bf16`` (the same weights in bf16), ``other`` (every other tensor)."""
    out = Path(out)
    if format_of(out) == GGUF:
        from gguf import GGUFReader

        reader = GGUFReader(out / GGUF_FILE)
        quantized = [t for t in reader.tensors if t.tensor_type.name in GGUF_TYPES]
        linears = sum(int(t.n_bytes) for t in quantized)
        total = sum(int(t.n_bytes) for t in reader.tensors)
        return {"file": (out / GGUF_FILE).stat().st_size, "linears": linears,
                "linears_bf16": sum(2 * int(t.n_elements) for t in quantized), "other": total - linears}
    from safetensors import safe_open

    linears = bf16 = other = 0
    with safe_open(str(out / MODEL_FILE), "pt") as handle:
        for key in handle.keys():  # noqa: SIM118 (safe_open is not a dict)
            view = handle.get_slice(key)
            size = math.prod(view.get_shape()) * _DTYPE_BYTES[view.get_dtype()]
            if key.rpartition(".")[2] in ("weight_packed", "weight_scale", "weight_zero_point", "weight_shape"):
                linears += size
                if key.endswith(".weight_shape"):
                    bf16 += 2 * math.prod(handle.get_tensor(key).tolist())
            else:
                other += size
    return {"file": (out / MODEL_FILE).stat().st_size, "linears": linears, "linears_bf16": bf16, "other": other}


_DTYPE_BYTES = {"F32": 4, "F16": 2, "BF16": 2, "I32": 4, "I64": 8, "U8": 1, "I8": 1, "F64": 8, "BOOL": 1}
