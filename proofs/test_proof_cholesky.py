"""Checks of cholesky_form.md (one factor serves every step; the reversal construction) and
optq_ldlq.md (OPTQ ≡ LDLQ; blocked ≡ unblocked)."""

import numpy as np
from float_problems import BLOCK_SIZES, EXACT_SETTINGS, FLOAT_SETTINGS, float_problem, seeds
from hypothesis import given
from hypothesis import strategies as st
from proofkit import (
    differs,
    identity_like,
    inv,
    ldlq,
    lower_cholesky,
    optq_obs,
    optq_stats,
    random_instance,
    random_rational_upper,
    reversal,
    round_column,
    scaled_upper_factor_of_inverse,
    unit_upper_udu,
)

import qronos_linalg as ql
from qronos_linalg.backend import NUMPY
from qronos_linalg.linalg import upper_cholesky_of_inverse

#: Seeds of the fixed instance sets on which a perturbed variant must be rejected at least once.
REJECTION_SEEDS = range(20)
sizes = st.integers(min_value=2, max_value=6)
#: Relative tolerance of float64 factor identities at IN_FEATURES = 24 on well-conditioned H.
FACTOR_RTOL = 1e-9


def _rational_factor(seed, n):
    """(U, H): rational upper U with positive diagonal and H = (UᵀU)⁻¹."""
    U = random_rational_upper(seed, n)
    return U, inv(U.T @ U)


# --- cholesky_form.md -----------------------------------------------------------------------


@EXACT_SETTINGS
@given(seed=seeds, n=sizes)
def test_trailing_block_is_factor_of_trailing_inverse(seed, n):
    """U[t:, t:]ᵀ U[t:, t:] = (H[t:, t:])⁻¹ for every t (U upper with positive diagonal: the factor)."""
    U, H = _rational_factor(seed, n)
    for t in range(n):
        assert not differs(U[t:, t:].T @ U[t:, t:], inv(H[t:, t:]))


def test_leading_block_is_not_factor_of_leading_inverse():
    """Perturbed: the leading block U[:t, :t] is in general not the factor of (H[:t, :t])⁻¹."""
    assert any(
        differs(U[:t, :t].T @ U[:t, :t], inv(H[:t, :t]))
        for U, H in (_rational_factor(seed, 4) for seed in REJECTION_SEEDS)
        for t in (1, 2, 3)
    )


@EXACT_SETTINGS
@given(seed=seeds, n=sizes)
def test_reversal_construction(seed, n):
    """U = J L̂⁻¹ J with L̂ the lower Cholesky factor of J H J (exact: every pivot is a rational square)."""
    U, H = _rational_factor(seed, n)
    J = reversal(n, H)
    L_hat = lower_cholesky(J @ H @ J)
    assert not differs(J @ inv(L_hat) @ J, U)


def test_reversal_without_flips_is_rejected():
    """Perturbed: the transposed inverse (L̂⁻¹)ᵀ (upper, but no flips) is not U."""
    found = False
    for seed in REJECTION_SEEDS:
        U, H = _rational_factor(seed, 4)
        J = reversal(4, H)
        found |= differs(inv(lower_cholesky(J @ H @ J)).T, U)
    assert found


@EXACT_SETTINGS
@given(seed=seeds, n=sizes)
def test_optq_update_uses_row_t_of_u(seed, n):
    """K_{>t,t}/K_tt = U_{t,>t}/U_tt with K = (H[t:, t:])⁻¹; the scaled factor is Ū = U/U_tt, d = U_tt²."""
    U, H = _rational_factor(seed, n)
    Ubar, d = scaled_upper_factor_of_inverse(H)
    diag = np.array([U[t, t] for t in range(n)], dtype=object)
    assert not differs(Ubar, U / diag[:, None])
    assert not differs(d, diag * diag)
    for t in range(n - 1):
        K = inv(H[t:, t:])
        assert not differs(K[1:, 0] / K[0, 0], U[t, t + 1 :] / U[t, t])


@FLOAT_SETTINGS
@given(seed=seeds)
def test_library_factor(seed):
    """Library upper_cholesky_of_inverse: upper, positive diagonal, UᵀU = H⁻¹, trailing blocks too."""
    H = float_problem(seed).H
    U, ok = upper_cholesky_of_inverse(H, NUMPY)
    assert ok
    assert np.array_equal(U, np.triu(U)) and (np.diag(U) > 0).all()
    for t in (0, H.shape[0] // 2, H.shape[0] - 1):
        expected = np.linalg.inv(H[t:, t:])
        np.testing.assert_allclose(U[t:, t:].T @ U[t:, t:], expected, rtol=0,
                                   atol=FACTOR_RTOL * np.abs(expected).max())


# --- optq_ldlq.md ---------------------------------------------------------------------------


@EXACT_SETTINGS
@given(seed=seeds, n=sizes)
def test_udu_factor_is_inverse_of_scaled_factor(seed, n):
    """QuIP's H = (U̇+I) D (U̇+I)ᵀ satisfies U̇ + I = Ū⁻¹ and D = diag(d)⁻¹."""
    H = random_instance(seed, n=n).H
    Udot, D = unit_upper_udu(H)
    Ubar, d = scaled_upper_factor_of_inverse(H)
    L = Udot + identity_like(n, H)
    assert not differs((L * D[None, :]) @ L.T, H)
    assert not differs(L, inv(Ubar))
    assert not differs(D * d, d * 0 + 1)


@EXACT_SETTINGS
@given(seed=seeds, n=sizes, block_size=st.integers(min_value=1, max_value=6), data=st.data())
def test_optq_equals_ldlq_and_blocked_equals_unblocked(seed, n, block_size, data):
    """OPTQ (OBS form on data) = code form (any block size, any order) = LDLQ."""
    inst = random_instance(seed, n=n, same_inputs=True)
    order = data.draw(st.permutations(range(n)))
    reference = optq_obs(inst.W, inst.X, inst.grid, order=order)
    assert not differs(optq_stats(inst.W, inst.H, inst.grid, order=order, block_size=block_size), reference)
    assert not differs(ldlq(inst.W, inst.H, inst.grid, order=order), reference)


def test_ldlq_with_lower_factor_is_rejected():
    """Perturbed: LDLQ with the strictly upper part taken from H = L D Lᵀ (L unit *lower*) is not OPTQ."""
    found = False
    for seed in REJECTION_SEEDS:
        inst = random_instance(seed, same_inputs=True)
        n = inst.H.shape[0]
        J = reversal(n, inst.H)
        # The unit-lower LDLᵀ of H is the reversal of the unit-upper UDUᵀ of J H J.
        Udot_rev, _ = unit_upper_udu(J @ inst.H @ J)
        wrong_udot = (J @ (Udot_rev + identity_like(n, inst.H)) @ J).T - identity_like(n, inst.H)
        Q = inst.W * 0
        for t in range(n):
            Q[:, t] = round_column(inst.grid, inst.W[:, t] + (inst.W[:, :t] - Q[:, :t]) @ wrong_udot[:t, t], t)
        found |= differs(Q, optq_obs(inst.W, inst.X, inst.grid))
    assert found


@FLOAT_SETTINGS
@given(seed=seeds, act_order=st.booleans())
def test_library_optq_blocked_equals_unblocked(seed, act_order):
    """Library optq: block_size 1, a ragged block size and one block give the same codes."""
    prob = float_problem(seed)
    results = [ql.optq(prob.W, prob.H, prob.grid, block_size=b, act_order=act_order).codes
               for b in (1, *BLOCK_SIZES)]
    for codes in results[1:]:
        assert np.array_equal(codes, results[0])
