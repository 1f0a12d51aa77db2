"""What the gevent and eventlet workers share: one greenlet per connection.

``GreenletWorker`` holds the whole behaviour; ``gevent.py`` and ``eventlet.py`` only supply
the primitives of their library (patch, spawn, kill, sleep, wait for a readable file
descriptor, wrap an accepted descriptor, an event). A fix made here fixes both.

How it works:

- ``init_process`` monkey-patches first (the subclass's ``patch``), then boots as every
  worker does, so the app is imported into a patched process.
- One acceptor greenlet per listener waits until the listener is readable and accepts
  without blocking (the listeners were made by the master before the library was loaded,
  so they are plain sockets; each accepted descriptor is wrapped in the library's socket).
  When ``worker_connections`` greenlets are running, a new connection gets 503 and is
  closed, so an overloaded worker answers instead of leaving clients in the backlog.
- A connection's greenlet loops ``session.read_request`` (``header_timeout`` for a new
  connection's head, ``keepalive`` for the wait between requests, then ``header_timeout``
  for the whole head) and ``session.serve_request``. Pipelined requests are already in
  the connection's buffer and are answered in order by the same loop.
- The main greenlet is the heartbeat: it ticks at least once a second and runs the
  request watchdog (``watchdog.py``) when a request is due. A greenlet that hogs the CPU
  stops the heartbeat too, and then the master's ``timeout`` replaces the worker. A
  request past its limit is logged with its greenlet's stack and killed with
  ``RequestHungError``: its connection is answered 504 (with ``request_timeout``, if no
  head was sent) and closed, its pool slot freed.
- Graceful stop (TERM, HUP, max_requests, recycling): acceptors are killed and the
  listeners closed at once; requests in flight answer ``Connection: close`` and get up to
  ``graceful_timeout``; a connection waiting for its next request may still bring one for
  ``DRAIN_IDLE`` (answered with ``Connection: close``: our last response may have gone
  out before the stop without it), then it is shut for reading, so that its greenlet sees
  end-of-file and closes it with a FIN.

Signal handlers only set flags and spawn a greenlet for the rest: a Python signal handler
may run inside the library's hub, where blocking or switching is not allowed.

Runs in: the worker process, main thread; "main", "acceptor" and "connection" on each
method name the greenlet that runs it.
"""

from __future__ import annotations

import _socket
import abc
import os
import socket
import time
from collections.abc import Callable
from types import FrameType
from typing import Any

from greenlet import GreenletExit  # type: ignore[import-untyped]

from forkhorn.arbiter.scoreboard import WorkerState
from forkhorn.http import ProtocolError, ServerConnection
from forkhorn.wsgi.input import RECV_SIZE

from .base import ACCEPT_BACKOFF, DRAIN_IDLE, Worker, listener_was_shut
from .session import (
    LINGER_POLL,
    LINGER_TIME,
    close_must_linger,
    new_connection,
    output_taken,
    output_waiting,
    peer_of,
    prepare_http,
    read_request,
    refuse_overloaded,
    send_protocol_error,
    serve_request,
    still_sending,
)
from .watchdog import (
    InFlight,
    RequestHungError,
    RequestTimeoutEnforcer,
    RequestWatchdog,
    format_frame,
    grace_period,
    request_limit,
)

__all__ = ["GreenletWorker"]

# Connections accepted per wake-up of an acceptor before it lets others run.
ACCEPT_BATCH = 64
# A worker whose pool is full waits up to this long before it takes a connection it would
# have to refuse: the kernel woke every worker waiting on the socket, and one with room
# takes it meanwhile (or a slot of its own frees up). Only when neither happens is it
# answered 503 here. (50 ms was not enough for a busy sibling on a loaded host.)
FULL_DEFER = 0.5
FULL_POLL = 0.01
# How long before the master's kill at graceful_timeout the worker ends what is left.
GRACE_MARGIN = 0.5
# A header_timeout of 0 turns the head deadline off; an hour stands in for "none".
NO_HEAD_DEADLINE = 3600.0
# accept() errors that mean "out of resources now": wait a little, do not crash.


class _Session:
    """One connection as the main greenlet sees it (for the idle sweep at shutdown)."""

    __slots__ = ("busy", "conn", "sock")

    def __init__(self, sock: Any, conn: ServerConnection) -> None:
        self.sock = sock
        self.conn = conn
        self.busy = False


