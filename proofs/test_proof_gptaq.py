"""Checks of gptaq.md: what the GPTAQ update computes, its block-size independence, and where it
departs from the exact sequential least-squares solution."""

from fractions import Fraction

import numpy as np
from float_problems import (
    BLOCK_SIZES,
    EXACT_SETTINGS,
    FLOAT_SETTINGS,
    assert_same_grid_values,
    float_problem,
    seeds,
)
from hypothesis import given
from hypothesis import strategies as st
from proofkit import (
    asymmetric_sequential_direct,
    damp_stats,
    differs,
    gptaq_exact_sequential,
    gptaq_scaled_P,
    gptaq_stats,
    inv,
    lstsq,
    optq_recursion,
    random_instance,
    scaled_upper_factor_of_inverse,
)

import qronos_linalg as ql

#: Seeds of the fixed instance sets on which a perturbed variant must be rejected at least once.
REJECTION_SEEDS = range(20)
#: The reference implementation's α.
ALPHA = Fraction(1, 4)
#: A rational damping for the cancellation check.
LAMBDA = Fraction(1, 3)
sizes = st.integers(min_value=2, max_value=6)


@EXACT_SETTINGS
@given(seed=seeds, n=sizes, block_size=st.integers(min_value=1, max_value=6), data=st.data())
def test_gptaq_does_not_depend_on_block_size(seed, n, block_size, data):
    """With the pre-rounding b_t in the cross-block product, every block size gives the same Q."""
    inst = random_instance(seed, n=n)
    order = data.draw(st.permutations(range(n)))
    unblocked = gptaq_stats(inst.W, inst.H, inst.G, inst.grid, ALPHA, order=order)
    assert not differs(gptaq_stats(inst.W, inst.H, inst.G, inst.grid, ALPHA, order=order,
                                   block_size=block_size), unblocked)


def test_gptaq_with_rounded_cross_block_term_depends_on_block_size():
    """Perturbed: carrying the rounded q_t across blocks makes the result depend on the block size."""
    assert any(
        differs(gptaq_stats(i.W, i.H, i.G, i.grid, ALPHA),
                gptaq_stats(i.W, i.H, i.G, i.grid, ALPHA, block_size=b, cross_block="rounded"))
        for i in map(random_instance, REJECTION_SEEDS)
        for b in (1, 2)
    )


@EXACT_SETTINGS
@given(seed=seeds, n=sizes)
def test_unconstrained_minimiser(seed, n):
    """v* = argmin ‖Xw − X̃v‖ = w Gᵀ H⁻¹ = w + w ΔXXᵀ H⁻¹ with ΔXXᵀ = Gᵀ − H = (X − X̃)ᵀ X̃."""
    inst = random_instance(seed, n=n)
    v_star = lstsq(inst.X_tilde, inst.X @ inst.W.T).T
    asym = inst.G.T - inst.H
    assert not differs(asym, (inst.X - inst.X_tilde).T @ inst.X_tilde)
    assert not differs(v_star, inst.W + inst.W @ asym @ inv(inst.H))


def test_unconstrained_minimiser_with_G_instead_of_GT_is_rejected():
    """Perturbed: G − H in place of Gᵀ − H does not give the minimiser."""
    assert any(
        differs(lstsq(i.X_tilde, i.X @ i.W.T).T, i.W + i.W @ (i.G - i.H) @ inv(i.H))
        for i in map(random_instance, REJECTION_SEEDS)
    )


@EXACT_SETTINGS
@given(seed=seeds, n=sizes)
def test_exact_counterpart_is_sequential_least_squares(seed, n):
    """OPTQ started at v* = w + w ΔXXᵀ UᵀU equals the exact sequential least squares for ‖Xw − X̃q‖²."""
    inst = random_instance(seed, n=n)
    assert not differs(gptaq_exact_sequential(inst.W, inst.H, inst.G, inst.grid),
                       asymmetric_sequential_direct(inst.W, inst.X, inst.X_tilde, inst.grid))


