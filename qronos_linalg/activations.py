"""Per-token dynamic asymmetric activation fake quantization (the inputs of quantized linears).

For each token (the slice ``x`` of an array along ``axis``): ``lo = min(min x, 0)``, ``hi = max(max x, 0)``,
``scale = (hi − lo) / (2^b − 1)``, ``zero = round(−lo / scale)``,
``x̂ = (clip(round(x / scale) + zero, 0, 2^b − 1) − zero) · scale``, rounding half to even; an all-zero
token stays zero. NumPy arrays and torch tensors alike, in their own dtype.
"""

from __future__ import annotations

from .backend import backend_of
from .grid import MAX_BITS, MIN_BITS, quantize_to_codes

#: Activation bit widths accepted (the weight grid's range).
ACT_BITS = tuple(range(MIN_BITS, MAX_BITS + 1))


def check_act_bits(bits) -> None:
    """ValueError unless ``bits`` is None (no activation quantization) or one of ACT_BITS."""
    if bits is not None and (isinstance(bits, bool) or bits not in ACT_BITS):
        raise ValueError(f"activation bits (act_bits) must be None or an integer in [{MIN_BITS}, {MAX_BITS}], got {bits!r}")


def fake_quantize_per_token(x, bits: int, axis: int = -1):
    """Round every slice of ``x`` along ``axis`` to its own asymmetric ``bits``-bit min-max grid."""
    if bits is None:
        raise ValueError("fake_quantize_per_token needs a bit width, got None")
    check_act_bits(bits)
    xp = backend_of(x)
    qmax = 2**bits - 1
    lo = xp.minimum(xp.amin(x, axis, keepdims=True), 0.0)
    hi = xp.maximum(xp.amax(x, axis, keepdims=True), 0.0)
    scale = (hi - lo) / qmax
    scale = xp.where(scale > 0, scale, 1.0)
    zero = xp.round_half_even(-lo / scale)
    return (quantize_to_codes(x, scale, zero, 0, qmax, xp) - zero) * scale
