"""YAQA's core solver: OPTQ on the whole weight with a Kronecker-factored Hessian.

Objective ``tr(ΔW H_in ΔWᵀ H_out) = vec(ΔW)ᵀ (H_out ⊗ H_in) vec(ΔW)``, ΔW = W − Q, vec row-major (entry
(r, c) at r·in + c). H_in (in × in) is the input second moment X̃ᵀX̃ of the other solvers; H_out
(out × out) the output-side factor (e.g. the second moment of the gradients at the layer's outputs).
OPTQ on vec(W) in row-major order needs the upper Cholesky factor of ``(H_out ⊗ H_in)⁻¹``, which is
``U_out ⊗ U_in``; it is an outer OPTQ over the rows with U_out whose rounding of a row is an inner OPTQ
pass along its columns with U_in (proofs/yaqa_kronecker.md, docs/algorithms/yaqa.md).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, fields, replace

from .grid import UniformGrid
from .linalg import DampingEscalationWarning, NotPositiveDefiniteError, damped_system
from .solvers import (DEFAULT_BLOCK_SIZE, DEFAULT_DAMP, SYMMETRY_CHECK_ROWS, SYMMETRY_RTOL, QuantResult,
                      _Problem)

#: What each Kronecker factor is, for the errors that name a missing one.
FACTOR_MEANINGS = {
    "H_in": "the input second moment X̃ᵀX̃ (in_features × in_features)",
    "H_out": "the output-side factor, e.g. the second moment of the gradients at the layer's outputs "
             "(out_features × out_features)",
}
#: Why a factor that is zero everywhere leaves nothing to fit.
ZERO_FACTOR_REASONS = {
    "H_in": "every input column of this layer was zero in the calibration data, so there is nothing to fit "
            "(use rtn, or check the calibration data)",
    "H_out": "every output channel of this layer had zero gradient in the calibration data, so there is "
             "nothing to fit (use optq with H_in alone, or check the gradient collection)",
}


@dataclass
class YaqaResult(QuantResult):
    """:class:`~qronos_linalg.QuantResult` of :func:`yaqa`: ``damp`` is H_in's damping coefficient actually
    used, ``damp_out`` H_out's (both relative to their own factor, ``damp_mode`` for both)."""

    damp_out: float | None = None


def yaqa(W, H_in, H_out, grid: UniformGrid, *, damp: float = DEFAULT_DAMP, block_size: int = DEFAULT_BLOCK_SIZE,
         damp_mode: str = "relative", act_order: bool = False) -> YaqaResult:
    """YAQA: minimise ``tr(ΔW H_in ΔWᵀ H_out)`` by OPTQ on vec(W), rows then columns ascending (``act_order``:
    the columns by decreasing ``diag(H_in)``, as OPTQ's act-order; the rows keep their order).

    With ``H_λ⁻¹ = UᵀU`` for each damped factor and ``Ū_out = diag(U_out)⁻¹ U_out``, row r starts from
    ``S_r = W_r − Σ_{r'<r} Ū_out[r', r] (S_{r'} − Q_{r'})`` and is rounded by OPTQ along its columns with U_in,
    ``q_c = Q(v_c)``, ``e_c = (v_c − q_c)/U_in[c, c]``, ``v_{>c} ← v_{>c} − e_c U_in[c, >c]`` from ``v = S_r``
    (proofs/yaqa_kronecker.md), in tiles of ``block_size`` rows and columns. Each factor is damped like
    :func:`~qronos_linalg.optq` (``λ = damp · mean(diag)`` of that factor, or σ_max with ``damp_mode``,
    escalated on its own: ``result.damp`` is H_in's, ``result.damp_out`` H_out's). Dead columns
    (``H_in[c, c] = 0``) round to Q(0); dead rows (``H_out[r, r] = 0``) are decoupled, so OPTQ on H_in alone
    rounds them. ``yaqa(W, H_in, I, grid)`` is ``optq(W, H_in, grid)``, with ``act_order`` too.
    """
    p = _Problem(W, None, None, grid, block_size=block_size, damp=damp, damp_mode=damp_mode)
    xp = p.xp
    out, n = p.W.shape
    H_in = _factor(H_in, "H_in", n, p)
    if act_order:
        H_in = p.order_columns(H_in)
    inner = _damped_factor(H_in, "H_in", "damp", damp, xp, damp_mode)
    outer = _damped_factor(_factor(H_out, "H_out", out, p), "H_out", "damp_out", damp, xp, damp_mode)
    Ubar_out = outer.U
    Ubar_out /= xp.diag(Ubar_out)[:, None]  # in place: the unit factor diag(U_out)⁻¹ U_out
    result = p.result(_round_tiles(p, inner, Ubar_out), "yaqa", inner)
    return YaqaResult(**{f.name: getattr(result, f.name) for f in fields(result)}, damp_out=outer.damp)


