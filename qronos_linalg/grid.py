"""Frozen uniform grids: per-channel or grouped, asymmetric or symmetric, fitted before rounding.

Rounding rule (one everywhere): ``code = clip(round_half_even(v / scale) + zero, qmin, qmax)`` and the
value of a code is ``(code − zero) · scale``.
"""

from __future__ import annotations

import math

import numpy as np

from .backend import NUMPY as NUMPY_BACKEND
from .backend import backend_of, compute_dtype, result_dtype

MIN_BITS = 2
MAX_BITS = 8
#: MSE search: shrink factors 1, 1 − s, 1 − 2s, ... down to 1 − MSE_MAX_SHRINK in MSE_GRID_STEPS steps.
MSE_GRID_STEPS = 100
MSE_MAX_SHRINK = 0.8
SEARCH_METHODS = ("minmax", "mse")
#: Storage dtypes a grid's scales can be frozen in before rounding (what an export format stores them as).
SCALE_DTYPES = ("float32", "float16", "bfloat16")


def check_bits(bits) -> None:
    """ValueError unless ``bits`` is an integer in [MIN_BITS, MAX_BITS]."""
    if not isinstance(bits, int) or isinstance(bits, bool) or not MIN_BITS <= bits <= MAX_BITS:
        raise ValueError(f"bits must be an integer in [{MIN_BITS}, {MAX_BITS}], got {bits!r}")


def check_group_size(group_size) -> None:
    """ValueError unless ``group_size`` is a positive integer or None (per channel)."""
    if group_size is not None and (not isinstance(group_size, int) or isinstance(group_size, bool) or group_size < 1):
        raise ValueError(f"group_size must be a positive integer or None (per channel), got {group_size!r}")


def check_shrink(shrink) -> None:
    """ValueError unless ``shrink`` (β of scaled min-max) is a number in (0, 1]."""
    if not isinstance(shrink, (int, float)) or isinstance(shrink, bool) or not 0 < shrink <= 1:
        raise ValueError(f"shrink must be in (0, 1], got {shrink!r}")


def check_scale_dtype(scale_dtype) -> None:
    """ValueError unless ``scale_dtype`` is None (no freezing) or one of SCALE_DTYPES."""
    if scale_dtype is not None and scale_dtype not in SCALE_DTYPES:
        raise ValueError(f"scale_dtype must be None or one of {SCALE_DTYPES}, got {scale_dtype!r}")


def round_to_dtype(values: np.ndarray, dtype: str) -> np.ndarray:
    """``values`` (float32/float64 NumPy) rounded to the nearest ``dtype`` number (SCALE_DTYPES), returned in
    the input's dtype. bfloat16 is float32's top 16 bits, rounded to nearest even."""
    if dtype != "bfloat16":
        return values.astype(dtype).astype(values.dtype)
    bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32).astype(np.uint64)
    rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16 << 16).astype(np.uint32)
    return rounded.view(np.float32).astype(values.dtype)


def check_search(search) -> None:
    """ValueError unless ``search`` is one of SEARCH_METHODS."""
    if search not in SEARCH_METHODS:
        raise ValueError(f"search must be one of {SEARCH_METHODS}, got {search!r}")


def n_groups_for(in_features: int, group_size: int | None) -> int:
    return 1 if group_size is None else math.ceil(in_features / group_size)


