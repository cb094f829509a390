"""Checks of yaqa_kronecker.md: OPTQ on vec(W) with H_out ⊗ H_in (its factor, order independence, the row
passes and tiles the code computes, the reduction to OPTQ)."""

import random

import numpy as np
from float_problems import (BLOCK_SIZES, FLOAT_SETTINGS, IN_FEATURES, OUT_FEATURES, assert_same_grid_values,
                            float_problem, grid_values_differ, seeds)
from hypothesis import given, settings
from hypothesis import strategies as st
from proofkit import (ExactGrid, differs, inv, optq_recursion, optq_stats, random_instance, random_rational_upper,
                      round_column, scaled_upper_factor_of_inverse, solve)

import qronos_linalg as ql
from qronos_linalg import naive
from qronos_linalg.backend import NUMPY
from qronos_linalg.linalg import upper_cholesky_of_inverse
from qronos_linalg.yaqa import yaqa

#: Seeds of the fixed instance sets on which a perturbed variant must be rejected at least once.
REJECTION_SEEDS = range(20)
#: Exact problems: out × in entries (the direct form solves one system per entry).
EXACT_OUT, EXACT_IN = 3, 4
#: Exact checks are heavier than the other proofs' (a system per entry of vec(W)).
YAQA_EXACT_SETTINGS = settings(derandomize=True, max_examples=20, deadline=None)
#: Relative tolerance of the float64 factor identity.
FACTOR_RTOL = 1e-9
#: Relative damping of the float checks (each factor; 0 is checked too).
FLOAT_DAMPS = (0.0, 0.01)


# --- number-type-generic forms ---------------------------------------------------------------------


def row_grid(grid, r):
    """The grid of row r alone (proofkit.round_column rounds all rows of a column)."""
    return ExactGrid(scale=np.asarray(grid.scale)[r : r + 1], zero=np.asarray(grid.zero)[r : r + 1],
                     qmin=grid.qmin, qmax=grid.qmax, group_size=grid.group_size)


def round_entry(grid, value, r, c):
    """Q(value) for entry (r, c)."""
    return round_column(row_grid(grid, r), np.array([value]), c)[0]


def kronecker_direct(W, H_in, H_out, grid, order=None):
    """OPTQ on vec(W) (row-major) by definition, for t in ``order``: ``q_t = Q(v_t)``, then
    ``v_L = w_L + K_LL⁻¹ K_LD (w_D − q_D)`` with ``K = H_out ⊗ H_in`` (the later entries re-fit)."""
    out, n = W.shape
    order = list(range(out * n)) if order is None else [int(t) for t in order]
    K = np.kron(H_out, H_in)
    w = W.reshape(-1)
    v, q = w.copy(), w * 0
    for k, t in enumerate(order):
        q[t] = round_entry(grid, v[t], *divmod(t, n))
        done, later = order[: k + 1], order[k + 1 :]
        if later:
            v[later] = w[later] + solve(K[np.ix_(later, later)], K[np.ix_(later, done)] @ (w[done] - q[done]))
    return q.reshape(out, n)


def row_passes(W, H_in, H_out, grid, *, propagate="start"):
    """Outer OPTQ over rows: ``S_r = W_r − Σ_{r'<r} Ū_out[r', r] D_{r'}``, row r an OPTQ pass on H_in from S_r,
    ``D_r = S_r − Q_r``. ``propagate="inner"``: the perturbed variant with ``D_r = δ_r`` (the pass's own errors)."""
    Ubar_in, _ = scaled_upper_factor_of_inverse(H_in)
    Ubar_out, _ = scaled_upper_factor_of_inverse(H_out)
    out, n = W.shape
    Q, D = W * 0, W * 0
    for r in range(out):
        S = W[r] - Ubar_out[:r, r] @ D[:r]
        before = S[None] * 0
        Q[r] = optq_recursion(S[None].copy(), Ubar_in, row_grid(grid, r), list(range(n)), pre_rounding=before)[0]
        D[r] = S - Q[r] if propagate == "start" else before[0] - Q[r]
    return Q


