"""Bad input raises a clear error; damping escalation is reported; inputs are never mutated."""

import numpy as np
import pytest

from qronos_linalg import (DampingEscalationWarning, NotPositiveDefiniteError, UniformGrid, gpfq, gptaq,
                           optq, qronos, rtn)
from qronos_linalg.linalg import DAMP_ESCALATION_START, MAX_RELATIVE_DAMP
from solver_problems import make_problem

SOLVERS_WITH_H = {
    "optq": lambda W, H, G, grid, **kw: optq(W, H, grid, **kw),
    "qronos": lambda W, H, G, grid, **kw: qronos(W, H, G, grid, **kw),
    "gptaq": lambda W, H, G, grid, **kw: gptaq(W, H, G, grid, **kw),
    "gpfq": lambda W, H, G, grid, **kw: gpfq(W, H, G, grid),
}


@pytest.fixture
def problem():
    return make_problem(0, out=3, n=6)


@pytest.mark.parametrize("name", SOLVERS_WITH_H)
def test_shape_mismatches_name_the_matrix(problem, name):
    solve = SOLVERS_WITH_H[name]
    p = problem
    with pytest.raises(ValueError, match=r"H must have shape \(in_features, in_features\) = \(6, 6\)"):
        solve(p.W, p.H[:5, :5], p.G, p.grid)
    if name != "optq":
        with pytest.raises(ValueError, match=r"G must have shape"):
            solve(p.W, p.H, p.G[:, :5], p.grid)
    with pytest.raises(ValueError, match="does not fit W"):
        solve(p.W, p.H, p.G, UniformGrid.fit(p.W[:2], 4))
    with pytest.raises(ValueError, match="W must be 2-D"):
        solve(p.W[0], p.H, p.G, p.grid)


@pytest.mark.parametrize("name", SOLVERS_WITH_H)
@pytest.mark.parametrize("which", ["W", "H", "G"])
def test_non_finite_inputs_are_rejected(problem, name, which):
    if name == "optq" and which == "G":
        return
    args = {"W": problem.W.copy(), "H": problem.H.copy(), "G": problem.G.copy()}
    args[which][0, 1] = np.nan
    with pytest.raises(ValueError, match=f"{which} contains non-finite values"):
        SOLVERS_WITH_H[name](args["W"], args["H"], args["G"], problem.grid)


def test_rtn_checks_the_grid(problem):
    with pytest.raises(ValueError, match="does not fit W"):
        rtn(problem.W[:2], problem.grid)
    with pytest.raises(TypeError, match="grid must be a UniformGrid"):
        rtn(problem.W, "4-bit")


@pytest.mark.parametrize("kwargs, message", [(dict(damp=-1.0), "damp must be"), (dict(block_size=0), "block_size")])
def test_bad_options(problem, kwargs, message):
    with pytest.raises(ValueError, match=message):
        optq(problem.W, problem.H, problem.grid, **kwargs)


@pytest.mark.parametrize("name", ["optq", "qronos", "gptaq", "gpfq"])
def test_inputs_are_not_mutated(name):
    p = make_problem(1, out=3, n=8, dead=[2])
    W, H, G = p.W.copy(), p.H.copy(), p.G.copy()
    scale = p.grid.scale.copy()
    SOLVERS_WITH_H[name](p.W, p.H, p.G, p.grid, act_order=True)
    np.testing.assert_array_equal(p.W, W)
    np.testing.assert_array_equal(p.H, H)
    np.testing.assert_array_equal(p.G, G)
    np.testing.assert_array_equal(p.grid.scale, scale)


@pytest.mark.parametrize("name", ["optq", "qronos", "gptaq"])
def test_singular_hessian_escalates_damping_and_reports_it(name):
    # Fewer samples than features: H = X̃ᵀX̃ is singular, undamped Cholesky fails.
    p = make_problem(2, out=3, n=10, samples=4)
    with pytest.warns(DampingEscalationWarning, match="used damp="):
        result = SOLVERS_WITH_H[name](p.W, p.H, p.G, p.grid, damp=0.0)
    assert DAMP_ESCALATION_START <= result.damp <= MAX_RELATIVE_DAMP
    assert np.all(np.isfinite(result.weight))


