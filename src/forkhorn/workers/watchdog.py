"""Per-request deadlines inside a worker: report, interrupt, and if need be retire.

Why it exists: the master's heartbeat check only catches a worker that stopped ticking. In
the gthread, gevent and eventlet workers the main loop keeps ticking while one thread or
greenlet hangs in a request, so ``timeout`` would never bound that request (gunicorn's
threaded worker has exactly this hole). The worker itself watches its requests instead.

Rules kept:

1. ``RequestWatchdog`` is pure bookkeeping: time comes in as an argument, and it neither
   logs, nor signals, nor touches threads. It is unit-tested with a fake clock.
2. The limit is ``timeout``, or ``request_timeout`` when that is set and smaller; both 0
   turns the watchdog off. It bounds the time a request goes without progress: from its
   start, and from each part of its response its client took (the worker sets
   ``progress_at`` per completed send; at the limit the ``probe`` the worker gives, the
   bytes its client acknowledged, tells of progress a blocked send cannot record). A
   long-poll, an app that hangs, or a client that stops reading hits
   it; a stream or a download that its client keeps reading does not (gunicorn bounds
   neither on its threaded and green workers; forkhorn's fast worker does the same).
3. A request past its limit is reported and interrupted **once**. Its own thread answers
   it as it unwinds. One whose stack has not moved ``ANSWER_WINDOW`` later (a thread
   stuck in C code, which the interruption cannot reach) is answered by the worker's
   main loop (``abandon``), so the client hears at the limit, not a grace period later;
   one that is running Python (unwinding slowly, or an app that caught the interruption
   and answers itself) is left to end its request. If it is still running ``grace``
   seconds after the interruption, it is reported as stuck **once**, the main loop ends
   it if it has not, and the worker is retired: it stops accepting, its other requests
   finish, the master starts a replacement.
4. An interruption is delivered only while the request is still registered (under the same
   lock that ``finished`` takes), so a request that ends just in time is left alone.
5. What differs between workers is a parameter of ``RequestTimeoutEnforcer``: how to get
   a stack for a handle (thread id, greenlet) and how to interrupt it.

How the interruption ends: the worker raises ``RequestHungError`` inside the request (an
asynchronous exception in a thread, ``kill`` for a greenlet). It passes through the
request cycle like any error (the iterable is closed, the access log and ``post_request``
run), the worker answers 504 if ``request_timeout`` is set and no response head was sent
yet (500 at ``timeout``), and closes the connection. A request stuck in C (rule 3) cannot
unwind: the worker answers it from the main loop (``abandon``) and closes its connection,
so its client is not left waiting. Whichever ends the request first, its thread or the
main loop, claims it (``InFlight.claim``, under the watchdog's lock): one response, one
access-log line, one ``post_request``, never two.

Runs in: the worker process. ``started``/``finished`` in whichever thread or greenlet
serves the request; ``check`` and the enforcer in the worker's main loop.
"""

from __future__ import annotations

import ctypes
import sys
import threading
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from types import FrameType
from typing import Any, Generic, TypeVar

from forkhorn.errors import RequestHungError
from forkhorn.http import ServerConnection
from forkhorn.wsgi.cycle import error_response

__all__ = [
    "InFlight",
    "RequestHungError",
    "RequestTimeoutEnforcer",
    "RequestWatchdog",
    "Verdict",
    "format_frame",
    "grace_period",
    "interrupt_thread",
    "request_limit",
    "stack_mark",
    "thread_stack",
    "timeout_response",
]

H = TypeVar("H")

# After an interruption, how long a request may take to unwind before the worker is
# retired. Long enough for an app's cleanup (closing a cursor, rolling back), short enough
# that a thread stuck in C code does not hold a worker for long: 5 s, or the limit itself
# when that is shorter, but never under 1 s.
MAX_GRACE = 5.0
MIN_GRACE = 1.0
# After an interruption, how long the request's own thread has to answer it (an
# asynchronous exception is raised at its next bytecode, within the interpreter's switch
# interval) before the main loop answers it instead: a thread blocked in C code never will.
ANSWER_WINDOW = 0.5
# A request at its limit whose connection can be probed is looked at again after this
# long, or half its limit if longer, to see whether its client took some of the response
# meanwhile (rule 2): a slow reader's acknowledgements come in steps (one per half of its
# receive buffer, on loopback), which a short window can fall between.
PROBE_WINDOW = 1.0


