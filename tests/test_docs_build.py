"""The documentation builds with ``mkdocs build --strict`` and the quickstart's code runs as written."""

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "docs" / "quickstart.md"
PYTHON_BLOCK = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)
#: Seconds allowed for one documentation build (about 3 s on the CI machines).
BUILD_TIMEOUT = 300


def _missing_docs_tools():
    return [name for name in ("mkdocs", "mkdocstrings", "pymdownx") if importlib.util.find_spec(name) is None]


@pytest.mark.skipif(bool(_missing_docs_tools()), reason="the docs extra (mkdocs, mkdocstrings) is not installed")
def test_mkdocs_build_strict(tmp_path):
    """``mkdocs build --strict`` succeeds and writes every page of the nav, the proofs included."""
    site = tmp_path / "site"
    run = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(ROOT / "mkdocs.yml"),
         "--site-dir", str(site)],
        cwd=ROOT, capture_output=True, text=True, timeout=BUILD_TIMEOUT,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert (site / "quickstart" / "index.html").is_file()
    assert (site / "proofs" / "qronos_offset_form" / "index.html").is_file()
    assert 'id="qronos_linalg.qronos"' in (site / "api" / "index.html").read_text(encoding="utf-8")


def test_quickstart_code_runs():
    """The ```python blocks of docs/quickstart.md (with their asserts), run in order as one script,
    raise nothing (the torch section is left out where torch is not installed)."""
    blocks = PYTHON_BLOCK.findall(QUICKSTART.read_text(encoding="utf-8"))
    assert blocks, "docs/quickstart.md has no python code blocks"
    if importlib.util.find_spec("torch") is None:  # the core has no torch dependency
        blocks = [block for block in blocks if "torch" not in block]
    exec(compile("\n".join(blocks), str(QUICKSTART), "exec"), {"__name__": "quickstart"})