def test_indefinite_hessian_past_the_cap_raises_with_advice():
    p = make_problem(3, out=2, n=5)
    H = p.H.copy()
    H[0, 0] = -100 * np.abs(H).max()
    with pytest.raises(NotPositiveDefiniteError, match="collect more calibration samples"):
        optq(p.W, H, p.grid)


def test_default_damping_is_used_and_reported(problem):
    assert optq(problem.W, problem.H, problem.grid).damp == 0.01
    assert qronos(problem.W, problem.H, problem.G, problem.grid, damp=0).damp == 0


@pytest.mark.parametrize("name", SOLVERS_WITH_H)
def test_missing_statistics_are_named(problem, name):
    p = problem
    with pytest.raises(ValueError, match=r"H is required: the layer statistic H = X̃ᵀX̃ \(6 × 6\)"):
        SOLVERS_WITH_H[name](p.W, None, p.G, p.grid)
    if name != "optq":
        with pytest.raises(ValueError, match=r"G is required: the layer statistic G = X̃ᵀX"):
            SOLVERS_WITH_H[name](p.W, p.H, None, p.grid)
    with pytest.raises(TypeError, match="H must be a numpy.ndarray or torch.Tensor, got list"):
        SOLVERS_WITH_H[name](p.W, p.H.tolist(), p.G, p.grid)


@pytest.mark.parametrize("name", SOLVERS_WITH_H)
def test_one_triangle_or_a_non_symmetric_h_is_refused(problem, name):
    p = problem
    for H in (np.triu(p.H), np.tril(p.H), p.H + 1e-3 * np.abs(p.H).max() * np.triu(np.ones_like(p.H), 1)):
        with pytest.raises(ValueError, match="H must be symmetric"):
            SOLVERS_WITH_H[name](p.W, H, p.G, p.grid)
    jitter = p.H + 1e-9 * np.abs(p.H).max() * np.triu(np.ones_like(p.H), 1)  # accumulation-order noise is fine
    SOLVERS_WITH_H[name](p.W, jitter, p.G, p.grid)


@pytest.mark.parametrize("name", SOLVERS_WITH_H)
def test_zero_h_is_refused_instead_of_zeroing_the_layer(problem, name):
    p = problem
    with pytest.raises(ValueError, match="H is zero: every input column of this layer was zero"):
        SOLVERS_WITH_H[name](p.W, 0 * p.H, 0 * p.G, p.grid)


@pytest.mark.parametrize("name", ["rtn", *SOLVERS_WITH_H])
def test_integer_weights_are_solved_in_float32_and_returned_as_floats_on_the_grid(problem, name):
    p = problem
    W = np.rint(4 * p.W).astype(np.int64)
    grid = UniformGrid.fit(W.astype(np.float32), 4)
    result = rtn(W, grid) if name == "rtn" else SOLVERS_WITH_H[name](W, p.H, p.G, grid)
    assert result.weight.dtype == np.float32
    np.testing.assert_array_equal(result.weight, grid.dequantize(result.codes, "float32"))
    assert not np.array_equal(result.weight, np.rint(result.weight))  # not truncated to integers


@pytest.mark.parametrize("name", ["optq", "qronos", "gptaq"])
def test_spectral_damping_is_relative_damping_by_sigma_max(name):
    """damp_mode="spectral": λ = damp · σ_max(H), the same solve as H + λI undamped (G + λI for Qronos/GPTAQ)."""
    from qronos_linalg.linalg import largest_eigenvalue
    from qronos_linalg.backend import NUMPY

    p = make_problem(11, out=5, n=12, noise=0.3)
    alpha = 1e-3
    sigma = largest_eigenvalue(p.H, NUMPY)
    assert sigma == pytest.approx(np.linalg.eigvalsh(p.H)[-1], rel=1e-3)
    spectral = SOLVERS_WITH_H[name](p.W, p.H, p.G, p.grid, damp=alpha, damp_mode="spectral")
    shift = alpha * sigma * np.eye(12)
    plain = SOLVERS_WITH_H[name](p.W, p.H + shift, p.G + shift, p.grid, damp=0.0)
    np.testing.assert_array_equal(spectral.codes, plain.codes)
    assert (spectral.damp, spectral.damp_mode) == (alpha, "spectral")
    with pytest.raises(ValueError, match="damp_mode must be one of"):
        SOLVERS_WITH_H[name](p.W, p.H, p.G, p.grid, damp_mode="absolute")
