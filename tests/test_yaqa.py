"""YAQA (qronos_linalg.yaqa): the efficient tiled form equals OPTQ on vec(W) with the whole Kronecker Hessian
(the direct form qronos_linalg.naive.yaqa_naive), code for code (float64); its reductions and its errors."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qronos_linalg import (DampingEscalationWarning, NotPositiveDefiniteError, QuantResult, UniformGrid, optq,
                           rtn)
from qronos_linalg.backend import NUMPY
from qronos_linalg.linalg import DAMP_ESCALATION_START, MAX_RELATIVE_DAMP, largest_eigenvalue
from qronos_linalg.naive import yaqa_naive
from qronos_linalg.yaqa import YaqaResult, yaqa
from solver_problems import make_problem, problem_options

EQUIVALENCE = settings(max_examples=60, deadline=None, derandomize=True)
PROPERTY = settings(max_examples=30, deadline=None, derandomize=True)
damps = st.sampled_from([0.0, 0.01, 0.3])
block_sizes = st.integers(1, 6)


def output_factor(seed, out, *, dead=()):
    """H_out = GᵀG for correlated Gaussian "gradients" G (3·out + 5 samples), built like solver_problems' H;
    ``dead`` output channels have zero gradient."""
    rng = np.random.default_rng(seed + 1)
    G = rng.standard_normal((3 * out + 5, out)) @ (np.eye(out) + 0.3 * rng.standard_normal((out, out)))
    G[:, list(dead)] = 0
    return G.T @ G


def kronecker_problem(opts, **kw):
    """(problem with W, H_in = X̃ᵀX̃ and grid; H_out)."""
    p = make_problem(**opts, noise=0, **kw)
    return p, output_factor(opts["seed"], p.W.shape[0])


def order(out, n, kind):
    """Flat processing orders of the out × in entries (row-major index r·in + c)."""
    index = np.arange(out * n).reshape(out, n)
    if kind == "rows":
        return index.reshape(-1)
    if kind == "columns":
        return index.T.reshape(-1)
    if kind == "anti-diagonals":
        r, c = np.divmod(index.reshape(-1), n)
        return index.reshape(-1)[np.lexsort((r, r + c))]
    return index[::-1].reshape(-1)  # "rows reversed": not compatible with the partial order


def objective(W, Q, H_in, H_out):
    """tr(ΔW H_in ΔWᵀ H_out)."""
    delta = W - Q
    return float(np.trace(delta @ H_in @ delta.T @ H_out))


# --- the efficient form is the direct form ----------------------------------------------------


@EQUIVALENCE
@given(problem_options, damps, block_sizes)
def test_yaqa_equals_optq_on_the_vectorised_weight_with_the_kronecker_hessian(opts, damp, block_size):
    p, H_out = kronecker_problem(opts)
    result = yaqa(p.W, p.H, H_out, p.grid, damp=damp, block_size=block_size)
    np.testing.assert_array_equal(result.codes, yaqa_naive(p.W, p.H, H_out, p.grid, damp=damp))


@PROPERTY
@given(st.integers(0, 2**31 - 1), st.integers(1, 8), st.booleans(), st.integers(2, 8), damps)
def test_single_row_and_single_column_layers(seed, size, one_column, bits, damp):
    """A 1 × n layer is OPTQ on H_in (H_out is a scalar); an out × 1 layer is OPTQ along the rows on H_out."""
    p = make_problem(seed, out=size if one_column else 1, n=1 if one_column else size, bits=bits, noise=0)
    H_out = output_factor(seed, p.W.shape[0])
    result = yaqa(p.W, p.H, H_out, p.grid, damp=damp, block_size=3)
    np.testing.assert_array_equal(result.codes, yaqa_naive(p.W, p.H, H_out, p.grid, damp=damp))
    if one_column:  # OPTQ on the transposed layer: rows are its columns, H_out its Hessian
        grid_t = UniformGrid(p.grid.scale.T.copy(), p.grid.zero.T.copy(), bits, group_size=1)
        np.testing.assert_array_equal(result.codes.T, optq(p.W.T, H_out, grid_t, damp=damp).codes)
    else:
        np.testing.assert_array_equal(result.codes, optq(p.W, p.H, p.grid, damp=damp).codes)


@PROPERTY
@given(problem_options, damps, st.sampled_from(["columns", "anti-diagonals"]))
def test_every_order_compatible_with_rows_and_columns_gives_the_same_codes(opts, damp, kind):
    """Entry (r, c)'s error reaches only (r' ≥ r, c' ≥ c): row-major = column-major = anti-diagonals."""
    p, H_out = kronecker_problem(opts)
    out, n = p.W.shape
    row_major = yaqa_naive(p.W, p.H, H_out, p.grid, damp=damp)
    np.testing.assert_array_equal(yaqa_naive(p.W, p.H, H_out, p.grid, damp=damp, order=order(out, n, kind)),
                                  row_major)


