"""ONNX adapter: layer-by-layer quantization of MatMul/Gemm/Conv weights, MatMulNBits or QDQ output.

Import as ``qronos_linalg.adapters.onnx`` (the top-level ``adapters/`` folder of the repository is
installed under ``qronos_linalg``). The names below load their submodule (and onnx) on first use, so
that ``qronos --help`` stays fast.
"""

import importlib

#: Public name → submodule that defines it.
_EXPORTS = {
    "quantize_onnx": "quantize",
    "save_model": "export",
    "load_calibration": "calibration",
    "QuantConfig": "config",
    "DEFAULT_RECIPE": "config",
    "OnnxAdapterError": "errors",
    "InvalidModelError": "errors",
    "CalibrationError": "errors",
    "ConfigError": "errors",
    "NoQuantizableLayerError": "errors",
    "NonFiniteActivationError": "errors",
    "OutputExistsError": "errors",
}
__all__ = list(_EXPORTS)


def __getattr__(name):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
