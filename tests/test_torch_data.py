"""Token windows of the LM evaluation: cutting, BOS-prefixed windows, BOS detection, the texts, bad input."""

import importlib.util

import pytest
from hypothesis import given, settings, strategies as st

pytest.importorskip("transformers")

from _torch_tiny import byte_tokenizer  # noqa: E402

from qronos_linalg.adapters.torch.data import load_model, token_windows, window_bos  # noqa: E402


@settings(max_examples=50, deadline=None)
@given(length=st.integers(2, 300), seq_len=st.integers(2, 40), bos=st.one_of(st.none(), st.integers(1000, 2000)))
def test_windows_are_consecutive_text_with_optional_bos(length, seq_len, bos):
    token_ids = list(range(length))
    text_per_window = seq_len - (bos is not None)
    if length < text_per_window:
        with pytest.raises(ValueError, match="shorter than one window"):
            token_windows(token_ids, seq_len, bos_token_id=bos)
        return
    windows = token_windows(token_ids, seq_len, bos_token_id=bos)
    assert windows.shape == (length // text_per_window, seq_len)
    text = windows if bos is None else windows[:, 1:]
    assert text.reshape(-1).tolist() == token_ids[: text.numel()]  # non-overlapping, in order, nothing skipped
    if bos is not None:
        assert bool((windows[:, 0] == bos).all())


def test_asking_for_more_windows_than_the_text_has_is_an_error():
    with pytest.raises(ValueError, match="only 3"):
        token_windows(list(range(30)), 10, 4)


def test_bos_is_used_only_when_the_tokenizer_starts_texts_with_it():
    from tokenizers import processors

    plain = byte_tokenizer()
    plain.add_special_tokens({"bos_token": "<bos>"})
    assert window_bos(plain) is None  # SmolLM2-like: has a BOS token but does not add it
    bos_id = plain.bos_token_id
    adding = byte_tokenizer()
    adding.add_special_tokens({"bos_token": "<bos>"})
    adding.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="<bos> $A", special_tokens=[("<bos>", bos_id)])
    assert adding("a")["input_ids"][0] == bos_id
    assert window_bos(adding) == bos_id  # Gemma-like


def test_unknown_model_name_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither a packaged model"):
        load_model(str(tmp_path / "no-such-model"))


@pytest.mark.skipif(importlib.util.find_spec("gensim") is None, reason="needs gensim (the lm extra)")
def test_the_news_text_shares_no_passage_with_the_calibration_articles():
    """Out-of-domain evaluation text: no 64-character passage of it (200 spread positions) occurs in the
    calibration articles, and it is really news, not Wikipedia."""
    from qronos_linalg.adapters.torch.data import news_articles, split_text

    news = "\n\n".join(news_articles())
    calibration = " ".join(" ".join(split_text("calibration")).split())
    assert len(news_articles()) == 300 and len(news) > 300_000
    positions = range(0, len(news) - 64, (len(news) - 64) // 200)
    passages = [" ".join(news[start : start + 64].split()) for start in positions]
    assert [p for p in passages if p in calibration] == []
    wiki_eval = " ".join(" ".join(split_text("evaluation")).split())
    assert sum(" ".join(wiki_eval[i : i + 64].split()) in calibration for i in range(0, 64 * 200, 64)) == 0
