"""PyTorch adapter: layer-wise quantization of ``nn.Module`` s and a two-stream pipeline for causal LMs.

Import as ``qronos_linalg.adapters.torch``. Main entry points: :func:`quantize_module` (any module),
:func:`quantize_causal_lm` (Hugging Face decoder LMs), :func:`save_quantized` / :func:`load_quantized`,
:func:`~qronos_linalg.adapters.torch.onnx_export.export_causal_lm_onnx` (hand-off to the ONNX adapter),
and the transforms :func:`rotate_llama` (randomized Hadamard) and :func:`smooth_llama` (SmoothQuant).
The rounding settings are the core's :class:`qronos_linalg.recipe.Recipe`, shared with the ONNX adapter.
"""

from .actquant import InputTransform
from .hadamard import RandomizedHadamard, hadamard_matrix
from .layerwise import quantize_module, solve_layer
from .lm import find_block_list, perplexity, quantize_causal_lm

__all__ = [
    "InputTransform",
    "RandomizedHadamard",
    "find_block_list",
    "hadamard_matrix",
    "perplexity",
    "quantize_causal_lm",
    "quantize_module",
    "solve_layer",
]
