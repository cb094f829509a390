"""Checks of yaqa_qronos.md: the H_out-weighted output error completes to YAQA's objective around the
least-squares target; its direct form from data is YAQA on that target; with H_out = I it is Qronos up to
the first column's value."""

import random

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from proofkit import (_rational_matrix, augment, differs, inv, live_columns, lstsq, qronos_direct, random_instance,
                      round_column, solve)
from test_proof_yaqa import damped, kronecker_direct, round_entry

from qronos_linalg import UniformGrid
from qronos_linalg.yaqa import yaqa_qronos

#: Exact problems: out × in entries, and the rows of the rational "gradient samples" M (H_out = MᵀM).
EXACT_OUT, EXACT_IN, GRADIENT_ROWS = 3, 4, 5
EXACT_CHECKS = settings(derandomize=True, max_examples=15, deadline=None)
FLOAT_CHECKS = settings(derandomize=True, max_examples=10, deadline=None)
REJECTION_SEEDS = range(20)
seeds = st.integers(min_value=0, max_value=2**31 - 1)


def problem(seed):
    """(instance, M): rational W, X, X̃ and grid, and M (GRADIENT_ROWS × out) of full column rank."""
    inst = random_instance(seed, out=EXACT_OUT, n=EXACT_IN)
    rng = random.Random(seed + 7)
    while True:
        M = _rational_matrix(rng, GRADIENT_ROWS, EXACT_OUT, 6)
        try:
            inv(M.T @ M)
            return inst, M
        except StopIteration:  # singular draw: try again
            continue


def objective(W, V, X, X_tilde, H_out):
    """E(V) = tr(R H_out Rᵀ), R = XWᵀ − X̃Vᵀ."""
    R = X @ W.T - X_tilde @ V.T
    return np.trace(R @ H_out @ R.T)


def target(W, H, G):
    """W⋆ = W Gᵀ H⁻¹."""
    return solve(H, G @ W.T).T


def direct_from_data(W, X, X_tilde, M, grid, start_at_target=True):
    """Entry by entry (row-major): ``q_t = Q(v_t)``, the later entries re-fit by exact least squares on
    ``‖(XWᵀ − X̃Vᵀ) Mᵀ‖_F² = E(V)`` for ``H_out = MᵀM``, from the unconstrained minimiser (``start_at_target``;
    else the perturbed start at W)."""
    out, n = W.shape
    A = np.kron(M, X_tilde)  # vec_columns(X̃ Vᵀ Mᵀ) = (M ⊗ X̃) vec(V), vec(V) row-major
    b = (X @ W.T @ M.T).T.reshape(-1)  # vec_columns of the target
    v = lstsq(A, b) if start_at_target else W.reshape(-1).copy()
    q = v * 0
    entries = list(range(out * n))
    for k, t in enumerate(entries):
        q[t] = round_entry(grid, v[t], *divmod(t, n))
        done, later = entries[: k + 1], entries[k + 1 :]
        if later:
            v[later] = lstsq(A[:, later], b - A[:, done] @ q[done])
    return q.reshape(out, n)


# --- claim 1 --------------------------------------------------------------------------------------------


@EXACT_CHECKS
@given(seed=seeds)
def test_the_weighted_output_error_is_yaqas_objective_around_the_target_plus_a_constant(seed):
    inst, M = problem(seed)
    W, X, X_tilde, H_out = inst.W, inst.X, inst.X_tilde, M.T @ M
    H, G, F = X_tilde.T @ X_tilde, X_tilde.T @ X, X.T @ X
    W_star = target(W, H, G)
    constant = np.trace(H_out @ W @ (F - G.T @ inv(H) @ G) @ W.T)
    for offset in (1, 2):
        V = random_instance(seed + offset, out=EXACT_OUT, n=EXACT_IN).W
        around = np.trace((V - W_star) @ H @ (V - W_star).T @ H_out)
        assert objective(W, V, X, X_tilde, H_out) == around + constant


def test_the_target_without_the_transpose_is_rejected():
    """Perturbed: W G H⁻¹ (G not transposed) leaves a V-dependent remainder."""
    found = False
    for seed in REJECTION_SEEDS:
        inst, M = problem(seed)
        W, X, X_tilde, H_out = inst.W, inst.X, inst.X_tilde, M.T @ M
        H, G = X_tilde.T @ X_tilde, X_tilde.T @ X
        wrong = solve(H, G.T @ W.T).T
        remainders = [objective(W, V, X, X_tilde, H_out) - np.trace((V - wrong) @ H @ (V - wrong).T @ H_out)
                      for V in (W * 0, random_instance(seed + 1, out=EXACT_OUT, n=EXACT_IN).W)]
        found |= remainders[0] != remainders[1]
    assert found


# --- claim 2 --------------------------------------------------------------------------------------------