def yaqa_qronos(W, H, G, H_out, grid: UniformGrid, *, damp: float = DEFAULT_DAMP,
                block_size: int = DEFAULT_BLOCK_SIZE, damp_mode: str = "relative",
                act_order: bool = False) -> YaqaResult:
    """YAQA's H_out with Qronos' view of the inputs: minimise the H_out-weighted output error of the partially
    quantized layer, ``tr((XWᵀ − X̃Qᵀ) H_out (XWᵀ − X̃Qᵀ)ᵀ) = tr((Q − W⋆) H (Q − W⋆)ᵀ H_out) + const``.

    ``W⋆ = W G_λᵀ H_λ⁻¹`` is the least-squares target (the damped statistics of :func:`~qronos_linalg.qronos`,
    ``H_λ = H + λI``, ``G_λ = G + λI``), so this is ``yaqa(W⋆, H, H_out, grid)`` (proofs/yaqa_qronos.md). With
    X̃ = X (G = H) it is :func:`yaqa` on W. Dead columns (``H_tt = 0``) keep W's value in W⋆ and round to Q(0).
    """
    p = _Problem(W, H, G, grid, statistics=("H", "G"), block_size=block_size, damp=damp, damp_mode=damp_mode)
    xp = p.xp
    system = damped_system(p.H, p.G, damp, xp, damp_mode)
    U = system.U  # H_λ⁻¹ = UᵀU
    offset = U.T @ (U @ (system.G - system.H))  # H_λ⁻¹ (G_λ − H_λ): W⋆ = W (I + offset)ᵀ
    offset[system.dead] = 0
    W_star = p.W + p.W @ offset.T
    result = yaqa(W_star, p.H, H_out, grid, damp=damp, block_size=block_size, damp_mode=damp_mode,
                  act_order=act_order)
    return replace(result, weight=xp.cast(result.weight, p.W_dtype), algorithm="yaqa-qronos")


def _factor(M, name, size, p):
    """One Kronecker factor validated and cast to the compute dtype: square ``size`` × ``size``, finite,
    symmetric (as :class:`~qronos_linalg.solvers._Problem` checks H), not zero."""
    xp = p.xp
    if M is None:
        raise ValueError(f"{name} is required: {FACTOR_MEANINGS[name]}, got None")
    if not hasattr(M, "shape"):
        raise TypeError(f"{name} must be a numpy.ndarray or torch.Tensor, got {type(M).__name__}")
    dims = "in_features" if name == "H_in" else "out_features"
    if len(M.shape) != 2 or tuple(M.shape) != (size, size):
        raise ValueError(f"{name} must have shape ({dims}, {dims}) = ({size}, {size}) to match W, "
                         f"got {tuple(M.shape)}")
    M = xp.asarray(M, p.dtype, like=p.W)
    if not xp.all_finite(M):
        raise ValueError(f"{name} contains non-finite values (NaN or inf)")
    step = max(1, size // SYMMETRY_CHECK_ROWS)
    rows, columns = M[::step, :], M[:, ::step].T
    asymmetry = xp.to_scalar(xp.abs(rows - columns).max())
    magnitude = xp.to_scalar(xp.abs(rows).max())
    if asymmetry > SYMMETRY_RTOL * magnitude:
        raise ValueError(f"{name} must be symmetric: max|{name} − {name}ᵀ| = {asymmetry:.3g} is more than "
                         f"{SYMMETRY_RTOL:g} × max|{name}| = {magnitude:.3g}; pass the full matrix, not one triangle")
    if not bool((xp.diag(M) != 0).any()):
        raise ValueError(f"{name} is zero: {ZERO_FACTOR_REASONS[name]}")
    return M


def _damped_factor(M, name, attribute, damp, xp, mode):
    """:func:`~qronos_linalg.linalg.damped_system` of one factor; its escalation warning and its error name
    the factor (and the result attribute holding its damping)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", DampingEscalationWarning)
        try:
            system = damped_system(M, None, damp, xp, mode)
        except NotPositiveDefiniteError as error:
            raise NotPositiveDefiniteError(f"{name}: {error}") from None
    for warning in caught:
        warnings.warn(f"{name} (damping on the result as .{attribute}): {warning.message}", warning.category,
                      stacklevel=3)
    return system


def _round_tiles(p, inner, Ubar_out):
    """Codes (uint8) of the tiled row-coupled rounding: row blocks R of ``block_size`` rows in turn, each in
    tiles (R, C) of ``block_size`` columns.

    With the unit factor ``Ubar_out = diag(U_out)⁻¹ U_out`` and the rows' errors ``D = S − Q``, row block R
    starts from ``A = W_R − Ubar_out[<R, R]ᵀ D_{<R}`` (one product over all columns; dead columns zeroed); tile
    (R, C) adds ``X = E_{R, <C} U_in[<C, C]`` (the row passes' errors of the earlier column blocks, one
    product) and the kernel rounds it, rows in turn: it subtracts the tile's earlier rows from A, rounds
    ``A − X`` by OPTQ along C and records E (``(v − q)/U_in[c, c]``) and D.
    """
    xp, W, B = p.xp, p.W, p.block_size
    out, n = W.shape
    U_in = inner.U
    codes = xp.zeros((out, n), "uint8", like=W)
    D = xp.zeros((out, n), p.dtype, like=W)
    for r0 in range(0, out, B):
        R = slice(r0, min(r0 + B, out))
        A = W[R] - Ubar_out[:r0, R].T @ D[:r0]
        A[:, inner.dead] = 0
        E = xp.zeros(A.shape, p.dtype, like=W)
        for c0 in range(0, n, B):
            C = slice(c0, min(c0 + B, n))
            xp.round_tile(A, E[:, :c0] @ U_in[:c0, C], Ubar_out, U_in, p.group_scale[R], p.group_zero[R], p.groups,
                          r0, c0, p.grid.qmin, p.grid.qmax, codes[R], E, D[R])
    return codes