def request_limit(cfg: Any) -> float:
    """Seconds a request may run in this worker: rule 2. 0.0 means no limit."""
    timeout = float(getattr(cfg, "timeout", 0) or 0)
    request_timeout = float(getattr(cfg, "request_timeout", 0) or 0)
    limits = [t for t in (timeout, request_timeout) if t > 0]
    return min(limits) if limits else 0.0


def grace_period(limit: float) -> float:
    """How long an interrupted request may take to unwind (see MAX_GRACE)."""
    return max(MIN_GRACE, min(MAX_GRACE, limit))


@dataclass(eq=False, slots=True)
class InFlight(Generic[H]):
    """One request being served: who serves it and since when."""

    handle: H  # thread ident or greenlet: what the enforcer interrupts
    request_line: bytes
    started: float
    context: Any = None  # the worker's own data for the request (its connection)
    interrupted_at: float = 0.0  # 0.0: not interrupted yet
    reported_stuck: bool = False
    done: bool = False
    # The last time the request made progress (rule 2): its start (``started`` sets it),
    # then each send of its response that completed. Written by the request's own thread
    # without the lock (one float store); the check reads a value at most one send old.
    progress_at: float = 0.0
    # What the request cycle is (request, environ, exchange), for a worker that answers
    # and logs a request stuck in C on its behalf (gthread's abandon).
    cycle: Any = None
    # The request's ending (its answer, access line and post_request) was claimed, by
    # its thread or by ``abandon`` (``claim``); and whether the main loop was asked to
    # end it (rule 3's ANSWER_WINDOW).
    answered: bool = False
    answer_due: bool = False
    lock: Any = None  # the watchdog's (``started`` sets it)
    # Where its thread was when it was interrupted (the worker's ``interrupt`` sets it):
    # unchanged at ANSWER_WINDOW, the thread is stuck in C (rule 3).
    stack_mark: Any = None
    # The connection the response goes to (the worker sets it), for the watchdog's probe
    # (rule 2: progress a blocked send cannot record), and the probe's last reading.
    sock: Any = None
    probed: int = -1
    # For a WebSocket handshake: has the app taken the connection over (written its 101
    # on the socket)? Such a request lasts as long as its client stays: at its limit the
    # watchdog lets it go instead of interrupting it. None: an ordinary request.
    taken_over: Callable[[], bool] | None = None

    def elapsed(self, now: float) -> float:
        return max(0.0, now - self.started)

    def claim(self) -> bool:
        """Take the ending of this request (its answer, if it needs one, its access line
        and post_request), if the main loop has not (rule 3): True once. For the
        request's own thread; ``abandon`` runs under the lock already and sets
        ``answered`` itself."""
        if self.lock is None:
            return True
        with self.lock:
            if self.answered:
                return False
            self.answered = True
            return True


@dataclass(frozen=True, slots=True)
class Verdict(Generic[H]):
    """What ``check`` found: requests to interrupt now, requests that would not stop."""

    overdue: list[InFlight[H]] = field(default_factory=list)
    stuck: list[InFlight[H]] = field(default_factory=list)
    # Interrupted ANSWER_WINDOW ago and not answered by their thread: the main loop's.
    unanswered: list[InFlight[H]] = field(default_factory=list)