def tiled(W, H_in, H_out, grid, block_rows, block_cols, tile_order="rows"):
    """The code's tiled form (``qronos_linalg.yaqa``) in scaled arithmetic (``E U_in = δ Ū_in``, δ = v − q): tile
    (R, C) starts from ``A = W_RC − Ū_out[<R, R]ᵀ D_{<R, C}`` and ``X = δ_{R, <C} Ū_in[<C, C]``; its rows in turn
    take ``a_r = A_r − Σ_{r'<r in R} Ū_out[r', r] D_{r', C}``, run OPTQ along C on ``a_r − X_r``, set
    ``D_{r, C} = a_r − q``."""
    Ubar_in, _ = scaled_upper_factor_of_inverse(H_in)
    Ubar_out, _ = scaled_upper_factor_of_inverse(H_out)
    out, n = W.shape
    Q, D, delta = W * 0, W * 0, W * 0
    tiles = [(r0, c0) for r0 in range(0, out, block_rows) for c0 in range(0, n, block_cols)]
    if tile_order == "columns":
        tiles.sort(key=lambda tile: (tile[1], tile[0]))
    for r0, c0 in tiles:
        R, C = range(r0, min(r0 + block_rows, out)), list(range(c0, min(c0 + block_cols, n)))
        A = W[np.ix_(R, C)] - Ubar_out[:r0, R].T @ D[:r0, C]
        X = delta[R, :c0] @ Ubar_in[:c0, C]
        for k, r in enumerate(R):
            a = A[k] - Ubar_out[r0:r, r] @ D[r0:r, C]
            v = a - X[k]
            for i, c in enumerate(C):
                Q[r, c] = round_entry(grid, v[i], r, c)
                delta[r, c] = v[i] - Q[r, c]
                v[i + 1 :] = v[i + 1 :] - delta[r, c] * Ubar_in[c, C[i + 1 :]]
            D[r, C] = a - Q[r, C]
    return Q


# --- random instances ----------------------------------------------------------------------------------


def exact_problem(seed):
    """(W, H_in, H_out, grid) rational: H_in = X̃ᵀX̃ of one random instance, H_out of another."""
    inst = random_instance(seed, out=EXACT_OUT, n=EXACT_IN)
    return inst.W, inst.H, random_instance(seed + 1, n=EXACT_OUT).H, inst.grid


def rational_factor(seed, n):
    """(U, H): rational upper U with positive diagonal and H = (UᵀU)⁻¹."""
    U = random_rational_upper(seed, n)
    return U, inv(U.T @ U)


def output_factor(seed, out=OUT_FEATURES, dead=()):
    """Float H_out = GᵀG for correlated Gaussian G (3·out + 5 samples), ``dead`` channels zero."""
    rng = np.random.default_rng(seed + 1)
    G = rng.standard_normal((3 * out + 5, out)) @ (np.eye(out) + 0.3 * rng.standard_normal((out, out)))
    G[:, list(dead)] = 0
    return G.T @ G


def damped(H, damp):
    """H decoupled at dead indices (e_t, undamped) with damp · mean(diag H) on the live diagonal, as the
    library damps each factor."""
    H = np.array(H, dtype=np.float64)
    dead = np.diag(H) == 0
    lam = damp * np.mean(np.diag(H))
    H[dead, :], H[:, dead] = 0, 0
    H[np.diag_indices_from(H)] += np.where(dead, 1.0, lam)
    return H


def linear_extensions(out, n, rng):
    """Row-major, column-major, anti-diagonal and one random linear extension of the product order."""
    index = np.arange(out * n).reshape(out, n)
    anti = sorted(range(out * n), key=lambda t: (sum(divmod(t, n)), t))
    remaining, random_order = {(r, c) for r in range(out) for c in range(n)}, []
    while remaining:  # repeatedly take a random minimal entry
        minimal = [e for e in remaining if (e[0] - 1, e[1]) not in remaining and (e[0], e[1] - 1) not in remaining]
        entry = rng.choice(sorted(minimal))
        remaining.remove(entry)
        random_order.append(entry[0] * n + entry[1])
    return [index.reshape(-1), index.T.reshape(-1), anti, random_order]


# --- 1. the objective, 2. the factor ---------------------------------------------------------------------


@YAQA_EXACT_SETTINGS
@given(seed=seeds)
def test_objective_is_the_kronecker_quadratic_form(seed):
    W, H_in, H_out, _ = exact_problem(seed)
    Q = random_instance(seed + 2, out=EXACT_OUT, n=EXACT_IN).W
    delta = W - Q
    vec = delta.reshape(-1)
    assert vec @ np.kron(H_out, H_in) @ vec == np.trace(delta @ H_in @ delta.T @ H_out)


