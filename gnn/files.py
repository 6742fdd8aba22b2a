"""Writing results so that a crash, Ctrl-C or SIGTERM never leaves a half-written file.

Every output goes to a temporary file beside its target (named after the target and the
writing process) and is renamed into place once complete. Outputs are regular files: an
existing device, FIFO or symbolic link at the target is refused rather than replaced. A
temporary file left by a process that was killed (SIGKILL leaves no chance to clean up) is
removed by the next write to the same folder.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import signal
import stat
import tempfile
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from gnn.errors import ConfigError, Terminated

#: Longest output path accepted (Linux's PATH_MAX is 4096, a file name at most 255 bytes, of
#: which the temporary name beside the target needs about 40 more).
MAX_PATH = 4096
MAX_NAME = 215
#: ``.<target>.<pid>.<random>.tmp``: the writer's pid says whether the file is stale.
_TMP = re.compile(r"^\.(?P<target>.+)\.(?P<pid>\d+)\.[A-Za-z0-9_]+\.tmp$")


class DiskFull(OSError):
    """The disk (or quota) filled while writing an output; nothing half-written is left."""


def _probe_writable(folder: Path, what: str) -> None:
    """Create and remove a file in ``folder``: ``os.access`` says yes to root on a read-only
    folder and to pseudo file systems such as ``/proc``, and the write would fail hours later."""
    try:
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".gnn-write-probe-")
    except OSError as exc:
        raise ConfigError(f"{what}: folder {folder} is not writable ({exc.strerror})") from None
    os.close(fd)
    os.unlink(probe)


def _refuse_bad_path(path: Path, what: str) -> None:
    text = str(path)
    if "\x00" in text:
        raise ConfigError(f"{what}: the path {text!r} contains a NUL byte")
    if len(os.fsencode(text)) > MAX_PATH:
        raise ConfigError(f"{what}: the path is {len(os.fsencode(text))} bytes long, more "
                          f"than {MAX_PATH}")
    long = [part for part in path.parts if len(os.fsencode(part)) > MAX_NAME]
    if long:
        raise ConfigError(f"{what}: a name in the path is {len(os.fsencode(long[0]))} bytes "
                          f"long ({long[0][:30]}...); at most {MAX_NAME}")


def ensure_writable_dir(path: str | os.PathLike[str], what: str) -> Path:
    """Create ``path`` if needed and check it can be written, before any work is done."""
    path = Path(path)
    _refuse_bad_path(path, what)
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
    _refuse_bad_path(path, what)
    if path.is_dir():
        raise ConfigError(f"{what}: {path} is a folder, expected a file path")
    existing = path.parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"{what}: cannot write {path}: {existing} is not a folder")
    _probe_writable(existing, what)
    if path.is_symlink() or (path.exists() and not path.is_file()):
        raise ConfigError(f"{what}: {path} exists and is not a regular file (a device, FIFO "
                          "or link is never replaced)")
    return path


def check_distinct_outputs(paths: Mapping[str, str | None]) -> None:
    """Two outputs of one command (``--json`` and ``--save``) must be different files."""
    seen: dict[Path, str] = {}
    for flag, path in paths.items():
        if not path:
            continue
        resolved = Path(path).resolve()
        if resolved in seen:
            raise ConfigError(f"{flag}: the same file as {seen[resolved]} ({path})")
        seen[resolved] = flag


def _new_file_mode() -> int:
    """The mode ``open()`` would give a new file under the current umask."""
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def _remove_stale_temporaries(folder: Path) -> None:
    """Temporary files of ours whose writer process no longer exists."""
    try:
        names = os.listdir(folder)
    except OSError:
        return
    for name in names:
        found = _TMP.match(name)
        if found and not _alive(int(found["pid"])):
            with contextlib.suppress(OSError):
                os.unlink(folder / name)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


def _write_temporary(path: Path, payload: bytes) -> str:
    """``payload`` in a complete, fsynced temporary file beside ``path``; returns its name."""
    if path.is_symlink() or (path.exists() and not stat.S_ISREG(path.stat().st_mode)):
        raise ConfigError(f"{path} exists and is not a regular file; not replaced")
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(path.parent)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.",
                               suffix=".tmp")
    try:
        os.fchmod(fd, _new_file_mode())  # mkstemp's 0600 would hide results from the group
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise DiskFull(exc.errno, f"no space left on the device to write {path}") from None
        raise
    return tmp


def atomic_write_many(files: Mapping[Path, bytes]) -> None:
    """Write several files so that none is replaced unless all of them could be written: every
    temporary file first, then the renames (which need no space)."""
    written: list[str] = []
    try:
        for path, payload in files.items():
            written.append(_write_temporary(Path(path), payload))
        for tmp, path in zip(written, files, strict=True):
            os.replace(tmp, path)
    except BaseException:
        for tmp in written:
            Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike[str], payload: bytes) -> None:
    """Write to a temporary file beside ``path`` and rename it into place."""
    atomic_write_many({Path(path): payload})


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    atomic_write_bytes(path, text.encode())


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


@contextlib.contextmanager
def sigterm_raises() -> Iterator[None]:
    """Within the block SIGTERM raises :class:`Terminated` and SIGINT ``KeyboardInterrupt``,
    so both unwind alike: temporary files are removed, finished files stay complete. The first
    of them ignores any further SIGINT/SIGTERM, so that unwinding (and its one error line) is
    not cut by a second signal, e.g. the launcher passing on a Ctrl-C the terminal already
    sent to every rank. Outside the main thread (where handlers cannot be set) it does
    nothing; on leaving, the previous handlers are restored."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def _raise(signum: int, frame: Any) -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise (KeyboardInterrupt() if signum == signal.SIGINT else Terminated(signum))

    previous = {sig: signal.signal(sig, _raise) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """SIGINT and SIGTERM that arrive inside the block are noted and raised again when it ends,
    so a few writes that belong together (a row in two files) all happen or none does. (A
    thread's signal mask would not do: the kernel hands a process's signal to any thread that
    does not block it, and torch's threads do not.) Outside the main thread it does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []
    held = (signal.SIGINT, signal.SIGTERM)
    previous = {sig: signal.signal(sig, lambda signum, frame: pending.append(signum))
                for sig in held}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)
        if pending:
            signal.raise_signal(pending[0])


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
