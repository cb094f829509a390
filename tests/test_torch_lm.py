"""Two-stream block pipeline on a tiny random Llama: invariants, save/reload, bad input."""

import json

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("safetensors")

from _torch_tiny import recipe, tiny_gemma3, tiny_llama, token_batch  # noqa: E402

from qronos_linalg import UniformGrid  # noqa: E402
from qronos_linalg.adapters.torch import find_block_list, quantize_causal_lm  # noqa: E402
from qronos_linalg.adapters.torch.rotation import rotate_llama  # noqa: E402
from qronos_linalg.adapters.torch.save import (  # noqa: E402
    QUANTIZATION_JSON,
    QUANTIZATION_TENSORS,
    load_quantized,
    save_quantized,
)


LLAMA_GROUPS = [["q_proj", "k_proj", "v_proj"], ["o_proj"], ["gate_proj", "up_proj"], ["down_proj"]]


def _final_block_output(model, ids):
    """Input of the final norm (= output of the last decoder block)."""
    captured = []
    handle = model.model.norm.register_forward_pre_hook(lambda m, args: captured.append(args[0]))
    with torch.no_grad():
        model(input_ids=ids, use_cache=False)
    handle.remove()
    return torch.cat(captured)


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids, use_cache=False).logits


@pytest.fixture(scope="module")
def calibration():
    return token_batch(3, 16)


def test_block_list_is_found_without_names():
    model = tiny_llama()
    name, blocks = find_block_list(model)
    assert name == "model.layers" and blocks is model.model.layers


