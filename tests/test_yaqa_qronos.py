"""yaqa_qronos (YAQA's H_out with Qronos' view of the inputs): the efficient form equals the direct form from
data (qronos_linalg.naive.yaqa_qronos_naive) code for code; its reductions; act-order; bad input."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qronos_linalg import UniformGrid, optq, output_error
from qronos_linalg.naive import yaqa_qronos_naive
from qronos_linalg.yaqa import YaqaResult, yaqa, yaqa_qronos
from solver_problems import make_problem, problem_options
from test_yaqa import output_factor

EQUIVALENCE = settings(max_examples=40, deadline=None, derandomize=True)
PROPERTY = settings(max_examples=25, deadline=None, derandomize=True)
damps = st.sampled_from([0.0, 0.01, 0.3])


def problem(opts, **kw):
    """(problem with X̃ = X + noise, H_out)."""
    p = make_problem(**opts, **kw)
    return p, output_factor(opts["seed"], p.W.shape[0])


def weighted_output_error(p, Q, H_out):
    """tr((XWᵀ − X̃Qᵀ) H_out (XWᵀ − X̃Qᵀ)ᵀ) on the problem's data."""
    R = p.X @ p.W.T - p.X_tilde @ Q.T
    return float(np.trace(R @ H_out @ R.T))


@EQUIVALENCE
@given(problem_options, damps, st.integers(1, 6))
def test_efficient_equals_the_direct_form_from_data(opts, damp, block_size):
    p, H_out = problem(opts)
    result = yaqa_qronos(p.W, p.H, p.G, H_out, p.grid, damp=damp, block_size=block_size)
    assert isinstance(result, YaqaResult) and result.algorithm == "yaqa-qronos"
    np.testing.assert_array_equal(result.codes, yaqa_qronos_naive(p.W, p.X, p.X_tilde, H_out, p.grid, damp=damp))


@PROPERTY
@given(problem_options, damps)
def test_act_order_is_the_direct_form_with_columns_by_decreasing_diagonal(opts, damp):
    p, H_out = problem(opts)
    out, n = p.W.shape
    result = yaqa_qronos(p.W, p.H, p.G, H_out, p.grid, damp=damp, act_order=True)
    columns = np.argsort(-np.diag(p.H), kind="stable")
    flat = (np.arange(out)[:, None] * n + columns[None, :]).reshape(-1)
    np.testing.assert_array_equal(result.codes, yaqa_qronos_naive(p.W, p.X, p.X_tilde, H_out, p.grid, damp=damp,
                                                                  order=flat))


@PROPERTY
@given(problem_options, damps, st.booleans())
def test_with_equal_inputs_it_is_yaqa_and_with_identity_h_out_also_optq(opts, damp, act_order):
    p, H_out = problem(opts, noise=0)
    same = yaqa_qronos(p.W, p.H, p.G, H_out, p.grid, damp=damp, act_order=act_order)
    np.testing.assert_array_equal(same.codes, yaqa(p.W, p.H, H_out, p.grid, damp=damp, act_order=act_order).codes)
    identity = yaqa_qronos(p.W, p.H, p.G, np.eye(p.W.shape[0]), p.grid, damp=damp, act_order=act_order)
    np.testing.assert_array_equal(identity.codes, optq(p.W, p.H, p.grid, damp=damp, act_order=act_order).codes)


@PROPERTY
@given(problem_options, st.data())
def test_dead_columns_round_to_zero(opts, data):
    n = opts["n"]
    dead = sorted(data.draw(st.sets(st.integers(0, n - 1), max_size=n - 1)))
    p, H_out = problem(opts, dead=dead)
    result = yaqa_qronos(p.W, p.H, p.G, H_out, p.grid, damp=0.05, block_size=2)
    np.testing.assert_array_equal(result.codes, yaqa_qronos_naive(p.W, p.X, p.X_tilde, H_out, p.grid, damp=0.05))
    np.testing.assert_array_equal(result.weight[:, dead], 0.0)


def test_it_lowers_the_weighted_output_error_below_yaqa_and_the_output_error_below_optq():
    """The point of the combination, on average over fixed problems with X̃ ≠ X: a lower H_out-weighted output
    error than YAQA (blind to X̃ ≠ X), and a lower plain output error than OPTQ."""
    weighted, plain = [], []
    for seed in range(20):
        p, H_out = problem(dict(seed=seed, out=8, n=12, bits=3))
        Q = yaqa_qronos(p.W, p.H, p.G, H_out, p.grid).weight
        weighted.append(weighted_output_error(p, yaqa(p.W, p.H, H_out, p.grid).weight, H_out)
                        - weighted_output_error(p, Q, H_out))
        plain.append(output_error(p.W, optq(p.W, p.H, p.grid).weight, p.H, p.G, p.H_float)
                     - output_error(p.W, Q, p.H, p.G, p.H_float))
    assert np.mean(weighted) > 0 and np.mean(plain) > 0


def test_numpy_and_torch_give_the_same_codes(torch):
    p, H_out = problem(dict(seed=3, out=5, n=9, bits=3, symmetric=False, group_size=4))
    torch_grid = UniformGrid(torch.from_numpy(p.grid.scale.copy()), torch.from_numpy(p.grid.zero.copy()),
                             p.grid.bits, group_size=p.grid.group_size)
    on_numpy = yaqa_qronos(p.W, p.H, p.G, H_out, p.grid, block_size=2)
    on_torch = yaqa_qronos(*(torch.from_numpy(M.copy()) for M in (p.W, p.H, p.G, H_out)), torch_grid, block_size=2)
    assert isinstance(on_torch.weight, torch.Tensor) and on_torch.weight.dtype == torch.float64
    np.testing.assert_array_equal(on_torch.codes.numpy(), on_numpy.codes)


def test_float32_weights_keep_their_dtype():
    p, H_out = problem(dict(seed=1, out=3, n=6, bits=4, symmetric=False, group_size=None))
    result = yaqa_qronos(p.W.astype(np.float32), p.H, p.G, H_out, UniformGrid.fit(p.W.astype(np.float32), 4))
    assert result.weight.dtype == np.float32


def test_bad_input_is_named():
    p, H_out = problem(dict(seed=0, out=3, n=6, bits=4, symmetric=False, group_size=None))
    with pytest.raises(ValueError, match=r"G is required: the layer statistic G = X̃ᵀX"):
        yaqa_qronos(p.W, p.H, None, H_out, p.grid)
    with pytest.raises(ValueError, match=r"G must have shape \(in_features, in_features\) = \(6, 6\)"):
        yaqa_qronos(p.W, p.H, p.G[:-1], H_out, p.grid)
    with pytest.raises(ValueError, match="H_out must have shape"):
        yaqa_qronos(p.W, p.H, p.G, H_out[:-1, :-1], p.grid)
    with pytest.raises(ValueError, match="H_out contains non-finite values"):
        yaqa_qronos(p.W, p.H, p.G, np.full_like(H_out, np.nan), p.grid)
