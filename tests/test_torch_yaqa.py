"""YAQA in the PyTorch adapter: Kronecker factors from sampled-label gradients, the pipeline, bad input."""

import pytest
import torch

pytest.importorskip("transformers")

from _torch_tiny import recipe, tiny_llama, token_batch  # noqa: E402
from torch import nn  # noqa: E402

from qronos_linalg import optq  # noqa: E402
from qronos_linalg.adapters.torch import quantize_causal_lm  # noqa: E402
from qronos_linalg.adapters.torch.hessians import kronecker_factors  # noqa: E402
from qronos_linalg.adapters.torch.layerwise import layer_weight_matrix  # noqa: E402


@pytest.fixture(scope="module")
def windows():
    return token_batch(3, 12)


def test_factors_are_the_sums_of_per_window_gradient_products(windows):
    """H_in = mean_b G_bᵀ G_b and H_out = mean_b G_b G_bᵀ with G_b the weight gradient of window b's loss
    against labels sampled from the model itself, window b's with seed + b (recomputed here with autograd,
    window by window); a share of the windows starting at ``first_window`` sums the same terms."""
    model = tiny_llama()
    name = "model.layers.1.mlp.down_proj"
    layer = dict(model.named_modules())[name]
    factors = kronecker_factors(model, windows, {name: layer}, seed=3, progress=False)[name]
    gradients = []
    for index in range(windows.shape[0]):
        logits = model(input_ids=windows[index : index + 1], use_cache=False).logits[0].float()
        generator = torch.Generator().manual_seed(3 + index)
        labels = torch.multinomial(torch.softmax(logits.detach(), -1), 1, generator=generator)[:, 0]
        (gradient,) = torch.autograd.grad(nn.functional.cross_entropy(logits, labels, reduction="sum"), layer.weight)
        gradients.append(gradient.double())
    H_in = sum(G.T @ G for G in gradients) / 3
    H_out = sum(G @ G.T for G in gradients) / 3
    torch.testing.assert_close(factors.H, H_in, rtol=1e-6, atol=1e-12)
    torch.testing.assert_close(factors.H_out, H_out, rtol=1e-6, atol=1e-12)
    assert factors.count == 3 and all(p.grad is None for p in model.parameters())
    tail = kronecker_factors(model, windows[1:], {name: layer}, seed=3, progress=False, average=False,
                             first_window=1)[name]
    torch.testing.assert_close(tail.H, sum(G.T @ G for G in gradients[1:]), rtol=1e-6, atol=1e-12)
    assert tail.count == 2


def test_yaqa_pipeline_rounds_every_block_linear_and_beats_rtn_on_its_own_objective(windows):
    model = tiny_llama()
    report = quantize_causal_lm(model, windows, recipe(algo="yaqa", bits=3), progress=False)
    layers = report["layers"]
    assert len(layers) == 14 and {layer["objective"] for layer in layers} == {"kronecker"}
    assert sum(layer["rel_error"] for layer in layers) < sum(layer["rel_error_rtn"] for layer in layers)
    assert report["time_split_s"]["gradients"] > 0 and report["time_split_s"]["quantized_forward"] == 0
    for name, result in report["results"].items():
        layer = dict(model.named_modules())[name]
        torch.testing.assert_close(layer_weight_matrix(layer).double(), result.weight.double(), rtol=0, atol=1e-6)


def test_yaqa_with_an_identity_output_factor_is_optq_on_the_input_factor(windows):
    """The adapter's YAQA layer solve, fed H_out = I, gives OPTQ's codes on H_in (the core's reduction)."""
    from qronos_linalg.recipe import GridSpec, SolverSpec, solve

    model = tiny_llama()
    name = "model.layers.0.mlp.up_proj"
    layer = dict(model.named_modules())[name]
    factors = kronecker_factors(model, windows, {name: layer}, progress=False)[name]
    factors.H_out = torch.eye(factors.H_out.shape[0], dtype=torch.float64)
    W = layer_weight_matrix(layer).double()
    result, _ = solve(W, factors, GridSpec(bits=3), SolverSpec("yaqa"))  # act-order, the recipe's default
    expected = optq(W, factors.H, result.grid, act_order=True)
    assert torch.equal(result.codes, expected.codes)