class GreenletWorker(Worker):
    """A greenlet per connection; subclasses supply their library's primitives."""

    watches_requests = True  # RequestWatchdog
    _stop_asked_at = 0.0  # TERM or retirement: when (handle_term, retire)

    def cooperate(self) -> None:
        self.sleep(0)

    #: The library's name, for log lines.
    library = "greenlet"

    #: What to do about a preloaded app imported before the patch (preload_hazard).
    patch_first_advice = "drop --preload"

    # -- primitives (subclasses) -------------------------------------------------------
    @abc.abstractmethod
    def patch(self) -> None:
        """Monkey-patch the process. Called first thing after the fork."""

    @classmethod
    @abc.abstractmethod
    def stdlib_patched(cls) -> bool:
        """Has the library already patched this process (``threading`` at least)?"""

    @classmethod
    def preload_hazard(cls) -> str:
        # Preloaded, the app is imported before the worker's patch(): what it made at
        # import (thread-locals, locks, sockets, connections) stays unpatched. Django's
        # database layer then fails every request ("DatabaseWrapper objects created in a
        # thread can only be used in that same thread"), under gunicorn as here.
        if cls.stdlib_patched():
            return ""  # patched before the app was imported: the config file or the app did
        return (
            f"--preload with the {cls.library} worker: the app was imported before "
            f"{cls.library} patched the standard library, so what it made at import "
            "(thread-locals, locks, sockets, database connections) is unpatched; Django's "
            f"database layer, for one, fails. {cls.patch_first_advice}"
        )

    @abc.abstractmethod
    def make_pool(self, size: int) -> None:
        """Create the pool of connection greenlets."""

    @abc.abstractmethod
    def pool_full(self) -> bool: ...

    @abc.abstractmethod
    def pool_running(self) -> int: ...

    @abc.abstractmethod
    def spawn_in_pool(self, fn: Callable[..., Any], *args: Any) -> None: ...

    @abc.abstractmethod
    def spawn(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Start a greenlet outside the pool; safe to call from a signal handler."""

    @abc.abstractmethod
    def kill(self, greenlet: Any, exc: type[BaseException], block: bool) -> None:
        """Raise ``exc`` in ``greenlet``; ``block``: wait until it has ended (bounded)."""

    @abc.abstractmethod
    def current(self) -> Any: ...

    def unbound_request(self) -> None:
        self._watchdog.release(self.current())

    @abc.abstractmethod
    def sleep(self, seconds: float) -> None: ...

    @abc.abstractmethod
    def wait_readable(self, fd: int) -> None: ...

    @abc.abstractmethod
    def wrap_accepted(self, fd: int, listener: socket.socket) -> Any:
        """The library's socket object for a descriptor returned by ``accept``."""

    @abc.abstractmethod
    def new_event(self) -> Any: ...

    @abc.abstractmethod
    def wait_event(self, event: Any, timeout: float) -> None: ...

    @abc.abstractmethod
    def set_event(self, event: Any) -> None: ...

    # -- life cycle ----------------------------------------------------------------------
    def init_process(self) -> None:
        self.patch()
        super().init_process()

    def run(self) -> None:
        # Runs in: main.
        cfg = self.cfg
        # Greenlets interleave requests in one process: for an app, that is the same
        # hazard as threads (PEP 3333's wsgi.multithread).
        prepare_http(self, multithread=True)
        self._head_timeout = float(cfg.header_timeout) or NO_HEAD_DEADLINE
        self._idle_timeout = float(cfg.keepalive)
        self._io_timeout = float(cfg.timeout) or None
        self._sessions: dict[Any, _Session] = {}
        self._lingering: set[Any] = set()  # sockets closing (_linger_and_close)
        self._busy = 0
        # Set when the wind-down begins (see DRAIN_IDLE); connections use it from then on.
        self._drain_until = float("inf")
        self._stop_event = self.new_event()
        self._accepting_stopped = self.new_event()
        limit = request_limit(cfg)
        self._watchdog: RequestWatchdog[Any] = RequestWatchdog(
            limit, grace_period(limit), output_taken, output_waiting
        )
        self._enforcer = RequestTimeoutEnforcer(
            self._watchdog,
            self.log,
            self.pid,
            lambda g: format_frame(getattr(g, "gr_frame", None)),
            self._interrupt,
            self.retire,
        )
        self.make_pool(int(cfg.worker_connections))
        self._acceptors = [self.spawn(self._accept_loop, lst.sock) for lst in self.sockets]
        tick_every = max(0.1, min(1.0, self.timeout / 2 if self.timeout else 1.0))
        while self.alive:
            now = time.monotonic()
            self.tick(now)
            self._enforcer.run_once(now)
            wake_at = min(now + tick_every, self._watchdog.next_check() or now + tick_every)
            self.wait_event(self._stop_event, max(0.0, wake_at - time.monotonic()))
        # Not in a ``finally``: on QUIT/INT (SystemExit) the process leaves at once.
        self._say_orphaned()
        self._wind_down()

    def _wind_down(self) -> None:
        """Finish in-flight requests up to graceful_timeout. Runs in: main."""
        # The master kills this process graceful_timeout after it asked it to stop: this
        # deadline comes a little before, so that requests still running are answered,
        # logged and their hooks run, instead of cut by the SIGKILL.
        began = self._stop_asked_at or time.monotonic()
        deadline = began + max(0.0, float(self.cfg.graceful_timeout) - GRACE_MARGIN)
        self.stop_accepting()  # idempotent; the loop may also end because the parent left
        # Another greenlet may be half-way through stop_accepting (killing the acceptors
        # switches): wait until what it drained from the queue is in the pool, or this
        # process could exit holding an accepted connection it never read.
        self.wait_event(self._accepting_stopped, float(self.cfg.graceful_timeout))
        now = time.monotonic()
        # Idle keep-alive connections get a last short window: a request already on its
        # way is served (with Connection: close) instead of being cut off by our FIN.
        self._drain_until = drain_until = now + min(self._idle_timeout, DRAIN_IDLE)
        for session in list(self._sessions.values()):
            session.conn.close_after_response = True
        while self.pool_running():
            now = time.monotonic()
            if now >= deadline:
                self.log.warning(
                    "Graceful timeout with %d connection(s) open; exiting", self.pool_running()
                )
                for greenlet in list(self._sessions):
                    self.kill(greenlet, RequestHungError, block=False)
                self.sleep(0)
                break
            if now >= drain_until:
                self._close_idle()
            self.notify()
            self._enforcer.run_once(now)
            self.sleep(max(0.0, min(0.1, deadline - now)))
        # Lingering closes whose response is still going out: exiting would close them
        # with input unread, and the reset would cut the response (still_sending).
        while still_sending(list(self._lingering)) and time.monotonic() < deadline:
            self.notify()
            self.sleep(LINGER_POLL)

    def _linger_and_close(self, sock: Any) -> None:
        try:
            _linger(sock)
        finally:
            self._lingering.discard(sock)
            _close(sock)

    def _close_idle(self) -> None:
        """Shut idle connections for reading: their greenlet reads end-of-file and closes
        quietly (Linux still hands it the bytes that had already arrived)."""
        for session in list(self._sessions.values()):
            if not session.busy and not session.conn.buffered:
                try:
                    session.sock.shutdown(socket.SHUT_RD)
                except OSError:
                    pass

    def _interrupt(self, entry: InFlight[Any]) -> None:
        # Runs in: main (the enforcer). Not blocking: the greenlet unwinds on its own.
        self.kill(entry.handle, RequestHungError, block=False)

    # -- stopping (signal handlers may run inside the hub: defer the work) ----------------
    def handle_term(self, signum: int, frame: FrameType | None) -> None:
        # When the master's graceful_timeout began, for _wind_down's deadline: the hub may
        # run what this schedules only at its next timer (eventlet's poll resumes its
        # wait after the handler), up to a second later.
        self._stop_asked_at = self._stop_asked_at or time.monotonic()
        self.alive = False
        self.retire_reason = self.retire_reason or "stop"
        self.slot.set_state(WorkerState.EXITING)
        self._note_orphaned()
        self.spawn(self._stop_now)

    def handle_quit(self, signum: int, frame: FrameType | None) -> None:
        self.alive = False
        self.spawn(Worker.handle_quit, self, signum, frame)

    def retire(self, reason: str) -> None:
        # Runs in: main or a connection greenlet (max_requests), never the hub.
        self._stop_asked_at = self._stop_asked_at or time.monotonic()
        super().retire(reason)
        self._wake_main()

    def _stop_now(self) -> None:
        self.stop_accepting()
        self._wake_main()

    def _wake_main(self) -> None:
        event = getattr(self, "_stop_event", None)
        if event is not None:
            self.set_event(event)

    def stop_accepting(self) -> None:
        """Once only: kill the acceptors, take the queued connections, close listeners."""
        if getattr(self, "_stop_accepting_started", False):
            return
        self._stop_accepting_started = True
        try:
            super().stop_accepting()
        finally:
            event = getattr(self, "_accepting_stopped", None)  # None before run()
            if event is not None:
                self.set_event(event)

    def unregister_listeners(self) -> None:
        # Kill the acceptors before the listeners close, so that the library's poller
        # forgets their descriptors first (an epoll set keeps a closed descriptor whose
        # socket is still open in the other processes).
        acceptors = getattr(self, "_acceptors", [])
        self._acceptors = []
        if not acceptors:
            return  # run() has not started: nothing to drain into (see queue_drained)
        current = self.current()
        for acceptor in acceptors:
            # One that never started (a stop as run() begins) finds alive False when it
            # does: killed before its start, it raised in this caller (eventlet: a failed
            # boot) or printed an unhandled _StopAccepting (gevent).
            if acceptor is not current and acceptor:
                self.kill(acceptor, _StopAccepting, block=True)
        # Serve what is already queued rather than let the last close reset it; those
        # connections get the same short window as idle ones for their request to arrive.
        self._drain_until = max(
            getattr(self, "_drain_until", 0.0),
            time.monotonic() + min(self._idle_timeout, DRAIN_IDLE),
        )
        orphaned = os.getppid() != self.ppid
        for listener in self.sockets:
            if not orphaned and not listener.going_away():
                continue  # the master's other workers serve it (see drain_queued)
            try:
                while self._accept_some(listener.sock):
                    pass
            except (OSError, ValueError):
                pass
        self.queue_drained = True

    # -- acceptor ------------------------------------------------------------------------
    def _accept_loop(self, listener: socket.socket) -> None:
        try:
            listener.setblocking(False)
            fd = listener.fileno()
            while self.alive:
                self.wait_readable(fd)
                self._accept_some(listener, defer_when_full=True)
        except _StopAccepting:
            return
        except (OSError, ValueError) as exc:
            if self.alive and not (isinstance(exc, OSError) and listener_was_shut(exc)):
                self.log.exception("Accepting on %s failed; no longer accepting there", listener)

    def _accept_some(self, listener: socket.socket, defer_when_full: bool = False) -> bool:
        """Accept up to ACCEPT_BATCH connections; False once the queue is empty.
        ``defer_when_full``: the acceptor's call (see ``FULL_DEFER``), not the stop's."""
        accept_fd = listener._accept  # type: ignore[attr-defined]  # the descriptor, unwrapped
        for _ in range(ACCEPT_BATCH):
            if defer_when_full and self.pool_full():
                defer_when_full = False  # once per call: then refuse what is still queued
                waited = 0.0
                while waited < FULL_DEFER and self.pool_full() and self.alive:
                    self.sleep(FULL_POLL)
                    waited += FULL_POLL
                if not self.alive:
                    return False
            try:
                fd, addr = accept_fd()
            except (BlockingIOError, InterruptedError):
                return False
            except ConnectionAbortedError:
                continue
            except OSError as exc:
                if self.alive and self.accept_failed(exc):
                    self.sleep(ACCEPT_BACKOFF)
                    return False
                raise
            if self.pool_full():
                _refuse(fd, self.server_line)
                self.refused_overloaded()
                continue
            self.spawn_in_pool(self._serve_connection, self.wrap_accepted(fd, listener), addr)
            if defer_when_full and self.pool_full():
                return True  # full now: wait_readable says whether another is waiting
        return True

    # -- connection ----------------------------------------------------------------------
    def _serve_connection(self, sock: Any, addr: Any) -> None:
        me = self.current()
        conn = new_connection(self)
        session = _Session(sock, conn)
        self._sessions[me] = session
        peer = peer_of(addr)
        refused = False
        try:
            self._keep_serving(me, session, peer)
        except ProtocolError as exc:
            send_protocol_error(self, sock, conn, exc, peer)
            refused = True  # the client may still be sending (a body past the limit)
        except RequestHungError:
            pass  # a request cut is answered in serve_request; an idle connection closes
        except OSError:
            pass  # the client went away
        finally:
            self._sessions.pop(me, None)
            if refused or close_must_linger(conn, sock):
                # In a greenlet of its own, outside the pool: a lingering close holds no
                # slot of worker_connections, and a stop waits for it only while its
                # response is still going out (_wind_down).
                self._lingering.add(sock)
                try:  # our FIN now: a worker that exits before the greenlet runs sent it
                    sock.shutdown(socket.SHUT_WR)
                except OSError:
                    pass
                self.spawn(self._linger_and_close, sock)
            else:
                _close(sock)

    def _keep_serving(self, me: Any, session: _Session, peer: tuple[str, str]) -> None:
        sock, conn = session.sock, session.conn
        idle_timeout = self._head_timeout  # a new connection: its first head is due now
        # ...and complete header_timeout after it was accepted (read_request).
        head_due = time.monotonic() + self._head_timeout
        while True:
            if not self.alive and not conn.buffered:
                # Stopping: a request may still be on its way (our last response went out
                # before the stop, without Connection: close); wait for it only until the
                # drain window ends.
                remaining = self._drain_until - time.monotonic()
                if remaining <= 0:
                    return
                idle_timeout = min(idle_timeout, remaining)
            request = read_request(sock, conn, idle_timeout, self._head_timeout, head_due)
            head_due = 0.0  # later heads: header_timeout from their first byte
            if request is None:
                return
            session.busy = True  # no switch since read_request returned: the sweep agrees
            self._busy += 1
            if not self.alive or self._idle_timeout <= 0 or self._is_last_request():
                conn.close_after_response = True
            entry = self._watchdog.started(me, request.request_line, time.monotonic(), session)
            try:
                keep = serve_request(self, sock, conn, request, peer, self._io_timeout, entry)
            finally:
                self._watchdog.finished(entry)
                self._busy -= 1
                session.busy = False
            if not keep:
                return
            idle_timeout = self._idle_timeout

    def _is_last_request(self) -> bool:
        # The response that reaches max_requests says Connection: close (the base class
        # retires the worker right after it).
        return self.nr + self._busy >= self.max_requests


class _StopAccepting(GreenletExit):  # type: ignore[misc]
    """Ends an acceptor greenlet at shutdown (a BaseException: nothing may swallow it). A
    GreenletExit, so that gevent does not print it as a failure when it ends a greenlet
    that had been started but had not run yet (a stop as run() begins)."""


def _refuse(fd: int, server_line: bytes) -> None:
    """Too many connections (``refuse_overloaded``). Runs in: acceptor, on the C socket
    type rather than the patched one: nothing here may switch greenlets."""
    try:
        raw = _socket.socket(fileno=fd)
    except OSError:
        os.close(fd)
        return
    refuse_overloaded(raw, server_line)


def _linger(sock: Any) -> None:
    """The app answered without reading the whole body, which is still arriving, or the
    request was refused (413, say) while its body was on its way: closed
    now, with bytes unread, the socket would be reset, and the reset can destroy the
    response before the client reads it. Our FIN goes out, and what the client sends is
    read and dropped until it closes, for ``LINGER_TIME`` at most (RFC 9112 §9.6). A
    green socket: the other connections run meanwhile."""
    deadline = time.monotonic() + LINGER_TIME
    try:
        sock.shutdown(socket.SHUT_WR)
        while (remaining := deadline - time.monotonic()) > 0:
            sock.settimeout(remaining)
            if not sock.recv(RECV_SIZE):
                return
    except OSError:
        pass


def _close(sock: Any) -> None:
    try:
        sock.shutdown(socket.SHUT_WR)
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass


#: Bytes per os.sendfile() call: a pause point between pieces of a large file, so one
#: download does not hold the hub for the whole file.
SENDFILE_CHUNK = 1 << 20


def cooperative_sendfile(
    out_fd: int,
    file: Any,
    offset: int,
    count: int | None,
    wait_writable: Callable[[], object],
) -> int:
    """``socket.sendfile`` for a green socket, which is non-blocking underneath: the
    standard one refuses such a socket (eventlet's passes the call through) or falls back
    to reading the file and sending it (gevent's). ``os.sendfile`` runs here, and
    ``wait_writable()`` parks the greenlet in the hub while the socket's buffer is full
    (it raises ``TimeoutError`` past the socket's timeout). As ``socket.sendfile``, the
    file's position says how far it went, a timeout included."""
    in_fd = file.fileno()
    sent = 0
    try:
        while count is None or sent < count:
            size = SENDFILE_CHUNK if count is None else min(SENDFILE_CHUNK, count - sent)
            try:
                n = os.sendfile(out_fd, in_fd, offset + sent, size)
            except BlockingIOError:
                wait_writable()
                continue
            if n == 0:
                break  # end of file
            sent += n
    finally:
        if sent:
            file.seek(offset + sent)
    return sent
