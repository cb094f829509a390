"""Checks of the Qronos proofs: qronos_orthogonality.md, qronos_first_step.md,
qronos_equals_optq.md and qronos_offset_form.md."""

import numpy as np
from float_problems import (
    BLOCK_SIZES,
    EXACT_SETTINGS,
    FLOAT_SETTINGS,
    assert_same_grid_values,
    float_problem,
    grid_values_differ,
    seeds,
)
from hypothesis import given
from hypothesis import strategies as st
from proofkit import (
    differs,
    inv,
    optq_obs,
    optq_stats,
    qronos_direct,
    qronos_first_step,
    qronos_stats,
    random_instance,
    scaled_upper_factor_of_inverse,
)

import qronos_linalg as ql

#: Seeds of the fixed instance sets on which a perturbed variant must be rejected at least once.
REJECTION_SEEDS = range(20)
#: Sizes of the exact instances drawn by hypothesis.
sizes = st.integers(min_value=2, max_value=5)


def _trace(inst):
    trace = []
    Q = qronos_direct(inst.W, inst.X, inst.X_tilde, inst.grid, trace=trace)
    return Q, trace


# --- qronos_orthogonality.md ----------------------------------------------------------------


@EXACT_SETTINGS
@given(seed=seeds, n=sizes)
def test_residual_orthogonal_and_correction_is_rounding(seed, n):
    """After each diffusion, X̃_{>t}ᵀ R_t = 0; hence for t ≥ 2 the correction target is v_t exactly."""
    inst = random_instance(seed, n=n)
    _, trace = _trace(inst)
    for k, step in enumerate(trace):
        later = [s.column for s in trace[k + 1 :]]
        assert not differs(inst.X_tilde[:, later].T @ step.residual, 0 * step.residual[: len(later)])
        if k >= 1:
            assert not differs(step.value, step.V_before[:, step.column])


def test_first_correction_is_not_plain_rounding():
    """Perturbed claim: at t = 1 there is no earlier diffusion, and the target differs from w_1."""
    found = False
    for seed in REJECTION_SEEDS:
        inst = random_instance(seed)
        _, trace = _trace(inst)
        found |= differs(trace[0].value, inst.W[:, 0])
    assert found


@EXACT_SETTINGS
@given(seed=seeds, n=sizes)
def test_diffusion_is_optq_update_on_trailing_inverse(seed, n):
    """For t ≥ 2: v_{>t} − v_{>t}^{old} = −(v_t − q_t) K_{>t,t}/K_tt with K = (H_{≥t,≥t})⁻¹,
    and equals −(v_t − q_t) Ū_{t,>t} with Ū the scaled factor of H⁻¹."""
    inst = random_instance(seed, n=n)
    Q, trace = _trace(inst)
    H = inst.H
    Ubar, _ = scaled_upper_factor_of_inverse(H)
    for t, step in enumerate(trace[1:-1], start=1):
        K = inv(H[t:, t:])
        error = step.V_before[:, t] - Q[:, t]
        expected = -np.outer(error, K[1:, 0] / K[0, 0])
        change = step.V_after[:, t + 1 :] - step.V_before[:, t + 1 :]
        assert not differs(change, expected)
        assert not differs(change, -np.outer(error, Ubar[t, t + 1 :]))


def test_diffusion_with_full_inverse_is_rejected():
    """Perturbed: using the full H⁻¹ instead of the trailing block's inverse fails for some t ≥ 2."""
    found = False
    for seed in REJECTION_SEEDS:
        inst = random_instance(seed)
        Q, trace = _trace(inst)
        K = inv(inst.H)
        for t, step in enumerate(trace[1:-1], start=1):
            wrong = -np.outer(step.V_before[:, t] - Q[:, t], K[t + 1 :, t] / K[t, t])
            found |= differs(step.V_after[:, t + 1 :] - step.V_before[:, t + 1 :], wrong)
    assert found


# --- qronos_first_step.md -------------------------------------------------------------------


@EXACT_SETTINGS
@given(seed=seeds, n=sizes)
def test_first_step_from_statistics(seed, n):
    """q_1 = Q((G_{1,:}w − H_{1,>1}w_{>1})/H_11), v_{>1} = H_{>1,>1}⁻¹(G_{>1,:}w − H_{>1,1}q_1)."""
    inst = random_instance(seed, n=n)
    Q, trace = _trace(inst)
    q1, v_rest = qronos_first_step(inst.W, inst.H, inst.G, inst.grid)
    assert not differs(q1, Q[:, 0])
    assert not differs(v_rest, trace[0].V_after[:, 1:])