def test_an_order_against_the_rows_gives_other_codes():
    """The order check can fail: processing the rows bottom-up is a different algorithm."""
    found = False
    for seed in range(10):
        p, H_out = kronecker_problem(dict(seed=seed, out=4, n=6, bits=3))
        reversed_rows = yaqa_naive(p.W, p.H, H_out, p.grid, damp=0.01, order=order(4, 6, "rows reversed"))
        found |= not np.array_equal(reversed_rows, yaqa_naive(p.W, p.H, H_out, p.grid, damp=0.01))
    assert found


@PROPERTY
@given(problem_options, damps, st.integers(1, 5), st.integers(6, 200))
def test_results_do_not_depend_on_block_size(opts, damp, small_block, large_block):
    p, H_out = kronecker_problem(opts)
    np.testing.assert_array_equal(yaqa(p.W, p.H, H_out, p.grid, damp=damp, block_size=small_block).codes,
                                  yaqa(p.W, p.H, H_out, p.grid, damp=damp, block_size=large_block).codes)


# --- reductions and fixed points -----------------------------------------------------------------


@EQUIVALENCE
@given(problem_options, damps, block_sizes)
def test_act_order_is_the_direct_form_in_the_order_of_decreasing_input_diagonal(opts, damp, block_size):
    """act_order: rows ascending, within each row the columns by decreasing diag(H_in) — the direct form in that
    flat order — and with H_out = I the codes of OPTQ's act-order."""
    p, H_out = kronecker_problem(opts)
    out, n = p.W.shape
    result = yaqa(p.W, p.H, H_out, p.grid, damp=damp, block_size=block_size, act_order=True)
    columns = np.argsort(-np.diag(p.H), kind="stable")
    np.testing.assert_array_equal(result.perm, columns)
    flat = (np.arange(out)[:, None] * n + columns[None, :]).reshape(-1)
    np.testing.assert_array_equal(result.codes, yaqa_naive(p.W, p.H, H_out, p.grid, damp=damp, order=flat))
    np.testing.assert_array_equal(yaqa(p.W, p.H, np.eye(out), p.grid, damp=damp, block_size=block_size,
                                       act_order=True).codes,
                                  optq(p.W, p.H, p.grid, damp=damp, block_size=block_size, act_order=True).codes)


@PROPERTY
@given(problem_options, damps, block_sizes, st.sampled_from(["identity", "diagonal"]))
def test_a_diagonal_output_factor_reduces_to_optq(opts, damp, block_size, kind):
    """H_out diagonal (I: yaqa(W, H_in, I) = optq(W, H_in)): the rows decouple, each is OPTQ on H_in."""
    p, _ = kronecker_problem(opts)
    out = p.W.shape[0]
    H_out = np.eye(out) if kind == "identity" else np.diag(np.random.default_rng(opts["seed"]).uniform(0.1, 10, out))
    np.testing.assert_array_equal(yaqa(p.W, p.H, H_out, p.grid, damp=damp, block_size=block_size).codes,
                                  optq(p.W, p.H, p.grid, damp=damp).codes)


