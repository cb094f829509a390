"""Layer-wise onloading: quantize a causal LM one decoder block at a time, straight from its safetensors.

The model is built as a skeleton (parameters on the ``meta`` device, buffers such as rotary tables real);
the parameters outside the decoder blocks (embeddings, final norm, an untied lm_head) are read from the
checkpoint first. Each block's weights are read (float32) just before the block runs — in the one float
forward that records the blocks' inputs and again when it is quantized — and released (back to ``meta``)
after it; a quantized block is written out at once (its own shard) and freed. Peak memory: the
calibration streams, one block and its float copy, and the parameters outside the blocks — independent of
depth. The output is the folder :func:`~.save.save_quantized` writes, in shards
(``model-0000k-of-0000n.safetensors`` + ``model.safetensors.index.json``, and the same for the
quantization tensors), written under a temporary name and renamed at the end.

Refused: YAQA (its Kronecker factors need gradients through the whole model) and the whole-model
transforms (Hadamard rotation, SmoothQuant); activation quantization works (hooks, no weights).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from qronos_linalg.io import atomic_output
from qronos_linalg.recipe import Recipe

__all__ = ["Checkpoint", "model_skeleton", "BlockOnloader", "quantize_causal_lm_onloaded"]

#: The Hugging Face names of a sharded checkpoint's index and of an unsharded checkpoint.
WEIGHTS_INDEX = "model.safetensors.index.json"
WEIGHTS_FILE = "model.safetensors"


class Checkpoint:
    """The tensors of a safetensors checkpoint (one file or shards with an index), read one at a time."""

    def __init__(self, folder):
        from safetensors import safe_open

        self.folder = Path(folder)
        index, single = self.folder / WEIGHTS_INDEX, self.folder / WEIGHTS_FILE
        if index.is_file():
            self.weight_map = json.loads(index.read_text())["weight_map"]
        elif single.is_file():
            with safe_open(str(single), "pt") as handle:
                self.weight_map = dict.fromkeys(handle.keys(), WEIGHTS_FILE)
        else:
            raise FileNotFoundError(f"{self.folder} has no {WEIGHTS_FILE} or {WEIGHTS_INDEX}: onloading reads "
                                    "safetensors checkpoints")

    def tensor(self, name: str) -> torch.Tensor:
        """Tensor ``name`` (floating point ones in float32)."""
        from safetensors import safe_open

        if name not in self.weight_map:
            raise ValueError(f"checkpoint {self.folder} has no tensor {name!r}")
        with safe_open(str(self.folder / self.weight_map[name]), "pt") as handle:
            tensor = handle.get_tensor(name)
        return tensor.float() if tensor.is_floating_point() else tensor


def model_skeleton(folder) -> nn.Module:
    """The causal LM of ``folder``'s config with every parameter on ``meta`` (buffers real), in eval mode."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(folder)
    with init_empty_weights(include_buffers=False):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    return model.eval()


def _set_tensor(model: nn.Module, name: str, value: torch.Tensor | None) -> None:
    """Parameter or buffer ``name`` set to ``value`` (None: moved to ``meta``, its memory freed)."""
    from accelerate.utils import set_module_tensor_to_device

    if value is None:
        set_module_tensor_to_device(model, name, "meta")
    else:
        set_module_tensor_to_device(model, name, value.device, value=value)


