"""MagR: weight magnitude reduction before rounding (Zhang et al., 2024, arXiv:2406.00800).

Per output channel (row w of W), with the layer's ``H = X̃ᵀX̃``:

    ŵ = argmin_v ½ (v − w)ᵀ H (v − w) + α · (λ_max² / ‖H‖₁) · ‖v‖_∞,

solved by proximal gradient with step ``η = 1/λ_max(H)``:
``v ← prox_{τ‖·‖∞}(v − η (v − w) H)`` with ``τ = α λ_max / ‖H‖₁``; the prox clips u to ``[−t, t]`` with
the clipped mass ``Σ max(|uᵢ| − t, 0) = τ`` (see :func:`prox_linf`). The penalty scaling follows the
Brevitas port of the authors' code, so α has the same meaning there (α = 0 gives ŵ = w).
"""

from __future__ import annotations

import torch

__all__ = ["DEFAULT_MAGR_STEPS", "linf_clip_level", "prox_linf", "magr", "magr_objective"]

#: Proximal-gradient iterations (the Brevitas default).
DEFAULT_MAGR_STEPS = 200


def prox_linf(U: torch.Tensor, tau: float) -> torch.Tensor:
    """Row-wise ``argmin_v ½‖v − u‖² + τ‖v‖_∞``: u clipped to ``[−t, t]`` (see :func:`linf_clip_level`)."""
    return _prox_linf_from(U, tau, torch.zeros(U.shape[0], 1, dtype=U.dtype, device=U.device))[0]


def _prox_linf_from(U: torch.Tensor, tau: float, start: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(prox, clip level) with the level's Newton iteration started at ``start``."""
    magnitudes = U.abs()
    level = linf_clip_level(magnitudes, tau, start)
    return torch.sign(U) * torch.minimum(magnitudes, level), level


def linf_clip_level(magnitudes: torch.Tensor, tau: float, start: torch.Tensor) -> torch.Tensor:
    """Per row, the level t at which ``prox_{τ‖·‖∞}`` clips: ``t = 0`` where ``‖u‖₁ ≤ τ``, else the root of
    ``f(t) = Σᵢ max(|uᵢ| − t, 0) − τ`` (the clipped mass is τ; by Moreau this prox is ``u − τ Π_{‖·‖₁≤1}(u/τ)``).

    f is convex, piecewise linear and decreasing, so a Newton step
    ``t ← (Σ_{|uᵢ|>t} |uᵢ| − τ) / #{|uᵢ| > t}`` from *any* ``start`` lands at or below the root (the tangent
    lies under f); from there Newton's steps (Michelot's iteration) rise monotonically and stop exactly
    once the set ``|uᵢ| > t`` no longer changes. A start near the root (the previous proximal-gradient
    step's level) needs few passes; none of them sorts.
    """

    def newton_step(level: torch.Tensor) -> torch.Tensor:
        above = magnitudes > level
        count = above.sum(dim=1, keepdim=True).clamp(min=1)
        return (torch.where(above, magnitudes, 0).sum(dim=1, keepdim=True) - tau) / count

    level = newton_step(start).clamp(min=0)
    while True:
        newton = newton_step(level)
        if not bool((newton > level).any()):
            return level
        level = torch.maximum(level, newton)


def _penalty_scale(H: torch.Tensor) -> tuple[float, float]:
    """(λ_max(H), ‖H‖₁) with ‖H‖₁ the largest absolute column sum."""
    largest_eigenvalue = float(torch.linalg.eigvalsh(H)[-1])
    one_norm = float(H.abs().sum(dim=0).max())
    return largest_eigenvalue, one_norm


def magr_objective(V: torch.Tensor, W: torch.Tensor, H: torch.Tensor, alpha: float) -> torch.Tensor:
    """Per-row objective ``½ (v − w)ᵀ H (v − w) + α (λ_max²/‖H‖₁) ‖v‖_∞``."""
    largest_eigenvalue, one_norm = _penalty_scale(H)
    D = V - W
    return 0.5 * ((D @ H) * D).sum(dim=1) + alpha * largest_eigenvalue**2 / one_norm * V.abs().amax(dim=1)


def magr(W: torch.Tensor, H: torch.Tensor, alpha: float, *, steps: int = DEFAULT_MAGR_STEPS) -> torch.Tensor:
    """The MagR weights ŵ for every row of W (out × in), by ``steps`` proximal-gradient iterations."""
    if not alpha >= 0:
        raise ValueError(f"MagR alpha must be >= 0, got {alpha!r}")
    if tuple(H.shape) != (W.shape[1], W.shape[1]):
        raise ValueError(f"MagR: H must be {W.shape[1]} × {W.shape[1]} for W of shape {tuple(W.shape)}, got {tuple(H.shape)}")
    H = H.to(W.dtype)
    largest_eigenvalue, one_norm = _penalty_scale(H)
    if alpha == 0 or largest_eigenvalue <= 0:
        return W.clone()
    step = 1.0 / largest_eigenvalue
    tau = alpha * largest_eigenvalue / one_norm
    V = W.clone()
    level = torch.zeros(W.shape[0], 1, dtype=W.dtype, device=W.device)
    for _ in range(steps):
        V, level = _prox_linf_from(V - step * ((V - W) @ H), tau, level)
    return V
