"""Every exception type of the package, in one module that imports nothing.

The command line maps them to exit codes: bad input (:class:`UsageError`, :class:`ConfigError`,
:class:`DataError`, :class:`CheckpointError`) exits 2, a run that cannot go on
(:class:`TrainingError`) exits 1 or its ``exit_code``, :class:`Terminated` (SIGTERM) 143. Each
message is one line that names the problem.
"""

from __future__ import annotations


class UsageError(Exception):
    """A bad command line (raised by the argument parser instead of printing usage)."""


class ConfigError(ValueError):
    """A config value or file is unusable; the message is one line naming the key."""


class DataError(RuntimeError):
    """A dataset cannot be found, verified or read; the message says what to do."""


class CheckpointError(ValueError):
    """A checkpoint is missing, truncated, malformed or made for another dataset."""


class TrainingError(RuntimeError):
    """Training cannot go on (a non-finite loss, a failed rank); ``exit_code`` is the code the
    command line ends with (1 unless a failed rank passed on another)."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class Terminated(BaseException):
    """SIGTERM arrived. A ``BaseException`` like ``KeyboardInterrupt``, so that no
    ``except Exception`` turns it into an ordinary error, and ``finally`` blocks (the atomic
    writers' clean-up among them) still run."""
