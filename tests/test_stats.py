"""LayerStats accumulates H = X̃ᵀX̃, G = X̃ᵀX and XᵀX over batches; output_error from statistics."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qronos_linalg import LayerStats, UniformGrid, output_error, rtn


@settings(max_examples=30, deadline=None, derandomize=True)
@given(st.integers(0, 10_000), st.integers(2, 12), st.lists(st.integers(1, 20), min_size=1, max_size=5))
def test_batched_accumulation_equals_full_products(seed, n, batch_sizes):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((sum(batch_sizes), n))
    X_tilde = X + rng.standard_normal(X.shape)
    stats = LayerStats(n)
    start = 0
    for size in batch_sizes:
        stats.update(X[start : start + size], X_tilde[start : start + size])
        start += size
    np.testing.assert_allclose(stats.H, X_tilde.T @ X_tilde, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(stats.G, X_tilde.T @ X, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(stats.H_float, X.T @ X, rtol=1e-12, atol=1e-12)
    assert stats.count == X.shape[0]
    assert stats.G[0, 1] == pytest.approx(X_tilde[:, 0] @ X[:, 1])  # G[i, j] = <X̃_i, X_j>


def test_leading_dimensions_are_flattened_and_torch_stays_torch(torch):
    X = torch.randn(2, 5, 3, dtype=torch.float32)
    stats = LayerStats(3)
    stats.update(X)
    assert isinstance(stats.H, torch.Tensor) and stats.H.dtype == torch.float64
    flat = X.reshape(-1, 3).double()
    torch.testing.assert_close(stats.H, flat.T @ flat)
    torch.testing.assert_close(stats.G, stats.H)
    assert stats.count == 10


@settings(max_examples=30, deadline=None, derandomize=True)
@given(st.integers(0, 10_000))
def test_output_error_equals_direct_frobenius_norm(seed):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((40, 6))
    X_tilde = X + 0.5 * rng.standard_normal(X.shape)
    W = rng.standard_normal((3, 6))
    Q = rtn(W, UniformGrid.fit(W, 3)).weight
    stats = LayerStats(6)
    stats.update(X, X_tilde)
    direct = np.linalg.norm(X @ W.T - X_tilde @ Q.T) ** 2
    assert output_error(W, Q, stats.H, stats.G, stats.H_float) == pytest.approx(direct, rel=1e-9)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), bad=st.sampled_from([np.nan, np.inf, -np.inf]), in_tilde=st.booleans(),
       dtype=st.sampled_from(["float32", "float64"]))
def test_a_non_finite_input_is_named_and_leaves_the_statistics_unchanged(seed, bad, in_tilde, dtype):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((30, 5))
    stats = LayerStats(5, dtype=dtype, name="layer.7")
    stats.update(X, X + 0.1)
    before = (stats.H.copy(), stats.G.copy(), stats.H_float.copy(), stats.count)
    X_bad, X_tilde = X.copy(), X + 0.2
    target = X_tilde if in_tilde else X_bad
    target[rng.integers(30), rng.integers(5)] = bad
    with np.errstate(invalid="ignore", over="ignore"):
        with pytest.raises(ValueError, match=("X_tilde" if in_tilde else "X") + " contains non-finite.*layer.7"):
            stats.update(X_bad, X_tilde)
    for kept, now in zip(before, (stats.H, stats.G, stats.H_float, stats.count)):
        np.testing.assert_array_equal(now, kept)


def test_bad_updates_name_the_layer():
    stats = LayerStats(4, name="blocks.0.mlp")
    with pytest.raises(ValueError, match=r"shape \(\.\.\., 4\) for layer 'blocks.0.mlp'"):
        stats.update(np.ones((3, 5)))
    with pytest.raises(ValueError, match="non-finite.*blocks.0.mlp"):
        stats.update(np.array([[1.0, np.inf, 0, 0]]))
    with pytest.raises(ValueError, match="same shape"):
        stats.update(np.ones((3, 4)), np.ones((2, 4)))
    with pytest.raises(ValueError, match="no samples yet"):
        stats.H
    with pytest.raises(ValueError, match="dtype must be one of"):
        LayerStats(4, dtype="int32")
