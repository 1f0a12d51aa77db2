"""``-k gthread``: a pool of ``threads`` threads runs requests; one poller holds the rest.

How it works:

- The main thread owns a selector with the listening sockets, a wake-up socket pair, and
  every connection that is *not* being served: new ones whose head has not fully arrived
  and idle keep-alive ones. It reads them without blocking into their ``ServerConnection``
  until the core yields a ``Request``; only then does the connection go to the pool. So a
  slow or idle client costs a file descriptor, never a thread (gunicorn's gthread worker
  lets idle keep-alive connections wait in the pool's queue behind busy threads).
- A pool thread serves the request with ``session.serve_request`` on the socket made
  blocking (with ``timeout`` as its I/O timeout). Requests already pipelined in the
  connection's buffer are served right away by the same thread, since the socket may never
  become readable again for them. Then the connection goes back to the poller, idle
  (``keepalive`` deadline) or with a partial head (``header_timeout`` deadline), or is
  closed.
- Deadlines live in a heap checked every loop turn. Past its deadline an idle connection
  is closed quietly, a partial head is answered 408.
- At most ``worker_connections`` connections are open at once; beyond that a new one gets
  503 and is closed, so an overloaded worker answers instead of queueing silently.
- A worker accepts only while a thread is free, and reads each new connection at once
  (``_accept``); while every thread has a request (served or queued), it stops accepting:
  a new connection waits in the kernel's queue for a worker with a free thread, instead of
  being taken here and waiting behind a slow request while other workers idle (gunicorn's
  gthread worker takes it). Accepting resumes as soon as a thread is free.
- The main thread ticks (heartbeat, recycling) at least once a second and runs the
  request watchdog (``watchdog.py``) when a request is due, whatever the threads do: a
  request past ``timeout`` (or ``request_timeout``) is logged with its thread's stack and
  interrupted by an asynchronous exception (504 with ``request_timeout``); one that will
  not stop (stuck in C) retires the worker, and the master replaces it.
- Graceful stop (TERM, HUP, max_requests, recycling): the listeners are closed at once;
  requests in flight answer ``Connection: close`` and get up to ``graceful_timeout``;
  idle keep-alive connections get ``DRAIN_IDLE`` more for a request already on its way
  (answered with ``Connection: close``), then are closed with a FIN. So a HUP under load
  fails no request.

Rules kept: only the main thread touches the selector, the heap and the listeners (a pool
thread that needs the worker retired, e.g. after ``max_requests``, asks the main thread
through the wake-up socket). A connection belongs to exactly one side at a time: the
poller or one pool thread.

Runs in: the worker process; "main" and "pool" are marked on each method.
"""

from __future__ import annotations

import contextlib
import heapq
import queue
import selectors
import socket
import threading
import time
from collections import deque
from typing import Any

from forkhorn.http import CLOSED, NEED_DATA, ProtocolError, Request, RequestTimeoutError
from forkhorn.http.connection import ServerConnection
from forkhorn.wsgi.input import RECV_SIZE

from .base import ACCEPT_BACKOFF, DRAIN_IDLE, Worker, listener_was_shut, unselect
from .session import (
    LINGER_POLL,
    LINGER_TIME,
    answer_timeout,
    close_must_linger,
    finish_request,
    new_connection,
    output_taken,
    output_waiting,
    peer_of,
    prepare_http,
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
    grace_period,
    interrupt_thread,
    request_limit,
    stack_mark,
    thread_stack,
    timeout_response,
)

__all__ = ["ThreadWorker"]

# Selector keys' data for the two kinds of non-connection sockets.
_LISTENER = "listener"
_WAKE = "wake"
# Connections accepted per readable event: enough to drain a burst without starving the
# connections already waiting in the selector.
ACCEPT_BATCH = 64
# A header_timeout of 0 turns the head deadline off; an hour stands in for "none".
NO_HEAD_DEADLINE = 3600.0
# Errors from accept() that mean "out of resources now", not a bug: back off one turn.


