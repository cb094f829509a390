"""Token windows of the LM evaluation: cutting, BOS-prefixed windows, BOS detection, bad input."""

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
