"""Direct ("naive") forms from data, written as the papers define them.

Slow and O(samples · in) memory on purpose: they are the definitions the efficient solvers in
:mod:`qronos_linalg.solvers` are checked against. NumPy float64 only. ``order`` is the column
processing order (a permutation; default identity). A dead column (X̃_t = 0) is rounded to Q(0) and
left out of every least-squares problem. Each returns the codes (uint8, out × in, original positions).
"""

from __future__ import annotations

import numpy as np

from .backend import NUMPY
from .grid import UniformGrid, quantize_to_codes


class _Columns:
    """W, X, X̃ in processing order, with the grid's per-column parameters and a rounding function."""

    def __init__(self, W, X, X_tilde, grid: UniformGrid, order):
        W = np.asarray(W, dtype=np.float64)
        X = np.asarray(X, dtype=np.float64)
        X_tilde = np.asarray(X_tilde, dtype=np.float64)
        n = W.shape[1]
        if X.ndim != 2 or X.shape[1] != n or X_tilde.shape != X.shape:
            raise ValueError(f"X and X_tilde must both be (samples, {n}); got {X.shape} and {X_tilde.shape}")
        grid.check_fits(W)
        self.order = np.arange(n) if order is None else np.asarray(order)
        if sorted(self.order.tolist()) != list(range(n)):
            raise ValueError("order must be a permutation of range(in_features)")
        scale, zero = grid.column_params(n, W, "float64")
        self.scale, self.zero = scale[:, self.order], zero[:, self.order]
        self.qmin, self.qmax = grid.qmin, grid.qmax
        self.W = W[:, self.order]
        self.X = X[:, self.order]
        self.X_tilde = X_tilde[:, self.order]
        self.target = X @ W.T  # (samples, out): the float layer's output
        self.live = np.linalg.norm(self.X_tilde, axis=0) > 0

    def round(self, values, t):
        """Codes and values of column t: Q(values)."""
        codes = quantize_to_codes(values, self.scale[:, t], self.zero[:, t], self.qmin, self.qmax, NUMPY)
        return codes, (codes - self.zero[:, t]) * self.scale[:, t]

    def refit_after(self, t, Q):
        """argmin_V ‖X w − X̃_{≤t} q_{≤t} − X̃_{>t} V‖² over the live columns after t (None if none)."""
        rest = np.flatnonzero(self.live[t + 1 :]) + t + 1
        if rest.size == 0:
            return rest, None
        residual = self.target - self.X_tilde[:, : t + 1] @ Q[:, : t + 1].T
        solution, *_ = np.linalg.lstsq(self.X_tilde[:, rest], residual, rcond=None)
        return rest, solution.T

    def codes_in_original_order(self, codes):
        out = np.empty_like(codes)
        out[:, self.order] = codes
        return out.astype(np.uint8)


def optq_naive(W, X, grid: UniformGrid, order=None):
    """OPTQ by definition: ``q_t = Q(v_t)``, then ``v_{>t} = argmin ‖X w − X_{≤t} q_{≤t} − X_{>t} v‖``."""
    return _round_and_refit(_Columns(W, X, X, grid, order), correct_past=False)


def qronos_naive(W, X, X_tilde, grid: UniformGrid, order=None):
    """Qronos by definition (Zhang et al. 2025), for t = 1..n:

    correction ``q_t = Q(⟨X̃_t, r⟩ / ‖X̃_t‖²)`` with ``r = Xw − Σ_{j<t} q_j X̃_j − Σ_{j>t} v_j X̃_j``;
    diffusion ``v_{>t} = argmin_v ‖Xw − X̃_{≤t} q_{≤t} − X̃_{>t} v‖²``.
    """
    return _round_and_refit(_Columns(W, X, X_tilde, grid, order), correct_past=True)


def _round_and_refit(cols: _Columns, correct_past: bool):
    out, n = cols.W.shape
    V = cols.W.copy()
    Q = np.zeros_like(V)
    codes = np.zeros_like(V)
    for t in range(n):
        if not cols.live[t]:
            value = np.zeros(out)
        elif correct_past:
            Xt = cols.X_tilde
            residual = cols.target - Xt[:, :t] @ Q[:, :t].T - Xt[:, t + 1 :] @ V[:, t + 1 :].T
            value = Xt[:, t] @ residual / (Xt[:, t] @ Xt[:, t])
        else:
            value = V[:, t]
        codes[:, t], Q[:, t] = cols.round(value, t)
        rest, refit = cols.refit_after(t, Q)
        if refit is not None:
            V[:, rest] = refit
    return cols.codes_in_original_order(codes)


def gpfq_naive(W, X, X_tilde, grid: UniformGrid, order=None):
    """GPFQ by definition (greedy path following), with ``u_0 = 0``:

    ``q_t = Q(⟨X̃_t, u_{t−1} + w_t X_t⟩ / ‖X̃_t‖²)``, ``u_t = u_{t−1} + w_t X_t − q_t X̃_t``.
    """
    cols = _Columns(W, X, X_tilde, grid, order)
    out, n = cols.W.shape
    u = np.zeros((cols.X.shape[0], out))
    codes = np.zeros_like(cols.W)
    for t in range(n):
        Xt = cols.X_tilde[:, t]
        with_float = u + np.outer(cols.X[:, t], cols.W[:, t])
        value = Xt @ with_float / (Xt @ Xt) if cols.live[t] else np.zeros(out)
        codes[:, t], q = cols.round(value, t)
        u = with_float - np.outer(Xt, q)
    return cols.codes_in_original_order(codes)