class BlockOnloader:
    """Reads a block's weights before it runs, writes and frees it once quantized (see the module doc).

    ``out``: the (temporary) output folder, or None to write nothing (a data-parallel rank other than 0)."""

    def __init__(self, model: nn.Module, checkpoint: Checkpoint, blocks_name: str, block_list: nn.ModuleList,
                 out: Path | None):
        self.model, self.checkpoint, self.out = model, checkpoint, out
        self.prefixes = [f"{blocks_name}.{index}." for index in range(len(block_list))]
        self.block_list = block_list
        self.shards = len(block_list) + 1  # shard 1: outside the blocks; shard k + 2: block k
        self.weight_map, self.quantization_map, self.layers = {}, {}, {}
        self.loaded = set()

    def _names(self, index: int) -> list[str]:
        return [self.prefixes[index] + name for name in self.block_list[index].state_dict()]

    def load_outside(self) -> None:
        """Read every tensor outside the blocks and re-tie tied weights; ValueError if one stays missing."""
        inside = tuple(self.prefixes)
        for name, tensor in self.model.state_dict().items():
            if not name.startswith(inside) and name in self.checkpoint.weight_map:
                _set_tensor(self.model, name, self.checkpoint.tensor(name))
        self.model.tie_weights()
        missing = [name for name, tensor in self.model.state_dict().items()
                   if not name.startswith(inside) and tensor.device.type == "meta"]
        if missing:
            raise ValueError(f"checkpoint {self.checkpoint.folder} lacks {', '.join(missing)}")

    def load(self, index: int) -> None:
        """Block ``index``'s weights from the checkpoint (float32, CPU)."""
        for name in self._names(index):
            _set_tensor(self.model, name, self.checkpoint.tensor(name))
        self.loaded.add(index)

    def release(self, index: int) -> None:
        """Block ``index``'s weights back to ``meta``."""
        for name in self._names(index):
            _set_tensor(self.model, name, None)
        self.loaded.discard(index)

    def hooks(self):
        """Forward hooks that load a block before its forward and release it after (for the float pass that
        records the blocks' inputs; register after any hook that may stop the forward before the block runs)."""
        def before(index):
            return lambda module, args, kwargs: self.load(index)

        def after(index):
            return lambda module, args, kwargs, output: self.release(index)

        return before, after

    def store(self, index: int, solved: dict) -> None:
        """Write block ``index`` (its weights, and its layers' codes and grids) as shard ``index + 2``, then
        release it."""
        from .save import NO_INPUT_TRANSFORM, input_transform_specs, layer_entry, quantization_tensors

        if self.out is not None:
            specs = input_transform_specs(self.model)
            prefix = self.prefixes[index]
            weights = {prefix + name: tensor.contiguous() for name, tensor in self.block_list[index].state_dict().items()}
            codes = {}
            for name, (result, _) in solved.items():
                codes.update(quantization_tensors(name, result))
                self.layers[name] = layer_entry(result, specs.get(name, NO_INPUT_TRANSFORM),
                                                list(weights[f"{name}.weight"].shape))
            self._write(index + 2, weights, codes)
        self.release(index)

    def store_outside(self) -> None:
        """Write the tensors outside the blocks as shard 1 (a tied weight once)."""
        if self.out is None:
            return
        inside, seen, weights = tuple(self.prefixes), set(), {}
        for name, tensor in self.model.state_dict().items():
            if name.startswith(inside) or tensor.data_ptr() in seen or name not in self.checkpoint.weight_map:
                continue
            seen.add(tensor.data_ptr())
            weights[name] = tensor.contiguous()
        self._write(1, weights, {})

    def _write(self, shard: int, weights: dict, codes: dict) -> None:
        from safetensors.torch import save_file

        for stem, tensors, mapping in (("model", weights, self.weight_map), ("quantization", codes,
                                                                              self.quantization_map)):
            if not tensors:
                continue
            file = f"{stem}-{shard:05d}-of-{self.shards:05d}.safetensors"
            save_file(tensors, str(self.out / file), metadata={"format": "pt"})
            mapping.update(dict.fromkeys(tensors, file))

    def write_indexes(self) -> None:
        """The two index files of the shards written."""
        from .save import QUANTIZATION_INDEX

        for path, mapping in ((WEIGHTS_INDEX, self.weight_map), (QUANTIZATION_INDEX, self.quantization_map)):
            (self.out / path).write_text(json.dumps({"metadata": {}, "weight_map": mapping}, indent=2))


def quantize_causal_lm_onloaded(folder, calibration: torch.Tensor | None, recipe: Recipe, out, *, tokenizer=None,
                                overwrite: bool = False, base_model_name: str | None = None, parallel=None,
                                **options) -> dict:
    """Quantize the causal LM of checkpoint ``folder`` block by block (module doc) into the folder ``out``;
    ``options`` are those of :func:`~.lm.quantize_causal_lm` (x_mode, errors, progress, …). Returns its
    report, without ``results`` (the codes are in ``out``)."""
    from .lm import find_block_list, quantize_causal_lm

    if "H_out" in recipe.solver.statistics:
        raise ValueError("YAQA needs the gradients of the whole model; onloading holds one block at a time: "
                         "load the model fully (no --onload)")
    checkpoint = Checkpoint(folder)
    model = model_skeleton(folder)
    blocks_name, block_list = find_block_list(model)

    def run(temporary: Path | None) -> dict:
        onloader = BlockOnloader(model, checkpoint, blocks_name, block_list, temporary)
        onloader.load_outside()
        report = quantize_causal_lm(model, calibration, recipe, blocks=blocks_name, parallel=parallel,
                                    onloader=onloader, **options)
        summary = {key: value for key, value in report.items() if key != "results"}
        if temporary is not None:
            _finish_folder(temporary, onloader, model, tokenizer, summary, folder, base_model_name)
        return summary

    if parallel is not None and not parallel.is_main:
        return run(None)
    with atomic_output(out, overwrite=overwrite) as temporary:
        temporary.mkdir()
        return run(temporary)


def _finish_folder(temporary: Path, onloader: BlockOnloader, model: nn.Module, tokenizer, summary: dict, folder,
                   base_model_name) -> None:
    """Everything but the blocks' shards: the outside tensors, indexes, config, tokenizer and records."""
    from .save import QUANTIZATION_JSON, REPORT_JSON, input_transform_specs, quantization_record

    onloader.store_outside()
    onloader.write_indexes()
    model.config.save_pretrained(temporary)
    if tokenizer is not None:
        tokenizer.save_pretrained(temporary)
    record = quantization_record(summary, layers=onloader.layers, input_transforms=input_transform_specs(model),
                                 base_model=str(folder), base_model_name=base_model_name)
    (temporary / QUANTIZATION_JSON).write_text(json.dumps(record, indent=2))
    (temporary / REPORT_JSON).write_text(json.dumps(summary, indent=2))
