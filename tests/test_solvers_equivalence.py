"""Efficient solvers equal their direct definitions, code for code (float64)."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from qronos_linalg import gpfq, gptaq, optq, qronos, rtn
from qronos_linalg.naive import gpfq_naive, optq_naive, qronos_naive
from solver_problems import make_problem, problem_options

EQUIVALENCE = settings(max_examples=60, deadline=None, derandomize=True)
damps = st.sampled_from([0.0, 0.01, 0.3])


@EQUIVALENCE
@given(problem_options, damps, st.booleans(), st.integers(1, 6))
def test_optq_equals_direct_form_on_augmented_data(opts, damp, act_order, block_size):
    p = make_problem(**opts, noise=0)
    result = optq(p.W, p.H, p.grid, damp=damp, act_order=act_order, block_size=block_size)
    X_aug, _ = p.augmented(damp)
    np.testing.assert_array_equal(result.codes, optq_naive(p.W, X_aug, p.grid, order=result.perm))


@EQUIVALENCE
@given(problem_options, damps, st.booleans(), st.integers(1, 6), st.sampled_from([0.0, 0.3, 1.0]))
def test_qronos_equals_direct_form_on_augmented_data(opts, damp, act_order, block_size, noise):
    p = make_problem(**opts, noise=noise)
    result = qronos(p.W, p.H, p.G, p.grid, damp=damp, act_order=act_order, block_size=block_size)
    X_aug, X_tilde_aug = p.augmented(damp)
    np.testing.assert_array_equal(result.codes, qronos_naive(p.W, X_aug, X_tilde_aug, p.grid, order=result.perm))


@EQUIVALENCE
@given(problem_options, st.booleans(), st.sampled_from([0.0, 0.3, 1.0]))
def test_gpfq_statistics_form_equals_greedy_path_following(opts, act_order, noise):
    p = make_problem(**opts, noise=noise)
    result = gpfq(p.W, p.H, p.G, p.grid, act_order=act_order)
    np.testing.assert_array_equal(result.codes, gpfq_naive(p.W, p.X, p.X_tilde, p.grid, order=result.perm))


@settings(max_examples=30, deadline=None, derandomize=True)
@given(problem_options, st.data())
def test_dead_columns_match_direct_forms_and_round_to_zero(opts, data):
    n = opts["n"]
    dead = data.draw(st.sets(st.integers(0, n - 1), min_size=1, max_size=n - 1))
    p = make_problem(**opts, noise=0.3, dead=sorted(dead))
    dead = sorted(dead)
    q = qronos(p.W, p.H, p.G, p.grid, damp=0.0)
    np.testing.assert_array_equal(q.codes, qronos_naive(p.W, p.X, p.X_tilde, p.grid))
    g = gpfq(p.W, p.H, p.G, p.grid)
    np.testing.assert_array_equal(g.codes, gpfq_naive(p.W, p.X, p.X_tilde, p.grid))
    damped = qronos(p.W, p.H, p.G, p.grid, damp=0.05)
    X_aug, X_tilde_aug = p.augmented(0.05)
    np.testing.assert_array_equal(damped.codes, qronos_naive(p.W, X_aug, X_tilde_aug, p.grid))
    zero_codes = p.grid.quantize(np.zeros_like(p.W))
    for result in (q, g, damped, optq(p.W, p.H, p.grid), gptaq(p.W, p.H, p.G, p.grid)):
        np.testing.assert_array_equal(result.codes[:, dead], zero_codes[:, dead])
        np.testing.assert_array_equal(result.weight[:, dead], 0.0)


@settings(max_examples=40, deadline=None, derandomize=True)
@given(problem_options, damps, st.booleans())
def test_qronos_with_equal_inputs_is_optq(opts, damp, act_order):
    p = make_problem(**opts, noise=0)
    a = qronos(p.W, p.H, p.G, p.grid, damp=damp, act_order=act_order)
    b = optq(p.W, p.H, p.grid, damp=damp, act_order=act_order)
    np.testing.assert_array_equal(a.codes, b.codes)


@settings(max_examples=40, deadline=None, derandomize=True)
@given(problem_options, damps, st.integers(1, 5), st.integers(6, 200))
def test_results_do_not_depend_on_block_size(opts, damp, small_block, large_block):
    p = make_problem(**opts, noise=0.5)
    for solve in (lambda bs: optq(p.W, p.H, p.grid, damp=damp, block_size=bs),
                  lambda bs: qronos(p.W, p.H, p.G, p.grid, damp=damp, block_size=bs),
                  lambda bs: gptaq(p.W, p.H, p.G, p.grid, damp=damp, block_size=bs)):
        np.testing.assert_array_equal(solve(small_block).codes, solve(large_block).codes)


@settings(max_examples=40, deadline=None, derandomize=True)
@given(problem_options, damps, st.booleans())
def test_weights_on_the_grid_are_fixed_points(opts, damp, act_order):
    p = make_problem(**opts, noise=0, on_grid=True)
    expected = p.grid.quantize(p.W)
    results = [
        rtn(p.W, p.grid),
        optq(p.W, p.H, p.grid, damp=damp, act_order=act_order),
        qronos(p.W, p.H, p.G, p.grid, damp=damp, act_order=act_order),
        gpfq(p.W, p.H, p.G, p.grid, act_order=act_order),
        gptaq(p.W, p.H, p.G, p.grid, damp=damp, act_order=act_order),
    ]
    for result in results:
        np.testing.assert_array_equal(result.codes, expected, err_msg=result.algorithm)
        np.testing.assert_array_equal(result.weight, p.W, err_msg=result.algorithm)


@settings(max_examples=30, deadline=None, derandomize=True)
@given(problem_options, damps, st.floats(0.0, 1.0))
def test_gptaq_reduces_to_optq_without_asymmetry_or_alpha(opts, damp, alpha):
    same = make_problem(**opts, noise=0)
    np.testing.assert_array_equal(
        gptaq(same.W, same.H, same.G, same.grid, damp=damp, alpha=alpha).codes,
        optq(same.W, same.H, same.grid, damp=damp).codes,
    )
    differing = make_problem(**opts, noise=0.5)
    np.testing.assert_array_equal(
        gptaq(differing.W, differing.H, differing.G, differing.grid, damp=damp, alpha=0.0).codes,
        optq(differing.W, differing.H, differing.grid, damp=damp).codes,
    )


def test_act_order_processes_columns_by_decreasing_hessian_diagonal():
    p = make_problem(7, n=12, noise=0.2)
    result = qronos(p.W, p.H, p.G, p.grid, act_order=True)
    np.testing.assert_array_equal(result.perm, np.argsort(-np.diag(p.H), kind="stable"))
    assert not np.array_equal(result.perm, np.arange(12))
    identity = qronos(p.W, p.H, p.G, p.grid)
    np.testing.assert_array_equal(identity.perm, np.arange(12))
