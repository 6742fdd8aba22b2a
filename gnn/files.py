"""Writing results so that a crash, Ctrl-C or SIGTERM never leaves a half-written file."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from gnn.config import ConfigError


def _probe_writable(folder: Path, what: str) -> None:
    """Create and remove a file in ``folder``: ``os.access`` says yes to root on a read-only
    folder and to pseudo file systems such as ``/proc``, and the write would fail hours later."""
    try:
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".gnn-write-probe-")
    except OSError as exc:
        raise ConfigError(f"{what}: folder {folder} is not writable ({exc.strerror})") from None
    os.close(fd)
    os.unlink(probe)


def _refuse_nul(path: Path, what: str) -> None:
    if "\x00" in str(path):
        raise ConfigError(f"{what}: the path {str(path)!r} contains a NUL byte")


def ensure_writable_dir(path: str | os.PathLike[str], what: str) -> Path:
    """Create ``path`` if needed and check it can be written, before any work is done."""
    path = Path(path)
    _refuse_nul(path, what)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"{what}: cannot create folder {path} ({exc.strerror})") from None
    _probe_writable(path, what)
    return path


def check_output_file(path: str | os.PathLike[str], what: str) -> Path:
    """Refuse an output path that cannot be written, before any work is done. Missing folders
    are not created here (the writers create them), so a refused command leaves nothing."""
    path = Path(path)
    _refuse_nul(path, what)
    if path.is_dir():
        raise ConfigError(f"{what}: {path} is a folder, expected a file path")
    existing = path.parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"{what}: cannot write {path}: {existing} is not a folder")
    _probe_writable(existing, what)
    return path


def _new_file_mode() -> int:
    """The mode ``open()`` would give a new file under the current umask."""
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write_bytes(path: str | os.PathLike[str], payload: bytes) -> None:
    """Write to a temporary file beside ``path`` and rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, _new_file_mode())  # mkstemp's 0600 would hide results from the group
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


class Terminated(BaseException):
    """SIGTERM arrived. A ``BaseException`` like ``KeyboardInterrupt``, so that no
    ``except Exception`` turns it into an ordinary error, and ``finally`` blocks (the atomic
    writers' clean-up among them) still run."""


@contextlib.contextmanager
def sigterm_raises() -> Iterator[None]:
    """Within the block SIGTERM raises :class:`Terminated` instead of killing the process on
    the spot, so it unwinds like Ctrl-C: temporary files are removed, finished files stay
    complete. Outside the main thread (where handlers cannot be set) it does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def _raise(signum: int, frame: Any) -> None:
        raise Terminated(signum)

    previous = signal.signal(signal.SIGTERM, _raise)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


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
