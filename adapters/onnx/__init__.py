"""ONNX adapter: layer-by-layer quantization of MatMul/Gemm/Conv weights, MatMulNBits or QDQ output."""

from .calibration import load_calibration
from .config import DEFAULT_RECIPE, QuantConfig
from .errors import (
    CalibrationError,
    ConfigError,
    InvalidModelError,
    NoQuantizableLayerError,
    NonFiniteActivationError,
    OnnxAdapterError,
    OutputExistsError,
)
from .export import save_model
from .quantize import quantize_onnx

__all__ = [
    "quantize_onnx",
    "save_model",
    "load_calibration",
    "QuantConfig",
    "DEFAULT_RECIPE",
    "OnnxAdapterError",
    "InvalidModelError",
    "CalibrationError",
    "ConfigError",
    "NoQuantizableLayerError",
    "NonFiniteActivationError",
    "OutputExistsError",
]
