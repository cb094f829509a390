"""Number-type-generic forms of the rounding algorithms, for the checks in ``proofs/``.

Every function works on NumPy arrays of ``fractions.Fraction`` (``dtype=object``: exact rational
arithmetic) and on ``float64`` arrays alike. Rows of ``W`` (out × n) are independent and are processed
together; ``order`` is the column processing order (default identity) and rounding always uses the
grid parameters of a column's original position (docs/conventions.md).

Two families:

- *direct* forms (``*_direct``) work on the data ``X``, ``X̃`` exactly as the papers define the
  algorithms (least squares, residual recursions);
- *statistics* forms (``*_stats``) mirror what ``qronos_linalg.solvers`` computes from ``H``, ``G``.
  The code's factor ``U`` (``H⁻¹ = UᵀU``) is irrational in general, so these use its scaled form
  ``U = diag(√d) Ū`` (``Ū`` unit upper triangular, ``H⁻¹ = Ūᵀ diag(d) Ū``: rational). Every product the
  solvers form is rational in ``(Ū, d)``: ``e_t U_{t,j} = (b_t − q_t) Ū_{t,j}``,
  ``U_tt U_{t,j} = d_t Ū_{t,j}``, ``U_{k,i} U_{k,j} = d_k Ū_{k,i} Ū_{k,j}`` (proofs/cholesky_form.md).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from fractions import Fraction
from math import isqrt

import numpy as np

# --------------------------------------------------------------------------------------------
# Generic linear algebra
# --------------------------------------------------------------------------------------------


def is_exact(A) -> bool:
    """True for object arrays (Fractions), False for float arrays."""
    return np.asarray(A).dtype == object


def fractions(A) -> np.ndarray:
    """Object array of Fractions with the values of A."""
    A = np.asarray(A)
    return np.vectorize(Fraction, otypes=[object])(A) if A.size else A.astype(object)


def identity_like(n: int, like) -> np.ndarray:
    """n × n identity in the number type of ``like``."""
    return fractions(np.eye(n, dtype=int)) if is_exact(like) else np.eye(n)


def solve(A, B) -> np.ndarray:
    """A⁻¹ B: Gauss–Jordan for Fractions (A must be non-singular), LAPACK for floats."""
    if not is_exact(A):
        return np.linalg.solve(A, B)
    n = A.shape[0]
    rhs = B.reshape(n, -1)
    M = np.concatenate([A, rhs], axis=1).astype(object)
    for col in range(n):
        pivot = next(r for r in range(col, n) if M[r, col] != 0)  # StopIteration: singular A
        M[[col, pivot]] = M[[pivot, col]]
        M[col] = M[col] / M[col, col]
        for r in range(n):
            if r != col and M[r, col] != 0:
                M[r] = M[r] - M[r, col] * M[col]
    return M[:, n:].reshape(B.shape)


def inv(A) -> np.ndarray:
    """A⁻¹."""
    return solve(A, identity_like(A.shape[0], A))


def lstsq(A, B) -> np.ndarray:
    """argmin_V ‖A V − B‖_F (A of full column rank): normal equations exactly, LAPACK for floats."""
    if is_exact(A):
        return solve(A.T @ A, A.T @ B)
    return np.linalg.lstsq(A, B, rcond=None)[0]


def exact_sqrt(x: Fraction) -> Fraction:
    """√x for a Fraction that is the square of a rational; ValueError otherwise."""
    x = Fraction(x)
    num, den = isqrt(x.numerator), isqrt(x.denominator)
    if x < 0 or num * num != x.numerator or den * den != x.denominator:
        raise ValueError(f"{x} is not the square of a rational")
    return Fraction(num, den)


def lower_cholesky(A) -> np.ndarray:
    """Lower L with A = L Lᵀ, positive diagonal; exact when every pivot is a rational square."""
    n = A.shape[0]
    L = A * 0
    root = exact_sqrt if is_exact(A) else np.sqrt
    for j in range(n):
        L[j, j] = root(A[j, j] - L[j, :j] @ L[j, :j])
        for i in range(j + 1, n):
            L[i, j] = (A[i, j] - L[i, :j] @ L[j, :j]) / L[j, j]
    return L


def reversal(n: int, like) -> np.ndarray:
    """The reversal permutation J (J = Jᵀ = J⁻¹)."""
    return identity_like(n, like)[::-1].copy()


def scaled_upper_factor_of_inverse(H):
    """(Ū, d): Ū unit upper triangular, d > 0 with ``H⁻¹ = Ūᵀ diag(d) Ū``; ``U = diag(√d) Ū``.

    Row by row: ``d_t = K_tt − Σ_{k<t} d_k Ū_{k,t}²``,
    ``Ū_{t,j} = (K_tj − Σ_{k<t} d_k Ū_{k,t} Ū_{k,j}) / d_t`` with ``K = H⁻¹``.
    """
    K = inv(H)
    n = K.shape[0]
    Ubar = identity_like(n, H)
    d = K[0] * 0
    for t in range(n):
        d[t] = K[t, t] - (d[:t] * Ubar[:t, t]) @ Ubar[:t, t]
        for j in range(t + 1, n):
            Ubar[t, j] = (K[t, j] - (d[:t] * Ubar[:t, t]) @ Ubar[:t, j]) / d[t]
    return Ubar, d


def unit_upper_udu(H):
    """QuIP's factorization of H itself: ``H = (U̇ + I) D (U̇ + I)ᵀ``, U̇ strictly upper. Returns (U̇, D).

    Eliminates from the last column backwards: ``D_t = H_tt − Σ_{k>t} D_k L_{t,k}²``,
    ``L_{i,t} = (H_it − Σ_{k>t} D_k L_{i,k} L_{t,k}) / D_t`` for i < t, with L = U̇ + I.
    """
    n = H.shape[0]
    L = identity_like(n, H)
    D = H[0] * 0
    for t in reversed(range(n)):
        D[t] = H[t, t] - (D[t + 1 :] * L[t, t + 1 :]) @ L[t, t + 1 :]
        for i in range(t):
            L[i, t] = (H[i, t] - (D[t + 1 :] * L[i, t + 1 :]) @ L[t, t + 1 :]) / D[t]
    return L - identity_like(n, H), D


# --------------------------------------------------------------------------------------------
# Grids
# --------------------------------------------------------------------------------------------


@dataclass
class ExactGrid:
    """A uniform grid with the attribute names of ``qronos_linalg.UniformGrid`` (Fraction scales)."""

    scale: np.ndarray  # (out, n_groups)
    zero: np.ndarray  # (out, n_groups), integer values
    qmin: int
    qmax: int
    group_size: int | None = None


def round_half_even(x) -> np.ndarray:
    """Elementwise round-half-to-even (Python's ``round`` on Fractions, ``rint`` on floats)."""
    if is_exact(x):
        return np.array([Fraction(round(v)) for v in x], dtype=object)
    return np.rint(x)


def round_column(grid, values, column: int) -> np.ndarray:
    """Q(values) for one column at original position ``column``:
    ``(clip(round_half_even(v/s) + z, qmin, qmax) − z) · s``."""
    group = 0 if grid.group_size is None else column // grid.group_size
    exact = is_exact(values)
    scale = np.asarray(grid.scale)[:, group]
    zero = np.asarray(grid.zero)[:, group]
    if not exact:
        scale, zero = scale.astype(np.float64), zero.astype(np.float64)
    codes = np.clip(round_half_even(values / scale) + zero, grid.qmin, grid.qmax)
    return (codes - zero) * scale


# --------------------------------------------------------------------------------------------
# Damping (proofs/damping_augmentation.md)
# --------------------------------------------------------------------------------------------


def live_columns(H) -> np.ndarray:
    """Boolean mask of live columns (H_tt ≠ 0)."""
    return np.array([H[t, t] != 0 for t in range(H.shape[0])])


def damp_stats(H, G, lam, *, damp_G=True):
    """(H + λ I_L, G + λ I_L), I_L the diagonal indicator of the live columns (``damp_G=False``:
    the perturbed variant that damps H only)."""
    I_live = identity_like(H.shape[0], H) * live_columns(H)[None, :]
    return H + lam * I_live, (G + lam * I_live) if damp_G else G


def augment(X, X_tilde, root_lam, live):
    """``[X; √λ E]``, ``[X̃; √λ E]`` with E one row e_jᵀ per live column j."""
    E = identity_like(X.shape[1], X)[np.flatnonzero(live)]
    return np.concatenate([X, root_lam * E]), np.concatenate([X_tilde, root_lam * E])


# --------------------------------------------------------------------------------------------
# Direct forms from data
# --------------------------------------------------------------------------------------------


def _order(order, n):
    return list(range(n)) if order is None else [int(i) for i in order]


def qronos_direct(W, X, X_tilde, grid, order=None, trace=None) -> np.ndarray:
    """Qronos as defined (v⁽⁰⁾ = w), for t in order:

    correction ``q_t = Q(argmin_p ‖Xw − Σ_{j<t} q_j X̃_j − p X̃_t − Σ_{j>t} v_j X̃_j‖²)``;
    diffusion ``v_{>t} = argmin_v ‖Xw − Σ_{j≤t} q_j X̃_j − X̃_{>t} v‖²`` (least squares on the data).
    ``trace`` (a list) receives one :class:`Step` per column.
    """
    return _sequential_least_squares(W, X, X_tilde, grid, order, correct=True, trace=trace)


def asymmetric_sequential_direct(W, X, X_tilde, grid, order=None) -> np.ndarray:
    """Exact sequential least squares for ``‖Xw − X̃q‖²`` started at the unconstrained minimiser
    ``v* = argmin_v ‖Xw − X̃v‖``: ``q_t = Q(v_t)``, ``v_{>t} = argmin_v ‖Xw − X̃_{≤t} q_{≤t} − X̃_{>t} v‖²``."""
    start = lstsq(X_tilde, X @ W.T).T
    return _sequential_least_squares(W, X, X_tilde, grid, order, correct=False, start=start)


@dataclass
class Step:
    """One step of the direct Qronos form: the column, the unrounded correction ``value``, the
    working weights before and after the step, and the residual after the diffusion."""

    column: int
    value: np.ndarray
    V_before: np.ndarray
    V_after: np.ndarray
    residual: np.ndarray


def _sequential_least_squares(W, X, X_tilde, grid, order, correct, start=None, trace=None):
    """Round column t (its corrected value if ``correct``, else v_t), then re-fit the later columns:
    ``v_{>t} = argmin_v ‖Xw − X̃_{≤t} q_{≤t} − X̃_{>t} v‖²``; v starts at ``start`` (default w)."""
    n = W.shape[1]
    order = _order(order, n)
    target = X @ W.T  # (samples, out)
    V = (W if start is None else start).copy()
    Q = W * 0
    for k, t in enumerate(order):
        done, rest = order[: k + 1], order[k + 1 :]
        if correct:
            fixed = np.concatenate([Q[:, done[:-1]], V[:, rest]], axis=1)
            residual = target - X_tilde[:, done[:-1] + rest] @ fixed.T
            xt = X_tilde[:, t]
            value = (xt @ residual) / (xt @ xt)
        else:
            value = V[:, t]
        Q[:, t] = round_column(grid, value, t)
        V_before = V.copy()
        if rest:
            V[:, rest] = lstsq(X_tilde[:, rest], target - X_tilde[:, done] @ Q[:, done].T).T
        if trace is not None:
            residual = target - X_tilde[:, done] @ Q[:, done].T - X_tilde[:, rest] @ V[:, rest].T
            trace.append(Step(column=t, value=value, V_before=V_before, V_after=V.copy(), residual=residual))
    return Q


def optq_obs(W, X, grid, order=None) -> np.ndarray:
    """OPTQ as the OBS step: ``q_t = Q(v_t)``, then
    ``v_{>t} ← v_{>t} + argmin_δ ‖(v_t − q_t) X_t − X_{>t} δ‖²`` (compensate the error of column t)."""
    n = W.shape[1]
    order = _order(order, n)
    V = W.copy()
    Q = W * 0
    for k, t in enumerate(order):
        rest = order[k + 1 :]
        Q[:, t] = round_column(grid, V[:, t], t)
        if rest:
            error = np.outer(X[:, t], V[:, t] - Q[:, t])  # (samples, out)
            V[:, rest] = V[:, rest] + lstsq(X[:, rest], error).T
    return Q


def gpfq_direct(W, X, X_tilde, grid, order=None) -> np.ndarray:
    """GPFQ as defined: ``u_0 = 0``, ``q_t = Q(⟨X̃_t, u_{t−1} + w_t X_t⟩ / ‖X̃_t‖²)``,
    ``u_t = u_{t−1} + w_t X_t − q_t X̃_t`` (u: samples × out)."""
    order = _order(order, W.shape[1])
    u = X[:, :1] @ W[:, :1].T * 0
    Q = W * 0
    for t in order:
        with_float = u + np.outer(X[:, t], W[:, t])
        xt = X_tilde[:, t]
        Q[:, t] = round_column(grid, (xt @ with_float) / (xt @ xt), t)
        u = with_float - np.outer(xt, Q[:, t])
    return Q


# --------------------------------------------------------------------------------------------
# Statistics forms (what the solvers compute)
# --------------------------------------------------------------------------------------------


def _permuted(order, W, *mats):
    p = _order(order, W.shape[1])
    return p, W[:, p].copy(), [None if M is None else M[np.ix_(p, p)] for M in mats]


def _unpermute(p, Qp):
    Q = Qp * 0
    Q[:, p] = Qp
    return Q


def optq_recursion(V, Ubar, grid, p, *, offset=None, P_scaled=None, block_size=None, cross_block="pre",
                   pre_rounding=None):
    """The solvers' blocked loop on V (processing order, modified in place), for each column t:

    ``q_t = Q(v_t + o_t)``; ``δ_t = v_t − q_t`` (``= e_t U_tt``);
    ``v_{>t} ← v_{>t} − δ_t Ū_{t,>t} + v_t P_{t,>t}``.
    Inside a block of ``block_size`` columns only the block's columns are updated; the columns after
    it receive ``− Δ_blk Ū[blk, after] + B_blk P[blk, after]`` in one product, with ``B_blk`` the
    pre-rounding values (``cross_block="rounded"``: the rounded ones, a variant for the checks).
    ``pre_rounding`` (an array like V), if given, receives every v_t before rounding.
    """
    out, n = V.shape
    B = n if block_size is None else block_size
    Q = V * 0
    for start in range(0, n, B):
        stop = min(start + B, n)
        delta = V[:, start:stop] * 0
        pre = V[:, start:stop] * 0
        for t in range(start, stop):
            v = V[:, t].copy()
            target = v if offset is None else v + offset[:, t]
            Q[:, t] = round_column(grid, target, p[t])
            delta[:, t - start] = v - Q[:, t]
            pre[:, t - start] = v
            if pre_rounding is not None:
                pre_rounding[:, t] = v
            V[:, t + 1 : stop] -= np.outer(delta[:, t - start], Ubar[t, t + 1 : stop])
            if P_scaled is not None:
                V[:, t + 1 : stop] += np.outer(v, P_scaled[t, t + 1 : stop])
        if stop < n:
            V[:, stop:] -= delta @ Ubar[start:stop, stop:]
            if P_scaled is not None:
                carried = pre if cross_block == "pre" else Q[:, start:stop]
                V[:, stop:] += carried @ P_scaled[start:stop, stop:]
    return Q


def optq_stats(W, H, grid, order=None, block_size=None) -> np.ndarray:
    """OPTQ from H: ``q_t = Q(v_t)``, ``e_t = (v_t − q_t)/U_tt``, ``v_{>t} ← v_{>t} − e_t U_{t,>t}``."""
    p, V, (Hp,) = _permuted(order, W, H)
    Ubar, _ = scaled_upper_factor_of_inverse(Hp)
    return _unpermute(p, optq_recursion(V, Ubar, grid, p, block_size=block_size))


def ldlq(W, H, grid, order=None) -> np.ndarray:
    """QuIP's LDLQ: ``H = (U̇+I) D (U̇+I)ᵀ``, ``q_t = Q(w_t + Σ_{s<t} (w_s − q_s) U̇_{s,t})``."""
    p, Wp, (Hp,) = _permuted(order, W, H)
    Udot, _ = unit_upper_udu(Hp)
    Q = Wp * 0
    for t in range(Wp.shape[1]):
        Q[:, t] = round_column(grid, Wp[:, t] + (Wp[:, :t] - Q[:, :t]) @ Udot[:t, t], p[t])
    return _unpermute(p, Q)


def qronos_offsets(Wp, Hp, Gp, Ubar, d, *, first="exact"):
    """Rounding offsets of the code's Qronos: ``z = w (G − H)ᵀ``, ``o_1 = z_1 / H_11`` and, for t ≥ 2,
    ``o_t = U_tt Σ_{s≥t} U_{t,s} z_s = d_t Σ_{s≥t} Ū_{t,s} z_s``.

    ``first="trailing"`` is the perturbed variant that uses the t ≥ 2 formula at t = 1.
    """
    Z = Wp @ (Gp - Hp).T
    offset = (Z @ Ubar.T) * d[None, :]
    if first == "exact":
        offset[:, 0] = Z[:, 0] / Hp[0, 0]
    return offset


def qronos_stats(W, H, G, grid, order=None, block_size=None, *, first="exact") -> np.ndarray:
    """Qronos as the code computes it: the OPTQ recursion with rounding offsets ``o``
    (:func:`qronos_offsets`)."""
    p, V, (Hp, Gp) = _permuted(order, W, H, G)
    Ubar, d = scaled_upper_factor_of_inverse(Hp)
    offset = qronos_offsets(V, Hp, Gp, Ubar, d, first=first)
    return _unpermute(p, optq_recursion(V, Ubar, grid, p, offset=offset, block_size=block_size))


def qronos_first_step(W, H, G, grid):
    """Qronos' first step from statistics (rows of W):
    ``q_1 = Q((G_{1,:} w − H_{1,>1} w_{>1}) / H_11)``, ``v_{>1} = H_{>1,>1}⁻¹ (G_{>1,:} w − H_{>1,1} q_1)``."""
    q1 = round_column(grid, (W @ G[0] - W[:, 1:] @ H[0, 1:]) / H[0, 0], 0)
    rhs = G[1:] @ W.T - np.outer(H[1:, 0], q1)
    return q1, solve(H[1:, 1:], rhs).T


def gptaq_scaled_P(Hp, Gp, Ubar, d, alpha, *, use_G_transpose=True):
    """``P = α · triu(ΔXXᵀ Uᵀ, 1) · U`` with ``ΔXXᵀ = Gᵀ − H``, in scaled form
    ``α · triu(ΔXXᵀ Ūᵀ, 1) · diag(d) · Ū`` (column scaling commutes with triu).
    ``use_G_transpose=False``: the perturbed variant with G in place of Gᵀ."""
    asym = (Gp.T if use_G_transpose else Gp) - Hp
    upper = np.triu(asym @ Ubar.T, 1)
    return alpha * (upper * d[None, :]) @ Ubar


def gptaq_stats(W, H, G, grid, alpha, order=None, block_size=None, *, cross_block="pre",
                use_G_transpose=True) -> np.ndarray:
    """GPTAQ as the code computes it: per column t (b the working weights),
    ``q_t = Q(b_t)``, ``e_t = (b_t − q_t)/U_tt``, ``b_{>t} ← b_{>t} − e_t U_{t,>t} + b_t P_{t,>t}``."""
    p, V, (Hp, Gp) = _permuted(order, W, H, G)
    Ubar, d = scaled_upper_factor_of_inverse(Hp)
    P = gptaq_scaled_P(Hp, Gp, Ubar, d, alpha, use_G_transpose=use_G_transpose)
    Q = optq_recursion(V, Ubar, grid, p, P_scaled=P, block_size=block_size, cross_block=cross_block)
    return _unpermute(p, Q)


def gptaq_exact_sequential(W, H, G, grid, order=None) -> np.ndarray:
    """The exact counterpart of GPTAQ: OPTQ started at the unconstrained minimiser
    ``v* = w Gᵀ H⁻¹ = w + w ΔXXᵀ UᵀU`` (all of ΔXXᵀ Uᵀ, original w, α = 1)."""
    p, Wp, (Hp, Gp) = _permuted(order, W, H, G)
    Ubar, d = scaled_upper_factor_of_inverse(Hp)
    V = Wp + Wp @ (Gp.T - Hp) @ (Ubar.T * d[None, :]) @ Ubar
    return _unpermute(p, optq_recursion(V, Ubar, grid, p))


def gpfq_stats(W, H, G, grid, order=None, block_size=None, *, use_G_transpose=False) -> np.ndarray:
    """GPFQ from statistics, blocked as in the code:
    ``V_t = Σ_{s≤t} G_{t,s} w_s / H_tt``, then ``V_{>t} ← V_{>t} − q_t H_{t,>t} / H_{>t,>t}`` (diagonal),
    ``q_t = Q(V_t)``. ``use_G_transpose=True``: the perturbed variant with G_{s,t} in place of G_{t,s}."""
    p, Wp, (Hp, Gp) = _permuted(order, W, H, G)
    Gs = Gp.T if use_G_transpose else Gp
    n = Wp.shape[1]
    diag = np.array([Hp[t, t] for t in range(n)], dtype=Hp.dtype)
    V = (Wp @ np.tril(Gs).T) / diag[None, :]
    H_scaled = Hp / diag[None, :]
    B = n if block_size is None else block_size
    Q = Wp * 0
    for start in range(0, n, B):
        stop = min(start + B, n)
        for t in range(start, stop):
            Q[:, t] = round_column(grid, V[:, t], p[t])
            V[:, t + 1 : stop] -= np.outer(Q[:, t], H_scaled[t, t + 1 : stop])
        V[:, stop:] -= Q[:, start:stop] @ H_scaled[start:stop, stop:]
    return _unpermute(p, Q)


# --------------------------------------------------------------------------------------------
# Random exact instances
# --------------------------------------------------------------------------------------------

#: Denominator of the random rational entries: coarse enough that ties on the grid occur.
DENOMINATOR = 4
#: Entries of X̃ are integers in [−DATA_RANGE, DATA_RANGE] / DENOMINATOR.
DATA_RANGE = 6
#: Weights lie in [−WEIGHT_RANGE, WEIGHT_RANGE] / DENOMINATOR.
WEIGHT_RANGE = 8
#: The exact grid: 3 bits, groups of 2 columns, per (row, group) a scale and a zero point drawn from
#: these (coarse, so rounding and clipping both matter; distinct, so the grid of a column's original
#: position must be the one used).
EXACT_BITS = 3
EXACT_GROUP_SIZE = 2
EXACT_SCALES = (Fraction(1, 2), Fraction(1, 3), Fraction(3, 4))
EXACT_ZEROS = (3, 4)


@dataclass
class Instance:
    """A problem: data, its statistics and a grid (Fractions with an ExactGrid, or float64 with a
    UniformGrid in float_problems.py)."""

    W: np.ndarray
    X: np.ndarray
    X_tilde: np.ndarray
    grid: object

    @property
    def H(self):
        return self.X_tilde.T @ self.X_tilde

    @property
    def G(self):
        return self.X_tilde.T @ self.X

    @property
    def H_float(self):
        return self.X.T @ self.X


def _rational_matrix(rng: random.Random, rows: int, cols: int, bound: int) -> np.ndarray:
    return np.array(
        [[Fraction(rng.randint(-bound, bound), DENOMINATOR) for _ in range(cols)] for _ in range(rows)],
        dtype=object,
    )


def random_instance(seed: int, *, out: int = 2, n: int = 4, samples: int = 7, same_inputs: bool = False) -> Instance:
    """Random rational W, X̃ (full column rank), X = X̃ + noise (or X = X̃), grouped exact grid (scales and zeros per row and group)."""
    rng = random.Random(seed)
    while True:
        X_tilde = _rational_matrix(rng, samples, n, DATA_RANGE)
        H = X_tilde.T @ X_tilde
        try:
            inv(H)
            break
        except StopIteration:  # singular draw: try again
            continue
    X = X_tilde.copy() if same_inputs else X_tilde + _rational_matrix(rng, samples, n, DATA_RANGE // 2)
    W = _rational_matrix(rng, out, n, WEIGHT_RANGE)
    n_groups = -(-n // EXACT_GROUP_SIZE)
    grid = ExactGrid(
        scale=np.array([[rng.choice(EXACT_SCALES) for _ in range(n_groups)] for _ in range(out)], dtype=object),
        zero=np.array([[Fraction(rng.choice(EXACT_ZEROS)) for _ in range(n_groups)] for _ in range(out)],
                      dtype=object),
        qmin=0,
        qmax=2**EXACT_BITS - 1,
        group_size=EXACT_GROUP_SIZE,
    )
    return Instance(W=W, X=X, X_tilde=X_tilde, grid=grid)


def random_rational_upper(seed: int, n: int) -> np.ndarray:
    """Upper triangular rational U with positive diagonal (so H = (UᵀU)⁻¹ has a rational U)."""
    rng = random.Random(seed)
    U = _rational_matrix(rng, n, n, DATA_RANGE)
    for i in range(n):
        U[i, :i] = Fraction(0)
        U[i, i] = Fraction(rng.randint(1, DATA_RANGE), DENOMINATOR)
    return U


def differs(A, B) -> bool:
    """True when two exact arrays differ anywhere."""
    return bool(np.any(np.asarray(A) != np.asarray(B)))