def test_a_model_without_a_language_model_head_is_refused():
    class Encoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = nn.ModuleList([nn.Sequential(nn.Linear(4, 4)) for _ in range(2)])

        def get_output_embeddings(self):
            return None

    with pytest.raises(ValueError, match="no language-model head"):
        kronecker_factors(Encoder(), token_batch(1, 4), progress=False)
    with pytest.raises(ValueError, match="has no act-order"):
        recipe(algo="rtn", act_order=True)


def _recording_solver(monkeypatch, algorithm, seen):
    """Replace a registered solver's run by one that records the statistics it is given (layer order)."""
    import dataclasses

    from qronos_linalg.recipe import SOLVERS

    solver = SOLVERS[algorithm]

    def run(W, S, grid, spec):
        seen.append({name: torch.as_tensor(value).clone() for name, value in S.items()})
        return solver.run(W, S, grid, spec)

    monkeypatch.setitem(SOLVERS, algorithm, dataclasses.replace(solver, run=run))


@pytest.mark.parametrize("x_mode", ["float", "block"])
def test_yaqa_qronos_takes_h_out_from_the_gradient_windows_and_h_g_from_the_streams(monkeypatch, windows, x_mode):
    """H_out: the float model's gradient factors of the first ``gradient_windows`` windows; H and G: the two
    streams of Qronos' pipeline (equal to Qronos' for the first group, which sees the unquantized embeddings;
    with the float X, G ≠ H once the quantized stream departs)."""
    hybrid, plain = [], []
    _recording_solver(monkeypatch, "yaqa-qronos", hybrid)
    _recording_solver(monkeypatch, "qronos", plain)
    model, reference = tiny_llama(), tiny_llama()
    expected = kronecker_factors(reference, windows[:2], {name: layer for name, layer in reference.named_modules()
                                                          if name.startswith("model.layers.")
                                                          and isinstance(layer, nn.Linear)}, progress=False)
    report = quantize_causal_lm(model, windows, recipe(algo="yaqa-qronos", bits=3), x_mode=x_mode,
                                gradient_windows=2, progress=False)
    quantize_causal_lm(tiny_llama(), windows, recipe(algo="qronos", bits=3), x_mode=x_mode, progress=False)
    names = [layer["name"] for layer in report["layers"]]
    assert len(hybrid) == len(names) == 14 and report["algorithms"] == {"yaqa-qronos": 14}
    for name, statistics in zip(names, hybrid):
        torch.testing.assert_close(statistics["H_out"], expected[name].H_out, rtol=1e-10, atol=0)
    for name in ("H", "G"):
        torch.testing.assert_close(hybrid[0][name], plain[0][name], rtol=0, atol=0)
    departed = [not torch.equal(statistics["G"], statistics["H"]) for statistics in hybrid[3:]]
    assert all(departed) == (x_mode == "float")  # block X: each block's first group has X = X̃, so G = H
    assert {layer["objective"] for layer in report["layers"]} == {"output"}  # its own errors: the output error
    assert report["time_split_s"]["gradients"] > 0 and report["time_split_s"]["quantized_forward"] > 0


def test_yaqa_qronos_refuses_what_it_cannot_do(windows):
    with pytest.raises(ValueError, match="gradient_windows must be at least 1"):
        quantize_causal_lm(tiny_llama(), windows, recipe(algo="yaqa-qronos", bits=3), gradient_windows=0,
                           progress=False)
    with pytest.raises(ValueError, match=r"yaqa-qronos runs in one process with the whole model loaded"):
        quantize_causal_lm(tiny_llama(), windows, recipe(algo="yaqa-qronos", bits=3), parallel=object(),
                           progress=False)
