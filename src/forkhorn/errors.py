"""Start-up errors: what can stop forkhorn before it serves, and the exit code of each;
and the two exceptions a worker raises through an app's request on its own account.

Rules kept here:
- Every error is one line when printed (``str(exc)``); a multi-line message is folded so
  that ``cli.main`` can always print ``Error: <message>`` on a single line of stderr.
- Each class carries the process exit code the CLI returns for it, as a named constant, so
  operators and supervisors can tell a bad flag from an app that does not import.
- The underlying exception (with its traceback) stays on ``__cause__``; the CLI prints it
  only at debug level.

``WorkerExit`` and ``RequestHungError`` are the worker's: raised inside whatever runs when
a stop signal or the request watchdog strikes, often the app. The request cycle lets them
through (``forkhorn.wsgi.cycle.is_app_error``) where it answers anything else the app
raises, ``sys.exit()`` and ``KeyboardInterrupt`` included, with a 500.

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
    """The WSGI app could not be loaded: missing module, error in its import, not callable.

    ``brief``: the same in fewer words where a long exception message would push the file
    and line out of a bounded field (a worker's reason to the master, 200 bytes)."""

    exit_code: ClassVar[int] = APP_LOAD_ERROR

    def __init__(self, message: str, brief: str | None = None) -> None:
        super().__init__(message)
        self.brief = brief if brief is not None else str(self)


class WorkerBootError(ForkhornError):
    """A worker could not boot, so the master stops instead of fork-looping."""

    exit_code: ClassVar[int] = WORKER_BOOT_ERROR


class BindError(ForkhornError):
    """A listener could not be created (address in use, permission, bad fd)."""

    exit_code: ClassVar[int] = BIND_ERROR


class WorkerExit(SystemExit):
    """The worker ends now: raised by its QUIT/INT and ABRT signal handlers.

    A ``SystemExit``, so everything that lets a process exit lets it through; a class of
    its own, so that a ``sys.exit()`` in app code is told apart (the app's error, a 500).
    """


class RequestHungError(BaseException):
    """Raised inside a request that ran past its limit (``forkhorn.workers.watchdog``).

    A ``BaseException``, like ``KeyboardInterrupt``, so that an app's ``except Exception``
    (Flask's and Django's error handlers among them) lets it through instead of turning it
    into a 500 and carrying on.
    """