def yaqa_naive(W, H_in, H_out, grid: UniformGrid, *, damp, order=None):
    """YAQA by definition: OPTQ on vec(W) (row-major: entry (r, c) at r·in + c) with the whole damped
    Kronecker Hessian ``K = (H_out + λ_out I) ⊗ (H_in + λ_in I)``, ``λ = damp · mean(diag)`` of each factor.

    From the statistics, not data (H_out is an output-side factor). ``order``: a permutation of the out·in
    flat indices (default row-major). For each entry t in order, ``q_t = Q(v_t)``, then the later entries L
    are re-fit with the done ones D fixed, ``argmin_{v_L} (w − v)ᵀ K (w − v)``:
    ``v_L = w_L + K_LL⁻¹ K_LD (w_D − q_D)``. A dead column (``H_in[c, c] = 0``) or dead row
    (``H_out[r, r] = 0``) is decoupled (its row and column of the factor become e, undamped); dead columns
    start at 0, so they round to Q(0); dead rows are rounded like live ones (by OPTQ on H_in alone).
    """
    W = np.asarray(W, dtype=np.float64)
    grid.check_fits(W)
    out, n = W.shape
    order = np.arange(out * n) if order is None else np.asarray(order)
    if sorted(order.tolist()) != list(range(out * n)):
        raise ValueError("order must be a permutation of range(out_features · in_features)")
    (H_in, dead_columns), (H_out, _) = (_decoupled_and_damped(H, damp) for H in (H_in, H_out))
    K = np.kron(H_out, H_in)
    w = W.copy()
    w[:, dead_columns] = 0
    w = w.reshape(-1)
    scale, zero = (params.reshape(-1) for params in grid.column_params(n, W, "float64"))
    v, q = w.copy(), np.zeros_like(w)
    codes = np.zeros(out * n)
    for k, t in enumerate(order):
        codes[t] = quantize_to_codes(v[t], scale[t], zero[t], grid.qmin, grid.qmax, NUMPY)
        q[t] = (codes[t] - zero[t]) * scale[t]
        done, later = order[: k + 1], order[k + 1 :]
        if later.size:
            v[later] = w[later] + np.linalg.solve(K[np.ix_(later, later)], K[np.ix_(later, done)] @ (w[done] - q[done]))
    return codes.reshape(out, n).astype(np.uint8)


def yaqa_qronos_naive(W, X, X_tilde, H_out, grid: UniformGrid, *, damp, order=None):
    """YAQA's H_out with Qronos' view of the inputs, by definition: minimise the H_out-weighted output error
    ``E(V) = ‖(X_a Wᵀ − X̃_a Vᵀ) L‖_F²`` entry by entry (``order``: of the out·in flat indices, default
    row-major), rounding entry t to ``Q(v_t)`` and re-fitting every later entry by exact least squares.

    ``X_a = [X; √λ I]``, ``X̃_a = [X̃; √λ I]`` with ``λ = damp · mean(diag X̃ᵀX̃)`` on the live columns (damping
    as data); ``L Lᵀ`` = H_out damped by its own ``damp · mean(diag)`` (a dead row decoupled). From data: the
    vectorised problem is ``‖A vec(V) − b‖`` with ``A = Lᵀ ⊗ X̃_a``. A dead column (X̃_t = 0) rounds to Q(0)
    and is left out.
    """
    W = np.asarray(W, dtype=np.float64)
    X, X_tilde = (np.asarray(M, dtype=np.float64) for M in (X, X_tilde))
    grid.check_fits(W)
    out, n = W.shape
    order = np.arange(out * n) if order is None else np.asarray(order)
    if sorted(order.tolist()) != list(range(out * n)):
        raise ValueError("order must be a permutation of range(out_features · in_features)")
    live = np.linalg.norm(X_tilde, axis=0) > 0
    lam = damp * np.mean(np.sum(X_tilde * X_tilde, axis=0))
    augment = np.sqrt(lam) * np.eye(n)[live]
    X_a, X_tilde_a = np.vstack([X, augment]), np.vstack([X_tilde, augment])
    L = np.linalg.cholesky(_decoupled_and_damped(H_out, damp)[0])
    A = np.kron(L.T, X_tilde_a)  # A vec(V) = vec_columns(X̃_a Vᵀ L), vec(V) row-major
    b = (X_a @ W.T @ L).reshape(-1, order="F")
    fitted = np.tile(live, out)  # the entries in the least-squares problems
    scale, zero = (params.reshape(-1) for params in grid.column_params(n, W, "float64"))
    v, q, codes = np.zeros(out * n), np.zeros(out * n), np.zeros(out * n)
    v[fitted] = np.linalg.lstsq(A[:, fitted], b, rcond=None)[0]
    for k, t in enumerate(order):
        codes[t] = quantize_to_codes(v[t], scale[t], zero[t], grid.qmin, grid.qmax, NUMPY)
        q[t] = (codes[t] - zero[t]) * scale[t]
        done = np.zeros(out * n, dtype=bool)
        done[order[: k + 1]] = True
        later = fitted & ~done
        if later.any():
            residual = b - A[:, fitted & done] @ q[fitted & done]
            v[later] = np.linalg.lstsq(A[:, later], residual, rcond=None)[0]
    return codes.reshape(out, n).astype(np.uint8)


def _decoupled_and_damped(H, damp):
    """(H with each dead index t (H_tt = 0) decoupled to e_t and ``damp · mean(diag H)`` added to the live
    diagonal, the dead mask)."""
    H = np.array(H, dtype=np.float64)
    dead = np.diag(H) == 0
    lam = damp * np.mean(np.diag(H))
    H[dead, :] = 0
    H[:, dead] = 0
    H[np.diag_indices_from(H)] += np.where(dead, 1.0, lam)
    return H, dead