class RequestWatchdog(Generic[H]):
    """The table of in-flight requests and the decisions on it (rules 1, 3 and 4)."""

    def __init__(
        self,
        limit: float,
        grace: float,
        probe: Callable[[Any], int | None] | None = None,
        backlog: Callable[[Any], int] | None = None,
    ) -> None:
        self.limit = limit
        self.grace = grace
        # probe(entry.sock): a count that grows while the client takes the response
        # (the bytes it acknowledged), None where there is none.
        self.probe = probe
        # backlog(entry.sock): bytes sent and still waiting for the client (0 when it has
        # everything, or when that cannot be known).
        self.backlog = backlog
        # A plain lock: requests start and finish in several threads. After gevent or
        # eventlet monkey-patching, ``threading.Lock`` is their cooperative lock (it is
        # looked up at call time for that reason).
        self._lock = threading.Lock()
        self._entries: dict[int, InFlight[H]] = {}

    @property
    def enabled(self) -> bool:
        return self.limit > 0

    def started(
        self, handle: H, request_line: bytes, now: float, context: Any = None
    ) -> InFlight[H]:
        entry = InFlight(handle, request_line, now, context, progress_at=now, lock=self._lock)
        if self.limit > 0:
            with self._lock:
                self._entries[id(entry)] = entry
        return entry

    def release(self, handle: H) -> None:
        """Stop bounding the request ``handle`` serves: it asked for an upgrade (a
        WebSocket), and such a request lasts as long as its client stays."""
        with self._lock:
            for key, entry in list(self._entries.items()):
                if entry.handle == handle:
                    del self._entries[key]

    def finished(self, entry: InFlight[H]) -> None:
        with self._lock:
            entry.done = True
            self._entries.pop(id(entry), None)

    def in_flight(self) -> list[InFlight[H]]:
        with self._lock:
            return list(self._entries.values())

    def __len__(self) -> int:
        return len(self._entries)

    def check(self, now: float) -> Verdict[H]:
        """Mark and return the requests newly past their limit, and those newly stuck."""
        verdict: Verdict[H] = Verdict()
        if self.limit <= 0:
            return verdict
        with self._lock:
            taken = []
            for key, entry in self._entries.items():
                if not entry.interrupted_at:
                    if now - entry.progress_at >= self.limit and not self._took_some(entry, now):
                        if entry.taken_over is not None and entry.taken_over():
                            taken.append(key)
                            continue
                        entry.interrupted_at = now
                        verdict.overdue.append(entry)
                else:
                    waited = now - entry.interrupted_at
                    if not entry.answer_due and waited >= min(ANSWER_WINDOW, self.grace):
                        entry.answer_due = True
                        if not entry.answered:
                            verdict.unanswered.append(entry)
                    if not entry.reported_stuck and waited >= self.grace:
                        entry.reported_stuck = True
                        verdict.stuck.append(entry)
            for key in taken:  # a WebSocket now, no longer a request (``release``)
                del self._entries[key]
        return verdict

    def _took_some(self, entry: InFlight[H], now: float) -> bool:
        """Has the client taken some of the response since the last look (rule 2)? A
        send records progress only when it completes, and one blocked on a full socket
        completes only when the kernel wakes it, after a third of its buffer drained: a
        slow but steady reader can go longer than the limit without one. At the first
        look there is nothing to compare with: look again in PROBE_WINDOW."""
        if self.probe is None or entry.sock is None:
            return False
        count = self.probe(entry.sock)
        if count is None:
            return False
        last, entry.probed = entry.probed, count
        if last < 0:
            if self.backlog is not None and self.backlog(entry.sock) == 0:
                return False  # the client has it all: the app is what stopped
            entry.progress_at = now - self.limit + max(PROBE_WINDOW, self.limit / 2)
            return True
        if count != last:
            entry.progress_at = now
            return True
        return False

    def next_check(self) -> float | None:
        """When ``check`` will next find something, if nothing starts or ends meantime.

        A request that starts later has a later deadline, so a loop may sleep until this
        time (or its own tick) without missing one.
        """
        if self.limit <= 0:
            return None
        due: float | None = None
        with self._lock:
            for entry in self._entries.values():
                if not entry.interrupted_at:
                    at = entry.progress_at + self.limit
                elif not entry.answer_due:
                    at = entry.interrupted_at + min(ANSWER_WINDOW, self.grace)
                elif not entry.reported_stuck:
                    at = entry.interrupted_at + self.grace
                else:
                    continue
                if due is None or at < due:
                    due = at
        return due

    def while_running(self, entry: InFlight[H], action: Callable[[InFlight[H]], object]) -> bool:
        """Run ``action(entry)`` unless the request has finished meanwhile (rule 4)."""
        with self._lock:
            if entry.done:
                return False
            action(entry)
            return True


def format_frame(frame: FrameType | None) -> str:
    if frame is None:
        return "  (no Python frame: the code is not running Python right now)\n"
    return "".join(traceback.format_stack(frame))


def thread_stack(ident: int) -> str:
    """The current Python stack of thread ``ident``."""
    return format_frame(sys._current_frames().get(ident))


def stack_mark(ident: int) -> tuple[int, int] | None:
    """Where thread ``ident`` is: its innermost frame and instruction. The same some time
    later means it has not run a bytecode since: it is blocked in a C call (rule 3)."""
    frame = sys._current_frames().get(ident)
    return None if frame is None else (id(frame), frame.f_lasti)


