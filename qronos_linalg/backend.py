"""The thin backend seam: the few operations where NumPy and torch differ.

The array type the caller passes picks the backend: ``numpy.ndarray`` → :data:`NUMPY`,
``torch.Tensor`` → :data:`TORCH` (on the tensor's device, no copy to NumPy). Everything else in the
solvers is written once, with ``@``, ``*``, slicing and these methods.
"""

from __future__ import annotations

import numpy as np
from scipy.linalg import blas, lapack

from . import kernels

FLOAT_DTYPES = ("float32", "float64")
#: Floating dtypes that are computed in float32 and returned in their own dtype.
HALF_DTYPES = ("float16", "bfloat16")


def _is_torch(x) -> bool:
    return type(x).__module__.startswith("torch") and type(x).__name__ in ("Tensor", "Parameter")


def dtype_name(x) -> str:
    """'float32', 'float64', 'float16', ... for a NumPy array or torch tensor."""
    return str(x.dtype).replace("torch.", "")


def compute_dtype(x) -> str:
    """The one compute-dtype rule: float32 and float64 arrays are computed in their own dtype, everything
    else (float16, bfloat16, integers) in float32."""
    name = dtype_name(x)
    return name if name in FLOAT_DTYPES else "float32"


def result_dtype(x) -> str:
    """The dtype results are returned in: the input's own if floating, else the compute dtype (integer
    weights would truncate the dequantized values)."""
    name = dtype_name(x)
    return name if name in FLOAT_DTYPES + HALF_DTYPES else compute_dtype(x)


class NumpyBackend:
    name = "numpy"

    def asarray(self, x, dtype: str, like=None):
        if _is_torch(x):
            x = x.detach().cpu().float().numpy() if dtype_name(x) == "bfloat16" else x.detach().cpu().numpy()
        return np.asarray(x, dtype=dtype)

    def copy(self, x):
        return x.copy()

    def zeros(self, shape, dtype: str, like=None):
        return np.zeros(shape, dtype=dtype)

    def arange(self, n, like=None):
        return np.arange(n)

    def diag(self, A):
        return np.diagonal(A).copy()

    def trace(self, A) -> float:
        return float(np.trace(A))

    def take_columns(self, A, index):
        """``A[:, index]`` (np.take: ~10× faster than fancy indexing for wide gathers)."""
        return np.take(A, index, axis=1)

    def round_half_even(self, x):
        return np.rint(x)

    def clip(self, x, lo, hi):
        return np.clip(x, lo, hi)

    def abs(self, x):
        return np.abs(x)

    def amax(self, x, axis, keepdims=False):
        return np.max(x, axis=axis, keepdims=keepdims)

    def amin(self, x, axis, keepdims=False):
        return np.min(x, axis=axis, keepdims=keepdims)

    def sum(self, x, axis, keepdims=False):
        return np.sum(x, axis=axis, keepdims=keepdims)

    def sign(self, x):
        return np.sign(x)

    def any(self, x) -> bool:
        return bool(np.any(x))

    def largest_eigenvalue(self, H) -> float:
        """λ_max of the symmetric matrix H."""
        return float(np.linalg.eigvalsh(H)[-1])

    def maximum(self, x, y):
        return np.maximum(x, y)

    def minimum(self, x, y):
        return np.minimum(x, y)

    def where(self, cond, x, y):
        return np.where(cond, x, y)

    def all_finite(self, x) -> bool:
        return bool(np.isfinite(x).all())

    def argsort_descending(self, x):
        return np.argsort(-x, kind="stable")

    def inverse_permutation(self, perm):
        inv = np.empty_like(perm)
        inv[perm] = np.arange(perm.shape[0])
        return inv

    def triu(self, A, k=0):
        return np.triu(A, k)

    def tril(self, A, k=0):
        return np.tril(A, k)

    def to_codes(self, x):
        return x.astype(np.uint8)

    def to_float(self, codes, dtype: str):
        return codes.astype(dtype)

    def cast(self, x, dtype: str):
        return x.astype(dtype, copy=False)

    def to_scalar(self, x) -> float:
        return float(x)

    def lower_cholesky(self, A):
        """(L, ok): A = L Lᵀ, ok False when A is not positive definite (no exception).

        A must be symmetric and C-contiguous; it is overwritten (a C-ordered symmetric array read as
        Fortran is itself, so LAPACK factors it in place without a transposing copy)."""
        potrf = lapack.spotrf if A.dtype == np.float32 else lapack.dpotrf
        L, info = potrf(A.T, lower=1, clean=1, overwrite_a=1)
        return L, info == 0

    def lower_triangular_inverse(self, L):
        """L⁻¹ (C-contiguous) by a BLAS triangular solve (much faster than LAPACK trtri here).

        trsm with ``trans_a`` gives L⁻ᵀ in Fortran order, whose transpose is L⁻¹ in C order: no copy."""
        trsm = blas.strsm if L.dtype == np.float32 else blas.dtrsm
        identity = np.eye(L.shape[0], dtype=L.dtype).T
        L_inv_t = trsm(1.0, L, identity, side=0, lower=1, trans_a=1, diag=0, overwrite_b=1)
        return L_inv_t.T, bool(np.isfinite(np.diagonal(L_inv_t)).all())

    def upper_matmul(self, U, B):
        """U @ B for upper-triangular U by BLAS trmm (half the flops of a GEMM).

        A C-ordered array read as Fortran is its transpose, so (U B)ᵀ = Bᵀ Uᵀ is trmm with Uᵀ lower
        on the right."""
        trmm = blas.strmm if U.dtype == np.float32 else blas.dtrmm
        product_t = trmm(1.0, U.T, np.ascontiguousarray(B).T, side=1, lower=1, trans_a=0, diag=0, overwrite_b=0)
        return product_t.T

    def flip(self, A):
        """J A J with J the reversal permutation (C-contiguous copy; for a C-contiguous A this is the
        reversal of its flat buffer)."""
        return np.ascontiguousarray(A).reshape(-1)[::-1].reshape(A.shape).copy()

    def round_block(self, *args, **kwargs):
        """One block of the sequential rounding loop (:mod:`qronos_linalg.kernels`): the Numba kernel."""
        kernels.round_block_numpy(*args, **kwargs)

    def round_tile(self, *args):
        """One tile of YAQA's row-coupled rounding (:mod:`qronos_linalg.kernels`): the Numba kernel."""
        kernels.round_tile_numpy(*args)


