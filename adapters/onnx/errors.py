"""Exceptions of the ONNX adapter; each names what is wrong. A bad option is the core's ConfigError."""

from qronos_linalg.options import ConfigError

__all__ = ["ConfigError", "OnnxAdapterError", "InvalidModelError", "CalibrationError", "NoQuantizableLayerError",
           "NonFiniteActivationError", "OutputExistsError"]


class OnnxAdapterError(ValueError):
    """Base class: bad input to the ONNX adapter (nothing is written)."""


class InvalidModelError(OnnxAdapterError):
    """The file is not a readable, valid ONNX model."""


class CalibrationError(OnnxAdapterError):
    """Calibration data does not match the graph inputs (names, dtypes or shapes)."""


class NoQuantizableLayerError(OnnxAdapterError):
    """No MatMul, Gemm or Conv with a constant weight was selected."""


class NonFiniteActivationError(OnnxAdapterError):
    """A layer's input contains NaN or inf during calibration."""


class OutputExistsError(OnnxAdapterError, FileExistsError):
    """The output path exists and overwriting was not requested."""