@pytest.mark.parametrize("build", [tiny_llama, tiny_gemma3], ids=["llama", "gemma3"])
def test_both_streams_advance_and_match_the_two_models(calibration, build):
    """Gemma 3's blocks alternate sliding-window (window 6 < 16 tokens) and global attention with different
    rotary bases: the streams only match the models if each block gets its own mask and rotary table."""
    model = build()
    float_model = build()
    streams = {}

    def keep(index, float_stream, quant_stream):
        streams[index] = (torch.cat(float_stream), torch.cat(quant_stream))

    quantize_causal_lm(model, calibration, recipe(algo="qronos", bits=3), x_mode="float", progress=False,
                       on_block=keep)
    last = max(streams)
    assert sorted(streams) == list(range(len(model.model.layers)))
    torch.testing.assert_close(streams[last][0], _final_block_output(float_model, calibration), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(streams[last][1], _final_block_output(model, calibration), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(streams[0][0], streams[0][1])  # quantization moved the quantized stream


def test_groups_follow_the_block_and_x_tilde_departs_after_first_group(calibration):
    model = tiny_llama()
    report = quantize_causal_lm(model, calibration, recipe(algo="gpfq", bits=3), x_mode="float", progress=False)
    names = [layer["name"] for layer in report["layers"]]
    expected = [f"model.layers.{b}.{part}.{leaf}" for b in range(2) for group in LLAMA_GROUPS for leaf in group
                for part in (["self_attn"] if leaf.endswith(("q_proj", "k_proj", "v_proj", "o_proj")) else ["mlp"])]
    assert names == expected
    gaps = [layer["input_gap"] for layer in report["layers"]]
    assert gaps[:3] == [0.0, 0.0, 0.0]  # q/k/v of block 0 see the unquantized embeddings
    assert all(gap > 0 for gap in gaps[3:])
    assert all(layer["samples"] == calibration.numel() for layer in report["layers"])


def test_block_x_mode_uses_quantized_inputs_for_both(calibration):
    model = tiny_llama()
    streams = []
    quantize_causal_lm(model, calibration, recipe(algo="rtn", bits=4), x_mode="block", progress=False,
                       on_block=lambda i, f, q: streams.append(f is q))
    assert streams == [True, True]


def test_data_driven_solver_beats_rtn_on_output_error(calibration):
    model = tiny_llama()
    report = quantize_causal_lm(model, calibration, recipe(algo="qronos", bits=3), progress=False)
    assert all(layer["rel_error"] <= layer["rel_error_rtn"] + 1e-12 for layer in report["layers"])


@pytest.mark.parametrize("hadamard, act_bits", [(False, None), (True, 4)])
def test_saved_folder_reloads_and_reproduces_outputs(tmp_path, calibration, hadamard, act_bits):
    model = tiny_llama()
    transforms = {"hadamard": rotate_llama(model, seed=2)} if hadamard else {}
    report = quantize_causal_lm(model, calibration, recipe(algo="optq", bits=3, group_size=16,
                                                                act_bits=act_bits), progress=False)
    folder = save_quantized(model, tmp_path / "quantized", report, transforms=transforms)
    reloaded, record = load_quantized(folder)
    ids = token_batch(2, 20, seed=7)
    torch.testing.assert_close(_logits(reloaded, ids), _logits(model, ids), atol=1e-5, rtol=1e-5)
    from safetensors.torch import load_file

    tensors = load_file(str(folder / QUANTIZATION_TENSORS))
    name = "model.layers.1.mlp.up_proj"
    layer = record["layers"][name]
    grid = UniformGrid(tensors[f"{name}.scale"], tensors[f"{name}.zero"], layer["bits"],
                       group_size=layer["group_size"])
    saved_weight = dict(reloaded.named_modules())[name].weight.detach().double()
    torch.testing.assert_close(grid.dequantize(tensors[f"{name}.codes"]).double(), saved_weight, atol=1e-6, rtol=0)
    assert json.loads((folder / QUANTIZATION_JSON).read_text())["recipe"]["act_bits"] == act_bits


def test_existing_output_folder_is_refused(tmp_path, calibration):
    model = tiny_llama()
    report = quantize_causal_lm(model, calibration, recipe(algo="rtn", bits=4), progress=False)
    (tmp_path / "taken").mkdir()
    with pytest.raises(FileExistsError, match="overwrite"):
        save_quantized(model, tmp_path / "taken", report)
    assert list((tmp_path / "taken").iterdir()) == []
    save_quantized(model, tmp_path / "taken", report, overwrite=True)
    assert (tmp_path / "taken" / QUANTIZATION_JSON).exists()
    assert [p.name for p in tmp_path.iterdir()] == ["taken"]  # no temporary left behind


def test_missing_block_list_says_how_to_pass_it():
    model = torch.nn.Sequential(torch.nn.Embedding(10, 4), torch.nn.Linear(4, 10))
    with pytest.raises(ValueError, match="blocks="):
        quantize_causal_lm(model, token_batch(1, 4), recipe(), progress=False)


def test_wrong_block_path_lists_the_candidates(calibration):
    with pytest.raises(ValueError, match="model.layers"):
        quantize_causal_lm(tiny_llama(), calibration, recipe(), blocks="model.blocks", progress=False)


def test_non_finite_activations_name_the_layer(calibration):
    model = tiny_llama()
    with torch.no_grad():
        model.model.layers[0].post_attention_layernorm.weight[0] = float("nan")
    with pytest.raises(ValueError, match=r"model\.layers\.0\.mlp\.gate_proj"):
        quantize_causal_lm(model, calibration, recipe(algo="rtn"), progress=False)


def test_empty_calibration_is_rejected():
    with pytest.raises(ValueError, match="calibration"):
        quantize_causal_lm(tiny_llama(), torch.zeros(0, 8, dtype=torch.int64), recipe(), progress=False)


def _count_block_forwards(model):
    """Forward calls of each decoder block, split into the block itself (quantized stream) and copies of it
    (the float block: a deep copy keeps the counting hook)."""
    counts = {"quantized": 0, "float": 0}
    blocks = list(model.model.layers)

    def count(module, args):
        counts["quantized" if any(module is block for block in blocks) else "float"] += 1

    for block in blocks:
        block.register_forward_pre_hook(count)
    return counts


@pytest.mark.parametrize("algorithm, x_mode, float_forwards", [("qronos", "float", 3), ("qronos", "block", 3),
                                                                ("optq", "float", 0), ("rtn", "float", 0)])
def test_each_block_runs_at_most_one_float_forward_per_window_and_rtn_runs_none(calibration, algorithm, x_mode,
                                                                                  float_forwards):
    """Float stream: one forward per window and block (it captures X for every group and advances the
    stream); none where X is not needed (OPTQ, and RTN without errors, which runs no calibration at all)."""
    model = tiny_llama()
    counts = _count_block_forwards(model)
    errors = algorithm != "rtn"
    quantize_causal_lm(model, None if algorithm == "rtn" else calibration, recipe(algo=algorithm, bits=3),
                       x_mode=x_mode, errors=errors and algorithm == "qronos", progress=False)
    blocks = len(model.model.layers)
    assert counts["float"] == float_forwards * blocks
    if algorithm == "rtn":
        assert counts["quantized"] == 0


def test_x_mode_none_takes_the_solvers_default(monkeypatch):
    import qronos_linalg.adapters.torch as adapter

    calibration = token_batch(2, 12)
    monkeypatch.setitem(adapter.SOLVER_X_MODES, "qronos", "block")
    assert adapter.default_x_mode("qronos") == "block" and adapter.default_x_mode("gptaq") == "float"
    default = quantize_causal_lm(tiny_llama(), calibration, recipe(algo="qronos", bits=3), progress=False)
    explicit = quantize_causal_lm(tiny_llama(), calibration, recipe(algo="qronos", bits=3), x_mode="block",
                                  progress=False)
    other = quantize_causal_lm(tiny_llama(), calibration, recipe(algo="qronos", bits=3), x_mode="float",
                               progress=False)
    assert default["x_mode"] == "block" and other["x_mode"] == "float"
    codes = [{name: r.codes for name, r in run["results"].items()} for run in (default, explicit, other)]
    assert all(torch.equal(codes[0][name], codes[1][name]) for name in codes[0])
    assert not all(torch.equal(codes[0][name], codes[2][name]) for name in codes[0])
