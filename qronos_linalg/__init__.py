"""qronos_linalg: data-driven post-training quantization as least-squares rounding.

Conventions (docs/conventions.md): W is (out_features, in_features); X, X̃ are (samples,
in_features); H = X̃ᵀX̃ and G = X̃ᵀX; the solvers minimise ‖XWᵀ − X̃Qᵀ‖_F² over Q on a frozen grid.
"""

from .grid import UniformGrid
from .linalg import DampingEscalationWarning, NotPositiveDefiniteError
from .solvers import QuantResult, gpfq, gptaq, optq, output_error, qronos, rtn
from .stats import LayerStats
from .yaqa import YaqaResult, yaqa, yaqa_qronos

__version__ = "0.1.0"

__all__ = [
    "UniformGrid",
    "LayerStats",
    "QuantResult",
    "rtn",
    "optq",
    "gpfq",
    "gptaq",
    "qronos",
    "yaqa",
    "yaqa_qronos",
    "YaqaResult",
    "output_error",
    "NotPositiveDefiniteError",
    "DampingEscalationWarning",
]
