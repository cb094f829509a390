"""Reuse of settled submodules' outputs in the quantized stream: which submodules, exactness, restoring."""

import pytest
import torch
from hypothesis import given, settings, strategies as st
from torch import nn

pytest.importorskip("transformers")

from _torch_tiny import recipe, tiny_gemma3, tiny_llama, token_batch  # noqa: E402

from qronos_linalg.adapters.torch import quantize_causal_lm  # noqa: E402
from qronos_linalg.adapters.torch.reuse import OutputReuse, settled_modules  # noqa: E402

LLAMA_LAYERS = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]


@pytest.mark.parametrize("quantized, settled", [
    (set(), []),
    ({"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"},
     ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"]),
    (set(LLAMA_LAYERS[:4]), ["self_attn"]),
    (set(LLAMA_LAYERS[:6]), ["self_attn", "mlp.gate_proj", "mlp.up_proj"]),
    (set(LLAMA_LAYERS), ["self_attn", "mlp"]),
])
def test_settled_modules_are_the_largest_with_every_layer_quantized(quantized, settled):
    block = tiny_llama().model.layers[0]
    assert settled_modules(block, LLAMA_LAYERS, quantized) == settled


class _Counting(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(3, 2)
        self.calls = 0

    def forward(self, x, *, scale=1.0):
        self.calls += 1
        return self.linear(x) * scale


class _Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.inner = _Counting()

    def forward(self, x, scale=1.0):
        return self.inner(x, scale=scale) + 1


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**16), change=st.sampled_from(["none", "value", "dtype", "kwarg"]))
def test_a_kept_output_is_returned_only_for_equal_arguments(seed, change):
    torch.manual_seed(seed)
    block, x = _Block(), torch.randn(4, 3)
    with OutputReuse(block) as reuse:
        reuse.keep(["inner"])
        run = reuse.runs([lambda: block(x)])[0]
        first = run()
        again = {"none": lambda: block(x.clone()), "value": lambda: block(x + 1e-3),
                 "dtype": lambda: block(x.to(torch.float64)), "kwarg": lambda: block(x, scale=2.0)}[change]
        if change == "dtype":
            block.inner.linear.double()
        second = reuse.runs([again])[0]()
        expected_calls = 1 if change == "none" else 2
        assert block.inner.calls == expected_calls and reuse.reused == (1 if change == "none" else 0)
        if change == "none":
            assert torch.equal(first, second)
    assert "forward" not in block.inner.__dict__  # the submodule's own forward is back


def test_returned_outputs_are_copies_and_forwards_outside_the_runs_are_left_alone():
    block, x = _Block(), torch.randn(4, 3)
    with OutputReuse(block) as reuse:
        reuse.keep(["inner"])
        run = reuse.runs([lambda: block.inner(x)])[0]
        kept = run()
        kept.add_(100.0)  # the caller writes into what it got: the kept copy is unchanged
        assert torch.allclose(run(), block.inner.linear(x)) and reuse.reused == 1
        block(x)  # not one of the wrapped runs: runs the submodule, keeps nothing
        assert block.inner.calls == 2
        reuse.keep([])  # forgetting restores the forward at once
        assert "forward" not in block.inner.__dict__


def test_an_instance_forward_is_wrapped_and_put_back():
    block, x = _Block(), torch.randn(4, 3)
    own = block.inner.forward
    block.inner.forward = lambda *args, **kwargs: own(*args, **kwargs) * 0.0  # e.g. an offloading wrapper
    with OutputReuse(block) as reuse:
        reuse.keep(["inner"])
        run = reuse.runs([lambda: block(x)])[0]
        assert torch.equal(run(), torch.ones(4, 2)) and torch.equal(run(), torch.ones(4, 2))
        assert reuse.reused == 1
    assert block.inner.forward(x).abs().max() == 0.0 and "forward" in block.inner.__dict__


def _no_reuse(monkeypatch):
    monkeypatch.setattr(OutputReuse, "keep", lambda self, names: None)


@pytest.mark.parametrize("build, advancing_forwards", [(tiny_llama, 0), (tiny_gemma3, 1)], ids=["llama", "gemma3"])
@pytest.mark.parametrize("algorithm", ["optq", "qronos"])
def test_reuse_changes_no_code_and_attention_runs_twice_per_window(monkeypatch, build, advancing_forwards,
                                                                     algorithm):
    """Against the pipeline with reuse switched off: bitwise the same weights; the quantized blocks'
    o_proj (inside attention) runs in the o and gate/up forwards only, not in the down forward and the
    residual check (OPTQ: plus the forward that finds the groups; every block but the last: plus the
    model forward that records the blocks' arguments). Gemma 3 normalises down_proj's output before the
    residual, so its stream advances by one more forward per window, which reuses attention too."""
    calibration = token_batch(3, 16)

    def run():
        model = build()
        o_calls = {"count": 0}
        blocks = list(model.model.layers)
        for block in blocks:
            block.self_attn.o_proj.register_forward_pre_hook(
                lambda module, args: o_calls.__setitem__("count", o_calls["count"] + 1)
                if any(module is b.self_attn.o_proj for b in blocks) else None)
        quantize_causal_lm(model, calibration, recipe(algo=algorithm, bits=3), progress=False, errors=False)
        return model.state_dict(), o_calls["count"], len(blocks)

    reused, reused_calls, blocks = run()
    with monkeypatch.context() as patch:
        _no_reuse(patch)
        plain, plain_calls, _ = run()
    assert reused.keys() == plain.keys() and all(torch.equal(reused[key], plain[key]) for key in plain)
    discover = 1 if algorithm == "optq" else 0
    windows = len(calibration)
    recording = blocks - 1
    assert reused_calls == blocks * (2 * windows + discover) + recording
    assert plain_calls == blocks * ((3 + advancing_forwards) * windows + 1 + discover) + recording
