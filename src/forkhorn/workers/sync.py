"""``-k sync``: one request at a time per process, a new connection per request.

Like gunicorn's sync worker, every response says ``Connection: close`` (the worker is meant
to sit behind a buffering proxy) and ``timeout`` bounds a request through the master's
heartbeat check. Unlike it, a client that sends its head slowly cannot pin the worker:

How it works: accepted connections wait in a selector until their request head is
complete (each with a ``header_timeout`` deadline for the whole head, answered 408 when
it passes); only then does the worker run the app, blocking, for that one request. So a
hundred slowloris clients cost a hundred file descriptors, not the worker. At most
``worker_connections`` heads wait at once; beyond that, new connections get 503 and are
closed. The worker takes a new connection only when it holds no complete request, and
serves it at once when its head came with it: a connection left in the kernel's queue
goes to the first free worker, and outlives this one if the app crashes it. A connection
taken before its head came can still wait here behind a slow request (7 quick requests in
47,000 next to 0.5 s ones). ``TCP_DEFER_ACCEPT`` on the listener removed that wait in a
trial (none in 44,000), but a connection that never sends is then never handed over, and
at shutdown the kernel drops it without a FIN: a browser's idle preconnection would hang
until its first request. So it is not set.

Runs in: the worker process, main thread.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import time
from typing import Any

from forkhorn.http import NEED_DATA, ProtocolError, Request, RequestTimeoutError, ServerConnection
from forkhorn.wsgi.input import RECV_SIZE

from .base import ACCEPT_BACKOFF, DRAIN_IDLE, Worker, listener_was_shut, unselect
from .session import (
    LINGER_POLL,
    LINGER_TIME,
    close_must_linger,
    new_connection,
    peer_of,
    prepare_http,
    refuse_overloaded,
    send_protocol_error,
    serve_request,
    still_sending,
)

_WAKE = object()  # selector key data of the worker's wake-up pipe


class _Pending:
    """An accepted connection whose request head has not fully arrived, or, once it was
    refused (``lingering``), whose client's last bytes are read and dropped."""

    __slots__ = ("addr", "conn", "deadline", "linger", "lingering", "sock")

    def __init__(self, sock: socket.socket, addr: Any, conn: ServerConnection, deadline: float):
        self.sock = sock
        self.addr = addr
        self.conn = conn
        self.deadline = deadline
        self.lingering = False
        self.linger = False  # its close must linger (close_must_linger, asked by _serve)