def test_first_step_with_transposed_G_is_rejected():
    """Perturbed: Gᵀ in place of G (⟨X_i, X̃_j⟩ instead of ⟨X̃_i, X_j⟩) is rejected."""
    found = False
    for seed in REJECTION_SEEDS:
        inst = random_instance(seed)
        Q, trace = _trace(inst)
        q1, v_rest = qronos_first_step(inst.W, inst.H, inst.G.T, inst.grid)
        found |= differs(q1, Q[:, 0]) or differs(v_rest, trace[0].V_after[:, 1:])
    assert found


# --- qronos_equals_optq.md ------------------------------------------------------------------


@EXACT_SETTINGS
@given(seed=seeds, n=sizes)
def test_qronos_with_equal_inputs_is_optq(seed, n):
    """X̃ = X: the direct Qronos equals the OBS form of OPTQ and the code's OPTQ from H."""
    inst = random_instance(seed, n=n, same_inputs=True)
    Q = qronos_direct(inst.W, inst.X, inst.X, inst.grid)
    assert not differs(Q, optq_obs(inst.W, inst.X, inst.grid))
    assert not differs(Q, optq_stats(inst.W, inst.H, inst.grid))


def test_qronos_with_different_inputs_is_not_optq():
    """Perturbed: with X̃ ≠ X, Qronos differs from OPTQ on X̃ for some instance."""
    assert any(
        differs(qronos_direct(i.W, i.X, i.X_tilde, i.grid), optq_obs(i.W, i.X_tilde, i.grid))
        for i in map(random_instance, REJECTION_SEEDS)
    )


@FLOAT_SETTINGS
@given(seed=seeds, act_order=st.booleans())
def test_library_qronos_equals_library_optq_when_g_is_h(seed, act_order):
    """Library: qronos(W, H, H) and optq(W, H) at the same damping give the same codes."""
    prob = float_problem(seed, same_inputs=True)
    H = prob.H
    a = ql.qronos(prob.W, H, H, prob.grid, damp=0.01, act_order=act_order)
    b = ql.optq(prob.W, H, prob.grid, damp=0.01, act_order=act_order)
    assert np.array_equal(a.codes, b.codes)


# --- qronos_offset_form.md ------------------------------------------------------------------


@EXACT_SETTINGS
@given(seed=seeds, n=sizes, block_size=st.integers(min_value=1, max_value=5), data=st.data())
def test_offset_form_equals_two_step_definition(seed, n, block_size, data):
    """The code's OPTQ recursion with offsets o (o_1 = z_1/H_11, o_t = U_tt Σ_s U_{t,s} z_s) equals the
    direct two-step Qronos, for any block size and processing order."""
    inst = random_instance(seed, n=n)
    order = data.draw(st.permutations(range(n)))
    direct = qronos_direct(inst.W, inst.X, inst.X_tilde, inst.grid, order=order)
    code = qronos_stats(inst.W, inst.H, inst.G, inst.grid, order=order, block_size=block_size)
    assert not differs(direct, code)


def test_offset_form_with_wrong_first_offset_is_rejected():
    """Perturbed: using the t ≥ 2 formula o_1 = U_11 Σ_s U_{1,s} z_s at step 1 is rejected."""
    assert any(
        differs(qronos_direct(i.W, i.X, i.X_tilde, i.grid),
                qronos_stats(i.W, i.H, i.G, i.grid, first="trailing"))
        for i in map(random_instance, REJECTION_SEEDS)
    )


@FLOAT_SETTINGS
@given(seed=seeds, act_order=st.booleans(), block_size=st.sampled_from(BLOCK_SIZES))
def test_library_qronos_equals_direct_form(seed, act_order, block_size):
    """Library qronos (damp=0) equals the direct two-step form on the data, in float64."""
    prob = float_problem(seed)
    result = ql.qronos(prob.W, prob.H, prob.G, prob.grid, damp=0.0, block_size=block_size,
                       act_order=act_order)
    direct = qronos_direct(prob.W, prob.X, prob.X_tilde, prob.grid, order=np.asarray(result.perm))
    assert_same_grid_values(result.weight, direct, prob.grid)


def test_library_qronos_differs_from_optq_on_asymmetric_data():
    """The float check can fail: with X̃ ≠ X, OPTQ on H is not the direct Qronos."""
    prob = float_problem(0)
    direct = qronos_direct(prob.W, prob.X, prob.X_tilde, prob.grid)
    assert grid_values_differ(ql.optq(prob.W, prob.H, prob.grid, damp=0.0).weight, direct, prob.grid)
