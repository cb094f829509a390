"""Hadamard construction and the randomized Hadamard transform."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from qronos_linalg.adapters.torch.hadamard import (
    RandomizedHadamard,
    fast_walsh_hadamard,
    hadamard_factorization,
    hadamard_matrix,
)

# 12, 20, 28, 36 need Paley I/II; 576 and 1536 are SmolLM2's hidden and intermediate sizes.
CONSTRUCTIBLE = [1, 2, 4, 12, 20, 24, 28, 36, 40, 48, 80, 96, 576, 1536]


@pytest.mark.parametrize("n", CONSTRUCTIBLE)
def test_hadamard_matrix_has_pm_one_entries_and_orthogonal_rows(n):
    H = hadamard_matrix(n)
    assert set(np.unique(H)) <= {-1, 1}
    H = H.astype(np.float64)  # exact for these integers, and far faster than an int64 product
    np.testing.assert_array_equal(H @ H.T, n * np.eye(n))


def test_smollm2_sizes_factor_into_paley_times_power_of_two():
    assert hadamard_factorization(576) == (36, 16)
    assert hadamard_factorization(1536) == (12, 128)


@pytest.mark.parametrize("n", [3, 9, 0, -4])
def test_unconstructible_sizes_raise_naming_the_size(n):
    with pytest.raises(ValueError, match=str(n)):
        hadamard_factorization(n)


@settings(max_examples=25, deadline=None)
@given(n=st.sampled_from(CONSTRUCTIBLE[:-2]), seed=st.integers(0, 2**31 - 1), rows=st.integers(1, 4))
def test_fast_apply_equals_dense_orthogonal_matrix(n, seed, rows):
    rotation = RandomizedHadamard(n, seed)
    R = rotation.matrix()
    torch.testing.assert_close(R @ R.T, torch.eye(n, dtype=torch.float64), atol=1e-12, rtol=0)
    x = torch.randn(rows, 3, n, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    torch.testing.assert_close(rotation.apply(x), x @ R, atol=1e-10, rtol=0)


@pytest.mark.parametrize("n", [576, 1536])
def test_smollm2_sized_rotations_are_orthogonal_and_fast_apply_matches(n):
    rotation = RandomizedHadamard(n, 7)
    R = rotation.matrix()
    torch.testing.assert_close(R @ R.T, torch.eye(n, dtype=torch.float64), atol=1e-12, rtol=0)
    x = torch.randn(3, n, dtype=torch.float64, generator=torch.Generator().manual_seed(n))
    torch.testing.assert_close(rotation.apply(x), x @ R, atol=1e-10, rtol=0)


@settings(max_examples=20, deadline=None)
@given(log_size=st.integers(0, 9), seed=st.integers(0, 1000))
def test_fast_walsh_hadamard_matches_sylvester_matrix(log_size, seed):
    p = 2**log_size
    x = torch.randn(2, p, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    H = torch.from_numpy(hadamard_matrix(p).astype(np.float64))
    torch.testing.assert_close(fast_walsh_hadamard(x), x @ H, atol=1e-9, rtol=0)


def test_signs_depend_on_seed_and_spec_round_trips():
    a, b = RandomizedHadamard(48, 0), RandomizedHadamard(48, 1)
    assert not torch.equal(a.matrix(), b.matrix())
    torch.testing.assert_close(RandomizedHadamard.from_spec(a.to_spec()).matrix(), a.matrix(), atol=0, rtol=0)


def test_wrong_axis_size_is_rejected():
    with pytest.raises(ValueError, match="size 12"):
        RandomizedHadamard(12).apply(torch.zeros(2, 10))
