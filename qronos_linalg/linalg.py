"""Damping, dead columns and the upper Cholesky factor of the inverse Hessian."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

from .backend import dtype_name

#: Damping is multiplied by this factor each time the damped H is not positive definite.
DAMP_ESCALATION_FACTOR = 10.0
#: First relative damping tried when the caller asked for ``damp=0`` and H is singular.
DAMP_ESCALATION_START = 1e-8
#: Largest relative damping escalation may reach (λ = mean(diag H)); past it the solve fails.
MAX_RELATIVE_DAMP = 1.0
#: What damping is relative to: ``"relative"``, λ = damp · mean(diag H) (GPTQ's convention), or
#: ``"spectral"``, λ = damp · σ_max(H) (Brevitas' and the Qronos authors' convention).
DAMP_MODES = ("relative", "spectral")
#: Power-iteration steps for σ_max(H) (PSD H; the estimate only sets the damping's scale).
SPECTRAL_ITERATIONS = 30


class NotPositiveDefiniteError(ValueError):
    """H + λI is not positive definite even at the damping cap."""


class DampingEscalationWarning(UserWarning):
    """The requested damping was not enough; a larger one was used (see ``QuantResult.damp``)."""


@dataclass
class DampedSystem:
    """H and G with dead columns removed and damping applied.

    ``H_damped = H + λ·diag(live)`` (dead rows/columns replaced by ``e_t``),
    ``G_damped = G + λ·diag(live)`` (dead rows zeroed), ``U`` the upper Cholesky factor of
    ``H_damped⁻¹`` (``H_damped⁻¹ = UᵀU``), ``damp`` the damping coefficient used, ``lam = damp · scale``
    with ``scale`` = mean(diag H) (``mode`` "relative") or σ_max(H) ("spectral").
    """

    H: object
    G: object
    U: object
    dead: object
    damp: float
    lam: float
    mode: str = "relative"


def upper_cholesky_of_inverse(H, xp):
    """(U, ok) with ``H⁻¹ = UᵀU``, U upper triangular with positive diagonal.

    With J the reversal permutation and ``J H J = L̂ L̂ᵀ``, ``U = J L̂⁻¹ J``: one Cholesky and one
    triangular inverse (proofs/cholesky_form.md).
    """
    L_flipped, ok = xp.lower_cholesky(xp.flip(H))
    if not ok:
        return None, False
    L_inv, ok = xp.lower_triangular_inverse(L_flipped)
    if not ok:
        return None, False
    return xp.flip(L_inv), True


def mark_dead_columns(H, G, xp):
    """Copies of H, G with each dead column t (H_tt = 0) decoupled: H[t,:] = H[:,t] = e_t, G[t,:] = 0."""
    dead = xp.diag(H) == 0
    H = xp.copy(H)
    H[dead, :] = 0
    H[:, dead] = 0
    H[dead, dead] = 1
    if G is not None:
        G = xp.copy(G)
        G[dead, :] = 0
    return H, G, dead


def largest_eigenvalue(H, xp, iterations: int = SPECTRAL_ITERATIONS) -> float:
    """σ_max of the symmetric PSD H by power iteration from the all-ones vector (deterministic)."""
    v = xp.zeros((H.shape[0], 1), "float64", like=H) + 1.0
    v = xp.cast(v, dtype_name(H))
    estimate = 0.0
    for _ in range(iterations):
        w = H @ v
        norm = xp.to_scalar((w * w).sum()) ** 0.5
        if norm == 0:
            return 0.0
        estimate = xp.to_scalar((v * w).sum()) / xp.to_scalar((v * v).sum())
        v = w / norm
    return estimate


def damping_scale(H, mode: str, xp) -> float:
    """What the damping coefficient multiplies: mean(diag H) or σ_max(H) (:data:`DAMP_MODES`)."""
    if mode not in DAMP_MODES:
        raise ValueError(f"damp_mode must be one of {DAMP_MODES}, got {mode!r}")
    return xp.to_scalar(xp.diag(H).mean()) if mode == "relative" else largest_eigenvalue(H, xp)


def damped_system(H, G, damp: float, xp, mode: str = "relative") -> DampedSystem:
    """Decouple dead columns, add ``λ = damp · scale`` to the live diagonal of H and G, factor.

    ``scale`` = mean(diag H) (``mode="relative"``) or σ_max(H) (``"spectral"``). If ``H + λ·diag(live)`` is
    not positive definite the coefficient is escalated by :data:`DAMP_ESCALATION_FACTOR` (starting at
    :data:`DAMP_ESCALATION_START` for ``damp=0``) up to :data:`MAX_RELATIVE_DAMP`, with a
    :class:`DampingEscalationWarning`; past the cap, :class:`NotPositiveDefiniteError`.
    """
    scale = damping_scale(H, mode, xp)
    H_d, G_live, dead = mark_dead_columns(H, G, xp)
    live = xp.arange(H.shape[0], like=H)[~dead]
    live_diag = H_d[live, live]
    tried = damp
    while True:
        lam = tried * scale
        H_d[live, live] = live_diag + lam
        U, ok = upper_cholesky_of_inverse(H_d, xp)
        if ok:
            break
        if tried >= MAX_RELATIVE_DAMP:
            scale_name = "mean diag(H)" if mode == "relative" else "σ_max(H)"
            raise NotPositiveDefiniteError(
                f"H + λI is not positive definite even with {mode} damping {tried:g} (λ = {lam:g}, "
                f"{scale_name} = {scale:g}). H is indefinite: check that H and G come from the same data and were "
                "accumulated as X̃ᵀX̃ / X̃ᵀX, or collect more calibration samples, or pass a larger damp."
            )
        tried = min(MAX_RELATIVE_DAMP, DAMP_ESCALATION_START if tried == 0 else tried * DAMP_ESCALATION_FACTOR)
    if tried != damp:
        warnings.warn(
            f"H + λI was not positive definite with damp={damp:g}; used damp={tried:g} "
            f"(λ = {lam:g}). The damping actually used is on the result (.damp).",
            DampingEscalationWarning,
            stacklevel=3,
        )
    G_d = G_live
    if G_d is not None:
        G_d[live, live] += lam
    return DampedSystem(H=H_d, G=G_d, U=U, dead=dead, damp=tried, lam=lam, mode=mode)
