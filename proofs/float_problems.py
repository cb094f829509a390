"""Random float64 problems for the checks that call the library's efficient solvers."""

from __future__ import annotations

import numpy as np
from hypothesis import settings
from hypothesis import strategies as st

from proofkit import Instance

#: Problem size of the float checks: big enough for several blocks, small enough for direct forms.
OUT_FEATURES = 6
IN_FEATURES = 24
SAMPLES = 96
#: Relative size of the quantization noise X̃ − X.
INPUT_NOISE = 0.3
#: Bits and group size of the grid fitted to W (groups make act-order use original positions).
BITS = 3
GROUP_SIZE = 8
#: A block size that does not divide IN_FEATURES (ragged last block) and one larger than it.
BLOCK_SIZES = (5, 128)
#: Values on the grid agree when their difference is below this fraction of the smallest scale.
GRID_TOLERANCE = 1e-6

#: Hypothesis settings shared by the float checks: deterministic, no deadline (Numba compiles once).
FLOAT_SETTINGS = settings(derandomize=True, max_examples=12, deadline=None)
#: Hypothesis settings of the exact checks (each example takes milliseconds).
EXACT_SETTINGS = settings(derandomize=True, max_examples=50, deadline=None)

seeds = st.integers(min_value=0, max_value=2**31 - 1)


def float_problem(seed: int, *, same_inputs: bool = False) -> Instance:
    """Correlated Gaussian inputs (so the order of columns matters), X̃ = X + noise."""
    from qronos_linalg import UniformGrid

    rng = np.random.default_rng(seed)
    mixing = rng.standard_normal((IN_FEATURES, IN_FEATURES)) / np.sqrt(IN_FEATURES)
    X = rng.standard_normal((SAMPLES, IN_FEATURES)) @ (np.eye(IN_FEATURES) + mixing)
    X_tilde = X if same_inputs else X + INPUT_NOISE * rng.standard_normal(X.shape)
    W = rng.standard_normal((OUT_FEATURES, IN_FEATURES))
    return Instance(W=W, X=X, X_tilde=X_tilde, grid=UniformGrid.fit(W, BITS, group_size=GROUP_SIZE))


def assert_same_grid_values(A, B, grid):
    """A and B (out × in, on the grid) agree entry by entry (i.e. have the same codes)."""
    tolerance = GRID_TOLERANCE * float(np.min(grid.scale))
    mismatched = np.abs(np.asarray(A) - np.asarray(B)) > tolerance
    assert not mismatched.any(), f"{int(mismatched.sum())} of {mismatched.size} entries round differently"


def grid_values_differ(A, B, grid) -> bool:
    """True when some entry of A and B is on a different grid point."""
    tolerance = GRID_TOLERANCE * float(np.min(grid.scale))
    return bool((np.abs(np.asarray(A) - np.asarray(B)) > tolerance).any())
