"""Save a quantized causal LM as a Hugging Face folder plus its quantization record, and load it back.

Folder layout:

- ``config.json``, ``model.safetensors`` (+ tokenizer files): loadable with
  ``AutoModelForCausalLM.from_pretrained``; every quantized weight is the dequantized ``Q``, except that
  a layer with an online rotation ``x ↦ x R`` stores ``Q Rᵀ`` so that the plain folder computes the same
  function without the hook;
- ``quantization.json``: settings, transforms, and per layer the bits, group size, range, algorithm,
  damping and input transform (online rotation, activation bits);
- ``quantization.safetensors``: per layer ``<name>.codes`` (uint8, out × in), ``<name>.scale`` and
  ``<name>.zero`` (out × n_groups, float64) — exactly ``grid.scale``, ``grid.zero`` and the codes;
- ``quantization_report.json``: the per-layer report (errors, samples, times).

A folder written block by block (:mod:`.onload`) holds the same tensors in shards:
``model-0000k-of-0000n.safetensors`` with ``model.safetensors.index.json`` (the Hugging Face layout) and
``quantization-0000k-of-0000n.safetensors`` with ``quantization.safetensors.index.json``.

The folder is written under a temporary name and renamed at the end.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from qronos_linalg import UniformGrid
from qronos_linalg.io import atomic_output

from .actquant import InputTransform, install_input_transforms
from .hadamard import RandomizedHadamard
from .layerwise import set_layer_weight

__all__ = ["FORMAT", "QUANTIZATION_JSON", "QUANTIZATION_TENSORS", "QUANTIZATION_INDEX", "REPORT_JSON",
           "save_quantized", "load_quantized", "input_transform_specs", "load_quantization_tensors"]

FORMAT = "qronos_linalg.quantized_lm/1"
QUANTIZATION_JSON = "quantization.json"
QUANTIZATION_TENSORS = "quantization.safetensors"
QUANTIZATION_INDEX = "quantization.safetensors.index.json"
REPORT_JSON = "quantization_report.json"


def input_transform_specs(model: nn.Module) -> dict[str, dict]:
    """``{module name: InputTransform.spec()}`` for every module carrying an input transform."""
    specs = {}
    for name, module in model.named_modules():
        for hook in module._forward_pre_hooks.values():
            if isinstance(hook, InputTransform):
                specs[name] = hook.spec()
    return specs


def _strip_load_time_quantization(model: nn.Module) -> None:
    """Drop the GGUF loader's quantization marker so that the folder loads as plain float weights."""
    if hasattr(model, "hf_quantizer"):
        model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config


def save_quantized(model: nn.Module, out_dir, report: dict, *, tokenizer=None, transforms: dict | None = None,
                   base_model: str | None = None, base_model_name: str | None = None, overwrite: bool = False) -> Path:
    """Write the folder described in the module docstring; returns its path. ``base_model``: the float
    model's folder, ``base_model_name``: how it was named (a packaged model's name finds it on any machine)."""
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    specs = input_transform_specs(model)
    results = report["results"]
    state = dict(model.state_dict())  # shared (tied) tensors stay shared, so they are saved once
    tensors, layers = {}, {}
    for name, result in results.items():
        spec = specs.get(name, NO_INPUT_TRANSFORM)
        weight_key = f"{name}.weight"
        if spec["online_hadamard"] is not None:
            rotation = RandomizedHadamard.from_spec(spec["online_hadamard"])
            state[weight_key] = _unrotate_rows(result.weight, rotation).to(state[weight_key].dtype).reshape(
                state[weight_key].shape)
        tensors.update(quantization_tensors(name, result))
        layers[name] = layer_entry(result, spec, list(state[weight_key].shape))
    record = quantization_record(report, layers=layers, input_transforms=specs, transforms=transforms,
                                 base_model=base_model, base_model_name=base_model_name)
    with atomic_output(out_dir, overwrite=overwrite) as temporary:
        _strip_load_time_quantization(model)
        model.save_pretrained(temporary, state_dict=state)
        if tokenizer is not None:
            tokenizer.save_pretrained(temporary)
        save_file(tensors, str(temporary / QUANTIZATION_TENSORS))
        (temporary / QUANTIZATION_JSON).write_text(json.dumps(record, indent=2))
        layer_reports = [dict(entry) for entry in report["layers"]]
        summary = {key: value for key, value in report.items() if key not in ("layers", "results")}
        (temporary / REPORT_JSON).write_text(json.dumps({**summary, "layers": layer_reports}, indent=2))
    return out_dir


