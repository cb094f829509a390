"""Damping, dead columns and the upper Cholesky factor of the inverse Hessian."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

#: Damping is multiplied by this factor each time the damped H is not positive definite.
DAMP_ESCALATION_FACTOR = 10.0
#: First relative damping tried when the caller asked for ``damp=0`` and H is singular.
DAMP_ESCALATION_START = 1e-8
#: Largest relative damping escalation may reach (λ = mean(diag H)); past it the solve fails.
MAX_RELATIVE_DAMP = 1.0


class NotPositiveDefiniteError(ValueError):
    """H + λI is not positive definite even at the damping cap."""


class DampingEscalationWarning(UserWarning):
    """The requested damping was not enough; a larger one was used (see ``QuantResult.damp``)."""


@dataclass
class DampedSystem:
    """H and G with dead columns removed and damping applied.

    ``H_damped = H + λ·diag(live)`` (dead rows/columns replaced by ``e_t``),
    ``G_damped = G + λ·diag(live)`` (dead rows zeroed), ``U`` the upper Cholesky factor of
    ``H_damped⁻¹`` (``H_damped⁻¹ = UᵀU``), ``damp`` the relative damping used, ``lam = damp·mean(diag H)``.
    """

    H: object
    G: object
    U: object
    dead: object
    damp: float
    lam: float


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


def damped_system(H, G, damp: float, xp) -> DampedSystem:
    """Decouple dead columns, add ``λ = damp·mean(diag H)`` to the live diagonal of H and G, factor.

    If ``H + λ·diag(live)`` is not positive definite the relative damping is escalated by
    :data:`DAMP_ESCALATION_FACTOR` (starting at :data:`DAMP_ESCALATION_START` for ``damp=0``) up to
    :data:`MAX_RELATIVE_DAMP`, with a :class:`DampingEscalationWarning`; past the cap,
    :class:`NotPositiveDefiniteError`.
    """
    mean_diag = xp.to_scalar(xp.diag(H).mean())
    H_d, G_live, dead = mark_dead_columns(H, G, xp)
    live = xp.arange(H.shape[0], like=H)[~dead]
    live_diag = H_d[live, live]
    tried = damp
    while True:
        lam = tried * mean_diag
        H_d[live, live] = live_diag + lam
        U, ok = upper_cholesky_of_inverse(H_d, xp)
        if ok:
            break
        if tried >= MAX_RELATIVE_DAMP:
            raise NotPositiveDefiniteError(
                f"H + λI is not positive definite even with relative damping {tried:g} "
                f"(λ = {lam:g}, mean diag(H) = {mean_diag:g}). H is indefinite: check that H and G come "
                "from the same data and were accumulated as X̃ᵀX̃ / X̃ᵀX, or collect more calibration "
                "samples, or pass a larger damp."
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
    return DampedSystem(H=H_d, G=G_d, U=U, dead=dead, damp=tried, lam=lam)
