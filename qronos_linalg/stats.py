"""Layer statistics accumulated over calibration batches, without keeping X."""

from __future__ import annotations

from .backend import FLOAT_DTYPES, backend_of


class LayerStats:
    """Running sums ``H = X̃ᵀX̃``, ``G = X̃ᵀX`` (``G[i, j] = ⟨X̃_i, X_j⟩``) and ``H_float = XᵀX``.

    ``X`` is the layer's input in the float model and ``X̃`` the same input in the partially quantized
    model, both (samples, in_features); leading dimensions are flattened, so a (batch, seq, in) tensor
    is fine. The first ``update`` fixes the backend (NumPy or torch, on that tensor's device).
    ``name`` is used in error messages (e.g. the layer's name).
    """

    def __init__(self, in_features: int, *, dtype: str = "float64", name: str | None = None):
        if not isinstance(in_features, int) or in_features < 1:
            raise ValueError(f"in_features must be a positive integer, got {in_features!r}")
        dtype = str(dtype).replace("torch.", "").replace("<class 'numpy.", "").rstrip("'>")
        if dtype not in FLOAT_DTYPES:
            raise ValueError(f"dtype must be one of {FLOAT_DTYPES}, got {dtype!r}")
        self.in_features = in_features
        self.dtype = dtype
        self.name = name
        self.count = 0
        self._H = self._G = self._H_float = None

    def _where(self) -> str:
        return f" for layer {self.name!r}" if self.name else ""

    def _as_samples(self, X, label: str):
        xp = backend_of(X)
        if len(X.shape) < 2 or X.shape[-1] != self.in_features:
            raise ValueError(
                f"{label} must have shape (..., {self.in_features}){self._where()}, got {tuple(X.shape)}"
            )
        return xp.cast(X.reshape(-1, self.in_features), self.dtype)

    def _check_finite(self, gram, label: str) -> None:
        """``diag(XᵀX)_i = Σ_s X_si²`` is finite iff column i of X is (short of squares overflowing), so the
        Gram diagonal checks X at O(in_features) cost instead of a pass over the samples."""
        xp = backend_of(gram)
        if not xp.all_finite(xp.diag(gram)):
            raise ValueError(f"{label} contains non-finite values (NaN or inf, or so large that their squares "
                             f"overflow {self.dtype}){self._where()}")

    def update(self, X, X_tilde=None) -> None:
        """Add a batch: ``H += X̃ᵀX̃``, ``G += X̃ᵀX``, ``H_float += XᵀX`` (``X_tilde`` defaults to ``X``)."""
        xp = backend_of(X)
        if X_tilde is not None and tuple(X_tilde.shape) != tuple(X.shape):
            raise ValueError(
                f"X_tilde must have the same shape as X{self._where()}: got {tuple(X_tilde.shape)} "
                f"and {tuple(X.shape)}"
            )
        X = self._as_samples(X, "X")
        if X_tilde is None:
            Xt = X
        else:
            Xt = self._as_samples(X_tilde, "X_tilde")
            if type(Xt) is not type(X):
                raise TypeError(f"X and X_tilde must be the same array type{self._where()}")
        if self._H is not None and backend_of(self._H) is not xp:
            raise TypeError(f"LayerStats{self._where()} was started with {backend_of(self._H).name} arrays")
        float_gram = X.T @ X
        self._check_finite(float_gram, "X")
        if X_tilde is None:
            tilde_gram = cross_gram = float_gram
        else:
            tilde_gram = Xt.T @ Xt
            self._check_finite(tilde_gram, "X_tilde")
            cross_gram = Xt.T @ X
        if self._H is None:
            n = self.in_features
            self._H = xp.zeros((n, n), self.dtype, like=X)
            self._G = xp.zeros((n, n), self.dtype, like=X)
            self._H_float = xp.zeros((n, n), self.dtype, like=X)
        self._H_float += float_gram
        self._H += tilde_gram
        self._G += cross_gram
        self.count += X.shape[0]

    def _require(self, M):
        if M is None:
            raise ValueError(f"LayerStats{self._where()} has no samples yet: call update(X, X_tilde) first")
        return M

    @property
    def H(self):
        """``X̃ᵀX̃`` (in × in)."""
        return self._require(self._H)

    @property
    def G(self):
        """``X̃ᵀX`` (in × in), ``G[i, j] = ⟨X̃_i, X_j⟩``."""
        return self._require(self._G)

    @property
    def H_float(self):
        """``XᵀX`` (in × in), needed only to evaluate the objective."""
        return self._require(self._H_float)
