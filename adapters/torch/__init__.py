"""PyTorch adapter: layer-wise quantization of ``nn.Module`` s and a two-stream pipeline for causal LMs.

Import as ``qronos_linalg.adapters.torch`` (the top-level ``adapters/`` folder of the repository is
installed under ``qronos_linalg``). Main entry points: :func:`quantize_module` (any module),
:func:`quantize_causal_lm` (Hugging Face decoder LMs), :func:`save_quantized` / :func:`load_quantized`,
:func:`~qronos_linalg.adapters.torch.onnx_export.export_causal_lm_onnx` (hand-off to the ONNX adapter),
and the transforms :func:`rotate_llama` (randomized Hadamard) and :func:`smooth_llama` (SmoothQuant).
The rounding settings are the core's :class:`qronos_linalg.recipe.Recipe`, shared with the ONNX adapter.
The names below load their submodule (and torch) on first use, so that ``qronos --help`` stays fast.
"""

import importlib

#: Meanings of X, the float target of the solvers that use it: the true float model, or the float block
#: applied to the quantized stream (Brevitas' definition). See :func:`quantize_causal_lm`.
X_MODES = ("float", "block")
#: Each solver's default X where it differs from "float", chosen by measurement (docs/results_lm_defaults.md):
#: Qronos on SmolLM2 W3 g128 at 128 × 512 calibration, block vs float X: Wikipedia perplexity 40.01 vs 42.53
#: (KL 0.618 vs 0.695), news 54.74 vs 61.19 (KL 0.633 vs 0.725), and 18% less time (no separate float stream).
#: GPFQ on W4 per-channel, same calibration: block vs float X, Wikipedia 31.38 vs 33.06 (KL 0.356 vs 0.421), news
#: 43.64 vs 45.95 (KL 0.383 vs 0.433); GPTAQ keeps float X, W4: 29.29 vs 30.65 (KL 0.268 vs 0.321), news 39.90 vs
#: 41.29 (KL 0.289 vs 0.336). yaqa-qronos, whose target is Qronos' (proofs/yaqa_qronos.md), takes
#: Qronos' X (not measured on its own).
SOLVER_X_MODES: dict = {"gpfq": "block", "qronos": "block", "yaqa-qronos": "block"}
#: YAQA's gradient windows for its Kronecker factors (:mod:`.hessians`) unless told: None = every calibration
#: window, as the LM tables measure it (docs/results_lm.md: 128 windows).
DEFAULT_HESSIAN_SEQUENCES = None
#: Seconds a data-parallel collective waits for the other ranks before failing (:mod:`.distributed`): a dead
#: rank must not hang the run, and one rank's solve of a 70B model's largest layer takes minutes, not this.
DEFAULT_DIST_TIMEOUT_S = 1800.0

#: Public name → submodule that defines it.
_EXPORTS = {
    "InputTransform": "actquant",
    "RandomizedHadamard": "hadamard",
    "hadamard_matrix": "hadamard",
    "quantize_module": "layerwise",
    "solve_layer": "layerwise",
    "find_block_list": "lm",
    "perplexity": "lm",
    "evaluate": "lm",
    "quantize_causal_lm": "lm",
    "DataParallel": "distributed",
    "rotate_llama": "rotation",
    "smooth_llama": "smoothquant",
    "save_quantized": "save",
    "load_quantized": "save",
}
__all__ = ["X_MODES", "SOLVER_X_MODES", "default_x_mode", "DEFAULT_HESSIAN_SEQUENCES", "DEFAULT_DIST_TIMEOUT_S",
           *_EXPORTS]


def default_x_mode(algorithm: str) -> str:
    """The X a solver uses unless told (SOLVER_X_MODES, else "float")."""
    return SOLVER_X_MODES.get(algorithm, "float")


def __getattr__(name):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
