"""Deployment exports (adapters/torch/export.py, ``qronos export``) of a tiny Llama, re-loaded by their
third-party readers: transformers + compressed-tensors, and transformers' GGUF loader (gguf-py)."""

import json

import numpy as np
import pytest

pytest.importorskip("transformers")
pytest.importorskip("gguf")
torch = pytest.importorskip("torch")

from _torch_tiny import byte_tokenizer, recipe, tiny_llama  # noqa: E402

from qronos_linalg import UniformGrid, cli  # noqa: E402
from qronos_linalg.adapters.torch import export as ex  # noqa: E402
from qronos_linalg.adapters.torch import export_cli  # noqa: E402
from qronos_linalg.adapters.torch.lm import quantize_causal_lm  # noqa: E402
from qronos_linalg.adapters.torch.save import load_quantized, save_quantized  # noqa: E402

#: Dimensions where groups of 32 and 64 fit every linear (in_features 64 and 128).
HIDDEN, INTERMEDIATE = 64, 128
TEXT = " ".join(f"The quick brown fox jumps over the lazy dog while numbers {i} and {i * i} are counted."
                for i in range(12))
SEQ_LEN = 48
#: The reloaded model and the in-memory model with the file's tensors have bitwise-equal parameters and run
#: the same transformers code; only summation order could differ (fp32 logits of size ~1: ~1e-6).
LOGIT_TOL = 1e-4
#: Against the quantized model itself the file also rounds embeddings and norms to float16/bfloat16.
STORAGE_LOGIT_TOL = 2e-2


@pytest.fixture(autouse=True)
def single_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def windows():
    ids = byte_tokenizer()(TEXT, add_special_tokens=False)["input_ids"]
    return torch.tensor(ids[: 2 * SEQ_LEN]).reshape(2, SEQ_LEN)


def quantized(**options):
    """A tiny Llama rounded in place with RTN on ``options`` (recipe keys); returns (model, report)."""
    model = tiny_llama(hidden=HIDDEN, intermediate=INTERMEDIATE)
    report = quantize_causal_lm(model, None, recipe(algo="rtn", **options), errors=False, progress=False)
    return model, report


