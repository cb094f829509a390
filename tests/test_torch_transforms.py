"""Function-preserving transforms (Hadamard rotation, SmoothQuant), MagR, activation quantization."""

import copy

import pytest
import torch
from hypothesis import given, settings, strategies as st

pytest.importorskip("transformers")

from _torch_tiny import tiny_gemma3, tiny_llama, token_batch  # noqa: E402

from qronos_linalg.activations import fake_quantize_per_token  # noqa: E402
from qronos_linalg.magr import linf_clip_level, magr, magr_objective, prox_linf  # noqa: E402
from qronos_linalg.adapters.torch.rotation import rotate_llama  # noqa: E402
from qronos_linalg.adapters.torch.smoothquant import smooth_llama  # noqa: E402


# Llama's RMSNorm and rotary embedding compute in float32 even in a float64 model, so "float precision"
# here is float32's: a wrong rotation changes logits by O(1).
FLOAT32_TOLERANCE = {"atol": 1e-5, "rtol": 1e-5}


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


@pytest.mark.parametrize("tie", [True, False])
def test_rotated_model_computes_the_same_function(tie):
    model = tiny_llama(tie=tie).double()
    ids = token_batch(2, 24)
    reference = _logits(model, ids)
    rotated = copy.deepcopy(model)
    spec = rotate_llama(rotated, seed=5)
    torch.testing.assert_close(_logits(rotated, ids), reference, **FLOAT32_TOLERANCE)
    # the rotation really changed the weights and made every norm weight 1
    assert not torch.allclose(rotated.model.layers[0].self_attn.q_proj.weight, model.model.layers[0].self_attn.q_proj.weight)
    assert all(bool((p == 1).all()) for n, p in rotated.named_parameters() if "norm" in n)
    assert spec["residual"]["size"] == 48 and spec["down_proj_input"]["size"] == 80


def test_rotation_rejects_non_llama_models():
    with pytest.raises(ValueError, match="Llama-style"):
        rotate_llama(torch.nn.Sequential(torch.nn.Linear(4, 4)))


def test_rotation_refuses_gemma_blocks_and_leaves_the_model_unchanged():
    """Gemma 3 has every Llama part name but also norms on the residual branches, which a residual-stream
    rotation does not commute with."""
    model = tiny_gemma3()
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError, match="post_feedforward_layernorm"):
        rotate_llama(model)
    assert all(torch.equal(before[name], tensor) for name, tensor in model.state_dict().items())


def test_smoothquant_preserves_function_and_flattens_activation_maxima():
    model = tiny_llama().double()
    ids = token_batch(2, 24)
    reference = _logits(model, ids)
    smoothed = copy.deepcopy(model)
    smooth_llama(smoothed, ids, alpha=0.5)
    torch.testing.assert_close(_logits(smoothed, ids), reference, **FLOAT32_TOLERANCE)
    captured = {}
    for name, m in (("before", model), ("after", smoothed)):
        handle = m.model.layers[0].input_layernorm.register_forward_hook(
            lambda mod, a, out, name=name: captured.__setitem__(name, out.abs().amax(dim=(0, 1))))
        _logits(m, ids)
        handle.remove()
    spread = {k: float(v.max() / v.min()) for k, v in captured.items()}
    assert spread["after"] < spread["before"]


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10_000), alpha=st.floats(1e-3, 0.2))
def test_magr_lowers_objective_and_infinity_norm(seed, alpha):
    generator = torch.Generator().manual_seed(seed)
    X = torch.randn(60, 12, dtype=torch.float64, generator=generator)
    W = torch.randn(5, 12, dtype=torch.float64, generator=generator)
    H = X.T @ X
    V = magr(W, H, alpha, steps=50)
    assert bool((magr_objective(V, W, H, alpha) <= magr_objective(W, W, H, alpha) + 1e-9).all())
    assert bool((V.abs().amax(dim=1) <= W.abs().amax(dim=1) + 1e-9).all())