def interrupt_thread(ident: int, exc_type: type[BaseException] = RequestHungError) -> bool:
    """Raise ``exc_type`` in thread ``ident`` at its next Python bytecode.

    It cannot wake a thread blocked in C (``time.sleep``, a socket without a timeout); the
    exception is raised when that call returns, and rule 3's grace period covers the case
    where it never does. True when the exception was set.
    """
    set_async_exc = ctypes.pythonapi.PyThreadState_SetAsyncExc
    count = set_async_exc(ctypes.c_ulong(ident), ctypes.py_object(exc_type))
    if count > 1:  # pragma: no cover - only with a corrupt thread id; undo, per the C API
        set_async_exc(ctypes.c_ulong(ident), None)
        return False
    return bool(count == 1)


def timeout_status(request_timeout: bool) -> tuple[int, str]:
    """504 for ``request_timeout`` (the limit the operator set for a request), 500 for
    ``timeout`` (as sync and fast answer a request the master aborts)."""
    return (504, "Gateway Timeout") if request_timeout else (500, "Internal Server Error")


def timeout_response(conn: ServerConnection, request_timeout: bool) -> bytes:
    """The answer to an interrupted request while none was started, else b""."""
    if conn.response_started:
        return b""
    try:
        return error_response(conn, *timeout_status(request_timeout))
    except Exception:  # the connection's state refuses a response: just close
        return b""


class RequestTimeoutEnforcer(Generic[H]):
    """Acts on the watchdog's verdicts for one worker (rule 5).

    ``stack_of(handle)`` returns the request's formatted stack; ``interrupt(entry)`` raises
    ``RequestHungError`` in it. ``retire(reason)`` is the worker's. ``abandon(entry)``, if
    given, ends a request its thread has not (rule 3): answers it if it can, logs it and
    closes its connection, while it is still running, under the watchdog's lock. It runs
    at ANSWER_WINDOW (``entry.reported_stuck`` False: only for a thread stuck in C) and
    again when the request is found stuck; it does nothing if ``entry.answered``.
    """

    def __init__(
        self,
        watchdog: RequestWatchdog[H],
        log: Any,
        pid: int,
        stack_of: Callable[[H], str],
        interrupt: Callable[[InFlight[H]], object],
        retire: Callable[[str], None],
        abandon: Callable[[InFlight[H]], object] | None = None,
    ) -> None:
        self.watchdog = watchdog
        self.log = log
        self.pid = pid
        self.stack_of = stack_of
        self.interrupt = interrupt
        self.retire = retire
        self.abandon = abandon

    def run_once(self, now: float) -> Verdict[H]:
        """Check every in-flight request once. Runs in: the worker's main loop."""
        verdict = self.watchdog.check(now)
        backlog = self.watchdog.backlog
        for entry in verdict.overdue:
            line = entry.request_line.decode("latin-1", "replace")
            if entry.sock is not None and backlog is not None and backlog(entry.sock) > 0:
                # Its response waits in the socket for a client that takes none of it: the
                # client's doing, said as the fast worker says it, without a stack.
                self.log.info(
                    "Dropped a client that read nothing more of its response for %gs: %s",
                    round(now - entry.progress_at, 1),
                    line,
                )
            else:
                # The stack is taken first: the interruption changes it.
                stack = self.stack_of(entry.handle)
                self.log.error(
                    "Request timeout (pid:%s): %s running %.1fs, %.1fs without progress\n%s",
                    self.pid,
                    line,
                    entry.elapsed(now),
                    max(0.0, now - entry.progress_at),
                    stack.rstrip("\n"),
                )
            try:
                self.watchdog.while_running(entry, self.interrupt)
            except Exception:
                self.log.exception("Could not interrupt the request %s", line)
        for entry in verdict.unanswered:
            if self.abandon is not None:
                try:
                    self.watchdog.while_running(entry, self.abandon)
                except Exception:
                    self.log.exception(
                        "Could not answer the interrupted request %s",
                        entry.request_line.decode("latin-1", "replace"),
                    )
        for entry in verdict.stuck:
            line = entry.request_line.decode("latin-1", "replace")
            self.log.error(
                "Request still running %.1fs after it was interrupted (pid:%s): %s\n%s",
                now - entry.interrupted_at,
                self.pid,
                line,
                self.stack_of(entry.handle).rstrip("\n"),
            )
            if self.abandon is not None:
                try:
                    self.watchdog.while_running(entry, self.abandon)
                except Exception:
                    self.log.exception("Could not answer the stuck request %s", line)
            self.retire("request timeout")
        return verdict
