"""UniformGrid: the rounding rule, min-max / symmetric / ternary / grouped fits, MSE search."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qronos_linalg import UniformGrid

GRID = settings(max_examples=60, deadline=None, derandomize=True)
fit_options = st.fixed_dictionaries(
    {
        "seed": st.integers(0, 2**31 - 1),
        "out": st.integers(1, 6),
        "n": st.integers(1, 40),
        "bits": st.integers(2, 8),
        "symmetric": st.booleans(),
        "group_size": st.one_of(st.none(), st.integers(1, 16)),
    }
)


def _weights(seed, out, n):
    return np.random.default_rng(seed).standard_normal((out, n)) * np.random.default_rng(seed + 1).uniform(0.1, 3)


@GRID
@given(fit_options)
def test_fit_grid_covers_each_group_and_rounding_error_is_at_most_half_a_step(opts):
    W = _weights(opts["seed"], opts["out"], opts["n"])
    grid = UniformGrid.fit(W, opts["bits"], symmetric=opts["symmetric"], group_size=opts["group_size"])
    codes = grid.quantize(W)
    assert codes.dtype == np.uint8 and codes.min() >= grid.qmin and codes.max() <= grid.qmax
    n_groups = 1 if opts["group_size"] is None else -(-opts["n"] // opts["group_size"])
    assert grid.scale.shape == grid.zero.shape == (opts["out"], n_groups)
    group_of = np.zeros(opts["n"], int) if opts["group_size"] is None else np.arange(opts["n"]) // opts["group_size"]
    step = grid.scale[:, group_of]
    error = np.abs(grid.dequantize(codes) - W)
    assert np.all(error <= step / 2 + 1e-12 * np.abs(W).max())
    if opts["symmetric"]:
        assert np.all(grid.zero == 2 ** (opts["bits"] - 1))
    else:  # the min and max of every group are on the grid's range, and 0 is exactly representable
        assert np.all(grid.dequantize(grid.quantize(np.zeros_like(W))) == 0)


def test_rounding_rule_is_round_half_even_plus_zero_then_clip():
    grid = UniformGrid(np.array([[1.0]]), np.array([[2.0]]), 2)
    values = np.array([[-3.0, -2.5, -1.5, -0.5, 0.5, 1.5, 2.5]])
    expected = np.clip(np.array([-3, -2, -2, 0, 0, 2, 2]) + 2, 0, 3)
    np.testing.assert_array_equal(grid.quantize(values), expected[None, :][0:1])


def test_ternary_grid_has_three_symmetric_levels():
    W = np.array([[-1.0, -0.2, 0.1, 0.9, 0.6]])
    grid = UniformGrid.fit(W, 2, symmetric=True, narrow_range=True)
    codes = grid.quantize(W)
    assert set(codes.ravel().tolist()) <= {1, 2, 3}
    assert sorted(set(grid.dequantize(np.array([[1, 2, 3]], np.uint8)).ravel().tolist())) == [-1.0, 0.0, 1.0]


def test_groups_use_original_column_positions_with_ragged_last_group():
    W = np.concatenate([np.full((1, 4), 1.0), np.full((1, 4), 100.0), np.full((1, 2), 0.01)], axis=1)
    grid = UniformGrid.fit(W, 4, group_size=4)
    assert grid.scale.shape == (1, 3)
    np.testing.assert_allclose(grid.scale[0], [1 / 15, 100 / 15, 0.01 / 15])


@GRID
@given(fit_options)
def test_mse_search_error_is_never_worse_than_minmax(opts):
    W = _weights(opts["seed"], opts["out"], opts["n"])
    kw = dict(symmetric=opts["symmetric"], group_size=opts["group_size"])
    minmax = UniformGrid.fit(W, opts["bits"], **kw)
    mse = UniformGrid.fit(W, opts["bits"], search="mse", **kw)
    err_minmax = ((minmax.fake_quantize(W) - W) ** 2).sum()
    err_mse = ((mse.fake_quantize(W) - W) ** 2).sum()
    assert err_mse <= err_minmax * (1 + 1e-12)


def test_shrink_scales_the_range():
    W = np.random.default_rng(3).standard_normal((4, 32))
    full = UniformGrid.fit(W, 3)
    shrunk = UniformGrid.fit(W, 3, shrink=0.8)
    np.testing.assert_allclose(shrunk.scale, 0.8 * full.scale)


def test_grid_is_frozen():
    grid = UniformGrid.fit(np.random.default_rng(0).standard_normal((3, 8)), 4)
    with pytest.raises(ValueError):
        grid.scale[0, 0] = 1.0


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(bits=1), "bits must be an integer in"),
        (dict(bits=9), "bits must be an integer in"),
        (dict(bits=4, search="best"), "search must be one of"),
        (dict(bits=4, shrink=0.0), "shrink must be in"),
        (dict(bits=4, group_size=0), "group_size must be a positive integer"),
    ],
)
def test_fit_rejects_bad_options(kwargs, message):
    with pytest.raises(ValueError, match=message):
        UniformGrid.fit(np.ones((2, 4)), **kwargs)


def test_constructor_rejects_inconsistent_arrays():
    with pytest.raises(ValueError, match="same|shape"):
        UniformGrid(np.ones((2, 1)), np.ones((3, 1)), 4)
    with pytest.raises(ValueError, match="scale must be finite and > 0"):
        UniformGrid(np.zeros((2, 1)), np.ones((2, 1)), 4)
    with pytest.raises(ValueError, match="zero points must lie in"):
        UniformGrid(np.ones((2, 1)), np.full((2, 1), 16.0), 4)
    with pytest.raises(ValueError, match="integers"):
        UniformGrid(np.ones((2, 1)), np.full((2, 1), 1.5), 4)
    with pytest.raises(ValueError, match="non-finite"):
        UniformGrid.fit(np.array([[1.0, np.nan]]), 4)
