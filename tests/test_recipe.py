"""The shared recipe: specs validate once, ``solve`` equals the solvers it dispatches to, options round-trip."""

import argparse
import importlib.util
import math
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qronos_linalg import LayerStats, UniformGrid, gpfq, gptaq, optq, output_error, qronos, rtn
from qronos_linalg.cli import Settings
from qronos_linalg.options import ConfigError, load_config_file, recipe_from_options, recipe_to_options
from qronos_linalg.recipe import (ALGORITHMS, SOLVERS, GridSpec, LayerReport, Recipe, SolverSpec, algorithms_using,
                                  solve)
from qronos_linalg.yaqa import yaqa, yaqa_qronos
from qronos_linalg.solvers import DEFAULT_DAMP
from solver_problems import make_problem

DIRECT = {
    "rtn": lambda W, s, grid, spec: rtn(W, grid),
    "optq": lambda W, s, grid, spec: optq(W, s.H, grid, damp=spec.damping, block_size=spec.block_size,
                                          act_order=spec.act_order),
    "gpfq": lambda W, s, grid, spec: gpfq(W, s.H, s.G, grid, act_order=spec.act_order),
    "gptaq": lambda W, s, grid, spec: gptaq(W, s.H, s.G, grid, alpha=spec.gptaq_alpha, damp=spec.damping,
                                            block_size=spec.block_size, act_order=spec.act_order),
    "qronos": lambda W, s, grid, spec: qronos(W, s.H, s.G, grid, damp=spec.damping, block_size=spec.block_size,
                                              act_order=spec.act_order),
    "yaqa": lambda W, s, grid, spec: yaqa(W, s.H, s.H_out, grid, damp=spec.damping, block_size=spec.block_size,
                                          act_order=spec.act_order),
    "yaqa-qronos": lambda W, s, grid, spec: yaqa_qronos(W, s.H, s.G, s.H_out, grid, damp=spec.damping,
                                                        block_size=spec.block_size, act_order=spec.act_order),
}


class Statistics:
    """Statistics of a problem from solver_problems, with the attributes ``solve`` reads (YAQA's output factor
    a random PSD matrix over the rows)."""

    def __init__(self, p, name="layer"):
        self.H, self.G, self.H_float, self.count, self.name = p.H, p.G, p.X.T @ p.X, p.X.shape[0], name
        rows = p.W.shape[0]
        A = np.random.default_rng(rows).standard_normal((2 * rows, rows))
        self.H_out = A.T @ A + 0.1 * np.eye(rows)


def test_the_registry_lists_every_algorithm_with_its_statistics():
    assert ALGORITHMS == ("rtn", "optq", "gpfq", "gptaq", "qronos", "yaqa", "yaqa-qronos") == tuple(DIRECT)
    assert {name: s.statistics for name, s in SOLVERS.items()} == {
        "rtn": (), "optq": ("H",), "gpfq": ("H", "G"), "gptaq": ("H", "G"), "qronos": ("H", "G"),
        "yaqa": ("H", "H_out"), "yaqa-qronos": ("H", "G", "H_out")}
    assert [name for name, s in SOLVERS.items() if s.damped] == ["optq", "gptaq", "qronos", "yaqa", "yaqa-qronos"]
    assert algorithms_using(("H", "G")) == ALGORITHMS[:5]
    assert SolverSpec("rtn", magr_alpha=0.1).statistics == ("H",)
    assert SolverSpec("optq").damping == DEFAULT_DAMP and SolverSpec("gpfq").damping is None


@settings(max_examples=40, deadline=None, derandomize=True)
@given(st.sampled_from(ALGORITHMS), st.integers(0, 10_000), st.sampled_from([2, 3, 4, 8]),
       st.sampled_from([None, 4, 8]), st.booleans(), st.booleans(), st.sampled_from([None, 0.0, 0.05]))
