"""Checks of gpfq_statistics.md: GPFQ's statistics form equals its residual recursion."""

import numpy as np
from float_problems import EXACT_SETTINGS, FLOAT_SETTINGS, assert_same_grid_values, float_problem, seeds
from hypothesis import given
from hypothesis import strategies as st
from proofkit import differs, gpfq_direct, gpfq_stats, random_instance

import qronos_linalg as ql

#: Seeds of the fixed instance sets on which a perturbed variant must be rejected at least once.
REJECTION_SEEDS = range(20)
sizes = st.integers(min_value=2, max_value=6)


@EXACT_SETTINGS
@given(seed=seeds, n=sizes, block_size=st.integers(min_value=1, max_value=6), data=st.data())
def test_statistics_form_equals_residual_recursion(seed, n, block_size, data):
    """V_t = (Σ_{s≤t} G_{t,s} w_s − Σ_{s<t} q_s H_{s,t}) / H_tt (blocked, any order) equals
    q_t = Q(⟨X̃_t, u_{t−1} + w_t X_t⟩ / ‖X̃_t‖²), u_t = u_{t−1} + w_t X_t − q_t X̃_t."""
    inst = random_instance(seed, n=n)
    order = data.draw(st.permutations(range(n)))
    direct = gpfq_direct(inst.W, inst.X, inst.X_tilde, inst.grid, order=order)
    assert not differs(gpfq_stats(inst.W, inst.H, inst.G, inst.grid, order=order, block_size=block_size), direct)


def test_statistics_form_with_transposed_G_is_rejected():
    """Perturbed: G_{s,t} (= ⟨X̃_s, X_t⟩) in place of G_{t,s} is rejected."""
    assert any(
        differs(gpfq_stats(i.W, i.H, i.G, i.grid, use_G_transpose=True), gpfq_direct(i.W, i.X, i.X_tilde, i.grid))
        for i in map(random_instance, REJECTION_SEEDS)
    )


@FLOAT_SETTINGS
@given(seed=seeds, act_order=st.booleans())
def test_library_gpfq_equals_residual_recursion(seed, act_order):
    """Library gpfq equals the residual recursion on the float64 data."""
    prob = float_problem(seed)
    result = ql.gpfq(prob.W, prob.H, prob.G, prob.grid, act_order=act_order)
    direct = gpfq_direct(prob.W, prob.X, prob.X_tilde, prob.grid, order=np.asarray(result.perm))
    assert_same_grid_values(result.weight, direct, prob.grid)