def expected_linear_bytes(results, scale_bytes, ct=True, block=None):
    """Bytes of the quantized linears: codes packed in int32 words, scales, zero points, shapes (CT) or blocks."""
    total = 0
    for result in results.values():
        out, n = result.codes.shape
        grid = result.grid
        if not ct:
            total += out * n // ex.GGUF_BLOCK * block.block_bytes
            continue
        total += out * (n * grid.bits // 32) * 4 + out * grid.n_groups * scale_bytes + 2 * 8
        if not grid.symmetric:
            total += -(-out * grid.bits // 32) * grid.n_groups * 4
    return total


# ------------------------------------------------------------------------------------------------ packing


@pytest.mark.parametrize("bits, cols", [(4, 64), (4, 44), (8, 37)])
def test_pack_int32_is_compressed_tensors_packing(bits, cols):
    helpers = pytest.importorskip("compressed_tensors.compressors.pack_quantized.helpers")
    codes = torch.randint(0, 2**bits, (6, cols), generator=torch.Generator().manual_seed(bits))
    signed = (codes - 2 ** (bits - 1)).to(torch.int8)
    assert torch.equal(ex.pack_int32(codes, bits), helpers.pack_to_int32(signed, bits))
    assert torch.equal(ex.pack_int32(codes.T, bits).T, helpers.pack_to_int32(signed, bits, packed_dim=0))
    assert torch.equal(helpers.unpack_from_int32(ex.pack_int32(codes, bits), bits, codes.shape), signed)


@pytest.mark.parametrize("name", list(ex.GGUF_TYPES))
def test_gguf_blocks_dequantize_to_the_grid_values_with_gguf_py(name):
    from gguf import GGMLQuantizationType, dequantize

    block = ex.GGUF_TYPES[name]
    rng = np.random.default_rng(0)
    out, n, group_size = 3, 128, 64
    codes = rng.integers(1 if block.bits == 8 else 0, 2**block.bits, (out, n)).astype(np.uint8)
    scale = rng.uniform(0.01, 0.1, (out, n // group_size)).astype(np.float16).astype(np.float64)
    zero = np.full(scale.shape, 2.0 ** (block.bits - 1))
    if block.with_min:
        zero[:, 0] = 0  # offsets 0 and −8·scale: fp16 numbers
    data = ex.pack_gguf_blocks(codes, scale, zero, group_size, block)
    assert data.shape == (out, n // ex.GGUF_BLOCK * block.block_bytes)
    grid = UniformGrid(scale, zero, block.bits, group_size=group_size)
    values = dequantize(data, GGMLQuantizationType[name])
    assert np.array_equal(values.astype(np.float64), grid.dequantize(codes))


# ------------------------------------------------------------------------------------- compressed-tensors


@pytest.mark.parametrize("options, dtype, reader_dtype", [
    (dict(bits=4, group_size=32, sym=False, scale_dtype="float16"), None, "float16"),
    (dict(bits=4, group_size=32, sym=False, scale_dtype="float16"), "float32", "float32"),
    (dict(bits=4, group_size=64, sym=True, scale_dtype="bfloat16"), None, "float32"),
    (dict(bits=8, group_size=None, sym=True, scale_dtype="float32"), None, "float32"),
    (dict(bits=8, group_size=32, sym=False, scale_dtype="bfloat16"), None, "bfloat16"),
])
def test_compressed_tensors_reloads_with_the_grids_weights_and_logits(tmp_path, windows, options, dtype,
                                                                      reader_dtype):
    pytest.importorskip("compressed_tensors")
    model, report = quantized(**options)
    results = report["results"]
    out = ex.write_compressed_tensors(model, results, tmp_path / "ct", tokenizer=byte_tokenizer(), dtype=dtype,
                                      report=report)
    check = ex.verify_export(out, model, results, windows)
    assert check["weights_exact"] and check["weight_dtype"] == reader_dtype, check
    assert check["reader"].endswith("(packed)" if options["sym"] else "(dequantize=True)")
    assert check["max_logit_diff"] <= LOGIT_TOL and check["max_logit_diff_quantized"] <= STORAGE_LOGIT_TOL, check
    if reader_dtype == "float32" and (dtype or options["scale_dtype"]) == "float32":
        assert check["max_weight_diff"] == 0 and check["max_logit_diff_quantized"] <= LOGIT_TOL
    stored = dtype or options["scale_dtype"]
    sizes = ex.export_sizes(out)
    assert sizes["linears"] == expected_linear_bytes(results, 4 if stored == "float32" else 2)
    assert sizes["linears_bf16"] == sum(2 * r.codes.numel() for r in results.values())
    config = json.loads((out / "config.json").read_text())
    quantization = config["quantization_config"]
    assert quantization["quant_method"] == "compressed-tensors" and quantization["format"] == "pack-quantized"
    assert quantization["ignore"] == ["lm_head"] and config["dtype"] == stored
    weights = quantization["config_groups"]["group_0"]["weights"]
    assert weights["num_bits"] == options["bits"] and weights["symmetric"] == options["sym"]
    assert weights["strategy"] == ("channel" if options["group_size"] is None else "group")
    assert weights["group_size"] == options["group_size"]
    record = json.loads((out / ex.QUANTIZATION_JSON).read_text())
    assert record["export"]["format"] == "compressed-tensors" and len(record["layers"]) == len(results)
    assert len(json.loads((out / ex.REPORT_JSON).read_text())["layers"]) == len(results)


@pytest.mark.parametrize("options", [dict(bits=4, group_size=32, sym=False), dict(bits=8, group_size=None, sym=True)])
def test_compressed_tensors_tensors_equal_what_its_own_compressor_writes(tmp_path, options):
    """compressed-tensors quantizes the (on-grid) weights with our scales and zero points and packs them itself;
    every tensor and the quantization_config must equal ours."""
    pytest.importorskip("compressed_tensors")
    from compressed_tensors.compressors import ModelCompressor
    from compressed_tensors.quantization import QuantizationStatus, apply_quantization_config
    from safetensors.torch import load_file

    model, report = quantized(scale_dtype="float32", **options)
    results = report["results"]
    out = ex.write_compressed_tensors(model, results, tmp_path / "ct")
    ours = load_file(str(out / ex.MODEL_FILE))
    quantization = json.loads((out / "config.json").read_text())["quantization_config"]
    from transformers import CompressedTensorsConfig

    reference = tiny_llama(hidden=HIDDEN, intermediate=INTERMEDIATE)
    reference.load_state_dict(model.state_dict())
    scheme_config = CompressedTensorsConfig(**quantization).quantization_config
    apply_quantization_config(reference, scheme_config)
    modules = dict(reference.named_modules())
    offset = 2 ** (options["bits"] - 1)
    for name, result in results.items():
        modules[name].weight_scale.data.copy_(result.grid.scale.to(torch.float32))
        if not options["sym"]:
            modules[name].weight_zero_point.data.copy_((result.grid.zero - offset).to(torch.int8))
        modules[name].quantization_status = QuantizationStatus.FROZEN
    compressor = ModelCompressor.from_pretrained_model(reference, "pack-quantized")
    compressor.compress_model(reference)
    theirs = {key: value for key, value in reference.state_dict().items() if key != "lm_head.weight"}
    assert sorted(theirs) == sorted(ours)
    for key, value in theirs.items():
        assert value.dtype == ours[key].dtype and torch.equal(value, ours[key]), key
    compressor.update_config(str(tmp_path))  # writes config.json there
    written = json.loads((tmp_path / "config.json").read_text())["quantization_config"]
    assert written["config_groups"] == quantization["config_groups"] and written["ignore"] == quantization["ignore"]


# ------------------------------------------------------------------------------------------------- GGUF


@pytest.mark.parametrize("options, gguf_type, dtype", [
    (dict(bits=4, group_size=32, sym=True), "Q4_0", None),
    (dict(bits=4, group_size=64, sym=True), "Q4_1", "float32"),
    (dict(bits=5, group_size=32, sym=True), None, None),
    (dict(bits=8, group_size=None, sym=True), None, "float32"),
])
def test_gguf_reloads_with_the_grids_weights_and_logits(tmp_path, windows, options, gguf_type, dtype):
    from gguf import GGUFReader

    model, report = quantized(scale_dtype="float16", **options)
    results = report["results"]
    out = ex.write_gguf(model, results, tmp_path / "g", gguf_type=gguf_type, tokenizer=byte_tokenizer(),
                        dtype=dtype, report=report)
    check = ex.verify_export(out, model, results, windows)
    assert check["weights_exact"] and check["max_weight_diff"] == 0, check
    assert check["max_logit_diff"] <= LOGIT_TOL and check["max_logit_diff_quantized"] <= STORAGE_LOGIT_TOL, check
    if dtype == "float32":
        assert check["max_logit_diff_quantized"] <= LOGIT_TOL
    name = gguf_type or {4: "Q4_0", 5: "Q5_0", 8: "Q8_0"}[options["bits"]]
    reader = GGUFReader(out / ex.GGUF_FILE)
    types = {tensor.name: tensor.tensor_type.name for tensor in reader.tensors}
    assert types["blk.0.attn_q.weight"] == name and types["blk.0.attn_norm.weight"] == "F32"
    assert types["token_embd.weight"] == ("F32" if dtype == "float32" else "F16") and "output.weight" not in types
    sizes = ex.export_sizes(out)
    assert sizes["linears"] == expected_linear_bytes(results, 2, ct=False, block=ex.GGUF_TYPES[name])
    assert json.loads((out / ex.QUANTIZATION_JSON).read_text())["export"]["block_types"] == {name: len(results)}


def test_gguf_q4_1_holds_asymmetric_grids_whose_offsets_are_fp16_numbers(tmp_path, windows):
    """Zero points with power-of-two scales: every offset −zero·scale is an fp16 number, so Q4_1 is exact."""
    model = tiny_llama(hidden=HIDDEN, intermediate=INTERMEDIATE)
    modules = dict(model.named_modules())
    rng = np.random.default_rng(1)
    results = {}
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and name != "lm_head":
            out, n = module.weight.shape
            scale = 2.0 ** -rng.integers(6, 9, (out, n // 32)).astype(np.float64)
            zero = rng.integers(0, 16, (out, n // 32)).astype(np.float64)
            grid = UniformGrid(torch.tensor(scale), torch.tensor(zero), 4, group_size=32)
            codes = grid.quantize(module.weight.detach().double())
            with torch.no_grad():
                module.weight.copy_(grid.dequantize(codes).float())
            results[name] = ex.LayerCodes(codes, grid)
    assert not all(result.grid.symmetric for result in results.values())
    out = ex.write_gguf(model, results, tmp_path / "g", gguf_type="Q4_1", dtype="float32")
    check = ex.verify_export(out, model, results, windows)
    assert check["weights_exact"] and check["max_logit_diff_quantized"] <= LOGIT_TOL, check
    assert modules["lm_head"].weight is modules["model.embed_tokens"].weight  # tied: stored once


def test_gguf_template_metadata_is_copied_and_a_mismatching_template_refused(tmp_path, windows):
    from gguf import GGUFReader

    model, report = quantized(bits=4, group_size=32, sym=True, scale_dtype="float16")
    results = report["results"]
    first = ex.write_gguf(model, results, tmp_path / "first", tokenizer=byte_tokenizer())
    template = first / ex.GGUF_FILE
    model8, report8 = quantized(bits=8, group_size=32, sym=True, scale_dtype="float16")
    second = ex.write_gguf(model8, report8["results"], tmp_path / "second", template=template)
    assert ex.verify_export(second, model8, report8["results"], windows)["weights_exact"]
    fields = lambda path: {k: f.contents() for k, f in GGUFReader(path).fields.items()  # noqa: E731
                           if not k.startswith("GGUF.") and k not in ("general.file_type",)}
    copied, source = fields(second / ex.GGUF_FILE), fields(template)
    assert copied == source and len(copied["tokenizer.ggml.tokens"]) == 256
    assert GGUFReader(second / ex.GGUF_FILE).fields["general.file_type"].contents() == ex.GGUF_TYPES["Q8_0"].file_type
    wider = tiny_llama(hidden=96, intermediate=128)
    wide_report = quantize_causal_lm(wider, None, recipe(algo="rtn", bits=4, group_size=32, sym=True,
                                                         scale_dtype="float16"), errors=False, progress=False)
    with pytest.raises(ValueError, match="does not describe this model: llama.embedding_length is 64"):
        ex.write_gguf(wider, wide_report["results"], tmp_path / "third", template=template)
    assert not (tmp_path / "third").exists()


# --------------------------------------------------------------------------------------------- refusals


@pytest.mark.parametrize("writer, options, kwargs, needle", [
    ("ct", dict(bits=3, group_size=32, scale_dtype="float16"), {}, "supported bits are 4 and 8"),
    ("ct", dict(bits=4, group_size=48, scale_dtype="float16"), {}, "group size 48 does not divide its 64 input"),
    ("ct", dict(bits=4, group_size=32), {}, "not exactly float32, float16 or bfloat16 numbers"),
    ("ct", dict(bits=4, group_size=32, scale_dtype="float32"), {"dtype": "float16"}, "not exactly float16 numbers"),
    ("ct", dict(bits=4, group_size=32, scale_dtype="float16"), {"dtype": "float64"}, "dtype must be one of"),
    ("gguf", dict(bits=4, group_size=32, sym=True, scale_dtype="float32"), {}, "not exactly float16 numbers"),
    ("gguf", dict(bits=4, group_size=32, sym=True), {}, "--scale-dtype float16"),
    ("gguf", dict(bits=4, group_size=16, sym=True, scale_dtype="float16"), {}, "not a multiple of the GGUF block"),
    ("gguf", dict(bits=4, group_size=32, sym=False, scale_dtype="float16"), {"gguf_type": "Q4_0"},
     "Q4_0 stores symmetric grids"),
    ("gguf", dict(bits=4, group_size=32, sym=False, scale_dtype="float16"), {}, "offsets of this grid are not fp16"),
    ("gguf", dict(bits=3, group_size=32, sym=True, scale_dtype="float16"), {}, "no GGUF block type holds a 3-bit"),
    ("gguf", dict(bits=8, group_size=32, sym=True, scale_dtype="float16"), {"gguf_type": "Q4_0"},
     "8-bit grid does not fit Q4_0"),
    ("gguf", dict(bits=4, group_size=32, sym=True, scale_dtype="float16"), {"gguf_type": "Q3_K"}, "gguf_type must be"),
    ("gguf", dict(bits=4, group_size=32, sym=True, scale_dtype="float16"), {"dtype": "bfloat16"},
     "float32 or float16"),
])
def test_grids_a_format_cannot_hold_are_refused_before_writing(tmp_path, writer, options, kwargs, needle):
    if writer == "ct":
        pytest.importorskip("compressed_tensors")
    model, report = quantized(**options)
    write = ex.write_compressed_tensors if writer == "ct" else ex.write_gguf
    with pytest.raises(ValueError, match=needle):
        write(model, report["results"], tmp_path / "out", **kwargs)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("fmt, options, kwargs, needle", [
    ("compressed-tensors", dict(bits=4, group_size=128), {}, "--scale-dtype"),
    ("compressed-tensors", dict(bits=3, scale_dtype="float16"), {}, "supported bits are 4 and 8"),
    ("compressed-tensors", dict(bits=4, group_size=128, scale_dtype="float16"), {}, "does not divide the input"),
    ("compressed-tensors", dict(bits=4, scale_dtype="float16"), {"dtype": "bfloat16"}, "use dtype float16"),
    ("gguf", dict(bits=4, symmetric=True, scale_dtype="bfloat16"), {}, "fp16 block scales"),
    ("gguf", dict(bits=4, group_size=16, symmetric=True, scale_dtype="float16"), {}, "multiple of 32"),
    ("gguf", dict(bits=4, scale_dtype="float16"), {"gguf_type": "Q4_0"}, "quantize with --sym"),
    ("gguf", dict(bits=6, symmetric=True, scale_dtype="float16"), {}, "no GGUF block type"),
    ("onnx", dict(bits=4), {}, "format must be one of"),
])
def test_a_recipe_a_format_cannot_hold_is_refused_before_rounding(fmt, options, kwargs, needle):
    from qronos_linalg.recipe import GridSpec

    in_features = [64, 128, 576]
    with pytest.raises(ValueError, match=needle):
        ex.check_grid_spec(fmt, GridSpec(**options), in_features, **kwargs)
    ex.check_grid_spec("compressed-tensors", GridSpec(bits=4, group_size=64, scale_dtype="float16"), in_features)
    ex.check_grid_spec("gguf", GridSpec(bits=4, group_size=64, symmetric=True, scale_dtype="float16"), in_features)


def test_a_model_whose_weights_are_not_its_codes_or_that_quantizes_activations_is_refused(tmp_path):
    model, report = quantized(bits=4, group_size=32, sym=True, scale_dtype="float16")
    with torch.no_grad():
        model.model.layers[0].mlp.up_proj.weight.add_(1e-3)
    with pytest.raises(ValueError, match="up_proj: the model's weight is not the grid's value"):
        ex.write_gguf(model, report["results"], tmp_path / "out")
    model = tiny_llama(hidden=HIDDEN, intermediate=INTERMEDIATE)
    calibration = torch.randint(0, 256, (2, 16))
    report = quantize_causal_lm(model, calibration, recipe(algo="rtn", bits=4, group_size=32, sym=True,
                                                           scale_dtype="float16", act_bits=8), errors=False,
                                progress=False)
    with pytest.raises(ValueError, match="activation quantization .*GGUF stores weights only"):
        ex.write_gguf(model, report["results"], tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("sym", [True, False])
def test_compressed_tensors_holds_per_token_activation_quantization(tmp_path, windows, sym):
    """The file's input-activation scheme (int, dynamic, per token, asymmetric) is this project's quantizer:
    the packed reader (symmetric weights) computes the in-memory act-quantized model's logits; the
    ``dequantize=True`` reader (asymmetric weights on CPU) loads a plain float model, which verify says."""
    model = tiny_llama(hidden=HIDDEN, intermediate=INTERMEDIATE)
    report = quantize_causal_lm(model, torch.randint(0, 256, (2, 16)), recipe(
        algo="rtn", bits=4, group_size=32, sym=sym, scale_dtype="float32", act_bits=4), errors=False, progress=False)
    out = ex.write_compressed_tensors(model, report["results"], tmp_path / "ct", tokenizer=byte_tokenizer())
    group = json.loads((out / "config.json").read_text())["quantization_config"]["config_groups"]["group_0"]
    assert {key: group["input_activations"][key] for key in ("num_bits", "type", "symmetric", "dynamic", "strategy")} \
        == {"num_bits": 4, "type": "int", "symmetric": False, "dynamic": True, "strategy": "token"}
    check = ex.verify_export(out, model, report["results"], windows)
    assert check["weights_exact"] and check["max_logit_diff"] <= LOGIT_TOL
    if sym:
        assert check["activations"] == "applied by the reader" and check["max_logit_diff_quantized"] <= LOGIT_TOL
    else:  # 4-bit activations change the logits by far more than float rounding: the reader dropped them
        assert check["activations"] == "dropped by the reader" and check["max_logit_diff_quantized"] > 1e-2


# -------------------------------------------------------------------------------------------- command line


def llama_folder_and_text(tmp_path):
    """A tiny Llama saved as a Hugging Face folder with its tokenizer, and a text file of TEXT's sentences."""
    model_dir = tmp_path / "llama"
    tiny_llama(hidden=HIDDEN, intermediate=INTERMEDIATE).save_pretrained(model_dir)
    byte_tokenizer().save_pretrained(model_dir)
    text = tmp_path / "corpus.txt"
    text.write_text("\n\n".join(TEXT.split(". ")))
    return model_dir, text


def dense_folder(path, **options):
    """A folder as ``qronos quantize-lm`` writes it (save_quantized) of the tiny Llama rounded on ``options``."""
    model, report = quantized(**options)
    return save_quantized(model, path, report, tokenizer=byte_tokenizer())


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("dense")
    return {
        "asym": dense_folder(root / "asym", bits=4, group_size=32, sym=False, scale_dtype="float16"),
        "sym": dense_folder(root / "sym", bits=4, group_size=32, sym=True, scale_dtype="float16"),
        "w3": dense_folder(root / "w3", bits=3, group_size=32, scale_dtype="float16"),
        "g48": dense_folder(root / "g48", bits=4, group_size=48, scale_dtype="float16"),
        "unfrozen": dense_folder(root / "unfrozen", bits=4, group_size=32, sym=True),
    }


def test_cli_constants_match_the_module():
    assert export_cli.FORMAT_NAMES == ex.FORMATS and export_cli.GGUF_TYPE_NAMES == tuple(ex.GGUF_TYPES)
    assert export_cli.DTYPE_CHOICES[1:] == ex.STORAGE_DTYPES


def test_quantize_lm_folder_exports_to_both_formats(tmp_path, capsys):
    pytest.importorskip("compressed_tensors")
    model_dir, text = llama_folder_and_text(tmp_path)
    assert cli.main(["quantize-lm", str(model_dir), "--algo", "optq", "--bits", "4", "--group-size", "32", "--sym",
                     "--scale-dtype", "float16", "--text-file", str(text), "--seq-len", "32", "--windows", "2",
                     "-o", str(tmp_path / "q"), "--format", "dense", "--quiet"]) == 0
    dense_bytes = (tmp_path / "q" / "model.safetensors").stat().st_size
    for fmt in ex.FORMATS:
        capsys.readouterr()
        out = tmp_path / fmt
        assert cli.main(["export", str(tmp_path / "q"), "--format", fmt, "-o", str(out), "--quiet", "--json"]) == 0
        summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert summary["sizes"]["file"] < dense_bytes / 3 and summary["layers"] == 14
        assert {"quantization.json", "quantization_report.json"} <= {p.name for p in out.iterdir()}
        record = json.loads((out / "quantization.json").read_text())
        assert record["recipe"]["solver"]["algorithm"] == "optq" and record["export"]["format"] == fmt


def test_export_verify_compares_on_real_text(tmp_path, folders, capsys):
    pytest.importorskip("gensim")
    assert cli.main(["export", str(folders["sym"]), "--format", "gguf", "-o", str(tmp_path / "g"), "--verify",
                     "--verify-seq-len", "32", "--quiet", "--report", str(tmp_path / "r.json")]) == 0
    check = json.loads((tmp_path / "r.json").read_text())["verification"]
    assert check["weights_exact"] and check["max_logit_diff"] <= LOGIT_TOL, check
    assert "weights exact" in capsys.readouterr().out


@pytest.mark.parametrize("folder, flags, needles", [
    ("w3", ["--format", "compressed-tensors"], ["3-bit weights cannot be exported", "supported bits are 4 and 8"]),
    ("g48", ["--format", "compressed-tensors"], ["group size 48 does not divide its 64 input features"]),
    ("unfrozen", ["--format", "compressed-tensors"], ["not exactly float32, float16 or bfloat16", "--scale-dtype"]),
    ("unfrozen", ["--format", "gguf"], ["not exactly float16 numbers", "--scale-dtype float16"]),
    ("asym", ["--format", "gguf", "--gguf-type", "Q4_0"], ["Q4_0 stores symmetric grids"]),
    ("asym", ["--format", "gguf"], ["Q4_1 stores the offset", "not fp16 numbers"]),
    ("sym", ["--format", "onnx"], ["--format", "invalid choice: 'onnx'"]),
    ("sym", ["--format", "gguf", "--gguf-type", "Q6_K"], ["--gguf-type", "must be one of"]),
    ("sym", ["--format", "compressed-tensors", "--gguf-type", "Q4_0"], ["apply to --format gguf only"]),
    ("sym", ["--format", "gguf", "--dtype", "bfloat16"], ["float32 or float16"]),
    ("sym", ["--format", "gguf", "--gguf-template", "absent.gguf"], ["GGUF template absent.gguf does not exist"]),
    ("absent", ["--format", "gguf"], ["quantized model folder", "does not exist"]),
    ("plain", ["--format", "gguf"], ["is not a folder written by qronos quantize-lm"]),
    ("sym", ["--format", "gguf", "-o", "no/such/folder/out"], ["does not exist"]),
    ("sym", ["--format", "gguf", "-o", "existing"], ["already exists", "--overwrite"]),
])
def test_bad_export_inputs_exit_2_with_one_line_and_write_nothing(tmp_path, folders, capsys, monkeypatch, folder,
                                                                  flags, needles):
    pytest.importorskip("compressed_tensors")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "existing").mkdir()
    (tmp_path / "plain").mkdir()
    source = folders.get(folder, tmp_path / folder)
    output = [] if "-o" in flags else ["-o", "out"]
    assert cli.main(["export", str(source), *flags, *output, "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("qronos export: error: "), err
    assert all(needle in err[0] for needle in needles), err[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["existing", "plain"]
    assert list((tmp_path / "existing").iterdir()) == []


@pytest.mark.parametrize("fmt", ["auto", "compressed-tensors", "gguf"])
def test_quantize_lm_writes_a_deployment_format_directly_and_eval_reads_it(tmp_path, capsys, fmt):
    """quantize-lm --format: compressed-tensors by default where the recipe fits (scales frozen in float32
    when the recipe freezes none), GGUF on request (fp16); `qronos eval` reads either with its reader and
    scores KL against the recorded base model."""
    pytest.importorskip("compressed_tensors")
    model_dir, text = llama_folder_and_text(tmp_path)
    flags = ["--text-file", str(text), "--seq-len", "32", "--windows", "2", "--quiet"]
    assert cli.main(["quantize-lm", str(model_dir), "--algo", "optq", "--bits", "4", "--group-size", "32",
                     *(["--sym"] if fmt == "gguf" else []), "--format", fmt, "-o", str(tmp_path / "q"), *flags]) == 0
    record = json.loads((tmp_path / "q" / "quantization.json").read_text())
    expected = "gguf" if fmt == "gguf" else "compressed-tensors"
    assert record["export"]["format"] == expected
    assert record["recipe"]["grid"]["scale_dtype"] == ("float16" if fmt == "gguf" else "float32")
    capsys.readouterr()
    assert cli.main(["eval", str(tmp_path / "q"), "--json", *flags]) == 0
    scores = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["texts"]["corpus.txt"]
    assert scores["kl"] > 0 and scores["perplexity"] > 1


def test_quantize_lm_falls_back_to_dense_or_refuses_a_format_the_recipe_cannot_fill(tmp_path, capsys):
    model_dir, text = llama_folder_and_text(tmp_path)
    flags = ["--text-file", str(text), "--seq-len", "32", "--windows", "2", "--quiet", "--algo", "rtn"]
    assert cli.main(["quantize-lm", str(model_dir), "--bits", "3", "-o", str(tmp_path / "d"), *flags]) == 0
    assert "export" not in json.loads((tmp_path / "d" / "quantization.json").read_text())
    assert cli.main(["quantize-lm", str(model_dir), "--bits", "3", "--format", "compressed-tensors",
                     "-o", str(tmp_path / "c"), *flags]) == 2
    assert "3-bit weights cannot be exported" in capsys.readouterr().err and not (tmp_path / "c").exists()


def test_export_of_an_activation_quantized_folder_keeps_its_scheme_in_compressed_tensors_only(tmp_path, windows,
                                                                                             capsys):
    pytest.importorskip("compressed_tensors")
    folder = dense_folder(tmp_path / "a8", bits=4, group_size=32, sym=True, scale_dtype="float32", act_bits=8)
    assert cli.main(["export", str(folder), "--format", "compressed-tensors", "-o", str(tmp_path / "ct"),
                     "--quiet"]) == 0
    group = json.loads((tmp_path / "ct" / "config.json").read_text())["quantization_config"]["config_groups"]
    assert group["group_0"]["input_activations"]["num_bits"] == 8
    dense, _ = load_quantized(folder)
    exported, reader = ex.load_exported(tmp_path / "ct")
    assert reader.endswith("(packed)")
    with torch.no_grad():
        difference = (dense(input_ids=windows).logits - exported(input_ids=windows).logits).abs().max().item()
    assert difference <= LOGIT_TOL
    capsys.readouterr()
    assert cli.main(["export", str(folder), "--format", "gguf", "-o", str(tmp_path / "g"), "--quiet"]) == 2
    assert "GGUF stores weights only" in capsys.readouterr().err and not (tmp_path / "g").exists()