@EXACT_SETTINGS
@given(seed=seeds, n=sizes)
def test_gptaq_is_optq_from_preloaded_start(seed, n):
    """GPTAQ = OPTQ started at w + b P, b the vector of GPTAQ's own pre-rounding values."""
    inst = random_instance(seed, n=n)
    Ubar, d = scaled_upper_factor_of_inverse(inst.H)
    P = gptaq_scaled_P(inst.H, inst.G, Ubar, d, ALPHA)
    pre = inst.W * 0
    Q = optq_recursion(inst.W.copy(), Ubar, inst.grid, range(n), P_scaled=P, pre_rounding=pre)
    assert not differs(Q, gptaq_stats(inst.W, inst.H, inst.G, inst.grid, ALPHA))
    assert not differs(optq_recursion(inst.W + pre @ P, Ubar, inst.grid, range(n)), Q)


def test_preloaded_start_with_original_weights_is_rejected():
    """Perturbed: starting OPTQ at w + w P (original instead of running weights) is not GPTAQ."""
    found = False
    for inst in map(random_instance, REJECTION_SEEDS):
        Ubar, d = scaled_upper_factor_of_inverse(inst.H)
        P = gptaq_scaled_P(inst.H, inst.G, Ubar, d, ALPHA)
        found |= differs(optq_recursion(inst.W + inst.W @ P, Ubar, inst.grid, range(inst.W.shape[1])),
                         gptaq_stats(inst.W, inst.H, inst.G, inst.grid, ALPHA))
    assert found


def test_gptaq_departs_from_exact_solution_beyond_alpha():
    """GPTAQ differs from the exact counterpart at α = 1/4 and still at α = 1 (triangle, running b)."""
    for alpha in (ALPHA, Fraction(1)):
        assert any(
            differs(gptaq_stats(i.W, i.H, i.G, i.grid, alpha),
                    asymmetric_sequential_direct(i.W, i.X, i.X_tilde, i.grid))
            for i in map(random_instance, REJECTION_SEEDS)
        )


def test_gptaq_with_G_instead_of_GT_is_rejected():
    """Perturbed: GPTAQ with ΔXXᵀ = G − H gives different codes from the one with Gᵀ − H."""
    assert any(
        differs(gptaq_stats(i.W, i.H, i.G, i.grid, ALPHA),
                gptaq_stats(i.W, i.H, i.G, i.grid, ALPHA, use_G_transpose=False))
        for i in map(random_instance, REJECTION_SEEDS)
    )


@EXACT_SETTINGS
@given(seed=seeds, n=sizes)
def test_damping_cancels_in_asymmetric_term(seed, n):
    """(G + λI_L)ᵀ − (H + λI_L) = Gᵀ − H; damping H only does not cancel."""
    inst = random_instance(seed, n=n)
    H_d, G_d = damp_stats(inst.H, inst.G, LAMBDA)
    assert not differs(G_d.T - H_d, inst.G.T - inst.H)
    H_only, G_plain = damp_stats(inst.H, inst.G, LAMBDA, damp_G=False)
    assert differs(G_plain.T - H_only, inst.G.T - inst.H)


@FLOAT_SETTINGS
@given(seed=seeds, act_order=st.booleans())
def test_library_gptaq_equals_its_recursion_at_every_block_size(seed, act_order):
    """Library gptaq (damp=0) at block sizes 1, ragged and one block equals the unblocked recursion."""
    prob = float_problem(seed)
    alpha = float(ALPHA)
    reference = None
    for block_size in (1, *BLOCK_SIZES):
        result = ql.gptaq(prob.W, prob.H, prob.G, prob.grid, alpha=alpha, damp=0.0, block_size=block_size,
                          act_order=act_order)
        if reference is None:
            reference = gptaq_stats(prob.W, prob.H, prob.G, prob.grid, alpha, order=np.asarray(result.perm))
        assert_same_grid_values(result.weight, reference, prob.grid)