def test_identity_output_factor_is_optq_in_float32_at_layer_size():
    """The reduction is exact in floating point too (the same operations as OPTQ's loop): a float32 layer with
    several row and column blocks."""
    rng = np.random.default_rng(0)
    X = rng.standard_normal((600, 300)).astype(np.float32)
    W = rng.standard_normal((200, 300)).astype(np.float32)
    grid = UniformGrid.fit(W, 4, group_size=64)
    H = X.T @ X
    np.testing.assert_array_equal(yaqa(W, H, np.eye(200, dtype=np.float32), grid).codes, optq(W, H, grid).codes)


@PROPERTY
@given(problem_options, damps)
def test_weights_on_the_grid_are_fixed_points(opts, damp):
    p = make_problem(**opts, noise=0, on_grid=True)
    H_out = output_factor(opts["seed"], p.W.shape[0])
    result = yaqa(p.W, p.H, H_out, p.grid, damp=damp)
    np.testing.assert_array_equal(result.codes, p.grid.quantize(p.W))
    np.testing.assert_array_equal(result.weight, p.W)


@PROPERTY
@given(problem_options, st.data())
def test_dead_columns_round_to_zero_and_dead_rows_are_optq_on_h_in(opts, data):
    out, n = opts["out"], opts["n"]
    dead_columns = sorted(data.draw(st.sets(st.integers(0, n - 1), max_size=n - 1)))
    dead_rows = sorted(data.draw(st.sets(st.integers(0, out - 1), max_size=out - 1)))
    p = make_problem(**opts, noise=0, dead=dead_columns)
    H_out = output_factor(opts["seed"], out, dead=dead_rows)
    result = yaqa(p.W, p.H, H_out, p.grid, damp=0.05, block_size=2)
    np.testing.assert_array_equal(result.codes, yaqa_naive(p.W, p.H, H_out, p.grid, damp=0.05))
    np.testing.assert_array_equal(result.codes[:, dead_columns], p.grid.quantize(np.zeros_like(p.W))[:, dead_columns])
    np.testing.assert_array_equal(result.weight[:, dead_columns], 0.0)
    np.testing.assert_array_equal(result.codes[dead_rows], optq(p.W, p.H, p.grid, damp=0.05).codes[dead_rows])


def test_yaqa_lowers_its_objective_below_optq_on_correlated_output_channels():
    """The point of H_out: on average over fixed problems, tr(ΔW H_in ΔWᵀ H_out) is lower than OPTQ's."""
    gains = []
    for seed in range(20):
        p, H_out = kronecker_problem(dict(seed=seed, out=8, n=12, bits=3))
        gains.append(objective(p.W, optq(p.W, p.H, p.grid).weight, p.H, H_out)
                     - objective(p.W, yaqa(p.W, p.H, H_out, p.grid).weight, p.H, H_out))
    assert np.mean(gains) > 0


# --- backends and the result -----------------------------------------------------------------------


@PROPERTY
@given(problem_options, block_sizes)
def test_numpy_and_torch_give_the_same_codes(torch, opts, block_size):
    p, H_out = kronecker_problem(opts)
    torch_grid = UniformGrid(torch.from_numpy(p.grid.scale.copy()), torch.from_numpy(p.grid.zero.copy()),
                             p.grid.bits, group_size=p.grid.group_size)
    on_numpy = yaqa(p.W, p.H, H_out, p.grid, block_size=block_size)
    on_torch = yaqa(*(torch.from_numpy(M.copy()) for M in (p.W, p.H, H_out)), torch_grid, block_size=block_size)
    assert isinstance(on_torch.codes, torch.Tensor) and isinstance(on_torch.weight, torch.Tensor)
    np.testing.assert_array_equal(on_torch.codes.numpy(), on_numpy.codes)
    assert (on_torch.damp, on_torch.damp_out) == (on_numpy.damp, on_numpy.damp_out)