def test_column_major_kronecker_is_not_the_row_major_objective():
    """Perturbed: H_in ⊗ H_out (the column-major vec's Hessian) on the row-major vec."""
    found = False
    for seed in REJECTION_SEEDS:
        W, H_in, H_out, _ = exact_problem(seed)
        vec = (W - random_instance(seed + 2, out=EXACT_OUT, n=EXACT_IN).W).reshape(-1)
        delta = vec.reshape(W.shape)
        found |= vec @ np.kron(H_in, H_out) @ vec != np.trace(delta @ H_in @ delta.T @ H_out)
    assert found


@YAQA_EXACT_SETTINGS
@given(seed=seeds, out=st.integers(1, 3), n=st.integers(1, 4))
def test_factor_of_the_inverse_is_the_kronecker_of_the_factors(seed, out, n):
    """U_out ⊗ U_in is upper triangular with positive diagonal and (U_out ⊗ U_in)ᵀ(U_out ⊗ U_in) = K⁻¹;
    the scaled factor of K⁻¹ is (Ū_out ⊗ Ū_in, d_out ⊗ d_in)."""
    U_out, H_out = rational_factor(seed, out)
    U_in, H_in = rational_factor(seed + 1, n)
    K = np.kron(H_out, H_in)
    U = np.kron(U_out, U_in)
    assert not differs(U, np.triu(U)) and all(U[t, t] > 0 for t in range(out * n))
    assert not differs(U.T @ U, inv(K))
    Ubar_out, d_out = scaled_upper_factor_of_inverse(H_out)
    Ubar_in, d_in = scaled_upper_factor_of_inverse(H_in)
    Ubar, d = scaled_upper_factor_of_inverse(K)
    assert not differs(Ubar, np.kron(Ubar_out, Ubar_in)) and not differs(d, np.kron(d_out, d_in))


def test_swapped_kronecker_factor_is_rejected():
    """Perturbed: U_in ⊗ U_out (upper triangular too) is not the factor of (H_out ⊗ H_in)⁻¹."""
    found = False
    for seed in REJECTION_SEEDS:
        U_out, H_out = rational_factor(seed, 2)
        U_in, H_in = rational_factor(seed + 1, 3)
        swapped = np.kron(U_in, U_out)
        found |= differs(swapped.T @ swapped, inv(np.kron(H_out, H_in)))
    assert found


# --- 3. order independence ---------------------------------------------------------------------------------


@YAQA_EXACT_SETTINGS
@given(seed=seeds)
def test_orders_compatible_with_rows_and_columns_agree(seed):
    W, H_in, H_out, grid = exact_problem(seed)
    orders = linear_extensions(*W.shape, random.Random(seed))
    reference = kronecker_direct(W, H_in, H_out, grid, order=orders[0])
    for order in orders[1:]:
        assert not differs(kronecker_direct(W, H_in, H_out, grid, order=order), reference)


def test_orders_against_the_partial_order_are_rejected():
    """Perturbed: rows bottom-up is not a linear extension, and gives other codes."""
    found = False
    for seed in REJECTION_SEEDS:
        W, H_in, H_out, grid = exact_problem(seed)
        bottom_up = np.arange(W.size).reshape(W.shape)[::-1].reshape(-1)
        found |= differs(kronecker_direct(W, H_in, H_out, grid, order=bottom_up),
                         kronecker_direct(W, H_in, H_out, grid))
    assert found


# --- 4. row passes and tiles, 5. the reduction -----------------------------------------------------------


@YAQA_EXACT_SETTINGS
@given(seed=seeds, block_rows=st.integers(1, 3), block_cols=st.integers(1, 4),
       tile_order=st.sampled_from(["rows", "columns"]))
def test_row_passes_and_tiles_equal_the_direct_form(seed, block_rows, block_cols, tile_order):
    W, H_in, H_out, grid = exact_problem(seed)
    reference = kronecker_direct(W, H_in, H_out, grid)
    assert not differs(row_passes(W, H_in, H_out, grid), reference)
    assert not differs(tiled(W, H_in, H_out, grid, block_rows, block_cols, tile_order), reference)


def test_propagating_the_inner_errors_is_rejected():
    """Perturbed: carrying the row pass's own errors δ_r to the later rows instead of S_r − Q_r."""
    found = False
    for seed in REJECTION_SEEDS:
        W, H_in, H_out, grid = exact_problem(seed)
        found |= differs(row_passes(W, H_in, H_out, grid, propagate="inner"), kronecker_direct(W, H_in, H_out, grid))
    assert found