def test_solve_equals_the_solver_it_dispatches_to_and_reports_the_statistics_errors(algorithm, seed, bits, group,
                                                                                   symmetric, act_order, damp):
    p = make_problem(seed, out=5, n=16, bits=bits, group_size=group, noise=0.3)
    damp = damp if SOLVERS[algorithm].damped else None
    act_order = act_order and SOLVERS[algorithm].act_order_supported
    grid_spec = GridSpec(bits=bits, group_size=group, symmetric=symmetric)
    spec = SolverSpec(algorithm, damp=damp, act_order=act_order, block_size=4)
    assert spec.act_ordered == act_order
    stats = Statistics(p)
    result, report = solve(p.W, stats, grid_spec, spec)
    grid = UniformGrid.fit(p.W, bits, group_size=group, symmetric=symmetric)
    expected = DIRECT[algorithm](p.W, stats, grid, spec)
    np.testing.assert_array_equal(result.codes, expected.codes)
    np.testing.assert_array_equal(result.grid.scale, grid.scale)
    if algorithm == "yaqa":  # the Kronecker objective tr(ΔW H_in ΔWᵀ H_out)
        objective = lambda D: float(np.trace(stats.H_out @ D @ p.H @ D.T))  # noqa: E731
        reference, error = objective(p.W), objective(p.W - expected.weight)
        error_rtn = objective(p.W - rtn(p.W, grid).weight)
        assert report.objective == "kronecker" and report.to_dict()["rel_error_one_sided"] > 0
    else:
        reference = float(((p.W @ stats.H_float) * p.W).sum())
        error = output_error(p.W, expected.weight, p.H, p.G, stats.H_float)
        error_rtn = output_error(p.W, rtn(p.W, grid).weight, p.H, p.G, stats.H_float)
    assert report.reference == pytest.approx(reference, rel=1e-12)
    assert report.rel_error == pytest.approx(math.sqrt(error / reference), rel=1e-9, abs=1e-12)
    assert report.rel_error_rtn == pytest.approx(math.sqrt(error_rtn / reference), rel=1e-9, abs=1e-12)
    assert (report.algorithm, report.bits, report.group_size, report.damp) == (algorithm, bits, group, expected.damp)
    assert report.samples == p.X.shape[0] and report.dead_columns == 0 and report.note is None


def test_a_layer_whose_h_is_zero_is_left_at_rtn_with_a_note():
    p = make_problem(1, out=4, n=8)
    stats = Statistics(p)
    stats.H, stats.G, stats.H_float = 0 * p.H, 0 * p.G, 0 * stats.H_float
    result, report = solve(p.W, stats, GridSpec(bits=3), SolverSpec("qronos"))
    np.testing.assert_array_equal(result.codes, rtn(p.W, UniformGrid.fit(p.W, 3)).codes)
    assert report.note.startswith("H = 0") and report.dead_columns == 8 and report.damp is None
    assert report.rel_error == 0.0


def test_errors_can_be_skipped_and_dead_columns_are_counted():
    p = make_problem(2, out=4, n=8)
    stats = Statistics(p)
    for M in (stats.H, stats.G, stats.H_float):
        M[:, 3] = 0
        M[3, :] = 0
    _, report = solve(p.W, stats, GridSpec(), SolverSpec("optq"), errors=False)
    assert report.dead_columns == 1 and report.rel_error is None and report.input_gap is None


def test_reports_of_parts_combine_into_one():
    p = make_problem(3, out=6, n=8)
    halves = [solve(p.W[k * 3 : (k + 1) * 3], Statistics(p), GridSpec(), SolverSpec("optq"))[1] for k in (0, 1)]
    whole = solve(p.W, Statistics(p), GridSpec(), SolverSpec("optq"))[1]
    combined = LayerReport.combine(halves, name="both")
    assert combined.name == "both" and combined.shape == (6, 8)
    assert combined.rel_error == pytest.approx(whole.rel_error, rel=1e-12)
    assert combined.rel_error_rtn == pytest.approx(whole.rel_error_rtn, rel=1e-12)


recipes = st.builds(
    Recipe,
    grid=st.builds(GridSpec, bits=st.integers(2, 8), group_size=st.sampled_from([None, 16, 32, 128]),
                   symmetric=st.booleans(), shrink=st.sampled_from([1.0, 0.8, 0.5]),
                   search=st.sampled_from(["minmax", "mse"]),
                   scale_dtype=st.sampled_from([None, "float32", "float16", "bfloat16"])),
    solver=st.one_of(
        st.builds(SolverSpec, algorithm=st.sampled_from(["optq", "gptaq", "qronos", "yaqa"]),
                  damp=st.sampled_from([None, 0.0, 0.01, 0.1]),
                  damp_mode=st.sampled_from([None, "relative", "spectral"]), block_size=st.integers(1, 256),
                  act_order=st.sampled_from([None, False, True]), gptaq_alpha=st.sampled_from([0.0, 0.25, 1.0]),
                  magr_alpha=st.sampled_from([None, 0.001])),
        st.builds(SolverSpec, algorithm=st.just("gpfq"), act_order=st.sampled_from([None, False, True])),
        st.builds(SolverSpec, algorithm=st.just("rtn"), act_order=st.sampled_from([None, False]))),
    act_bits=st.sampled_from([None, 4, 8]),
)