#: The input transform of a layer without one.
NO_INPUT_TRANSFORM = {"online_hadamard": None, "act_bits": None}


def quantization_tensors(name: str, result) -> dict:
    """A layer's ``<name>.codes`` (uint8), ``<name>.scale`` and ``<name>.zero`` (float64): its exact grid."""
    return {f"{name}.codes": result.codes.to(torch.uint8).contiguous(),
            f"{name}.scale": torch.as_tensor(result.grid.scale, dtype=torch.float64).contiguous(),
            f"{name}.zero": torch.as_tensor(result.grid.zero, dtype=torch.float64).contiguous()}


def layer_entry(result, spec: dict, weight_shape: list) -> dict:
    """A layer's entry in ``quantization.json``."""
    return {
        "shape": list(result.codes.shape),
        "weight_shape": weight_shape,
        "bits": result.grid.bits,
        "group_size": result.grid.group_size,
        "narrow_range": result.grid.narrow_range,
        "algorithm": result.algorithm,
        "damp": result.damp,
        "input_transform": spec,
        "saved_weight": "dequantized_times_rotation_transposed" if spec["online_hadamard"] else "dequantized",
    }


def load_quantization_tensors(folder: Path) -> dict:
    """Every layer's codes, scales and zeros of a saved folder: ``quantization.safetensors``, or the shards
    of ``quantization.safetensors.index.json`` (a folder written block by block, :mod:`.onload`)."""
    from safetensors.torch import load_file

    index = folder / QUANTIZATION_INDEX
    if not index.exists():
        return load_file(str(folder / QUANTIZATION_TENSORS))
    tensors = {}
    for shard in sorted(set(json.loads(index.read_text())["weight_map"].values())):
        tensors.update(load_file(str(folder / shard)))
    return tensors


def quantization_record(report: dict, *, layers: dict, input_transforms: dict, transforms: dict | None = None,
                        base_model: str | None = None, base_model_name: str | None = None) -> dict:
    """The ``quantization.json`` record of a run (every format writes it beside its files)."""
    return {
        "format": FORMAT,
        "base_model": base_model,
        "base_model_name": base_model_name,
        "recipe": report.get("recipe"),
        "x_mode": report.get("x_mode"),
        "blocks": report.get("blocks"),
        "calibration_windows": report.get("calibration_windows"),
        "calibration_seq_len": report.get("calibration_seq_len"),
        "transforms": transforms or {},
        "input_transforms": input_transforms,
        "layers": layers,
    }


def _unrotate_rows(Q: torch.Tensor, rotation) -> torch.Tensor:
    """``Q Rᵀ`` (each row q ↦ q Rᵀ = (R qᵀ)ᵀ), computed with the dense R in float64."""
    return Q.to(torch.float64) @ rotation.matrix().T


def load_quantized(folder, *, dtype=torch.float32):
    """Load the folder: the HF model with the input transforms of quantization.json re-installed and,
    for layers with an online rotation, the weight set back to the exact dequantized codes; a
    compressed-tensors or GGUF folder (``qronos export`` / ``quantize-lm --format``) through its reader.
    Returns ``(model, record)`` (``record`` is None for a plain HF folder)."""
    from transformers import AutoModelForCausalLM

    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"model folder {folder} does not exist")
    record_path = folder / QUANTIZATION_JSON
    record = json.loads(record_path.read_text()) if record_path.exists() else None
    if record is not None and "export" in record:  # compressed-tensors or GGUF: their third-party reader
        from .export import load_exported

        return load_exported(folder, dtype=dtype)[0], record
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).eval()
    if record is None:
        return model, None
    if record.get("format") != FORMAT:
        raise ValueError(f"{record_path}: unknown format {record.get('format')!r} (expected {FORMAT!r})")
    tensors = load_quantization_tensors(folder)
    modules = dict(model.named_modules())
    for name, layer in record["layers"].items():
        if layer["input_transform"]["online_hadamard"] is None:
            continue
        grid = UniformGrid(tensors[f"{name}.scale"], tensors[f"{name}.zero"], layer["bits"],
                           group_size=layer["group_size"], narrow_range=layer["narrow_range"])
        set_layer_weight(modules[name], grid.dequantize(tensors[f"{name}.codes"]))
    install_input_transforms(model, record["input_transforms"])
    return model, record
