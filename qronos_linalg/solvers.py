"""Efficient rounding solvers from layer statistics: RTN, OPTQ, GPFQ, GPTAQ, Qronos.

Notation (docs/conventions.md): W (out × in), H = X̃ᵀX̃, G = X̃ᵀX, objective ‖XWᵀ − X̃Qᵀ‖_F².
Every solver works on the columns in processing order ``perm`` (identity, or act-order: decreasing
diag(H)), rounds them with the frozen grid at their original positions, and returns the result
un-permuted. The direct definitions they equal are in :mod:`qronos_linalg.naive`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .backend import backend_of, compute_dtype, result_dtype
from .grid import UniformGrid
from .linalg import DAMP_MODES, damped_system, mark_dead_columns

#: Columns per block in the blocked ("lazy batch") updates of the OPTQ family (GPTQ's default).
DEFAULT_BLOCK_SIZE = 128
#: Relative damping default of OPTQ, GPTAQ and Qronos (GPTQ's). Qronos' first step is a least-squares
#: re-fit of every later column to X·w; with few calibration samples per input feature it over-fits the
#: X − X̃ noise, and damping is its regulariser (docs/algorithms/qronos.md has the measurements).
DEFAULT_DAMP = 0.01
#: GPTAQ's scaling of the asymmetric term (the reference implementation's empirical choice).
DEFAULT_GPTAQ_ALPHA = 0.25


@dataclass
class QuantResult:
    """Outcome of a solver.

    ``weight``: dequantized Q (out × in), same array type, device and dtype as W.
    ``codes``: integer codes (uint8, out × in) at original column positions; ``weight`` is exactly
    ``grid.dequantize(codes)``. ``grid``: the frozen grid used. ``perm``: the column order used.
    ``damp``: damping coefficient actually used (None where the solver has none) and ``damp_mode`` what it
    multiplies (mean(diag H) or σ_max(H), :data:`~qronos_linalg.linalg.DAMP_MODES`); ``algorithm``: its name.
    """

    weight: object
    codes: object
    grid: UniformGrid
    perm: object
    algorithm: str
    damp: float | None = None
    damp_mode: str | None = None


#: H must be symmetric: ``max|H − Hᵀ| ≤ SYMMETRY_RTOL · max|H|`` (only its lower triangle would be read).
SYMMETRY_RTOL = 1e-5
#: Rows of H compared with its columns in that check (evenly spaced: O(n) work, not O(n²); a triangle, a
#: transposed G or a non-symmetric matrix differs in nearly every row).
SYMMETRY_CHECK_ROWS = 64


def check_damp(damp) -> None:
    """ValueError unless ``damp`` is a finite number >= 0."""
    if isinstance(damp, bool) or not (isinstance(damp, (int, float)) and math.isfinite(damp) and damp >= 0):
        raise ValueError(f"damp must be a finite number >= 0, got {damp!r}")


def check_damp_mode(damp_mode) -> None:
    """ValueError unless ``damp_mode`` is one of DAMP_MODES."""
    if damp_mode not in DAMP_MODES:
        raise ValueError(f"damp_mode must be one of {DAMP_MODES}, got {damp_mode!r}")


def check_block_size(block_size) -> None:
    """ValueError unless ``block_size`` is a positive integer."""
    if not isinstance(block_size, int) or isinstance(block_size, bool) or block_size < 1:
        raise ValueError(f"block_size must be a positive integer, got {block_size!r}")


class _Problem:
    """Validated inputs in the compute dtype, permuted into processing order.

    ``statistics`` names the matrices the solver needs (``"H"``, ``"G"``); each must then be given.
    """

    def __init__(self, W, H, G, grid, *, statistics=(), act_order=False, block_size=DEFAULT_BLOCK_SIZE, damp=0.0,
                 damp_mode="relative"):
        if len(getattr(W, "shape", ())) != 2:
            raise ValueError(f"W must be 2-D (out_features, in_features), got shape {tuple(getattr(W, 'shape', ()))}")
        xp = backend_of(W)
        self.xp = xp
        self.dtype = compute_dtype(W)
        self.W_dtype = result_dtype(W)
        if not isinstance(grid, UniformGrid):
            raise TypeError(f"grid must be a UniformGrid, got {type(grid).__name__}")
        grid.check_fits(W)
        check_block_size(block_size)
        check_damp(damp)
        check_damp_mode(damp_mode)
        self.block_size = block_size
        n = W.shape[1]
        W = xp.cast(W, self.dtype)
        if not xp.all_finite(W):
            raise ValueError("W contains non-finite values (NaN or inf)")
        H = self._matrix(H, "H", n, W, statistics, "X̃ᵀX̃")
        G = self._matrix(G, "G", n, W, statistics, "X̃ᵀX")
        if H is not None:
            self._check_symmetric(H)
            if not bool((xp.diag(H) != 0).any()):
                raise ValueError(
                    "H is zero: every input column of this layer was zero in the calibration data, so there is "
                    "nothing to fit (use rtn, or check the calibration data)"
                )
        self.grid = grid
        self.W = W
        # Grid of each column in processing order, gathered per block (no out × in expansion).
        self.groups = grid.column_group(n, xp, W)
        self.act_order, self.perm = False, xp.arange(n, like=W)
        if act_order:
            H = self.order_columns(H)
            G = None if G is None else G[self.perm][:, self.perm]
        self.H, self.G = H, G
        self.group_scale = xp.asarray(grid.scale, self.dtype, like=W)
        self.group_zero = xp.asarray(grid.zero, self.dtype, like=W)

    def order_columns(self, M):
        """Act-order: process the columns by decreasing ``diag(M)`` (W and the columns' grid follow);
        returns M in that order. :meth:`result` puts the codes back."""
        xp = self.xp
        p = self.perm = xp.argsort_descending(xp.diag(M))
        self.act_order = True
        self.W, self.groups = self.W[:, p], self.groups[p]
        return M[p][:, p]

    def _matrix(self, M, name, n, like, statistics, meaning):
        if M is None:
            if name in statistics:
                raise ValueError(f"{name} is required: the layer statistic {name} = {meaning} ({n} × {n}), got None")
            return None
        if not hasattr(M, "shape"):
            raise TypeError(f"{name} must be a numpy.ndarray or torch.Tensor, got {type(M).__name__}")
        if len(M.shape) != 2 or tuple(M.shape) != (n, n):
            raise ValueError(
                f"{name} must have shape (in_features, in_features) = ({n}, {n}) to match W, "
                f"got {tuple(M.shape)}"
            )
        M = self.xp.asarray(M, self.dtype, like=like)
        if not self.xp.all_finite(M):
            raise ValueError(f"{name} contains non-finite values (NaN or inf)")
        return M

    def _check_symmetric(self, H):
        xp = self.xp
        step = max(1, H.shape[0] // SYMMETRY_CHECK_ROWS)
        rows, columns = H[::step, :], H[:, ::step].T
        asymmetry = xp.to_scalar(xp.abs(rows - columns).max())
        size = xp.to_scalar(xp.abs(rows).max())
        if asymmetry > SYMMETRY_RTOL * size:
            raise ValueError(
                f"H must be symmetric (X̃ᵀX̃): max|H − Hᵀ| = {asymmetry:.3g} is more than {SYMMETRY_RTOL:g} × max|H| "
                f"= {size:.3g}; pass the full matrix, not one triangle"
            )

    def round_with_error_feedback(self, U, dead, *, offset=None, P=None):
        """OPTQ, Qronos and GPTAQ: start from W (dead columns zeroed), round ``v + offset`` (Qronos) and
        propagate the scaled error ``e_t = (v_t − q_t)/U_tt`` through U (and ``v_t`` through P: GPTAQ)."""

        def start(a, c):
            V = self.xp.copy(self.W[:, a:c])
            V[:, dead[a:c]] = 0
            return V

        return self._round_blocks(U, start, offset=offset, P=P, propagate_rounded=False)

    def round_with_value_feedback(self, M, start_lower):
        """GPFQ: start from ``S = W Lᵀ`` (L = ``start_lower``, lower triangular) and propagate the rounded
        values ``q_t`` through M."""
        return self._round_blocks(M, lambda a, c: self.W[:, :c] @ start_lower[a:c, :c].T, propagate_rounded=True)

    def _round_blocks(self, U, start, *, offset=None, P=None, propagate_rounded):
        """Blocked ("lazy") rounding of W's columns in processing order; returns the codes (uint8).

        Left-looking: block b = [a, c) starts from ``V_b = start(a, c) − E_{<b} U_{<b,b} (+ Pre_{<b} P_{<b,b})``
        (one product gathers the updates of all earlier blocks); the kernel rounds the block and records E
        (and Pre, the values before rounding, for GPTAQ).
        """
        xp, W = self.xp, self.W
        out, n = W.shape
        codes = xp.zeros((out, n), "uint8", like=W)
        E = xp.zeros((out, n), self.dtype, like=W)
        pre = None if P is None else xp.zeros((out, n), self.dtype, like=W)
        for a in range(0, n, self.block_size):
            c = min(a + self.block_size, n)
            V = start(a, c)
            if a > 0:
                V -= E[:, :a] @ U[:a, a:c]
                if P is not None:
                    V += pre[:, :a] @ P[:a, a:c]
            cols = self.groups[a:c]
            xp.round_block(
                V, U[a:c, a:c], xp.take_columns(self.group_scale, cols), xp.take_columns(self.group_zero, cols),
                self.grid.qmin, self.grid.qmax, codes[:, a:c], E[:, a:c],
                pre=None if P is None else pre[:, a:c],
                offset=None if offset is None else offset[:, a:c],
                P=None if P is None else P[a:c, a:c],
                propagate_rounded=propagate_rounded,
            )
        return codes

    def result(self, codes, algorithm, system=None) -> QuantResult:
        """Un-permute the codes (uint8, processing order) and dequantize them with the frozen grid; ``system``:
        the damped system the codes were solved with (None: no damping)."""
        xp = self.xp
        if self.act_order:
            codes = codes[:, xp.inverse_permutation(self.perm)]
        weight = xp.cast(self.grid.dequantize(codes, self.dtype), self.W_dtype)
        return QuantResult(weight=weight, codes=codes, grid=self.grid, perm=self.perm, algorithm=algorithm,
                           damp=None if system is None else system.damp,
                           damp_mode=None if system is None else system.mode)


def rtn(W, grid: UniformGrid) -> QuantResult:
    """Round to nearest: ``q = Q(w)``."""
    p = _Problem(W, None, None, grid)
    return p.result(grid.quantize(p.W), "rtn")


def optq(W, H, grid: UniformGrid, *, damp: float = DEFAULT_DAMP, block_size: int = DEFAULT_BLOCK_SIZE,
         act_order: bool = False, damp_mode: str = "relative") -> QuantResult:
    """OPTQ/GPTQ: minimise ‖X̃(w − q)‖² column by column.

    With ``H_λ⁻¹ = UᵀU`` (U upper): ``q_t = Q(v_t)``, ``e_t = (v_t − q_t)/U_tt``,
    ``v_{>t} ← v_{>t} − e_t U_{t,>t}`` (proofs/cholesky_form.md, proofs/optq_ldlq.md). Damping
    ``λ = damp · mean(diag H)`` (``damp_mode="relative"``) or ``damp · σ_max(H)`` (``"spectral"``).
    """
    p = _Problem(W, H, None, grid, statistics=("H",), act_order=act_order, block_size=block_size, damp=damp,
                 damp_mode=damp_mode)
    system = damped_system(p.H, None, damp, p.xp, damp_mode)
    return p.result(p.round_with_error_feedback(system.U, system.dead), "optq", system)


def qronos(W, H, G, grid: UniformGrid, *, damp: float = DEFAULT_DAMP,
           block_size: int = DEFAULT_BLOCK_SIZE, act_order: bool = False, damp_mode: str = "relative") -> QuantResult:
    """Qronos: correct the past, shape the future, minimising ‖Xw − X̃q‖².

    Step 1: ``q_1 = Q((G_{1,:} w − H_{1,>1} w_{>1}) / H_11)``,
    ``v_{>1} = H_{>1,>1}⁻¹ (G_{>1,:} w − H_{>1,1} q_1)``; steps t ≥ 2 are OPTQ on H with the trailing
    block of the same factor U. Implemented as the OPTQ recursion with rounding offsets
    ``o_1 = z_1/H_11``, ``o_t = U_tt (z_{>1} U[1:,1:]ᵀ)_t`` where ``z = (G − H) w``
    (proofs/qronos_offset_form.md). Damping as in :func:`optq`, on H and G alike.
    """
    p = _Problem(W, H, G, grid, statistics=("H", "G"), act_order=act_order, block_size=block_size, damp=damp,
                 damp_mode=damp_mode)
    xp = p.xp
    system = damped_system(p.H, p.G, damp, xp, damp_mode)
    H_d, U, n = system.H, system.U, p.W.shape[1]
    # z = (G_λ − H_λ) w on live columns (W keeps its dead columns: D[t, dead] = G[t, dead] there, the
    # float part w_dead X_dead of the target); offsets o = W Aᵀ with A_1 = D_1 / H_11 and, for t ≥ 2,
    # A_t = U_tt (U₁ D_{>1,:})_t, U₁ = U[1:, 1:]; dead columns get no offset (they round 0).
    D = system.G - H_d
    A = xp.zeros((n, n), p.dtype, like=D)
    A[0] = D[0] / H_d[0, 0]
    if n > 1:
        U_trailing = U[1:, 1:]
        A[1:] = xp.diag(U_trailing)[:, None] * xp.upper_matmul(U_trailing, D[1:])
    A[system.dead] = 0
    return p.result(p.round_with_error_feedback(U, system.dead, offset=p.W @ A.T), "qronos", system)


def gptaq(W, H, G, grid: UniformGrid, *, alpha: float = DEFAULT_GPTAQ_ALPHA, damp: float = DEFAULT_DAMP,
          block_size: int = DEFAULT_BLOCK_SIZE, act_order: bool = False, damp_mode: str = "relative") -> QuantResult:
    """GPTAQ (asymmetric calibration): OPTQ plus ``v_{>t} += v_t P_{t,>t}``.

    ``P = α · triu((Gᵀ − H) Uᵀ, 1) · U`` with ``Gᵀ − H = (X − X̃)ᵀX̃`` and v_t the value *before*
    rounding, both inside a block and across blocks, so the result does not depend on block_size
    (proofs/gptaq.md derives it and where α departs from the exact least-squares update).
    """
    if not (isinstance(alpha, (int, float)) and math.isfinite(alpha)):
        raise ValueError(f"alpha must be a finite number, got {alpha!r}")
    p = _Problem(W, H, G, grid, statistics=("H", "G"), act_order=act_order, block_size=block_size, damp=damp,
                 damp_mode=damp_mode)
    xp = p.xp
    system = damped_system(p.H, p.G, damp, xp, damp_mode)
    U = system.U
    asym = system.G.T - system.H
    P = alpha * (xp.triu(asym @ U.T, 1) @ U)
    return p.result(p.round_with_error_feedback(U, system.dead, P=P), "gptaq", system)


def gpfq(W, H, G, grid: UniformGrid, *, act_order: bool = False) -> QuantResult:
    """GPFQ from statistics: ``q_t = Q((Σ_{s≤t} G_{t,s} w_s − Σ_{s<t} H_{t,s} q_s) / H_tt)``.

    Blocked: ``V = (W tril(G)ᵀ) / diag(H)`` and ``V_{>t} ← V_{>t} − q_t H_{t,>t} / diag(H)_{>t}``
    (proofs/gpfq_statistics.md).
    """
    p = _Problem(W, H, G, grid, statistics=("H", "G"), act_order=act_order)
    xp = p.xp
    H_live, G_live, _ = mark_dead_columns(p.H, p.G, xp)
    diag = xp.diag(H_live)
    H_scaled = H_live / diag[None, :]
    start = xp.tril(G_live) / diag[:, None]
    return p.result(p.round_with_value_feedback(H_scaled, start), "gpfq")


def output_error(W, Q, H, G, H_float) -> float:
    """``‖XWᵀ − X̃Qᵀ‖_F² = tr(W H_float Wᵀ) − 2 tr(Q G Wᵀ) + tr(Q H Qᵀ)`` from statistics."""
    xp = backend_of(W)
    W, Q, H, G, H_float = (xp.asarray(M, "float64", like=W) for M in (W, Q, H, G, H_float))
    total = ((W @ H_float) * W).sum() - 2 * ((Q @ G) * W).sum() + ((Q @ H) * Q).sum()
    return max(xp.to_scalar(total), 0.0)
