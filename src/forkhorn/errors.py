"""Start-up errors: what can stop forkhorn before it serves, and the exit code of each.

Rules kept here:
- Every error is one line when printed (``str(exc)``); a multi-line message is folded so
  that ``cli.main`` can always print ``Error: <message>`` on a single line of stderr.
- Each class carries the process exit code the CLI returns for it, as a named constant, so
  operators and supervisors can tell a bad flag from an app that does not import.
- The underlying exception (with its traceback) stays on ``__cause__``; the CLI prints it
  only at debug level.

This module imports nothing from forkhorn: every package may raise these errors.
"""

from __future__ import annotations

from typing import ClassVar

BIND_ERROR = 1
CONFIG_ERROR = 2
WORKER_BOOT_ERROR = 3
APP_LOAD_ERROR = 4


class ForkhornError(Exception):
    """Base class of the start-up errors; ``exit_code`` is what the process exits with."""

    exit_code: ClassVar[int] = 1

    def __str__(self) -> str:
        # One line, always: a message with newlines (an embedded traceback, a multi-line
        # SyntaxError) would break "Error: <message>" on stderr into a wall again.
        text = super().__str__()
        return " ".join(part.strip() for part in text.splitlines() if part.strip())


class ConfigError(ForkhornError):
    """A bad setting, flag, config file or environment value."""

    exit_code: ClassVar[int] = CONFIG_ERROR


class AppImportError(ForkhornError):
    """The WSGI app could not be loaded: missing module, error in its import, not callable."""

    exit_code: ClassVar[int] = APP_LOAD_ERROR


class WorkerBootError(ForkhornError):
    """A worker could not boot, so the master stops instead of fork-looping."""

    exit_code: ClassVar[int] = WORKER_BOOT_ERROR


class BindError(ForkhornError):
    """A listener could not be created (address in use, permission, bad fd)."""

    exit_code: ClassVar[int] = BIND_ERROR
