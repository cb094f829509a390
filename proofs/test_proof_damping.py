"""Checks of damping_augmentation.md: damping the live diagonal of H and G is data augmentation."""

from fractions import Fraction

import numpy as np
from float_problems import (
    EXACT_SETTINGS,
    FLOAT_SETTINGS,
    assert_same_grid_values,
    float_problem,
    grid_values_differ,
    seeds,
)
from hypothesis import given
from hypothesis import strategies as st
from proofkit import (
    augment,
    damp_stats,
    differs,
    identity_like,
    live_columns,
    optq_obs,
    optq_stats,
    qronos_direct,
    qronos_stats,
    random_instance,
)

import qronos_linalg as ql

#: Seeds of the fixed instance sets on which a perturbed variant must be rejected at least once.
REJECTION_SEEDS = range(20)
#: √λ of the exact checks (rational, so the augmented data stay rational); λ = ROOT_LAMBDA².
ROOT_LAMBDA = Fraction(3, 2)
#: Relative damping of the float checks: large enough to change codes against the undamped solve.
FLOAT_DAMP = 0.5
sizes = st.integers(min_value=2, max_value=5)


def _with_dead_column(inst, column):
    """The instance with X̃_column = 0 (a dead column; X keeps its float values)."""
    inst.X_tilde = inst.X_tilde.copy()
    inst.X_tilde[:, column] = 0 * inst.X_tilde[:, column]
    return inst


@EXACT_SETTINGS
@given(seed=seeds, n=sizes, dead=st.integers(min_value=0, max_value=4))
def test_damped_statistics_are_augmented_statistics(seed, n, dead):
    """[X̃; √λE]ᵀ[X̃; √λE] = H + λI_L, [X̃; √λE]ᵀ[X; √λE] = G + λI_L, [X; √λE]ᵀ[X; √λE] = H_float + λI_L,
    and the augmented objective is ‖XWᵀ − X̃Qᵀ‖² + λ‖(W − Q)_L‖² (Q: RTN of W)."""
    inst = _with_dead_column(random_instance(seed, n=n), dead % n)
    lam = ROOT_LAMBDA**2
    live = live_columns(inst.H)
    assert not live[dead % n] and live.sum() == n - 1
    X_a, Xt_a = augment(inst.X, inst.X_tilde, ROOT_LAMBDA, live)
    H_d, G_d = damp_stats(inst.H, inst.G, lam)
    assert not differs(Xt_a.T @ Xt_a, H_d)
    assert not differs(Xt_a.T @ X_a, G_d)
    assert not differs(X_a.T @ X_a, inst.H_float + lam * identity_like(n, inst.H) * live[None, :])
    Q = inst.W * 0 + inst.grid.scale[0, 0]
    augmented = ((X_a @ inst.W.T - Xt_a @ Q.T) ** 2).sum()
    plain = ((inst.X @ inst.W.T - inst.X_tilde @ Q.T) ** 2).sum()
    assert augmented == plain + lam * ((inst.W - Q)[:, live] ** 2).sum()


def test_damping_every_column_or_h_only_is_rejected():
    """Perturbed: λI on dead columns too, or damping H only, does not give augmented statistics."""
    inst = _with_dead_column(random_instance(0), 1)
    lam = ROOT_LAMBDA**2
    X_a, Xt_a = augment(inst.X, inst.X_tilde, ROOT_LAMBDA, live_columns(inst.H))
    every_column = inst.H + lam * identity_like(inst.H.shape[0], inst.H)
    assert differs(every_column, Xt_a.T @ Xt_a)
    _, G_undamped = damp_stats(inst.H, inst.G, lam, damp_G=False)
    assert differs(G_undamped, Xt_a.T @ X_a)


@EXACT_SETTINGS
@given(seed=seeds, n=sizes)
def test_damped_solvers_equal_direct_forms_on_augmented_data(seed, n):
    """Qronos and OPTQ from (H + λI, G + λI) equal their direct forms on [X; √λI], [X̃; √λI]."""
    inst = random_instance(seed, n=n)
    lam = ROOT_LAMBDA**2
    X_a, Xt_a = augment(inst.X, inst.X_tilde, ROOT_LAMBDA, live_columns(inst.H))
    H_d, G_d = damp_stats(inst.H, inst.G, lam)
    assert not differs(qronos_stats(inst.W, H_d, G_d, inst.grid), qronos_direct(inst.W, X_a, Xt_a, inst.grid))
    assert not differs(optq_stats(inst.W, H_d, inst.grid), optq_obs(inst.W, Xt_a, inst.grid))


def test_qronos_damping_h_only_is_rejected():
    """Perturbed: Qronos from (H + λI, G) is not the direct form on the augmented data."""
    lam = ROOT_LAMBDA**2
    found = False
    for seed in REJECTION_SEEDS:
        inst = random_instance(seed)
        X_a, Xt_a = augment(inst.X, inst.X_tilde, ROOT_LAMBDA, live_columns(inst.H))
        H_d, G_undamped = damp_stats(inst.H, inst.G, lam, damp_G=False)
        found |= differs(qronos_stats(inst.W, H_d, G_undamped, inst.grid),
                         qronos_direct(inst.W, X_a, Xt_a, inst.grid))
    assert found


def _float_augmented(prob, result):
    """Augmented float data for the damping the library actually used (λ = damp · mean diag H)."""
    lam = result.damp * float(np.mean(np.diag(prob.H)))
    return augment(prob.X, prob.X_tilde, np.sqrt(lam), live_columns(prob.H))


@FLOAT_SETTINGS
@given(seed=seeds, act_order=st.booleans())
def test_library_damped_qronos_and_optq_equal_augmented_direct_forms(seed, act_order):
    """Library qronos/optq with damp > 0 equal the direct forms on augmented float64 data."""
    prob = float_problem(seed)
    result = ql.qronos(prob.W, prob.H, prob.G, prob.grid, damp=FLOAT_DAMP, act_order=act_order)
    assert result.damp == FLOAT_DAMP
    X_a, Xt_a = _float_augmented(prob, result)
    order = np.asarray(result.perm)
    assert_same_grid_values(result.weight, qronos_direct(prob.W, X_a, Xt_a, prob.grid, order=order), prob.grid)
    result = ql.optq(prob.W, prob.H, prob.grid, damp=FLOAT_DAMP, act_order=act_order)
    assert_same_grid_values(result.weight, optq_obs(prob.W, Xt_a, prob.grid, order=order), prob.grid)


def test_library_damped_qronos_differs_from_undamped_direct_form():
    """The float check can fail: without the augmentation the direct form gives other codes."""
    prob = float_problem(0)
    result = ql.qronos(prob.W, prob.H, prob.G, prob.grid, damp=FLOAT_DAMP)
    assert grid_values_differ(result.weight, qronos_direct(prob.W, prob.X, prob.X_tilde, prob.grid), prob.grid)
