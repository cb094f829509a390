"""MkDocs hook: publish proofs/*.md under proofs/ in the documentation site.

The proofs live next to their checks (proofs/test_*.py), outside docs/. This hook adds each Markdown
file to the site as a generated page, rewriting the one kind of link that differs between the two
trees: ``../docs/<page>`` (from proofs/ to docs/ in the repository) becomes ``../<page>``.
"""

from __future__ import annotations

from pathlib import Path

from mkdocs.structure.files import File

PROOFS_DIR = Path(__file__).resolve().parent
#: Site folder the proofs are published under (docs pages link to ``proofs/<name>.md``).
SITE_FOLDER = "proofs"


def on_files(files, config):
    """Add every proofs/*.md to the site's files (mkdocs >= 1.6)."""
    for path in sorted(PROOFS_DIR.glob("*.md")):
        content = path.read_text(encoding="utf-8").replace("](../docs/", "](../")
        files.append(File.generated(config, f"{SITE_FOLDER}/{path.name}", content=content))
    return files