class SyncWorker(Worker):
    """One request at a time; heads are gathered without blocking on any one client."""

    def unbound_request(self) -> None:
        # The master bounds a BUSY worker by --request-timeout. A WebSocket handshake may
        # become a connection the app keeps for as long as its client stays: shown as
        # IDLE, it is bounded by the heartbeat alone (--timeout), as under gunicorn.
        self.slot.request_unbound()

    def run(self) -> None:
        prepare_http(self, multithread=False)
        self.selector = selectors.DefaultSelector()
        for listener in self.sockets:
            listener.sock.setblocking(False)
            self.selector.register(listener.sock, selectors.EVENT_READ, None)
        # TERM and retirement make this readable, so select() returns at once.
        self.selector.register(self.wakeup_fd, selectors.EVENT_READ, _WAKE)
        self.pending: dict[int, _Pending] = {}
        self.lingering = 0  # of them, refused ones closing (_linger)
        self._drained: list[tuple[socket.socket, Any]] = []
        self._listening = True  # the listeners are non-blocking now: stop_accepting may drain
        self._accept_resume_at = 0.0  # listeners out of the selector until then (_accept)
        head_timeout = float(self.cfg.header_timeout) or float("inf")  # 0: no deadline
        tick_every = max(0.1, min(1.0, self.timeout / 2 if self.timeout else 1.0))
        stop_deadline: float | None = None
        while True:
            if not self.tick() and stop_deadline is None:
                # Stopping: no new connections (the listeners are closed), but heads that
                # already arrived in part are still served until their own deadline, so
                # a reload or a recycle drops no request.
                now = time.monotonic()
                stop_deadline = now + float(self.cfg.graceful_timeout)
                unselect(self.selector, self.wakeup_fd)
                # A connection that has sent nothing yet gets a last short window for its
                # request to arrive, not its whole head timeout: an idle client must not
                # hold the worker (and the reload) for header_timeout seconds.
                for pending in self.pending.values():
                    if not pending.conn.has_buffered:
                        pending.deadline = min(pending.deadline, now + DRAIN_IDLE)
            if self._drained:
                self._adopt_drained(
                    time.monotonic() + (head_timeout if stop_deadline is None else DRAIN_IDLE)
                )
            wait = tick_every
            if stop_deadline is not None:
                if time.monotonic() >= stop_deadline:
                    break
                if all(p.lingering for p in self.pending.values()):
                    # Only lingering closes are left: wait for those whose response is
                    # still going out (still_sending), not for their clients' uploads.
                    if not still_sending(p.sock for p in self.pending.values()):
                        break
                    wait = LINGER_POLL
            if self._accept_resume_at:
                if time.monotonic() >= self._accept_resume_at:
                    self._accept_resume_at = 0.0
                    if self.alive:
                        for listener in self.sockets:
                            with contextlib.suppress(KeyError, ValueError, OSError):
                                self.selector.register(listener.sock, selectors.EVENT_READ, None)
                else:
                    wait = min(wait, self._accept_resume_at - time.monotonic())
            try:
                ready = self.selector.select(max(0.0, wait))
            except (OSError, ValueError):
                if not self.alive:
                    break
                raise
            # Heads already held come first, and a round that served a request accepts
            # nothing (the select that follows says afresh what is ready); otherwise one
            # new connection per round, served at once if its head came with it (the
            # module docstring says why).
            served = False
            listeners: list[Any] = []
            for key, _ in ready:
                data = key.data
                if data is None:
                    listeners.append(key.fileobj)
                elif data is not _WAKE:
                    served = self._on_readable(data) or served
            if listeners and not served and self.alive:
                self._accept(listeners[0], time.monotonic() + head_timeout)
            self._expire(time.monotonic())
        for pending in list(self.pending.values()):
            self._drop(pending)

    def unregister_listeners(self) -> None:
        selector = getattr(self, "selector", None)
        if selector is None:
            return
        for listener in self.sockets:
            unselect(selector, listener.sock)

    def stop_accepting(self) -> None:
        """Accept what the kernel already queued, then close the listeners.

        Runs in: the TERM (or retire) handler.  The kernel completes handshakes on the
        shared socket until its last copy is closed, and the process that closes it last
        would reset every connection still queued.  Taking them first turns "accepted,
        then reset" into "served": the run loop adopts them like any new connection.  What
        arrives after the last close is refused by the kernel.
        """
        if getattr(self, "_listening", False):
            self._listening = False
            self._drained.extend(self.drain_queued())
        super().stop_accepting()

    def _adopt_drained(self, deadline: float) -> None:
        drained, self._drained = self._drained, []
        for sock, addr in drained:
            self._adopt(sock, addr, deadline)

    def _accept(self, listener: socket.socket, deadline: float) -> None:
        try:
            sock, addr = listener.accept()
        except (BlockingIOError, InterruptedError, ConnectionAbortedError):
            return
        except OSError as exc:
            if listener_was_shut(exc):
                unselect(self.selector, listener)
                return
            if not self.alive:
                return
            if self.accept_failed(exc):
                # Out of file descriptors, say: stop accepting for a while (run() puts
                # the listeners back); the connections held meanwhile are served.
                for each in self.sockets:
                    unselect(self.selector, each.sock)
                self._accept_resume_at = time.monotonic() + ACCEPT_BACKOFF
                return
            raise
        pending = self._adopt(sock, addr, deadline)
        if pending is not None:
            self._on_readable(pending)  # most clients' heads arrive with the handshake

    def _adopt(self, sock: socket.socket, addr: Any, deadline: float) -> _Pending | None:
        if len(self.pending) - self.lingering >= self.cfg.worker_connections:
            refuse_overloaded(sock, self.server_line)
            self.refused_overloaded()
            return None
        sock.setblocking(False)
        pending = _Pending(sock, addr, new_connection(self), deadline)
        self.pending[sock.fileno()] = pending
        self.selector.register(sock, selectors.EVENT_READ, pending)
        return pending

    def _on_readable(self, pending: _Pending) -> bool:
        """Read what arrived; serve the request if its head is complete (True then)."""
        try:
            data = pending.sock.recv(RECV_SIZE)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError:
            self._drop(pending)
            return False
        if pending.lingering:
            if not data:
                self._drop(pending)  # the client closed: a clean close now
            return False
        conn = pending.conn
        conn.receive_data(data)
        try:
            event = conn.next_event()
        except ProtocolError as exc:
            send_protocol_error(self, pending.sock, conn, exc, peer_of(pending.addr))
            self._linger(pending)
            return False
        if event is NEED_DATA:
            return False
        self._unregister(pending)
        served = False
        if isinstance(event, Request):
            self._serve(pending, event)
            served = True
            if pending.linger:
                # The app answered without reading the whole body, or the client sent
                # more or may be sending its next request: our FIN is out (_serve), and
                # what comes is read and dropped, as after a refusal.
                self._linger_after_response(pending)
                return served
        pending.sock.close()
        return served

    def _linger_after_response(self, pending: _Pending) -> None:
        """Back under the selector (the response took it out), to linger as a refusal."""
        try:
            pending.sock.setblocking(False)
        except OSError:
            pending.sock.close()
            return
        self.pending[pending.sock.fileno()] = pending
        self.selector.register(pending.sock, selectors.EVENT_READ, pending)
        self._linger(pending)  # (its FIN is already out: shutting again changes nothing)

    def _serve(self, pending: _Pending, request: Request) -> None:
        sock = pending.sock
        sock.setblocking(True)
        # The sync worker closes after every response, as gunicorn's does.
        pending.conn.close_after_response = True
        io_timeout = float(self.cfg.timeout) or None
        try:
            serve_request(self, sock, pending.conn, request, peer_of(pending.addr), io_timeout)
        finally:
            self.notify()
            # Asked before our FIN, which counts as output until the client acknowledges it.
            pending.linger = close_must_linger(pending.conn, sock)
            try:
                sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass

    def _linger(self, pending: _Pending) -> None:
        """After the answer to a refused request: our FIN goes out behind it, and what
        the client still sends is read and dropped until it closes, for LINGER_TIME at
        most. Closed at once, a socket with unread bytes resets the connection, and the
        reset can destroy the answer before the client reads it (RFC 9112 §9.6)."""
        try:
            pending.sock.shutdown(socket.SHUT_WR)
        except OSError:
            self._drop(pending)
            return
        pending.lingering = True
        pending.deadline = time.monotonic() + LINGER_TIME
        self.lingering += 1  # not counted against worker_connections

    def _expire(self, now: float) -> None:
        for pending in [p for p in self.pending.values() if p.deadline <= now]:
            if pending.lingering:
                self._drop(pending)
                continue
            # While this worker ran a request it could not read the other heads: what the
            # kernel already holds counts, so a head that did arrive is served, not 408'd.
            self._on_readable(pending)
            if self.pending.get(pending.sock.fileno()) is not pending or pending.lingering:
                continue  # served, refused or closed by the read
            if pending.conn.has_buffered:
                send_protocol_error(
                    self,
                    pending.sock,
                    pending.conn,
                    RequestTimeoutError("request head not received in time"),
                    peer_of(pending.addr),
                )
                self._linger(pending)
            else:  # the client never sent a byte; there is nothing to answer
                self._drop(pending)

    def _unregister(self, pending: _Pending) -> None:
        if self.pending.pop(pending.sock.fileno(), None) is not None and pending.lingering:
            self.lingering -= 1
        unselect(self.selector, pending.sock)

    def _drop(self, pending: _Pending) -> None:
        self._unregister(pending)
        pending.sock.close()
