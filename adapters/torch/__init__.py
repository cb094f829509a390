"""PyTorch adapter: layer-wise quantization of ``nn.Module`` s and a two-stream pipeline for causal LMs.

Import as ``qronos_linalg.adapters.torch``. Main entry points: :func:`quantize_module` (any module),
:func:`quantize_causal_lm` (Hugging Face decoder LMs), :func:`save_quantized` / :func:`load_quantized`,
:func:`~qronos_linalg.adapters.torch.onnx_export.export_causal_lm_onnx` (hand-off to the ONNX adapter),
and the transforms :func:`rotate_llama` (randomized Hadamard), :func:`smooth_llama` (SmoothQuant) and
:func:`magr` (MagR).
"""

from .actquant import InputTransform, fake_quantize_per_token
from .hadamard import RandomizedHadamard, hadamard_matrix
from .layerwise import ALGORITHMS, QuantConfig, quantize_module, solve_layer
from .lm import find_block_list, perplexity, quantize_causal_lm
from .magr import magr

__all__ = [
    "ALGORITHMS",
    "InputTransform",
    "QuantConfig",
    "RandomizedHadamard",
    "fake_quantize_per_token",
    "find_block_list",
    "hadamard_matrix",
    "magr",
    "perplexity",
    "quantize_causal_lm",
    "quantize_module",
    "solve_layer",
]