@settings(max_examples=60, deadline=None, derandomize=True)
@given(recipes)
def test_options_round_trip_and_text_parses_to_the_same_recipe(recipe):
    options = recipe_to_options(recipe)
    assert recipe_from_options(options) == recipe
    as_text = {key: ("none" if value is None else str(value).lower() if isinstance(value, bool) else str(value))
               for key, value in options.items()}
    assert recipe_from_options(as_text) == recipe
    assert Recipe.from_dict(recipe.to_dict()) == recipe


@pytest.mark.parametrize("options, message", [
    ({"algorithm": "optq"}, "unknown recipe option 'algorithm'"),
    ({"bits": "many"}, "bits must be an integer, got 'many'"),
    ({"bits": 1}, r"bits must be an integer in \[2, 8\]"),
    ({"damp": "1e-2x"}, "damp must be a number"),
    ({"group_size": "channels"}, "group_size must be an integer"),
    ({"sym": "maybe"}, "sym must be true or false"),
    ({"algo": "gpfq", "damp": 0.1}, "gpfq has no damping"),
])
def test_bad_options_raise_config_errors_naming_the_key(options, message):
    with pytest.raises(ConfigError, match=message):
        recipe_from_options(options)


def test_settings_take_defaults_then_the_config_file_then_the_flags(tmp_path):
    parser = argparse.ArgumentParser()
    parser.add_argument("--config")
    settings = Settings(parser, Recipe(GridSpec(group_size=32)))
    settings.add("--width", dest="width", default=7, type=int, help="a setting")
    (tmp_path / "c.json").write_text('{"bits": 3, "group-size": 64, "width": "9", "act_order": "yes"}')
    values = settings.resolve(parser.parse_args(["--config", str(tmp_path / "c.json"), "--bits", "5"]))
    recipe = settings.recipe(values)
    assert (recipe.grid.bits, recipe.grid.group_size, recipe.solver.act_order, values["width"]) == (5, 64, True, 9)
    assert settings.recipe(settings.resolve(parser.parse_args([]))) == Recipe(GridSpec(group_size=32))
    (tmp_path / "bad.json").write_text('{"kernel": 3}')
    with pytest.raises(ConfigError, match="unknown configuration key 'kernel'"):
        settings.resolve(parser.parse_args(["--config", str(tmp_path / "bad.json")]))


def test_yaml_config_files_read_like_json_and_need_pyyaml_only_when_used(tmp_path, monkeypatch):
    (tmp_path / "c.yaml").write_text("bits: 3\ngroup-size: 64\nact_order: yes\n")
    if importlib.util.find_spec("yaml") is not None:
        assert load_config_file(tmp_path / "c.yaml") == {"bits": 3, "group_size": 64, "act_order": True}
    monkeypatch.setitem(sys.modules, "yaml", None)
    with pytest.raises(ConfigError, match="needs PyYAML: pip install pyyaml"):
        load_config_file(tmp_path / "c.yaml")


def test_layer_stats_feed_solve_directly():
    p = make_problem(4, out=3, n=8)
    stats = LayerStats(8, name="fc")
    stats.update(p.X, p.X_tilde)
    result, report = solve(p.W, stats, GridSpec(bits=4), SolverSpec("qronos"))
    assert report.name == "fc" and report.samples == p.X.shape[0] and 0 < report.input_gap


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_scales_frozen_in_a_storage_dtype_are_exactly_representable_and_the_solver_rounds_against_them(dtype):
    torch = pytest.importorskip("torch")
    p = make_problem(5, out=6, n=32, bits=4, group_size=8)
    result, _ = solve(p.W, Statistics(p), GridSpec(bits=4, group_size=8, scale_dtype=dtype), SolverSpec("optq"))
    stored = torch.from_numpy(result.grid.scale.copy()).to(getattr(torch, dtype)).double().numpy()
    np.testing.assert_array_equal(stored, result.grid.scale)
    free = UniformGrid.fit(p.W, 4, group_size=8)
    assert np.abs(result.grid.scale / free.scale - 1).max() <= {"float32": 1e-7, "float16": 1e-3, "bfloat16": 8e-3}[dtype]
    np.testing.assert_array_equal(result.codes, optq(p.W, p.H, result.grid, damp=DEFAULT_DAMP, act_order=True).codes)
    with pytest.raises(ValueError, match="outside the float16 range"):
        UniformGrid.fit(p.W * 1e-9, 4).with_scales_in("float16")
