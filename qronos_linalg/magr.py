"""MagR: weight magnitude reduction before rounding (Zhang et al., 2024, arXiv:2406.00800).

Per output channel (row w of W), with the layer's ``H = X̃ᵀX̃``:

    ŵ = argmin_v ½ (v − w)ᵀ H (v − w) + α · (λ_max² / ‖H‖₁) · ‖v‖_∞,

solved by proximal gradient with step ``η = 1/λ_max(H)``:
``v ← prox_{τ‖·‖∞}(v − η (v − w) H)`` with ``τ = α λ_max / ‖H‖₁``; the prox clips u to ``[−t, t]`` with
the clipped mass ``Σ max(|uᵢ| − t, 0) = τ`` (see :func:`prox_linf`). The penalty scaling follows the
Brevitas port of the authors' code, so α has the same meaning there (α = 0 gives ŵ = w). Pure linear
algebra on W and H: NumPy arrays and torch tensors alike, in W's dtype.
"""

from __future__ import annotations

import math

from .backend import backend_of, dtype_name

__all__ = ["DEFAULT_MAGR_STEPS", "check_magr_alpha", "linf_clip_level", "prox_linf", "magr", "magr_objective"]

#: Proximal-gradient iterations (the Brevitas default).
DEFAULT_MAGR_STEPS = 200


def check_magr_alpha(alpha) -> None:
    """ValueError unless ``alpha`` is None (no MagR) or a finite number > 0."""
    if alpha is not None and (isinstance(alpha, bool) or not isinstance(alpha, (int, float))
                              or not math.isfinite(alpha) or not alpha > 0):
        raise ValueError(f"magr_alpha must be None or a finite number > 0, got {alpha!r}")


def prox_linf(U, tau: float):
    """Row-wise ``argmin_v ½‖v − u‖² + τ‖v‖_∞``: u clipped to ``[−t, t]`` (see :func:`linf_clip_level`)."""
    xp = backend_of(U)
    return _prox_linf_from(U, tau, xp.zeros((U.shape[0], 1), dtype_name(U), like=U))[0]


def _prox_linf_from(U, tau: float, start):
    """(prox, clip level) with the level's Newton iteration started at ``start``."""
    xp = backend_of(U)
    magnitudes = xp.abs(U)
    level = linf_clip_level(magnitudes, tau, start)
    return xp.sign(U) * xp.minimum(magnitudes, level), level


def linf_clip_level(magnitudes, tau: float, start):
    """Per row, the level t at which ``prox_{τ‖·‖∞}`` clips: ``t = 0`` where ``‖u‖₁ ≤ τ``, else the root of
    ``f(t) = Σᵢ max(|uᵢ| − t, 0) − τ`` (the clipped mass is τ; by Moreau this prox is ``u − τ Π_{‖·‖₁≤1}(u/τ)``).

    f is convex, piecewise linear and decreasing, so a Newton step
    ``t ← (Σ_{|uᵢ|>t} |uᵢ| − τ) / #{|uᵢ| > t}`` from *any* ``start`` lands at or below the root (the tangent
    lies under f); from there Newton's steps (Michelot's iteration) rise monotonically and stop exactly
    once the set ``|uᵢ| > t`` no longer changes. A start near the root (the previous proximal-gradient
    step's level) needs few passes; none of them sorts.
    """

    xp = backend_of(magnitudes)

    def newton_step(level):
        above = magnitudes > level
        count = xp.maximum(xp.sum(above, 1, keepdims=True), 1)
        return (xp.sum(xp.where(above, magnitudes, 0.0), 1, keepdims=True) - tau) / count

    level = xp.maximum(newton_step(start), 0.0)
    while True:
        newton = newton_step(level)
        if not xp.any(newton > level):
            return level
        level = xp.maximum(level, newton)


def _penalty_scale(H) -> tuple[float, float]:
    """(λ_max(H), ‖H‖₁) with ‖H‖₁ the largest absolute column sum."""
    xp = backend_of(H)
    return xp.largest_eigenvalue(H), xp.to_scalar(xp.sum(xp.abs(H), 0).max())


def magr_objective(V, W, H, alpha: float):
    """Per-row objective ``½ (v − w)ᵀ H (v − w) + α (λ_max²/‖H‖₁) ‖v‖_∞``."""
    xp = backend_of(V)
    largest_eigenvalue, one_norm = _penalty_scale(H)
    D = V - W
    return 0.5 * xp.sum((D @ H) * D, 1) + alpha * largest_eigenvalue**2 / one_norm * xp.amax(xp.abs(V), 1)


def magr(W, H, alpha: float, *, steps: int = DEFAULT_MAGR_STEPS):
    """The MagR weights ŵ for every row of W (out × in), by ``steps`` proximal-gradient iterations."""
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not alpha >= 0:
        raise ValueError(f"MagR alpha must be >= 0, got {alpha!r}")
    if tuple(H.shape) != (W.shape[1], W.shape[1]):
        raise ValueError(f"MagR: H must be {W.shape[1]} × {W.shape[1]} for W of shape {tuple(W.shape)}, got {tuple(H.shape)}")
    xp = backend_of(W)
    H = xp.asarray(H, dtype_name(W), like=W)
    largest_eigenvalue, one_norm = _penalty_scale(H)
    if alpha == 0 or largest_eigenvalue <= 0:
        return xp.copy(W)
    step = 1.0 / largest_eigenvalue
    tau = alpha * largest_eigenvalue / one_norm
    V = xp.copy(W)
    level = xp.zeros((W.shape[0], 1), dtype_name(W), like=W)
    for _ in range(steps):
        V, level = _prox_linf_from(V - step * ((V - W) @ H), tau, level)
    return V