@EXACT_CHECKS
@given(seed=seeds)
def test_the_direct_form_from_data_is_yaqa_on_the_target(seed):
    inst, M = problem(seed)
    H, G = inst.X_tilde.T @ inst.X_tilde, inst.X_tilde.T @ inst.X
    direct = direct_from_data(inst.W, inst.X, inst.X_tilde, M, inst.grid)
    assert not differs(direct, kronecker_direct(target(inst.W, H, G), H, M.T @ M, inst.grid))


def test_starting_at_w_instead_of_the_target_is_rejected():
    """Perturbed: the same re-fits started at W (YAQA's start) give other codes."""
    found = False
    for seed in REJECTION_SEEDS:
        inst, M = problem(seed)
        found |= differs(direct_from_data(inst.W, inst.X, inst.X_tilde, M, inst.grid),
                         direct_from_data(inst.W, inst.X, inst.X_tilde, M, inst.grid, start_at_target=False))
    assert found


# --- claim 3 --------------------------------------------------------------------------------------------


def optq_on_target(W_star, H, grid, first=None):
    """OPTQ on W⋆ by definition (rows together, columns in order): ``q_t = Q(v_t)``, the later columns re-fit
    ``v_L = w⋆_L + H_LL⁻¹ H_LD (w⋆_D − q_D)``; ``first``: column 1's codes given instead of ``Q(w⋆_1)``."""
    n = W_star.shape[1]
    V, Q = W_star.copy(), W_star * 0
    for t in range(n):
        Q[:, t] = round_column(grid, V[:, t], t) if t or first is None else first
        done, later = list(range(t + 1)), list(range(t + 1, n))
        if later:
            V[:, later] = W_star[:, later] + solve(H[np.ix_(later, later)],
                                                   H[np.ix_(later, done)] @ (W_star[:, done] - Q[:, done]).T).T
    return Q


@EXACT_CHECKS
@given(seed=seeds)
def test_with_identity_h_out_and_qronos_first_code_it_is_qronos(seed):
    inst = random_instance(seed, out=EXACT_OUT, n=EXACT_IN)
    H, G = inst.X_tilde.T @ inst.X_tilde, inst.X_tilde.T @ inst.X
    qronos = qronos_direct(inst.W, inst.X, inst.X_tilde, inst.grid)
    W_star = target(inst.W, H, G)
    assert not differs(optq_on_target(W_star, H, inst.grid, first=qronos[:, 0]), qronos)
    # and OPTQ on W⋆ is YAQA on W⋆ with H_out = I (claim 2's algorithm)
    identity = np.eye(EXACT_OUT, dtype=int).astype(object) + 0 * H[:EXACT_OUT, :EXACT_OUT]
    assert not differs(optq_on_target(W_star, H, inst.grid), kronecker_direct(W_star, H, identity, inst.grid))


def test_with_identity_h_out_it_is_not_qronos():
    """Perturbed: rounding the joint optimum w⋆_1 in column 1 (the algorithm itself) is not Qronos."""
    found = False
    for seed in REJECTION_SEEDS:
        inst = random_instance(seed, out=EXACT_OUT, n=EXACT_IN)
        H, G = inst.X_tilde.T @ inst.X_tilde, inst.X_tilde.T @ inst.X
        found |= differs(optq_on_target(target(inst.W, H, G), H, inst.grid),
                         qronos_direct(inst.W, inst.X, inst.X_tilde, inst.grid))
    assert found


# --- the library, float64 ------------------------------------------------------------------------------


@FLOAT_CHECKS
@given(seed=seeds, damp=st.sampled_from([0.0, 0.01, 0.1]))
def test_the_library_is_the_direct_form_with_damping_as_data(seed, damp):
    rng = np.random.default_rng(seed)
    out, n, samples = 3, 7, 30
    X = rng.standard_normal((samples, n)) @ (np.eye(n) + 0.3 * rng.standard_normal((n, n)))
    X_tilde = X + 0.3 * rng.standard_normal(X.shape)
    gradients = rng.standard_normal((2 * out + 3, out))
    W = rng.standard_normal((out, n))
    grid = UniformGrid.fit(W, 3, group_size=4)
    H, G, H_out = X_tilde.T @ X_tilde, X_tilde.T @ X, gradients.T @ gradients
    X_a, X_tilde_a = augment(X, X_tilde, np.sqrt(damp * np.mean(np.diag(H))), live_columns(H))
    M = np.linalg.cholesky(damped(H_out, damp)).T  # MᵀM = H_out damped by its own damp · mean(diag)
    direct = direct_from_data(W, X_a, X_tilde_a, M, grid)
    np.testing.assert_allclose(yaqa_qronos(W, H, G, H_out, grid, damp=damp, block_size=2).weight, direct,
                               rtol=0, atol=1e-9)