@YAQA_EXACT_SETTINGS
@given(seed=seeds, block_rows=st.integers(1, 3), block_cols=st.integers(1, 4))
def test_diagonal_output_factor_is_optq(seed, block_rows, block_cols):
    W, H_in, H_out, grid = exact_problem(seed)
    diagonal = np.diag(np.diag(H_out))
    expected = optq_stats(W, H_in, grid)
    assert not differs(kronecker_direct(W, H_in, diagonal, grid), expected)
    assert not differs(tiled(W, H_in, diagonal, grid, block_rows, block_cols), expected)


def test_non_diagonal_output_factor_is_not_optq():
    """The reduction check can fail: with correlated output channels YAQA is not OPTQ."""
    found = False
    for seed in REJECTION_SEEDS:
        W, H_in, H_out, grid = exact_problem(seed)
        found |= differs(kronecker_direct(W, H_in, H_out, grid), optq_stats(W, H_in, grid))
    assert found


# --- float64 against the library ----------------------------------------------------------------------------


@FLOAT_SETTINGS
@given(seed=seeds, damp=st.sampled_from(FLOAT_DAMPS), dead=st.booleans())
def test_library_yaqa_equals_the_direct_form(seed, damp, dead):
    """Library yaqa (block sizes 1, 5, 128) = OPTQ on vec(W) with the damped Kronecker Hessian; with a dead row
    and a dead column when ``dead``."""
    prob = float_problem(seed)
    W, H_in = prob.W, prob.H
    H_out = output_factor(seed, dead=[1] if dead else ())
    if dead:
        X_tilde = prob.X_tilde.copy()
        X_tilde[:, 3] = 0
        H_in = X_tilde.T @ X_tilde
    expected = kronecker_direct(np.where(np.diag(H_in) == 0, 0.0, W), damped(H_in, damp), damped(H_out, damp),
                                prob.grid)
    for block_size in (1, *BLOCK_SIZES):
        result = yaqa(W, H_in, H_out, prob.grid, damp=damp, block_size=block_size)
        assert_same_grid_values(result.weight, expected, prob.grid)


@FLOAT_SETTINGS
@given(seed=seeds, column_major=st.booleans())
def test_library_direct_form_is_the_proofs(seed, column_major):
    """naive.yaqa_naive (the library's direct form, used by its tests) = the direct form here."""
    prob = float_problem(seed)
    H_out = output_factor(seed)
    order = np.arange(OUT_FEATURES * IN_FEATURES).reshape(OUT_FEATURES, IN_FEATURES)
    order = (order.T if column_major else order).reshape(-1)
    codes = naive.yaqa_naive(prob.W, prob.H, H_out, prob.grid, damp=0.01, order=order)
    expected = kronecker_direct(prob.W, damped(prob.H, 0.01), damped(H_out, 0.01), prob.grid, order=order)
    assert_same_grid_values(prob.grid.dequantize(codes), expected, prob.grid)


def test_library_cross_check_can_fail():
    """The float comparison distinguishes algorithms: YAQA with a correlated H_out is not OPTQ."""
    prob = float_problem(0)
    assert grid_values_differ(yaqa(prob.W, prob.H, output_factor(0), prob.grid).weight,
                              ql.optq(prob.W, prob.H, prob.grid).weight, prob.grid)


@FLOAT_SETTINGS
@given(seed=seeds, damp=st.sampled_from(FLOAT_DAMPS))
def test_library_yaqa_with_identity_is_library_optq(seed, damp):
    prob = float_problem(seed)
    np.testing.assert_array_equal(yaqa(prob.W, prob.H, np.eye(OUT_FEATURES), prob.grid, damp=damp).codes,
                                  ql.optq(prob.W, prob.H, prob.grid, damp=damp).codes)


@FLOAT_SETTINGS
@given(seed=seeds)
def test_library_factors_give_the_kronecker_factor(seed):
    """The library's factors of H_out and H_in give the library's factor of (H_out ⊗ H_in)⁻¹."""
    prob = float_problem(seed)
    H_in, H_out = prob.H, output_factor(seed)
    (U_in, ok_in), (U_out, ok_out), (U, ok) = (upper_cholesky_of_inverse(H, NUMPY)
                                              for H in (H_in, H_out, np.kron(H_out, H_in)))
    assert ok_in and ok_out and ok
    np.testing.assert_allclose(np.kron(U_out, U_in), U, rtol=0, atol=FACTOR_RTOL * np.abs(U).max())