def test_the_device_path_of_the_tile_kernel_equals_the_zero_copy_one(torch):
    """Tensors off the CPU go through round_tile_via_cpu (copies of the tile's slices); CI has no GPU, so the
    copying path is checked on CPU tensors against the zero-copy one."""
    from qronos_linalg.kernels import round_tile_torch, round_tile_via_cpu

    rng = np.random.default_rng(3)
    rows, n, out, r0, c0, width = 5, 12, 9, 3, 4, 6
    Ubar_out, U_in = (np.triu(rng.standard_normal((size, size))) + 3 * np.eye(size) for size in (out, n))
    inputs = [rng.standard_normal((rows, n)), rng.standard_normal((rows, width)), Ubar_out, U_in,
              rng.uniform(0.2, 0.5, (rows, 3)), np.full((rows, 3), 4.0)]
    groups = torch.from_numpy(np.arange(n) // 4)
    outputs = {}
    for name, run in (("views", round_tile_torch), ("copies", round_tile_via_cpu)):
        codes = torch.zeros((rows, n), dtype=torch.uint8)
        E, D = torch.zeros((rows, n), dtype=torch.float64), torch.zeros((rows, n), dtype=torch.float64)
        run(*(torch.from_numpy(a.copy()) for a in inputs), groups, r0, c0, 0, 7, codes, E, D)
        outputs[name] = (codes, E, D)
    for got, expected in zip(outputs["copies"], outputs["views"]):
        assert torch.equal(got, expected)


def test_result_records_both_dampings_and_keeps_the_input_dtype():
    p, H_out = kronecker_problem(dict(seed=4, out=5, n=8, bits=4))
    result = yaqa(p.W.astype(np.float32), p.H, H_out, UniformGrid.fit(p.W.astype(np.float32), 4), damp=0.02)
    assert isinstance(result, YaqaResult) and isinstance(result, QuantResult)
    assert (result.algorithm, result.damp, result.damp_out, result.damp_mode) == ("yaqa", 0.02, 0.02, "relative")
    assert result.weight.dtype == np.float32
    np.testing.assert_array_equal(result.weight, result.grid.dequantize(result.codes, "float32"))
    np.testing.assert_array_equal(result.perm, np.arange(8))


def test_inputs_are_not_mutated():
    p = make_problem(1, out=4, n=8, dead=[2])
    H_out = output_factor(1, 4, dead=[1])
    copies = [M.copy() for M in (p.W, p.H, H_out, p.grid.scale)]
    yaqa(p.W, p.H, H_out, p.grid, block_size=3)
    for original, copy in zip((p.W, p.H, H_out, p.grid.scale), copies):
        np.testing.assert_array_equal(original, copy)


def test_spectral_damping_is_each_factor_shifted_by_its_sigma_max():
    p, H_out = kronecker_problem(dict(seed=11, out=5, n=10, bits=3))
    alpha = 1e-2
    spectral = yaqa(p.W, p.H, H_out, p.grid, damp=alpha, damp_mode="spectral")
    shifted = [H + alpha * largest_eigenvalue(H, NUMPY) * np.eye(H.shape[0]) for H in (p.H, H_out)]
    np.testing.assert_array_equal(spectral.codes, yaqa(p.W, *shifted, p.grid, damp=0.0).codes)
    assert (spectral.damp, spectral.damp_out, spectral.damp_mode) == (alpha, alpha, "spectral")


# --- bad input -----------------------------------------------------------------------------------------


@pytest.fixture
def problem():
    return kronecker_problem(dict(seed=0, out=3, n=6, bits=4))


@pytest.mark.parametrize("name", ["H_in", "H_out"])
def test_each_bad_factor_is_named(problem, name):
    p, H_out = problem
    size = 6 if name == "H_in" else 3

    def solve(M):
        return yaqa(p.W, M, H_out, p.grid) if name == "H_in" else yaqa(p.W, p.H, M, p.grid)

    good = p.H if name == "H_in" else H_out
    with pytest.raises(ValueError, match=f"{name} is required"):
        solve(None)
    with pytest.raises(TypeError, match=f"{name} must be a numpy.ndarray or torch.Tensor, got list"):
        solve(good.tolist())
    dims = "in_features" if name == "H_in" else "out_features"
    for wrong in (good[:-1, :-1], good[:, :-1], good[0]):
        with pytest.raises(ValueError, match=rf"{name} must have shape \({dims}, {dims}\) = \({size}, {size}\)"):
            solve(wrong)
    for value in (np.nan, np.inf):
        broken = good.copy()
        broken[0, 1] = value
        with pytest.raises(ValueError, match=f"{name} contains non-finite values"):
            solve(broken)
    for wrong in (np.triu(good), np.tril(good), good + 1e-3 * np.abs(good).max() * np.triu(np.ones_like(good), 1)):
        with pytest.raises(ValueError, match=f"{name} must be symmetric"):
            solve(wrong)
    solve(good + 1e-9 * np.abs(good).max() * np.triu(np.ones_like(good), 1))  # accumulation-order noise is fine
    with pytest.raises(ValueError, match=f"{name} is zero"):
        solve(0 * good)
    indefinite = good.copy()
    indefinite[0, 0] = -100 * np.abs(good).max()
    with pytest.raises(NotPositiveDefiniteError, match=f"^{name}: .*not positive definite"):
        solve(indefinite)


@pytest.mark.parametrize("name", ["H_in", "H_out"])
def test_a_singular_factor_escalates_its_own_damping_and_names_it(name):
    p = make_problem(2, out=6, n=6, noise=0)
    singular = output_factor(2, 6)[:, :2] @ output_factor(2, 6)[:2]  # rank 2
    singular = (singular + singular.T) / 2
    H_in, H_out = (singular, output_factor(5, 6)) if name == "H_in" else (p.H, singular)
    attribute = "damp" if name == "H_in" else "damp_out"
    message = rf"^{name} \(damping on the result as \.{attribute}\): .*used damp="
    with pytest.warns(DampingEscalationWarning, match=message):
        result = yaqa(p.W, H_in, H_out, p.grid, damp=0.0)
    assert DAMP_ESCALATION_START <= getattr(result, attribute) <= MAX_RELATIVE_DAMP
    assert getattr(result, "damp_out" if name == "H_in" else "damp") == 0.0
    assert np.all(np.isfinite(result.weight))


def test_bad_weights_grid_and_options(problem):
    p, H_out = problem
    with pytest.raises(ValueError, match="W must be 2-D"):
        yaqa(p.W[0], p.H, H_out, p.grid)
    with pytest.raises(ValueError, match="does not fit W"):
        yaqa(p.W, p.H, H_out, UniformGrid.fit(p.W[:2], 4))
    with pytest.raises(ValueError, match="W contains non-finite values"):
        yaqa(np.where(np.eye(3, 6) > 0, np.nan, p.W), p.H, H_out, p.grid)
    with pytest.raises(TypeError, match="grid must be a UniformGrid"):
        yaqa(p.W, p.H, H_out, "4-bit")
    with pytest.raises(ValueError, match="H_out must have shape"):
        yaqa(p.W[:2], p.H, H_out, UniformGrid.fit(p.W[:2], 4))  # H_out of the wrong layer
    for kwargs, message in ((dict(damp=-1.0), "damp must be"), (dict(block_size=0), "block_size"),
                            (dict(damp_mode="absolute"), "damp_mode must be one of")):
        with pytest.raises(ValueError, match=message):
            yaqa(p.W, p.H, H_out, p.grid, **kwargs)


def test_the_error_feedback_changes_codes_on_these_problems():
    """The checks above are not vacuous: YAQA's codes are not round-to-nearest's."""
    p, H_out = kronecker_problem(dict(seed=7, out=5, n=10, bits=3))
    assert not np.array_equal(yaqa(p.W, p.H, H_out, p.grid).codes, rtn(p.W, p.grid).codes)