def _project_rows_onto_l1_ball(U: torch.Tensor) -> torch.Tensor:
    """Direct form: Euclidean projection of each row onto the unit ℓ1 ball by sorting (Duchi et al. 2008)."""
    magnitudes = U.abs()
    sorted_desc, _ = torch.sort(magnitudes, dim=1, descending=True)
    excess = torch.cumsum(sorted_desc, dim=1) - 1
    ranks = torch.arange(1, U.shape[1] + 1, dtype=U.dtype)
    support = (sorted_desc - excess / ranks > 0).sum(dim=1, keepdim=True).clamp(min=1)
    threshold = excess.gather(1, support - 1) / support.to(U.dtype)
    projected = torch.sign(U) * torch.clamp(magnitudes - threshold, min=0)
    return torch.where(magnitudes.sum(dim=1, keepdim=True) <= 1, U, projected)


@settings(max_examples=50, deadline=None)
@given(seed=st.integers(0, 10_000), scale=st.floats(0.01, 3.0), tau=st.floats(0.01, 5.0),
       zero_row=st.booleans(), ties=st.booleans())
def test_prox_linf_equals_moreau_form_with_sorted_l1_projection(seed, scale, tau, zero_row, ties):
    generator = torch.Generator().manual_seed(seed)
    U = scale * torch.randn(4, 9, dtype=torch.float64, generator=generator)
    if ties:
        U = U.round(decimals=1)
    if zero_row:
        U[0] = 0
    expected = U - tau * _project_rows_onto_l1_ball(U / tau)
    torch.testing.assert_close(prox_linf(U, tau), expected, atol=1e-12, rtol=1e-12)


@settings(max_examples=50, deadline=None)
@given(seed=st.integers(0, 10_000), tau=st.floats(0.01, 5.0), start_scale=st.floats(0.0, 10.0))
def test_clip_level_does_not_depend_on_the_warm_start(seed, tau, start_scale):
    """Newton from any start (below, at or above the root, or past every |uᵢ|) reaches the same level."""
    generator = torch.Generator().manual_seed(seed)
    magnitudes = torch.randn(6, 11, dtype=torch.float64, generator=generator).abs()
    start = start_scale * torch.rand(6, 1, dtype=torch.float64, generator=generator)
    cold = linf_clip_level(magnitudes, tau, torch.zeros(6, 1, dtype=torch.float64))
    torch.testing.assert_close(linf_clip_level(magnitudes, tau, start), cold, atol=1e-12, rtol=1e-12)
    clipped_mass = (magnitudes - cold).clamp(min=0).sum(dim=1, keepdim=True)
    inside = magnitudes.sum(dim=1, keepdim=True) <= tau
    assert bool(torch.where(inside, cold == 0, (clipped_mass - tau).abs() < 1e-9).all())


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), scale=st.floats(0.01, 3.0), tau=st.floats(0.01, 2.0))
def test_prox_linf_is_the_minimizer_among_perturbations(seed, scale, tau):
    generator = torch.Generator().manual_seed(seed)
    U = scale * torch.randn(3, 7, dtype=torch.float64, generator=generator)
    V = prox_linf(U, tau)

    def objective(candidate):
        return 0.5 * ((candidate - U) ** 2).sum(dim=1) + tau * candidate.abs().amax(dim=1)

    for _ in range(10):
        candidate = V + 0.05 * torch.randn(V.shape, dtype=torch.float64, generator=generator)
        assert bool((objective(V) <= objective(candidate) + 1e-12).all())


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), bits=st.sampled_from([2, 4, 8]))
def test_per_token_activation_quantization_properties(seed, bits):
    x = torch.randn(4, 6, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    x[0, 0] = 0
    q = fake_quantize_per_token(x, bits)
    torch.testing.assert_close(fake_quantize_per_token(q, bits), q, atol=1e-12, rtol=0)  # idempotent
    step = (x.amax(-1, keepdim=True).clamp(min=0) - x.amin(-1, keepdim=True).clamp(max=0)) / (2**bits - 1)
    assert bool(((q - x).abs() <= step / 2 + 1e-12).all())
    assert bool((q[0, 0] == 0).all())
    assert all(len(torch.unique(row)) <= 2**bits for row in q.reshape(-1, 16))


def test_activation_bits_out_of_range_are_rejected():
    with pytest.raises(ValueError, match="activation bits"):
        fake_quantize_per_token(torch.zeros(2, 3), 16)
