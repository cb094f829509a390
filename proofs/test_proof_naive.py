"""The library's direct forms (qronos_linalg.naive) agree with the independent direct forms the proofs
use (proofkit), so the library's equivalence tests and these proofs check the same definitions."""

import numpy as np
from float_problems import FLOAT_SETTINGS, assert_same_grid_values, float_problem, grid_values_differ, seeds
from hypothesis import given
from hypothesis import strategies as st
from proofkit import gpfq_direct, optq_obs, qronos_direct

from qronos_linalg import naive


@FLOAT_SETTINGS
@given(seed=seeds, reverse=st.booleans())
def test_library_direct_forms_equal_proof_direct_forms(seed, reverse):
    """optq_naive = OBS form, gpfq_naive = residual recursion, qronos_naive = two-step definition."""
    prob = float_problem(seed)
    n = prob.W.shape[1]
    order = np.arange(n)[::-1] if reverse else np.arange(n)
    pairs = [
        (naive.optq_naive(prob.W, prob.X_tilde, prob.grid, order=order),
         optq_obs(prob.W, prob.X_tilde, prob.grid, order=order)),
        (naive.gpfq_naive(prob.W, prob.X, prob.X_tilde, prob.grid, order=order),
         gpfq_direct(prob.W, prob.X, prob.X_tilde, prob.grid, order=order)),
        (naive.qronos_naive(prob.W, prob.X, prob.X_tilde, prob.grid, order=order),
         qronos_direct(prob.W, prob.X, prob.X_tilde, prob.grid, order=order)),
    ]
    for codes, values in pairs:
        assert_same_grid_values(prob.grid.dequantize(codes), values, prob.grid)


def test_cross_check_can_fail():
    """The comparison distinguishes algorithms: GPFQ's and Qronos' direct forms differ."""
    prob = float_problem(0)
    codes = naive.qronos_naive(prob.W, prob.X, prob.X_tilde, prob.grid)
    assert grid_values_differ(prob.grid.dequantize(codes), gpfq_direct(prob.W, prob.X, prob.X_tilde, prob.grid),
                              prob.grid)
