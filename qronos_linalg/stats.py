"""Layer statistics accumulated over calibration batches, without keeping X."""

from __future__ import annotations

import numpy as np

from .backend import FLOAT_DTYPES, backend_of

#: The statistics a LayerStats can accumulate.
STATISTIC_NAMES = ("H", "G", "H_float")
#: Rows per product when the products run in float32: each chunk's product is exact up to float32 rounding
#: over at most this many terms, and the chunks are summed in the running sums' dtype (float64).
PRODUCT_CHUNK_ROWS = 2048


class LayerStats:
    """Running sums ``H = X̃ᵀX̃``, ``G = X̃ᵀX`` (``G[i, j] = ⟨X̃_i, X_j⟩``) and ``H_float = XᵀX``.

    ``X`` is the layer's input in the float model and ``X̃`` the same input in the partially quantized
    model, both (samples, in_features); leading dimensions are flattened, so a (batch, seq, in) tensor
    is fine. The first ``update`` fixes the backend (NumPy or torch, on that tensor's device).
    ``name`` is used in error messages (e.g. the layer's name).

    ``statistics``: which sums to keep (a solver that needs only H, like OPTQ, never pays for G or
    H_float; ``X`` may then be omitted). ``dtype``: the running sums' dtype. ``product_dtype``: the dtype
    of each batch's products (default: ``dtype``); with ``"float32"`` every product covers at most
    :data:`PRODUCT_CHUNK_ROWS` rows and is added to the ``dtype`` sums, about twice as fast as float64
    products. On CPU, ``X̃ᵀX̃`` and ``XᵀX`` use BLAS ``syrk`` (half the flops of a general product), for
    torch tensors through a zero-copy NumPy view.
    """

    def __init__(self, in_features: int, *, dtype: str = "float64", name: str | None = None,
                 statistics=STATISTIC_NAMES, product_dtype: str | None = None):
        if not isinstance(in_features, int) or in_features < 1:
            raise ValueError(f"in_features must be a positive integer, got {in_features!r}")
        dtype = _dtype_name(dtype)
        product_dtype = dtype if product_dtype is None else _dtype_name(product_dtype)
        for label, value in (("dtype", dtype), ("product_dtype", product_dtype)):
            if value not in FLOAT_DTYPES:
                raise ValueError(f"{label} must be one of {FLOAT_DTYPES}, got {value!r}")
        statistics = tuple(statistics)
        unknown = sorted(set(statistics) - set(STATISTIC_NAMES))
        if unknown or not statistics:
            raise ValueError(f"statistics must be a non-empty subset of {STATISTIC_NAMES}, got {statistics!r}")
        self.in_features = in_features
        self.dtype = dtype
        self.product_dtype = product_dtype
        self.statistics = tuple(name for name in STATISTIC_NAMES if name in statistics)
        self.name = name
        self.count = 0
        self._sums = {}

    def _where(self) -> str:
        return f" for layer {self.name!r}" if self.name else ""

    def _as_samples(self, X, label: str):
        xp = backend_of(X)
        if len(X.shape) < 2 or X.shape[-1] != self.in_features:
            raise ValueError(
                f"{label} must have shape (..., {self.in_features}){self._where()}, got {tuple(X.shape)}"
            )
        return xp.cast(X.reshape(-1, self.in_features), self.product_dtype)

    def _check_finite(self, gram, label: str) -> None:
        """``diag(XᵀX)_i = Σ_s X_si²`` is finite iff column i of X is (short of squares overflowing), so the
        Gram diagonal checks X at O(in_features) cost instead of a pass over the samples."""
        xp = backend_of(gram)
        if not xp.all_finite(xp.diag(gram)):
            raise ValueError(f"{label} contains non-finite values (NaN or inf, or so large that their squares "
                             f"overflow {self.product_dtype}){self._where()}")

    def update(self, X, X_tilde=None) -> None:
        """Add a batch: ``H += X̃ᵀX̃``, ``G += X̃ᵀX``, ``H_float += XᵀX`` (those kept; ``X_tilde`` defaults to
        ``X``; ``X`` may be None when only H is kept)."""
        needs_float = any(name in self.statistics for name in ("G", "H_float"))
        if X is None and (needs_float or X_tilde is None):
            raise ValueError(f"X is required{self._where()}: this LayerStats keeps {self.statistics}")
        first = X if X is not None else X_tilde
        xp = backend_of(first)
        if X is not None and X_tilde is not None and tuple(X_tilde.shape) != tuple(X.shape):
            raise ValueError(
                f"X_tilde must have the same shape as X{self._where()}: got {tuple(X_tilde.shape)} "
                f"and {tuple(X.shape)}"
            )
        X = None if X is None else self._as_samples(X, "X")
        Xt = X if X_tilde is None else self._as_samples(X_tilde, "X_tilde")
        if X is not None and type(Xt) is not type(X):
            raise TypeError(f"X and X_tilde must be the same array type{self._where()}")
        if self._sums and backend_of(next(iter(self._sums.values()))) is not xp:
            raise TypeError(f"LayerStats{self._where()} was started with "
                            f"{backend_of(next(iter(self._sums.values()))).name} arrays")
        same = X_tilde is None
        products = {}
        if "H_float" in self.statistics or ("G" in self.statistics and same):
            products["H_float"] = self._gram(X, X, "X")
        if "H" in self.statistics:
            products["H"] = products["H_float"] if same and "H_float" in products else self._gram(Xt, Xt, "X_tilde")
        if "G" in self.statistics:
            products["G"] = products["H_float"] if same else self._gram(Xt, X, None)
        for name in self.statistics:
            if name not in self._sums:
                self._sums[name] = xp.zeros((self.in_features, self.in_features), self.dtype, like=first)
            self._sums[name] += products[name]
        self.count += Xt.shape[0]

    def _gram(self, A, B, check: str | None):
        """``Aᵀ B`` summed over row chunks, in the sums' dtype; ``check``: the label whose finiteness the
        diagonal of ``AᵀA`` tests."""
        xp = backend_of(A)
        rows = A.shape[0]
        step = PRODUCT_CHUNK_ROWS if self.product_dtype != self.dtype else max(rows, 1)
        total = None
        for start in range(0, rows, step):
            product = _transposed_product(A[start : start + step], B[start : start + step], A is B)
            product = xp.cast(product, self.dtype)
            total = product if total is None else total + product
        if total is None:
            total = xp.zeros((self.in_features, self.in_features), self.dtype, like=A)
        if check is not None:
            self._check_finite(total, check)
        return total

    def _require(self, name: str):
        if name not in self.statistics:
            raise ValueError(f"LayerStats{self._where()} does not keep {name} (statistics={self.statistics})")
        if name not in self._sums:
            raise ValueError(f"LayerStats{self._where()} has no samples yet: call update(X, X_tilde) first")
        return self._sums[name]

    @property
    def sums(self) -> dict:
        """The running sums kept so far, ``{name: array}`` (the arrays themselves: a data-parallel run reduces
        them in place across processes, then sets ``count`` to the total samples)."""
        return self._sums

    @property
    def H(self):
        """``X̃ᵀX̃`` (in × in)."""
        return self._require("H")

    @property
    def G(self):
        """``X̃ᵀX`` (in × in), ``G[i, j] = ⟨X̃_i, X_j⟩``."""
        return self._require("G")

    @property
    def H_float(self):
        """``XᵀX`` (in × in), needed only to evaluate the objective."""
        return self._require("H_float")


def _dtype_name(dtype) -> str:
    return str(dtype).replace("torch.", "").replace("<class 'numpy.", "").rstrip("'>")


def _transposed_product(A, B, same: bool):
    """``Aᵀ B``. For CPU arrays with ``same`` (A is B) through NumPy, whose matmul recognises ``Aᵀ A`` and
    calls BLAS syrk; torch CPU tensors go through a zero-copy NumPy view for that."""
    if same and not isinstance(A, np.ndarray) and A.device.type == "cpu":
        import torch

        view = A.contiguous().numpy()
        return torch.from_numpy(view.T @ view)
    return A.T @ B
