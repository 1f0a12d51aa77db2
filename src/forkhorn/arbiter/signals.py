"""The master's signal handling: handlers only queue the signal and wake the main loop.

Rules it keeps:

1. A handler does two things: append the signal number to a bounded queue and let the
   wake-up pipe carry a byte.  Nothing else: no logging (the logging module's locks are
   not reentrant; gunicorn 24 deadlocked this way), no fork, no I/O on shared state.
2. The byte is written by the interpreter's C-level handler through
   ``signal.set_wakeup_fd``, the instant the signal arrives, so a signal that lands just
   before the loop goes to sleep still wakes it (no lost-wake-up race).
3. SIGCHLD is not queued, it only wakes the loop: the loop reaps on every turn anyway.
4. At most ``MAX_QUEUED`` signals wait; more of the same kind are dropped (gunicorn keeps
   five).  A burst of TTIN is therefore bounded, and TERM is never lost because a stop
   is recorded by the first one.

How it works: ``SignalQueue.install()`` opens a non-blocking pipe, registers it with
``set_wakeup_fd`` and installs the handlers.  ``wait(timeout)`` selects on the read end,
drains it, and ``pop()`` returns queued signals in arrival order.  After ``fork()`` the
child calls ``reset_in_child()``: default dispositions, wake-up fd off, pipe closed.
"""

from __future__ import annotations

import collections
import os
import select
import signal
from types import FrameType

__all__ = ["HANDLED_SIGNALS", "MAX_QUEUED", "SignalQueue", "signal_name"]

HANDLED_SIGNALS: tuple[signal.Signals, ...] = (
    signal.SIGHUP,
    signal.SIGQUIT,
    signal.SIGINT,
    signal.SIGTERM,
    signal.SIGTTIN,
    signal.SIGTTOU,
    signal.SIGUSR1,
    signal.SIGUSR2,
    signal.SIGWINCH,
)
MAX_QUEUED = 5


def signal_name(signum: int) -> str:
    """``signal.SIGTERM`` -> ``"term"``: the form gunicorn logs ("Handling signal: term")."""
    try:
        return signal.Signals(signum).name[3:].lower()
    except ValueError:
        return str(signum)


class SignalQueue:
    """Bounded queue of received signals plus the wake-up pipe.

    Runs in: master, main thread (signal handlers always run there).
    """

    def __init__(self) -> None:
        self._queue: collections.deque[int] = collections.deque()
        self._rfd = -1
        self._wfd = -1
        self._previous_wakeup_fd = -1

    def install(self) -> None:
        self._rfd, self._wfd = os.pipe()
        for fd in (self._rfd, self._wfd):
            os.set_blocking(fd, False)
        self._previous_wakeup_fd = signal.set_wakeup_fd(self._wfd, warn_on_full_buffer=False)
        for sig in HANDLED_SIGNALS:
            signal.signal(sig, self._handle)
        signal.signal(signal.SIGCHLD, self._wake_only)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        # Rule 1: queue only.  deque.append is atomic with respect to other handlers.
        if len(self._queue) < MAX_QUEUED:
            self._queue.append(signum)

    def _wake_only(self, signum: int, frame: FrameType | None) -> None:
        # The wake-up fd already received a byte; nothing to queue (rule 3).
        pass

    def push(self, signum: int) -> None:
        """Queue a signal from the loop itself (used by tests and by internal requests)."""
        self._handle(signum, None)

    def wake(self) -> None:
        if self._wfd >= 0:
            try:
                os.write(self._wfd, b"\0")
            except (BlockingIOError, InterruptedError):
                pass

    def wait(self, timeout: float) -> None:
        """Sleep until a signal arrives or ``timeout`` seconds pass.  Returns early at once
        when signals are already queued."""
        if self._queue or self._rfd < 0:
            self._drain()
            return
        try:
            select.select([self._rfd], [], [], max(0.0, timeout))
        except InterruptedError:  # pragma: no cover - PEP 475 retries; kept for safety
            pass
        self._drain()

    def _drain(self) -> None:
        if self._rfd < 0:
            return
        while True:
            try:
                if not os.read(self._rfd, 4096):
                    return
            except (BlockingIOError, InterruptedError):
                return

    def pop(self) -> int | None:
        try:
            return self._queue.popleft()
        except IndexError:
            return None

    def reset_in_child(self) -> None:
        """After fork, in the child: restore default dispositions and drop the pipe."""
        signal.set_wakeup_fd(-1)
        for sig in (*HANDLED_SIGNALS, signal.SIGCHLD):
            signal.signal(sig, signal.SIG_DFL)
        self._close_fds()
        self._queue.clear()

    def uninstall(self) -> None:
        """In the master at exit: default dispositions back, pipe closed."""
        if self._rfd < 0:
            return
        signal.set_wakeup_fd(-1)
        for sig in (*HANDLED_SIGNALS, signal.SIGCHLD):
            signal.signal(sig, signal.SIG_DFL)
        self._close_fds()

    def _close_fds(self) -> None:
        for fd in (self._rfd, self._wfd):
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self._rfd = self._wfd = -1