# Stale deadline entries tolerated beyond twice the held connections before a sweep.
STALE_SLACK = 64


class _Client:
    """One open connection, held by the poller or by one pool thread."""

    __slots__ = (
        "conn",
        "deadline",
        "fresh",
        "lingering",
        "peer",
        "registered",
        "request",
        "sock",
    )

    def __init__(self, sock: socket.socket, peer: tuple[str, str], conn: ServerConnection):
        self.sock = sock
        self.peer = peer
        self.conn = conn
        self.deadline = 0.0
        self.fresh = True  # no request yet: its deadline is its first head's, from accept
        self.registered = False
        self.request: Request | None = None
        # Answered, our FIN sent, the rest of an unread body read and dropped (_linger).
        self.lingering = False


def _waiting_for(client: _Client, deadline: float) -> bool:
    """Is the poller still holding ``client`` under this deadline (not moved on)?"""
    return client.registered and client.deadline == deadline


class ThreadWorker(Worker):
    """A thread pool for requests, a poller for everything that is only waiting."""

    watches_requests = True  # RequestWatchdog
    _lingering = 0  # held connections closing (_linger); set per run() too

    # -- main thread -------------------------------------------------------------------
    def run(self) -> None:
        cfg = self.cfg
        nthreads = max(1, int(cfg.threads))
        prepare_http(self, multithread=nthreads > 1)
        self._main_ident = threading.get_ident()
        self._head_timeout = float(cfg.header_timeout) or NO_HEAD_DEADLINE
        self._idle_timeout = float(cfg.keepalive)
        self._io_timeout = float(cfg.timeout) or None
        self._lock = threading.Lock()  # guards _busy and the request counter
        self._nthreads = nthreads
        self._accepting = True  # the listeners are in the selector (see _listen)
        self._busy: set[_Client] = set()
        self._held = 0  # connections held by the poller
        self._lingering = 0  # of them, closing (_linger): not counted as open, not waited for
        self._heap: list[tuple[float, int, _Client]] = []
        self._seq = 0
        self._returned: deque[_Client] = deque()
        self._retire_pending = ""
        # Set when the graceful stop's wind-down begins; until then (a stop signal may come
        # between two lines of the loop) connections keep their usual deadlines.
        self._drain_until = float("inf")
        self._jobs: queue.SimpleQueue[_Client | None] = queue.SimpleQueue()
        # Connections a stop signal took from the accept queue, for the loop to adopt.
        self._drained: list[tuple[socket.socket, Any]] = []

        limit = request_limit(cfg)
        self._watchdog: RequestWatchdog[int] = RequestWatchdog(
            limit, grace_period(limit), output_taken, output_waiting
        )
        self._enforcer = RequestTimeoutEnforcer(
            self._watchdog,
            self.log,
            self.pid,
            thread_stack,
            _interrupt,
            self.retire,
            self._abandon,
        )
        # Stuck requests answered from the main loop (_abandon): the wind-down does not
        # wait for their threads, which may never return.
        self._abandoned: set[_Client] = set()

        self._accept_resume_at = 0.0  # after a transient accept() error (_accept)
        self.selector = selectors.DefaultSelector()
        self._poke_r, self._poke_w = socket.socketpair()
        self._poke_r.setblocking(False)
        self._poke_w.setblocking(False)
        self.selector.register(self._poke_r, selectors.EVENT_READ, _WAKE)
        for listener in self.sockets:
            listener.sock.setblocking(False)
            self.selector.register(listener.sock, selectors.EVENT_READ, _LISTENER)

        self._threads = [
            threading.Thread(target=self._pool_main, name=f"forkhorn-{i}", daemon=True)
            for i in range(nthreads)
        ]
        for thread in self._threads:
            thread.start()
        # Not in a ``finally``: on QUIT/INT (SystemExit) the process leaves at once.
        self._serve_until_stopped()
        self._wind_down()

    def _serve_until_stopped(self) -> None:
        tick_every = max(0.1, min(1.0, self.timeout / 2 if self.timeout else 1.0))
        next_tick = 0.0
        next_watch = 0.0  # the watchdog's next due time, so a timeout is seen on time
        while self.alive:
            now = time.monotonic()
            if now >= next_tick:
                next_tick = now + tick_every
                self.tick(now)
            if now >= next_watch:
                self._enforcer.run_once(now)
                next_watch = min(next_tick, self._watchdog.next_check() or next_tick)
            if self._stopped():
                break
            wait = min(next_tick, next_watch) - now
            if self._heap:
                wait = min(wait, self._heap[0][0] - now)
            if not self._accepting and self._accept_resume_at > now:
                # Paused after EMFILE (not merely all threads busy): back at resume time.
                wait = min(wait, self._accept_resume_at - now)
            try:
                ready = self.selector.select(max(0.0, wait))
            except (OSError, ValueError):
                if self._stopped():
                    break
                raise
            for key, _ in ready:
                data = key.data
                if data is _LISTENER:
                    if self._stopped():
                        continue
                    if len(self._busy) >= self._nthreads:
                        # Every thread has a request: leave the connection to a worker
                        # with a free one (paused only when one arrives, so a keep-alive
                        # load never pays for the listeners going in and out).
                        self._listen(False)
                    else:
                        self._accept(key.fileobj)  # type: ignore[arg-type]
                elif data is _WAKE:
                    self._drain_pokes()
                else:
                    self._on_readable(data)
            if self._retire_pending:
                reason, self._retire_pending = self._retire_pending, ""
                super().retire(reason)
            self._adopt_drained()
            self._take_returned()
            self._expire(time.monotonic())
            if (
                not self._accepting
                and not self._stopped()
                and time.monotonic() >= self._accept_resume_at
            ):
                with self._lock:
                    free = len(self._busy) < self._nthreads
                if free:
                    self._listen(True)

    def _listen(self, on: bool) -> None:
        """Put the listeners in the selector, or take them out (all threads busy). Runs
        in: main."""
        self._accepting = on
        for listener in self.sockets:
            if not on:
                unselect(self.selector, listener.sock)
            elif self.alive:  # a stop (unregister_listeners) took them out for good
                with contextlib.suppress(KeyError, ValueError, OSError):
                    self.selector.register(listener.sock, selectors.EVENT_READ, _LISTENER)

    def _stopped(self) -> bool:
        # A method, not ``not self.alive`` inline: a signal handler flips it between two
        # lines, which mypy's narrowing cannot know.
        return not self.alive

    def unregister_listeners(self) -> None:
        # Runs in: main (signal handler or retire). Wake the loop so that it stops now.
        selector = getattr(self, "selector", None)
        if selector is None:
            return
        for listener in self.sockets:
            unselect(selector, listener.sock)
        # Serve what is already queued rather than let the last close reset it. Only
        # taken here: a handler runs between any two bytecodes of the loop, and adopting
        # (the heap, the held count) from it could lose one of the loop's own updates;
        # the loop adopts them (_adopt_drained), as the sync worker's does.
        self._drained.extend(self.drain_queued())
        self._poke()

    def _adopt_drained(self) -> None:
        drained, self._drained = self._drained, []
        # Their head is due in header_timeout, or by the end of the stop's drain window.
        deadline = min(time.monotonic() + self._head_timeout, self._drain_until)
        for sock, addr in drained:
            self._adopt(sock, addr, deadline)

    def retire(self, reason: str) -> None:
        # A pool thread (max_requests) must not touch the selector: hand it to main.
        if threading.get_ident() == getattr(self, "_main_ident", None):
            super().retire(reason)
        else:
            self._retire_pending = self._retire_pending or reason
            self._poke()

    def request_finished(self, now: float | None = None) -> None:
        # Runs in: pool. The base class counts with ``self.nr += 1``; threads must not
        # lose counts, or max_requests would drift.
        with self._lock:
            super().request_finished(now)

    def _accept(self, listener: socket.socket) -> None:
        """Accept while a thread is free (up to ``ACCEPT_BATCH``): each new connection is
        read at once, and one whose head came with it goes to a thread, so a burst is
        taken only as far as this worker can serve it now. The rest wait in the kernel's
        queue for the first worker with a free thread (taking them all, a worker made
        them wait behind its own requests, and a retiring one dropped those it could not
        finish in ``graceful_timeout``). A connection that has not sent its head yet
        holds no thread, so slow clients do not stop the accepting."""
        for _ in range(ACCEPT_BATCH):
            if len(self._busy) >= self._nthreads:
                return
            try:
                sock, addr = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue
            except OSError as exc:
                if listener_was_shut(exc):
                    unselect(self.selector, listener)
                    return
                if not self.alive:
                    return
                if self.accept_failed(exc):
                    # The listener stays readable: out of the selector for a while, or
                    # the loop would spin on it (one log line per turn, a core at 100%).
                    self._listen(False)
                    self._accept_resume_at = time.monotonic() + ACCEPT_BACKOFF
                    return
                raise
            client = self._adopt(sock, addr, time.monotonic() + self._head_timeout)
            if client is not None:
                self._on_readable(client)  # most clients' heads arrive with the handshake

    def _adopt(self, sock: socket.socket, addr: Any, deadline: float) -> _Client | None:
        """Hold a new connection in the poller until its head is complete."""
        if self._open_connections() >= self.cfg.worker_connections:
            refuse_overloaded(sock, self.server_line)
            self.refused_overloaded()
            return None
        sock.setblocking(False)
        client = _Client(sock, peer_of(addr), new_connection(self))
        self._held += 1
        self._watch(client, deadline)
        return client

    def _open_connections(self) -> int:
        # A connection is counted from accept to close, wherever it is: held by the
        # poller, queued back to it by a thread, or busy (queued for or in a thread).
        return self._held - self._lingering + len(self._returned) + len(self._busy)

    def _watch(self, client: _Client, deadline: float) -> None:
        client.deadline = deadline
        self._seq += 1
        heap = self._heap
        heapq.heappush(heap, (deadline, self._seq, client))
        # Registered before the sweep below, which keeps only registered clients' entries:
        # after it, this client's own deadline would be swept away with the stale, and
        # the connection held with none (an idle keep-alive, or a client that never
        # sends its head, kept for ever).
        if not client.registered:
            self.selector.register(client.sock, selectors.EVENT_READ, client)
            client.registered = True
        # Entries go stale (dispatched, re-watched or closed connections) and would sit
        # until their deadline (header_timeout, 30 s), each pinning its connection, its
        # buffers and any exception with the app's frames: hundreds of MB under
        # connection churn or aborted uploads. Sweep them once they outnumber the live.
        if len(heap) > 2 * self._held + STALE_SLACK:
            heap[:] = [entry for entry in heap if _waiting_for(entry[2], entry[0])]
            heapq.heapify(heap)

    def _unwatch(self, client: _Client) -> None:
        if client.registered:
            client.registered = False
            unselect(self.selector, client.sock)

    def _on_readable(self, client: _Client) -> None:
        try:
            data = client.sock.recv(RECV_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._drop(client)
            return
        if client.lingering:
            if not data:
                self._drop(client)  # the client closed: a clean close now
            return
        conn = client.conn
        idle = not conn.buffered
        conn.receive_data(data)
        if idle and data and not client.fresh:
            # The first byte of a head after a response: from now on the whole head has
            # header_timeout, a deadline that later bytes do not push back. (A new
            # connection's first head keeps the deadline it got when it was accepted:
            # silence before a trickle must not double its time.)
            self._watch(client, time.monotonic() + self._head_timeout)
        self._advance(client)

    def _advance(self, client: _Client) -> None:
        conn = client.conn
        try:
            event = conn.next_event()
        except ProtocolError as exc:
            send_protocol_error(self, client.sock, conn, exc, client.peer)
            self._linger(client)
            return
        if event is NEED_DATA:
            return
        if isinstance(event, Request):
            self._dispatch(client, event)
        else:  # CLOSED, or nothing a waiting connection can use
            self._drop(client)

    def _dispatch(self, client: _Client, request: Request) -> None:
        client.fresh = False
        self._unwatch(client)
        self._held -= 1
        client.request = request
        if not self.alive:
            client.conn.close_after_response = True
        with self._lock:
            self._busy.add(client)
        self._jobs.put(client)

    def _take_returned(self) -> None:
        """Connections the pool is done with, still open: back under watch."""
        while self._returned:
            client = self._returned.popleft()
            self._held += 1
            self._lingering += client.lingering
            now = time.monotonic()
            try:
                client.sock.setblocking(False)
            except OSError:
                self._drop(client)
                continue
            if client.lingering:
                self._watch(client, now + LINGER_TIME)
                continue
            if client.conn.buffered:  # part of the next head came with the last request
                deadline = now + self._head_timeout
            elif self._idle_timeout <= 0:
                self._drop(client)
                continue
            elif self.alive:
                deadline = now + self._idle_timeout
            else:
                # Stopping: its response went out kept alive (its head before the stop),
                # so a request may be on its way. It gets the drain window, or one of its
                # own if it comes back after the window: dropped at once, the request that
                # came meanwhile met our FIN unanswered.
                deadline = max(self._drain_until, now + min(self._idle_timeout, DRAIN_IDLE))
            self._watch(client, deadline)

    def _expire(self, now: float) -> None:
        heap = self._heap
        while heap and heap[0][0] <= now:
            deadline, _, client = heapq.heappop(heap)
            if not _waiting_for(client, deadline):
                continue  # a stale entry: the connection moved on
            if client.lingering:
                self._drop(client)
                continue
            if not client.conn.buffered:
                # Idle past its deadline, but its next request may have come in since the
                # poll (this thread can wait for the GIL in between): closing with it
                # unread would reset it. Read what is there first, as sync's expiry does.
                self._on_readable(client)
                if not _waiting_for(client, deadline):
                    continue  # it brought a request (or its peer closed)
            self._unwatch(client)
            if client.conn.buffered:
                send_protocol_error(
                    self,
                    client.sock,
                    client.conn,
                    RequestTimeoutError("request head not received in time"),
                    client.peer,
                )
            self._drop(client)

    def _linger(self, client: _Client) -> None:
        """After the answer to a refused request: our FIN goes out behind it, and what the
        client still sends (a body past the limit) is read and dropped until it closes,
        for LINGER_TIME at most. Closed at once with bytes unread, the socket would be
        reset, and the reset can destroy the answer (RFC 9112 §9.6). Runs in: main."""
        try:
            client.sock.shutdown(socket.SHUT_WR)
        except OSError:
            self._drop(client)
            return
        client.lingering = True
        self._lingering += 1
        self._watch(client, time.monotonic() + LINGER_TIME)

    def _drop(self, client: _Client) -> None:
        """Close a connection the poller holds."""
        self._unwatch(client)
        self._held -= 1
        self._lingering -= client.lingering
        _close(client.sock)

    def _poke(self) -> None:
        # Runs in: any thread, or a signal handler.
        poke_w = getattr(self, "_poke_w", None)
        if poke_w is None:
            return
        try:
            poke_w.send(b"x")
        except OSError:
            pass  # full (a wake-up is already pending) or closed (stopping)

    def _drain_pokes(self) -> None:
        try:
            while self._poke_r.recv(4096):
                pass
        except OSError:
            pass

    def _wind_down(self) -> None:
        """Finish in-flight requests (up to graceful_timeout), close everything else.

        Idle keep-alive connections get a last short window (``DRAIN_IDLE``) instead of an
        immediate close: a request already on its way is served, with ``Connection:
        close``, rather than cut off by our FIN (what a load test sees as a failed request
        on every HUP). Runs in: main.
        """
        now = time.monotonic()
        # Out of the selector whatever the loop last did with them (_listen): a listener
        # left there would make every select below return at once.
        for listener in self.sockets:
            unselect(self.selector, listener.sock)
        self._drain_until = now + min(self._idle_timeout, DRAIN_IDLE)
        for _, _, client in list(self._heap):
            # Idle ones only: a head that arrived in part keeps its own deadline, so a
            # reload or a recycle drops no request (sync's rule too).
            if (
                client.registered
                and client.deadline > self._drain_until
                and not client.conn.buffered
                and not client.lingering
            ):
                self._watch(client, self._drain_until)
        with self._lock:
            for client in self._busy:
                client.conn.close_after_response = True  # their last response says so
        deadline = now + float(self.cfg.graceful_timeout)
        busy = 0
        while True:
            self._adopt_drained()
            self._take_returned()
            self._expire(time.monotonic())
            with self._lock:
                busy = len(self._busy - self._abandoned)
            now = time.monotonic()
            held = self._held - self._lingering  # a lingering close is waited for only...
            sending = self._lingering > 0 and still_sending(  # ...while its answer goes out
                client.sock for _, _, client in self._heap if client.lingering
            )
            if not (busy or held or sending or self._returned or self._drained):
                break
            if now >= deadline:
                break
            self.notify()
            self._enforcer.run_once(now)
            wait = min(LINGER_POLL if sending else 0.5, deadline - now)
            if self._heap:
                wait = min(wait, self._heap[0][0] - now)
            try:
                ready = self.selector.select(max(0.0, wait))
            except (OSError, ValueError):
                ready = []
            for key, _ in ready:
                if key.data is _WAKE:
                    self._drain_pokes()
                elif key.data is not _LISTENER:
                    self._on_readable(key.data)
        if busy:
            self.log.warning("Graceful timeout with %d request(s) in flight; exiting", busy)
        for _, _, client in self._heap:
            if client.registered:
                self._drop(client)
        self._heap.clear()
        for _ in self._threads:
            self._jobs.put(None)
        self.selector.close()
        self._poke_r.close()
        self._poke_w.close()

    # -- pool threads ------------------------------------------------------------------
    def _pool_main(self) -> None:
        while True:
            client = self._jobs.get()
            if client is None:
                return
            try:
                keep = self._serve(client)
            except RequestHungError:
                # Delivered after its request ended (a race with the watchdog, rule 4 of
                # watchdog.py narrows but cannot close it): drop the connection.
                keep = False
            except BaseException:
                # Anything else, BaseException too: a pool thread must outlive whatever
                # one connection raised (the app's own are answered before this), or
                # the worker would lose a thread for good while its heartbeat goes on.
                self.log.exception("Error serving a connection")
                keep = False
            self._release(client, keep)

    def unbound_request(self) -> None:
        self._watchdog.release(threading.get_ident())

    def _abandon(self, entry: InFlight[int]) -> None:
        """An interrupted request its thread has not ended (stuck in C, watchdog.py's
        rule 3): answer it here, if nothing of its response went out, log it and shut its
        connection, so its client hears at the limit, not when the thread returns or the
        retiring worker exits. Its thread, should it return, finds the request claimed and
        the connection shut. Runs in: main, under the watchdog's lock."""
        if entry.answered:  # its thread claimed the ending, or this ran already
            return
        if not entry.reported_stuck and stack_mark(entry.handle) != entry.stack_mark:
            return  # running Python: it unwinds, or answers itself (until the grace ends)
        entry.answered = True
        client: _Client = entry.context
        with self._lock:
            self._abandoned.add(client)
        sock = client.sock
        if entry.cycle is None:  # stuck before its cycle began (reading the head)
            answer = timeout_response(client.conn, self.answer_504)
            try:
                sock.settimeout(1.0)  # a small answer; a client that does not read loses it
                if answer:  # (sendall of nothing still waits for a full buffer to drain)
                    sock.sendall(answer)
            except OSError:
                pass
        else:
            # Answered, counted and logged (access line, post_request) here: its thread
            # may never return before the worker exits.
            request, environ, exchange = entry.cycle
            if not exchange.head_sent:
                answer_timeout(exchange, sock, self.answer_504)
            finish_request(self, request, environ, exchange)
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)

    def _serve(self, client: _Client) -> bool:
        """Serve the connection's request and any pipelined behind it. Runs in: pool."""
        sock, conn, request = client.sock, client.conn, client.request
        ident = threading.get_ident()
        while request is not None:
            if self._idle_timeout <= 0 or self._is_last_request():
                conn.close_after_response = True
            entry = self._watchdog.started(
                ident, request.request_line, time.monotonic(), context=client
            )
            try:
                keep = serve_request(
                    self, sock, conn, request, client.peer, self._io_timeout, entry
                )
            except RequestHungError:
                return False  # answered in serve_request, if it could be
            finally:
                self._watchdog.finished(entry)
            if not keep:
                return False
            request = None
            if conn.buffered:
                try:
                    event = conn.next_event()
                except ProtocolError as exc:
                    send_protocol_error(self, sock, conn, exc, client.peer)
                    return False
                if event is CLOSED:
                    return False
                if isinstance(event, Request):
                    request = event
        return True

    def _is_last_request(self) -> bool:
        # Announce Connection: close on the response that will reach max_requests (the
        # base class retires the worker after it), not on one more after that.
        return self.nr + len(self._busy) >= self.max_requests

    def _release(self, client: _Client, keep: bool) -> None:
        """Hand a served connection back to the poller, or close it. Runs in: pool."""
        client.request = None
        # Counted as open until it is in its next place (worker_connections): queued for
        # the poller, or closed. Only then does it leave the busy set, under the lock that
        # _dispatch takes to put it back: queued first and discarded after, a connection
        # the main thread re-dispatched in between was discarded while in a thread again.
        if keep:
            # Even when stopping: the main thread gives it the drain window, since its
            # last response may have gone out before the stop, without Connection: close.
            pass
        elif close_must_linger(client.conn, client.sock) and _shut_for_writing(client.sock):
            # The app answered without reading the whole body, or the client sent more
            # or may be sending its next request: closed now, with bytes unread, the
            # socket would be reset, and the reset can destroy the response before the
            # client reads it. Our FIN is out; the poller reads and drops the rest for
            # LINGER_TIME at most (RFC 9112 §9.6).
            client.lingering = True
        else:
            _close(client.sock)
        with self._lock:
            if keep or client.lingering:
                self._returned.append(client)
            self._busy.discard(client)
            self._abandoned.discard(client)
        if keep or client.lingering or not self.alive or not self._accepting:
            # A free thread: the main thread takes the listeners back at once.
            self._poke()  # when stopping, the main thread may be waiting for the last one


def _shut_for_writing(sock: socket.socket) -> bool:
    """Our FIN after the response bytes still queued; False if the socket is gone."""
    try:
        sock.shutdown(socket.SHUT_WR)
    except OSError:
        _close(sock)
        return False
    return True


def _close(sock: socket.socket) -> None:
    """Close a connection: the FIN goes out after the response bytes still queued."""
    try:
        sock.shutdown(socket.SHUT_WR)
    except OSError:
        pass
    sock.close()


def _interrupt(entry: InFlight[int]) -> None:
    """Raise RequestHungError in the request's thread, noting where the thread was: at
    ANSWER_WINDOW that tells a thread stuck in C from one unwinding (``_abandon``)."""
    entry.stack_mark = stack_mark(entry.handle)
    interrupt_thread(entry.handle)
