"""Export a (quantized) causal LM to ONNX for the ONNX adapter: ``input_ids`` (1, seq_len) → ``logits``.

Uses ``torch.onnx.export(..., dynamo=True)`` (needs ``onnxscript``; the legacy exporter fails on
``aten::diff`` in transformers' mask code). The weights are written as they are in the model — for a
model quantized by this adapter, the dequantized ``Q`` — so ``qronos quantize`` can pack them. Models
with input transforms (activation fake-quantization, online rotations) are refused: those are forward
hooks that an ONNX graph of plain MatMuls would not contain. Written atomically (qronos_linalg.io).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from qronos_linalg.io import atomic_output, check_output

from .save import input_transform_specs

INPUT_NAME = "input_ids"
OUTPUT_NAME = "logits"


class _LogitsOnly(nn.Module):
    """``input_ids → logits`` without the KV cache, the only output an ONNX adapter run needs."""

    def __init__(self, lm: nn.Module):
        super().__init__()
        self.lm = lm

    def forward(self, input_ids):
        return self.lm(input_ids=input_ids, use_cache=False).logits


def export_causal_lm_onnx(model: nn.Module, path, *, seq_len: int, overwrite: bool = False) -> Path:
    """Write ``model`` as ONNX with a fixed input shape (1, ``seq_len``) int64; returns the path."""
    path = Path(path)
    check_output(path, overwrite=overwrite, what="ONNX output")
    if not isinstance(seq_len, int) or seq_len < 1:
        raise ValueError(f"seq_len must be a positive integer, got {seq_len!r}")
    transforms = input_transform_specs(model)
    if transforms:
        raise ValueError(
            f"{len(transforms)} layers carry input transforms (activation quantization or online rotations, "
            f"e.g. {next(iter(transforms))!r}); the ONNX export would drop them and compute a different "
            "function. Export a weight-only model (no --act-bits, no --hadamard)."
        )
    example = torch.zeros((1, seq_len), dtype=torch.int64)
    with atomic_output(path, overwrite=overwrite) as temporary, torch.no_grad():
        torch.onnx.export(_LogitsOnly(model).eval(), (example,), str(temporary), dynamo=True,
                          input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], external_data=False)
    return path
