"""Random, well-conditioned layer problems shared by the solver tests (seeded)."""

from dataclasses import dataclass

import numpy as np
from hypothesis import strategies as st

from qronos_linalg import UniformGrid


@dataclass
class Problem:
    W: np.ndarray
    X: np.ndarray
    X_tilde: np.ndarray
    grid: UniformGrid

    @property
    def H(self):
        return self.X_tilde.T @ self.X_tilde

    @property
    def G(self):
        return self.X_tilde.T @ self.X

    @property
    def H_float(self):
        return self.X.T @ self.X

    def augmented(self, damp):
        """([X; √λ E], [X̃; √λ E]) with λ = damp · mean(diag H), E one row e_jᵀ per live column."""
        lam = damp * np.mean(np.diag(self.H))
        live = np.flatnonzero(np.diag(self.H) > 0)
        E = np.sqrt(lam) * np.eye(self.W.shape[1])[live]
        return np.vstack([self.X, E]), np.vstack([self.X_tilde, E])


def make_problem(seed, *, out=4, n=10, samples=None, bits=3, symmetric=False, group_size=None,
                 noise=0.3, dead=(), on_grid=False):
    """W ~ N(0,1); X correlated Gaussian with samples ≥ 3n; X̃ = X + noise·N(0,1) (noise=0: X̃ = X)."""
    rng = np.random.default_rng(seed)
    samples = samples or 3 * n + 5
    mixing = np.eye(n) + 0.3 * rng.standard_normal((n, n))
    X = rng.standard_normal((samples, n)) @ mixing
    X_tilde = X + noise * rng.standard_normal((samples, n)) if noise else X.copy()
    for col in dead:
        X_tilde[:, col] = 0
        if not noise:
            X[:, col] = 0
    W = rng.standard_normal((out, n))
    grid = UniformGrid.fit(W, bits, symmetric=symmetric, group_size=group_size)
    if on_grid:
        W = grid.fake_quantize(W)
    return Problem(W, X, X_tilde, grid)


problem_options = st.fixed_dictionaries(
    {
        "seed": st.integers(0, 2**31 - 1),
        "out": st.integers(1, 5),
        "n": st.integers(2, 14),
        "bits": st.integers(2, 8),
        "symmetric": st.booleans(),
        "group_size": st.one_of(st.none(), st.integers(2, 6)),
    }
)
