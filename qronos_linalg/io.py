"""The I/O helpers every writer uses: checks before any work, atomic writes, progress on stderr.

Nothing is left half-written: every file or folder is written under a hidden temporary name beside its
target and renamed onto it at the end; on any error (or an interrupt, which the CLI also raises for
SIGTERM) the temporary is removed. An existing target is replaced only when the caller asked for it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import uuid
from pathlib import Path

TEMPORARY_PREFIX = ".qronos-tmp-"


def check_output(path, *, overwrite: bool, what: str = "output") -> Path:
    """Raise before any work if ``path`` cannot be written: it exists and ``overwrite`` is false, its
    folder does not exist, or the folder is not writable. Returns ``path`` as a Path."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{what} {path} already exists (pass --overwrite / overwrite=True to replace it)")
    folder = path.parent
    if not folder.is_dir():
        raise FileNotFoundError(f"the folder of {what} {path} does not exist: {folder}")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise PermissionError(f"cannot write {what} {path}: folder {folder} is not writable")
    return path


def temporary_sibling(path) -> Path:
    """A fresh hidden name in ``path``'s folder (same file system, so the final rename is atomic)."""
    path = Path(path)
    return path.with_name(f"{TEMPORARY_PREFIX}{path.name}.{uuid.uuid4().hex[:12]}")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink()


@contextlib.contextmanager
def atomic_output(path, *, overwrite: bool = False):
    """Yield a temporary path to write a file or folder at; on success it replaces ``path``.

    An existing ``path`` is refused unless ``overwrite`` (checked again at the end, for a file that
    appeared meanwhile); a replaced folder is first moved aside and removed only once the new one is in
    place. The temporary is removed if the body raises.
    """
    path = Path(path)
    check_output(path, overwrite=overwrite)
    temporary = temporary_sibling(path)
    try:
        yield temporary
        if path.exists() and not overwrite:
            raise FileExistsError(f"output {path} appeared while it was being written; nothing replaced")
        if path.is_dir() and not path.is_symlink():
            old = temporary_sibling(path)
            os.replace(path, old)
            os.replace(temporary, path)
            _remove(old)
        else:
            os.replace(temporary, path)
    finally:
        _remove(temporary)


def write_text_atomic(path, text: str, *, overwrite: bool = False) -> Path:
    """Write ``text`` to ``path`` atomically."""
    with atomic_output(path, overwrite=overwrite) as temporary:
        temporary.write_text(text)
    return Path(path)


def write_json_atomic(path, payload, *, overwrite: bool = False) -> Path:
    """Write ``payload`` as indented JSON to ``path`` atomically."""
    return write_text_atomic(path, json.dumps(payload, indent=2, default=str) + "\n", overwrite=overwrite)


class _Silent:
    """The progress-bar interface, doing nothing (``--quiet`` or no tqdm)."""

    def update(self, count: int = 1) -> None:
        pass

    def set_postfix_str(self, text: str) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def progress(total: int | None, description: str, unit: str, *, enabled: bool = True):
    """A progress bar on stderr (tqdm) with ``update``/``close``; silent when disabled or tqdm is missing."""
    if not enabled:
        return _Silent()
    try:
        from tqdm import tqdm
    except ModuleNotFoundError:
        return _Silent()
    return tqdm(total=total, desc=description, unit=unit, file=sys.stderr, dynamic_ncols=True,
                mininterval=0.5 if sys.stderr.isatty() else 10.0)


def status(message: str, *, enabled: bool = True) -> None:
    """One progress line on stderr (what a long step is doing before its bar starts)."""
    if enabled:
        print(message, file=sys.stderr, flush=True)
