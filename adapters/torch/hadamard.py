"""Hadamard matrices of order ``m · 2^k`` and the randomized Hadamard transform.

A Hadamard matrix ``H_n`` has entries ±1 and ``H_n H_nᵀ = n I``. Orders built here:

- Sylvester ``H_{2n} = [[H_n, H_n], [H_n, −H_n]]`` (powers of two, applied by the fast
  Walsh–Hadamard transform);
- Paley I, order ``q + 1`` for a prime ``q ≡ 3 (mod 4)`` (12, 20, 24, 32, 44, …);
- Paley II, order ``2(q + 1)`` for a prime ``q ≡ 1 (mod 4)`` (12, 28, 36, 60, …);
- Kronecker products ``H_m ⊗ H_{2^k}``: SmolLM2's 576 = 36·16 and 1536 = 12·128.

The randomized Hadamard transform is the orthogonal matrix ``R = diag(s) · H_n / √n`` with random
signs ``s`` drawn from a fixed seed, applied as ``x ↦ x R``.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch

__all__ = [
    "hadamard_factorization",
    "hadamard_matrix",
    "fast_walsh_hadamard",
    "RandomizedHadamard",
]


def _is_prime(q: int) -> bool:
    if q < 2:
        return False
    return all(q % d for d in range(2, math.isqrt(q) + 1))


def _jacobsthal(q: int) -> np.ndarray:
    """Jacobsthal matrix ``Q[i, j] = χ(j − i)`` with χ the quadratic character modulo the prime q."""
    squares = {(x * x) % q for x in range(1, q)}
    chi = np.array([0] + [1 if r in squares else -1 for r in range(1, q)], dtype=np.int64)
    idx = np.arange(q)
    return chi[(idx[None, :] - idx[:, None]) % q]


def _paley_one(q: int) -> np.ndarray:
    """Order q + 1, q ≡ 3 (mod 4): ``H = I + [[0, 1ᵀ], [−1, Q]]``."""
    n = q + 1
    S = np.zeros((n, n), dtype=np.int64)
    S[0, 1:] = 1
    S[1:, 0] = -1
    S[1:, 1:] = _jacobsthal(q)
    return np.eye(n, dtype=np.int64) + S


def _paley_two(q: int) -> np.ndarray:
    """Order 2(q + 1), q ≡ 1 (mod 4): ``C = [[0, 1ᵀ], [1, Q]]`` with 0 → [[1, −1], [−1, −1]] and
    ±1 → ±[[1, 1], [1, −1]]."""
    n = q + 1
    C = np.zeros((n, n), dtype=np.int64)
    C[0, 1:] = 1
    C[1:, 0] = 1
    C[1:, 1:] = _jacobsthal(q)
    zero_block = np.array([[1, -1], [-1, -1]], dtype=np.int64)
    sign_block = np.array([[1, 1], [1, -1]], dtype=np.int64)
    return np.kron(C, sign_block) + np.kron((C == 0).astype(np.int64), zero_block)


@lru_cache(maxsize=None)
def _small_hadamard(m: int) -> np.ndarray | None:
    """A Hadamard matrix of order m by Paley I or II (m = 1 gives [[1]]), or None."""
    if m == 1:
        return np.ones((1, 1), dtype=np.int64)
    if _is_prime(m - 1) and (m - 1) % 4 == 3:
        return _paley_one(m - 1)
    if m % 2 == 0 and _is_prime(m // 2 - 1) and (m // 2 - 1) % 4 == 1:
        return _paley_two(m // 2 - 1)
    return None


def hadamard_factorization(n: int) -> tuple[int, int]:
    """``(m, p)`` with ``n = m · p``, p a power of two and a Paley matrix of order m (smallest m)."""
    if not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"Hadamard size must be a positive integer, got {n!r}")
    p = n & -n  # largest power of two dividing n
    while p >= 1:
        m = n // p
        if _small_hadamard(m) is not None:
            return m, p
        p //= 2
    raise ValueError(
        f"no Hadamard matrix of order {n} can be built here: need n = m·2^k with m = 1, "
        f"m − 1 a prime ≡ 3 (mod 4), or m/2 − 1 a prime ≡ 1 (mod 4)"
    )


def hadamard_matrix(n: int) -> np.ndarray:
    """The (unnormalized, ±1) Hadamard matrix ``H_m ⊗ H_p`` of order n = m·p used by this module."""
    m, p = hadamard_factorization(n)
    sylvester = np.ones((1, 1), dtype=np.int64)
    while sylvester.shape[0] < p:
        sylvester = np.block([[sylvester, sylvester], [sylvester, -sylvester]])
    return np.kron(_small_hadamard(m), sylvester)


def fast_walsh_hadamard(x: torch.Tensor) -> torch.Tensor:
    """``x · H_p`` along the last axis (Sylvester H_p, p a power of two), in p·log2(p) additions."""
    p = x.shape[-1]
    if p & (p - 1):
        raise ValueError(f"fast Walsh–Hadamard transform needs a power-of-two length, got {p}")
    lead = x.shape[:-1]
    h = 1
    while h < p:
        pairs = x.reshape(*lead, p // (2 * h), 2, h)
        x = torch.cat((pairs[..., 0, :] + pairs[..., 1, :], pairs[..., 0, :] - pairs[..., 1, :]), dim=-1)
        h *= 2
    return x.reshape(*lead, p)


class RandomizedHadamard:
    """Orthogonal ``R = diag(s) · (H_m ⊗ H_p) / √n`` with signs ``s`` from ``seed``; ``apply(x) = x R``.

    ``x R`` is computed as ``H_mᵀ · (x_diag(s) reshaped m × p) · H_p / √n`` with the fast transform on
    the power-of-two factor.
    """

    def __init__(self, size: int, seed: int = 0):
        self.size = int(size)
        self.seed = int(seed)
        self.small_order, self.power_order = hadamard_factorization(self.size)
        generator = np.random.default_rng(self.seed)
        self._signs = torch.from_numpy(generator.choice(np.array([-1.0, 1.0]), size=self.size))
        self._small = torch.from_numpy(_small_hadamard(self.small_order).astype(np.float64))

    def to_spec(self) -> dict:
        return {"size": self.size, "seed": self.seed}

    @classmethod
    def from_spec(cls, spec: dict) -> "RandomizedHadamard":
        return cls(spec["size"], spec["seed"])

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """``x R`` along the last axis (any leading dims, x's dtype and device)."""
        if x.shape[-1] != self.size:
            raise ValueError(f"randomized Hadamard of size {self.size} applied to last axis of size {x.shape[-1]}")
        lead = x.shape[:-1]
        signed = x * self._signs.to(dtype=x.dtype, device=x.device)
        blocks = fast_walsh_hadamard(signed.reshape(*lead, self.small_order, self.power_order))
        small = self._small.to(dtype=x.dtype, device=x.device)
        mixed = torch.einsum("ac,...ad->...cd", small, blocks)
        return mixed.reshape(*lead, self.size) / math.sqrt(self.size)

    def matrix(self, dtype=torch.float64) -> torch.Tensor:
        """The dense n × n matrix R."""
        return self.apply(torch.eye(self.size, dtype=dtype))
