"""Puts proofs/ on sys.path so the checks can import their helper modules under any import mode."""

import sys
from pathlib import Path

PROOFS_DIR = str(Path(__file__).resolve().parent)
if PROOFS_DIR not in sys.path:
    sys.path.insert(0, PROOFS_DIR)
