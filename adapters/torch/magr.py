"""MagR: weight magnitude reduction before rounding (Zhang et al., 2024, arXiv:2406.00800).

Per output channel (row w of W), with the layer's ``H = X̃ᵀX̃``:

    ŵ = argmin_v ½ (v − w)ᵀ H (v − w) + α · (λ_max² / ‖H‖₁) · ‖v‖_∞,

solved by proximal gradient with step ``η = 1/λ_max(H)``:
``v ← prox_{τ‖·‖∞}(v − η (v − w) H)`` with ``τ = α λ_max / ‖H‖₁`` and
``prox_{τ‖·‖∞}(u) = u − τ · Π_{‖·‖₁ ≤ 1}(u / τ)`` (Moreau decomposition). The penalty scaling follows the
Brevitas port of the authors' code, so α has the same meaning there (α = 0 gives ŵ = w).
"""

from __future__ import annotations

import torch

__all__ = ["DEFAULT_MAGR_STEPS", "project_rows_onto_l1_ball", "prox_linf", "magr", "magr_objective"]

#: Proximal-gradient iterations (the Brevitas default).
DEFAULT_MAGR_STEPS = 200


def project_rows_onto_l1_ball(U: torch.Tensor) -> torch.Tensor:
    """Euclidean projection of each row of U onto the unit ℓ1 ball (sort-based, Duchi et al. 2008)."""
    magnitudes = U.abs()
    inside = magnitudes.sum(dim=1, keepdim=True) <= 1
    sorted_desc, _ = torch.sort(magnitudes, dim=1, descending=True)
    excess = torch.cumsum(sorted_desc, dim=1) - 1
    ranks = torch.arange(1, U.shape[1] + 1, dtype=U.dtype, device=U.device)
    support = (sorted_desc - excess / ranks > 0).sum(dim=1, keepdim=True).clamp(min=1)
    threshold = excess.gather(1, support - 1) / support.to(U.dtype)
    projected = torch.sign(U) * torch.clamp(magnitudes - threshold, min=0)
    return torch.where(inside, U, projected)


def prox_linf(U: torch.Tensor, tau: float) -> torch.Tensor:
    """Row-wise ``argmin_v ½‖v − u‖² + τ‖v‖_∞ = u − τ Π_{B1}(u/τ)``."""
    return U - tau * project_rows_onto_l1_ball(U / tau)


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
    for _ in range(steps):
        V = prox_linf(V - step * ((V - W) @ H), tau)
    return V
