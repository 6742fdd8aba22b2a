"""Writing results so that a crash or Ctrl-C never leaves a half-written file."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from gnn.config import ConfigError


def ensure_writable_dir(path: str | os.PathLike[str], what: str) -> Path:
    """Create ``path`` if needed and check it can be written, before any work is done."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"{what}: cannot create folder {path} ({exc.strerror})") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise ConfigError(f"{what}: folder {path} is not writable")
    return path


def check_output_file(path: str | os.PathLike[str], what: str) -> Path:
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{what}: {path} is a folder, expected a file path")
    ensure_writable_dir(path.parent if str(path.parent) else Path("."), what)
    return path


def atomic_write_bytes(path: str | os.PathLike[str], payload: bytes) -> None:
    """Write to a temporary file beside ``path`` and rename it into place."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            if hasattr(os, "fchmod"):  # the mode open() would give, not mkstemp's 0600
                os.fchmod(handle.fileno(), 0o666 & ~_umask())
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    atomic_write_bytes(path, text.encode())


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def append_line(path: str | os.PathLike[str], line: str) -> None:
    """Append one row as a single write, flushed and fsynced before returning: an interrupted
    writer leaves whole rows, plus at worst one cut last line that :func:`complete_lines`
    drops."""
    if "\n" in line:
        raise ValueError("a row must be a single line")
    with open(path, "a", encoding="utf-8", newline="") as handle:
        handle.write(line + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def complete_lines(path: str | os.PathLike[str]) -> tuple[list[str], bool]:
    """The newline-terminated lines of ``path`` (none when it is missing), and whether a cut
    last line was found and left out."""
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return [], False
    *lines, tail = text.split("\n")
    return lines, tail != ""