class UniformGrid:
    """A frozen grid: ``scale``, ``zero`` of shape (out, n_groups), ``bits``, optional ``group_size``.

    Group g covers input columns ``[g·group_size, (g+1)·group_size)`` at their original positions (the
    last group may be ragged); ``group_size=None`` is per-channel (n_groups = 1). Codes run from
    ``qmin`` (0, or 1 with ``narrow_range``) to ``qmax = 2^bits − 1``. A symmetric grid is the case
    ``zero = 2^(bits−1)``.
    """

    def __init__(self, scale, zero, bits: int, *, group_size: int | None = None, narrow_range: bool = False):
        check_bits(bits)
        check_group_size(group_size)
        xp = backend_of(scale)
        if tuple(scale.shape) != tuple(zero.shape) or len(scale.shape) != 2:
            raise ValueError(
                f"scale and zero must both have shape (out_features, n_groups); got {tuple(scale.shape)} "
                f"and {tuple(zero.shape)}"
            )
        if group_size is None and scale.shape[1] != 1:
            raise ValueError(f"a per-channel grid (group_size=None) needs n_groups = 1, got {scale.shape[1]}")
        dtype = compute_dtype(scale)
        scale = xp.copy(xp.asarray(scale, dtype, like=scale))
        zero = xp.copy(xp.asarray(zero, dtype, like=scale))
        if not xp.all_finite(scale) or not bool((scale > 0).all()):
            raise ValueError("grid scale must be finite and > 0 everywhere")
        self.bits = bits
        self.group_size = group_size
        self.narrow_range = bool(narrow_range)
        self.qmin = 1 if narrow_range else 0
        self.qmax = 2**bits - 1
        if not xp.all_finite(zero) or not bool((xp.round_half_even(zero) == zero).all()):
            raise ValueError("grid zero points must be finite integers")
        if not bool(((zero >= self.qmin) & (zero <= self.qmax)).all()):
            raise ValueError(f"grid zero points must lie in [{self.qmin}, {self.qmax}] for {bits} bits")
        if isinstance(scale, np.ndarray):
            scale.flags.writeable = False
            zero.flags.writeable = False
        self._scale = scale
        self._zero = zero

    @property
    def scale(self):
        return self._scale

    @property
    def zero(self):
        return self._zero

    @property
    def out_features(self) -> int:
        return self._scale.shape[0]

    @property
    def n_groups(self) -> int:
        return self._scale.shape[1]

    @property
    def symmetric(self) -> bool:
        return bool((self._zero == 2 ** (self.bits - 1)).all())

    def __repr__(self):
        kind = "symmetric" if self.symmetric else "asymmetric"
        groups = "per-channel" if self.group_size is None else f"group_size={self.group_size}"
        narrow = ", narrow_range" if self.narrow_range else ""
        return f"UniformGrid({self.bits}-bit {kind}, {groups}{narrow}, out_features={self.out_features})"

    def check_fits(self, W):
        """Raise ValueError unless this grid has one (scale, zero) per row and group of W."""
        out, n = W.shape
        expected = (out, n_groups_for(n, self.group_size))
        if tuple(self._scale.shape) != expected:
            raise ValueError(
                f"grid of shape {tuple(self._scale.shape)} does not fit W of shape {(out, n)}: expected "
                f"(out_features, n_groups) = {expected} for group_size={self.group_size}"
            )

    def column_group(self, in_features: int, xp, like):
        """Group index of each original input column."""
        cols = xp.arange(in_features, like=like)
        return cols * 0 if self.group_size is None else cols // self.group_size

    def column_params(self, in_features: int, like, dtype: str):
        """(scale, zero) expanded to one column per input feature: shape (out, in_features)."""
        xp = backend_of(like)
        groups = self.column_group(in_features, xp, like)
        scale = xp.asarray(self._scale, dtype, like=like)
        zero = xp.asarray(self._zero, dtype, like=like)
        return xp.take_columns(scale, groups), xp.take_columns(zero, groups)

    def quantize(self, W):
        """Codes (uint8, out × in) of W: ``clip(round_half_even(W / scale) + zero, qmin, qmax)``."""
        self.check_fits(W)
        xp = backend_of(W)
        dtype = compute_dtype(W)
        scale, zero = self.column_params(W.shape[1], W, dtype)
        return xp.to_codes(quantize_to_codes(xp.cast(W, dtype), scale, zero, self.qmin, self.qmax, xp))

    def dequantize(self, codes, dtype: str | None = None):
        """Values ``(code − zero) · scale`` (out × in) in the grid's float dtype unless ``dtype`` is given."""
        xp = backend_of(codes)
        dtype = dtype or compute_dtype(self._scale)
        scale, zero = self.column_params(codes.shape[1], codes, dtype)
        return (xp.to_float(codes, dtype) - zero) * scale

    def with_scales_in(self, dtype: str) -> "UniformGrid":
        """The same grid with every scale rounded to the nearest ``dtype`` number (SCALE_DTYPES), so that a
        format storing scales in ``dtype`` holds exactly this grid; fit the grid first, freeze, then round
        the weights against the frozen grid."""
        check_scale_dtype(dtype)
        xp = backend_of(self._scale)
        scale = xp.asarray(round_to_dtype(NUMPY_BACKEND.asarray(self._scale, compute_dtype(self._scale)), dtype),
                           compute_dtype(self._scale), like=self._scale)
        if not bool((scale > 0).all()) or not xp.all_finite(scale):
            raise ValueError(f"a grid scale is outside the {dtype} range (smallest scale {float(self._scale.min()):.3g}, "
                             f"largest {float(self._scale.max()):.3g}); the weights cannot be stored in this format")
        return UniformGrid(scale, self._zero, self.bits, group_size=self.group_size, narrow_range=self.narrow_range)

    def fake_quantize(self, W):
        """``dequantize(quantize(W))`` in W's dtype: plain round-to-nearest on the grid."""
        return self.dequantize(self.quantize(W), result_dtype(W))

    @classmethod
    def fit(
        cls,
        W,
        bits: int,
        *,
        symmetric: bool = False,
        group_size: int | None = None,
        shrink: float = 1.0,
        search: str = "minmax",
        narrow_range: bool = False,
    ) -> "UniformGrid":
        """Fit a grid to the original weights W (out × in), per row and group.

        Min-max: ``lo = β·min(min w, 0)``, ``hi = β·max(max w, 0)``, ``scale = (hi − lo)/(qmax − qmin)``,
        ``zero = qmin + round(−lo/scale)``; symmetric: ``zero = 2^(bits−1)``,
        ``scale = β·max|w| / (2^(bits−1) − 1)`` so ±max|w| are on the grid. β = ``shrink`` ("scaled
        min-max"). ``search="mse"`` instead picks, per row and group, the β in
        ``{1, 1 − 0.8/100, …, 0.2}`` (times ``shrink``) minimising ``‖w − Q_β(w)‖²``.
        """
        check_bits(bits)
        check_search(search)
        check_shrink(shrink)
        check_group_size(group_size)
        xp = backend_of(W)
        if len(W.shape) != 2:
            raise ValueError(f"W must be 2-D (out_features, in_features), got shape {tuple(W.shape)}")
        dtype = compute_dtype(W)
        W = xp.cast(W, dtype)
        if not xp.all_finite(W):
            raise ValueError("W contains non-finite values (NaN or inf)")
        out, n = W.shape
        n_groups = n_groups_for(n, group_size)
        width = n if group_size is None else group_size
        qmin = 1 if narrow_range else 0
        qmax = 2**bits - 1
        scale = xp.zeros((out, n_groups), dtype, like=W)
        zero = xp.zeros((out, n_groups), dtype, like=W)
        betas = [shrink]
        if search == "mse":
            betas = [shrink * (1 - MSE_MAX_SHRINK * k / MSE_GRID_STEPS) for k in range(MSE_GRID_STEPS)]
        for g in range(n_groups):
            block = W[:, g * width : (g + 1) * width]
            best_err = None
            for beta in betas:
                s, z = _minmax_params(block, beta, bits, symmetric, qmin, qmax, xp)
                if len(betas) == 1:
                    scale[:, g], zero[:, g] = s, z
                    break
                q = (quantize_to_codes(block, s[:, None], z[:, None], qmin, qmax, xp) - z[:, None]) * s[:, None]
                err = ((block - q) ** 2).sum(1)
                better = err < best_err if best_err is not None else err == err
                best_err = err if best_err is None else xp.where(better, err, best_err)
                scale[:, g] = xp.where(better, s, scale[:, g])
                zero[:, g] = xp.where(better, z, zero[:, g])
        return cls(scale, zero, bits, group_size=group_size, narrow_range=narrow_range)


def _minmax_params(block, beta, bits, symmetric, qmin, qmax, xp):
    """Per-row (scale, zero) of a min-max grid over ``block`` with range shrunk by ``beta``."""
    if symmetric:
        half_levels = 2 ** (bits - 1) - 1
        scale = beta * xp.amax(xp.abs(block), 1) / half_levels
        scale = xp.where(scale > 0, scale, scale * 0 + 1)
        return scale, scale * 0 + 2 ** (bits - 1)
    lo = beta * xp.minimum(xp.amin(block, 1), 0.0)
    hi = beta * xp.maximum(xp.amax(block, 1), 0.0)
    scale = (hi - lo) / (qmax - qmin)
    scale = xp.where(scale > 0, scale, scale * 0 + 1)
    zero = xp.clip(qmin + xp.round_half_even(-lo / scale), qmin, qmax)
    return scale, zero


def quantize_to_codes(V, scale, zero, qmin, qmax, xp):
    """``clip(round_half_even(V / scale) + zero, qmin, qmax)`` as floats (broadcasting)."""
    return xp.clip(xp.round_half_even(V / scale) + zero, qmin, qmax)
