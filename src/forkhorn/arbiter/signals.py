"""The master's signal handling: handlers only queue the signal and wake the main loop.

Rules it keeps:

1. A handler does two things: append the signal number to a bounded queue and let the
   wake-up pipe carry a byte.  Nothing else: no logging (the logging module's locks are
   not reentrant; gunicorn 24 deadlocked this way), no fork, no I/O on shared state.
2. The byte is written by the interpreter's C-level handler through
   ``signal.set_wakeup_fd``, the instant the signal arrives, so a signal that lands just
   before the loop goes to sleep still wakes it (no lost-wake-up race).
3. SIGCHLD is not queued, it only wakes the loop: the loop reaps on every turn anyway.
4. At most ``MAX_QUEUED`` signals of each kind wait; more of that kind are dropped.  A
   burst of TTIN is therefore bounded, and a TERM behind it is still queued (a bound on
   all kinds together once dropped a TERM that came behind five USR1).

How it works: ``SignalQueue.install()`` opens a non-blocking pipe, registers it with
``set_wakeup_fd`` and installs the handlers.  ``wait(timeout)`` selects on the read end,
drains it, and ``pop()`` returns queued signals in arrival order.  After ``fork()`` the
child calls ``reset_in_child()``: boot-time dispositions, wake-up fd off, pipe closed,
and the signal mask that ``blocked_across_fork()`` set around ``fork()`` restored.
"""

from __future__ import annotations

import collections
import contextlib
import os
import select
import signal
from collections.abc import Iterable, Iterator
from types import FrameType

__all__ = [
    "HANDLED_SIGNALS",
    "MAX_QUEUED",
    "STOP_SIGNALS",
    "SignalQueue",
    "blocked_across_fork",
    "signal_name",
]

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
# What the master sends a worker to make it stop (HUP means stop to a worker).
STOP_SIGNALS = frozenset({signal.SIGHUP, signal.SIGQUIT, signal.SIGINT, signal.SIGTERM})


@contextlib.contextmanager
def blocked_across_fork() -> Iterator[set[int | signal.Signals]]:
    """Block the handled signals while the master forks; yields the previous mask, which
    the master restores after ``fork`` and the child after ``reset_in_child``. Without
    it a signal sent to a just-forked worker could run the master's handler in the
    child, which queues it in a queue the child then drops: the signal is lost."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, HANDLED_SIGNALS)
    try:
        yield previous
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _stop_while_booting(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)


def signal_name(signum: int) -> str:
    """``signal.SIGTERM`` -> ``"term"``: the form gunicorn logs ("Handling signal: term")."""
    try:
        return signal.Signals(signum).name[3:].lower()
    except ValueError:
        return str(signum)


def signal_full_name(signum: int) -> str:
    """``signal.SIGSEGV`` -> ``"SIGSEGV"``: how a worker's death by a signal is named."""
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


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
        if self._queue.count(signum) < MAX_QUEUED:  # rule 4: per kind
            self._queue.append(signum)

    def _wake_only(self, signum: int, frame: FrameType | None) -> None:
        # The wake-up fd already received a byte; nothing to queue (rule 3).
        pass

    def push(self, signum: int) -> None:
        """Queue a signal from the loop itself (used by tests and by internal requests)."""
        self._handle(signum, None)

    def wake(self) -> None:
        # Asks select first rather than relying on EAGAIN: a master that eventlet patched
        # (a config file or a preloaded app calling monkey_patch) has a green os.write
        # that waits for room instead of raising, and only this loop makes room.
        if self._wfd >= 0 and select.select([], [self._wfd], [], 0)[1]:
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
        # Reads only what select says is there.  Under eventlet's monkey_patch, os.read
        # on an empty non-blocking pipe does not raise EAGAIN: it parks the caller until
        # a byte comes, and the master then never stopped on TERM (nothing ran to notice).
        if self._rfd < 0:
            return
        while select.select([self._rfd], [], [], 0)[0]:
            try:
                if not os.read(self._rfd, 65536):
                    return
            except (BlockingIOError, InterruptedError):
                return

    def pop(self) -> int | None:
        try:
            return self._queue.popleft()
        except IndexError:
            return None

    def reset_in_child(self, mask: Iterable[int | signal.Signals] | None = None) -> None:
        """After fork, in the child: boot-time dispositions, and drop the pipe.

        Until the worker installs its own handlers (after it has loaded the app), a stop
        signal ends it through ``SystemExit``, so it leaves like any worker ("Worker
        exiting", the worker_exit hook) instead of dying of the default action without a
        word; USR1 (reopen logs), USR2 and WINCH are ignored rather than fatal. The
        master blocks these signals across ``fork`` (``blocked_across_fork``), so one
        sent in between is delivered here, after this runs, not to the master's handler.
        """
        self._detach()
        for sig in HANDLED_SIGNALS:
            if sig in STOP_SIGNALS:
                signal.signal(sig, _stop_while_booting)
            elif sig in (signal.SIGTTIN, signal.SIGTTOU):
                signal.signal(sig, signal.SIG_DFL)
            else:
                signal.signal(sig, signal.SIG_IGN)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        if mask is not None:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)  # what arrived meanwhile runs now

    def uninstall(self) -> None:
        """In the master at exit, and in a child about to exec a new master (USR2):
        default dispositions back (an ignored signal would stay ignored across exec),
        wake-up fd off, pipe closed."""
        if self._rfd < 0:
            return
        self._detach()
        for sig in (*HANDLED_SIGNALS, signal.SIGCHLD):
            signal.signal(sig, signal.SIG_DFL)

    def _detach(self) -> None:
        signal.set_wakeup_fd(-1)
        self._close_fds()
        self._queue.clear()

    def _close_fds(self) -> None:
        for fd in (self._rfd, self._wfd):
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self._rfd = self._wfd = -1