class TorchBackend:
    name = "torch"

    def __init__(self):
        import torch

        self.torch = torch

    def _dtype(self, dtype: str):
        return getattr(self.torch, dtype)

    def asarray(self, x, dtype: str, like=None):
        device = like.device if like is not None else None
        if isinstance(x, np.ndarray) and not x.flags.writeable:
            x = x.copy()
        if _is_torch(x):
            x = x.detach()
        return self.torch.as_tensor(x, dtype=self._dtype(dtype), device=device)

    def copy(self, x):
        return x.clone()

    def zeros(self, shape, dtype: str, like=None):
        return self.torch.zeros(shape, dtype=self._dtype(dtype), device=like.device)

    def arange(self, n, like=None):
        return self.torch.arange(n, device=like.device)

    def diag(self, A):
        return self.torch.diagonal(A).clone()

    def trace(self, A) -> float:
        return float(self.torch.trace(A))

    def take_columns(self, A, index):
        """``A[:, index]``."""
        return A.index_select(1, index)

    def round_half_even(self, x):
        return self.torch.round(x)

    def clip(self, x, lo, hi):
        return self.torch.clamp(x, lo, hi)

    def abs(self, x):
        return self.torch.abs(x)

    def amax(self, x, axis, keepdims=False):
        return self.torch.amax(x, dim=axis, keepdim=keepdims)

    def amin(self, x, axis, keepdims=False):
        return self.torch.amin(x, dim=axis, keepdim=keepdims)

    def sum(self, x, axis, keepdims=False):
        return x.sum(dim=axis, keepdim=keepdims)

    def sign(self, x):
        return self.torch.sign(x)

    def any(self, x) -> bool:
        return bool(x.any())

    def largest_eigenvalue(self, H) -> float:
        """λ_max of the symmetric matrix H."""
        return float(self.torch.linalg.eigvalsh(H)[-1])

    def maximum(self, x, y):
        return self.torch.maximum(x, self.torch.as_tensor(y, dtype=x.dtype, device=x.device))

    def minimum(self, x, y):
        return self.torch.minimum(x, self.torch.as_tensor(y, dtype=x.dtype, device=x.device))

    def where(self, cond, x, y):
        return self.torch.where(cond, x, y)

    def all_finite(self, x) -> bool:
        return bool(self.torch.isfinite(x).all())

    def argsort_descending(self, x):
        return self.torch.argsort(-x, stable=True)

    def inverse_permutation(self, perm):
        return self.torch.argsort(perm)

    def triu(self, A, k=0):
        return self.torch.triu(A, k)

    def tril(self, A, k=0):
        return self.torch.tril(A, k)

    def to_codes(self, x):
        return x.to(self.torch.uint8)

    def to_float(self, codes, dtype: str):
        return codes.to(self._dtype(dtype))

    def cast(self, x, dtype: str):
        """x in ``dtype``, detached from autograd (solvers never differentiate)."""
        return x.detach().to(self._dtype(dtype))

    def to_scalar(self, x) -> float:
        return float(x)

    def lower_cholesky(self, A):
        L, info = self.torch.linalg.cholesky_ex(A)
        return L, int(info) == 0

    def lower_triangular_inverse(self, L):
        eye = self.torch.eye(L.shape[0], dtype=L.dtype, device=L.device)
        Linv = self.torch.linalg.solve_triangular(L, eye, upper=False)
        return Linv, bool(self.torch.isfinite(self.torch.diagonal(Linv)).all())

    def upper_matmul(self, U, B):
        return U @ B

    def flip(self, A):
        return self.torch.flip(A, dims=(0, 1)).contiguous()

    def round_block(self, V, *args, **kwargs):
        """One block of the sequential rounding loop (:mod:`qronos_linalg.kernels`): the Numba kernel on
        CPU tensors, the torch loop on other devices."""
        if V.device.type == "cpu":
            kernels.round_block_torch_cpu(V, *args, **kwargs)
        else:
            kernels.round_block_torch(V, *args, **kwargs)

    def round_tile(self, *args):
        """One tile of YAQA's row-coupled rounding (:mod:`qronos_linalg.kernels`): the Numba kernel, on the
        CPU for any device."""
        kernels.round_tile_torch(*args)


NUMPY = NumpyBackend()
_TORCH = None


def backend_of(x):
    """The backend for the array type of ``x``."""
    global _TORCH
    if _is_torch(x):
        if _TORCH is None:
            _TORCH = TorchBackend()
        return _TORCH
    if isinstance(x, np.ndarray):
        return NUMPY
    raise TypeError(f"expected a numpy.ndarray or torch.Tensor, got {type(x).__name__}")
