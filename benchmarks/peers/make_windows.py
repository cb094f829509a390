"""Write a windows file for the peer workers with the project's own data helpers (run in the project venv).

    python benchmarks/peers/make_windows.py --out windows.pt --calib 16 --eval 20 --seq-len 512

Output: ``torch.save``d ``{"calibration": (n, seq) int64, "eval": {"wiki": (m, seq), <second>: (k, seq)}}``.
``calibration`` = the first ``--calib`` windows of ``text_windows(tokenizer, "calibration", seq)``; ``wiki`` =
the first ``--eval`` windows of the evaluation split. The second text is, when the project's data module
has it (``SPLITS`` contains ``"news"``), ``news`` = the first ``--other`` windows of the out-of-domain news
split, as ``benchmarks/lm_table.py`` evaluates; otherwise ``other`` = the *last* ``--other`` windows of
the evaluation split (a stand-in). The workers accept any text names.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--model", default="smollm2", help="packaged model name or Hugging Face folder")
    p.add_argument("--calib", type=int, default=16)
    p.add_argument("--eval", type=int, default=20)
    p.add_argument("--other", type=int, default=None, help="default: same as --eval")
    p.add_argument("--seq-len", type=int, default=512)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    from transformers import AutoTokenizer

    from qronos_linalg.adapters.torch import data as project_data
    from qronos_linalg.adapters.torch.data import PACKAGED_MODELS, packaged_model_folder, text_windows

    folder = packaged_model_folder(args.model) if args.model in PACKAGED_MODELS else args.model
    tokenizer = AutoTokenizer.from_pretrained(folder)
    calibration = text_windows(tokenizer, "calibration", args.seq_len, args.calib)
    n_other = args.eval if args.other is None else args.other
    wiki = text_windows(tokenizer, "evaluation", args.seq_len, args.eval)
    if "news" in getattr(project_data, "SPLITS", ()):
        second, other, origin = "news", text_windows(tokenizer, "news", args.seq_len, n_other), "news split"
    else:
        evaluation = text_windows(tokenizer, "evaluation", args.seq_len, None)
        if args.eval + n_other > evaluation.shape[0]:
            raise SystemExit(f"the evaluation split has only {evaluation.shape[0]} windows of {args.seq_len}")
        second, other, origin = "other", evaluation[-n_other:], "last windows of the evaluation split"
    data = {
        "calibration": calibration.clone(),
        "eval": {"wiki": wiki.clone(), second: other.clone()},
        "meta": {"model": str(folder), "seq_len": args.seq_len, second: origin},
    }
    torch.save(data, args.out)
    print(f"{args.out}: calibration {tuple(data['calibration'].shape)}, "
          + ", ".join(f"{k} {tuple(v.shape)}" for k, v in data["eval"].items()))


if __name__ == "__main__":
    main()
