"""``-k fast``: an asyncio event loop per worker, the WSGI app called inline.

For CPU-bound and fast apps this is the quickest way to serve WSGI from Python (the model
of meinheld and bjoern, with the strict core and the arbiter's supervision kept). An app
that blocks (a slow database call, ``time.sleep``) blocks the whole worker: use ``gevent``
or ``gthread`` for those.

How it works:
- One ``asyncio.Protocol`` per connection drives a ``ServerConnection``. Request bodies
  are buffered before the app runs (in memory up to ``MAX_MEMORY_BODY``, then spilled to a
  temporary file), so ``wsgi.input`` never blocks the loop; ``100 Continue`` is sent when
  buffering starts. Once large bodies worth ``TRIM_AFTER`` have been released, the sweep
  hands malloc's free memory back to the system (``FastWorker._trim_heap``).
- The app runs inline in the loop. A one-item list goes out in one write with a
  Content-Length; other iterables are pulled one chunk at a time, and only while the
  transport's buffer is under its high-water mark: when asyncio calls ``pause_writing``,
  iteration stops and reading is paused until ``resume_writing``. A ``wsgi.file_wrapper``
  of a regular file goes out with ``os.sendfile`` while the socket takes it
  (``HttpProtocol._send_file_body``).
- Complete responses made in one turn of the loop are written together at its end, not
  one between each two app calls (``HttpProtocol._defer``): under load that saves the
  client a wake-up per response and keeps the app in the CPU's caches. A response waits
  at most ``FLUSH_AFTER`` plus the app call in progress; the head and chunks of a stream
  go out at once.
- Pipelined requests are answered in order: after each response, the parser's buffer is
  processed again before reading more, unless the client is not reading its responses
  (``pause_writing``): then reading stops until it does.
- Deadlines without a timer per request: each connection holds one monotonic deadline
  (keep-alive idle, whole head, minimum body rate, or a response its client has stopped
  reading for ``timeout``) and a sweep every second closes those past it, answering 408
  where a status can still be sent. ``worker_connections``
  caps open connections; beyond it new ones get 503 and are closed.
- The heartbeat is a loop callback: an app that hangs the loop stops it, so the master's
  ``timeout`` catches the worker, dumps its stack and replaces it.
- The app sees no running event loop, as under every other worker: the worker's main
  task clears asyncio's running loop for the thread as it starts (``FastWorker._serve``),
  and nothing the worker runs on the loop asks for it (its coroutines name their loop:
  ``self.loop.create_future()``, ``call_later``, ``asyncio.current_task(loop)``; uvloop
  and asyncio's own loop set it only when they start and stop). Django refuses every ORM
  call "from an async context" otherwise, and ``asyncio.run()``, asgiref's
  ``async_to_sync`` (Flask's async views) refuse to run at all.

Runs in: the worker process, main thread, inside the event loop.
"""

from __future__ import annotations

import asyncio
import contextvars
import errno
import gc
import io
import itertools
import operator
import os
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import Any

from forkhorn.errors import WorkerExit
from forkhorn.http import (
    CLOSED,
    NEED_DATA,
    BodyNotStoredError,
    Data,
    EndOfMessage,
    IncompleteBodyError,
    ProtocolError,
    Request,
    RequestTimeoutError,
    ServerConnection,
)
from forkhorn.wsgi.cycle import (
    PIECES_AFTER_COMPLETE,
    Exchange,
    FileWrapper,
    HookRequest,
    app_failed,
    close_result,
    dates,
    error_response,
    file_ended_early,
    is_app_error,
    protocol_error_answer,
    raw_error_response,
    single_body,
)
from forkhorn.wsgi.environ import build_environ
from forkhorn.wsgi.input import BufferedInput, EmptyInput

from .base import DRAIN_IDLE, Worker
from .session import (
    LINGER_TIME,
    base_environ_for,
    bytes_unsent,
    bytes_waiting,
    finish_request,
    log_body_mismatch,
    log_refused,
    prepare_http,
    refuse_overloaded,
)

#: Bodies up to this size stay in memory; larger ones are spilled to a temporary file.
MAX_MEMORY_BODY = 1024 * 1024
#: Bodies from this size count towards TRIM_AFTER when they are released.
LARGE_BODY = 64 * 1024
#: After large bodies of this many bytes in all were released, the sweep calls
#: malloc_trim (FastWorker._trim_heap).
TRIM_AFTER = 16 * 1024 * 1024
#: Output buffered per connection before we stop producing (asyncio's pause_writing).
WRITE_HIGH_WATER = 256 * 1024
#: A streamed response hands the loop back after this many bytes or pieces, even when its
#: client takes everything at once (the transport never pauses then): the other
#: connections, and the heartbeat, get their turn.
STREAM_TURN_BYTES = WRITE_HIGH_WATER
STREAM_TURN_PIECES = 256
#: Received bytes held while a response is in progress (the pipelined requests behind a
#: stream or a file) before the connection stops being read until it ends.
BUSY_BUFFER = 64 * 1024
#: An upload arriving in more pieces than this (tiny chunks) is gathered into one buffer:
#: an object per piece costs about forty times a one-byte chunk's payload.
MAX_BODY_PIECES = 64
#: Complete responses wait for the end of the loop's turn (HttpProtocol._defer), unless
#: the turn has been making them for this long (seconds; 1 ms kept nearly all of the gain
#: of an unbounded wait on todo, bench/HISTORY.md) or they hold this many bytes.
FLUSH_AFTER = 0.001
FLUSH_BYTES = 256 * 1024
#: Bytes per os.sendfile() call or copied block of a wsgi.file_wrapper body.
FILE_BLOCK = 256 * 1024
#: os.sendfile() errors that mean "not for this file or socket", not a failed connection.
_NO_SENDFILE = frozenset((errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSOCK))
#: How often deadlines are checked and the heartbeat is sent (seconds).
SWEEP_INTERVAL = 1.0

_monotonic = time.monotonic
#: The end of a response iterable, for next(): an app may yield None (its error).
_END = object()
#: asyncio's running-loop slot for this thread: cleared once the worker serves (see the
#: module docstring).
_set_running_loop = asyncio.events._set_running_loop
# What a connection's deadline currently bounds.
_IDLE, _HEAD, _BODY, _CLOSING = range(4)
_by_deadline = operator.attrgetter("deadline")


class HttpProtocol(asyncio.Protocol):
    """One client connection."""

    __slots__ = (
        "base_environ",
        "body",
        "body_size",
        "busy",
        "conn",
        "context",
        "deadline",
        "dispatching",
        "drain_waiter",
        "environ",
        "exchange",
        "iterator",
        "paused_at",
        "paused_reading",
        "paused_size",
        "peer_addr",
        "peer_port",
        "phase",
        "queued",
        "request",
        "result",
        "scheme_headers",
        "transport",
        "worker",
        "write_paused",
    )

    def __init__(self, worker: FastWorker) -> None:
        self.worker = worker
        self.conn = ServerConnection(*worker.http_limits)
        self.transport: asyncio.Transport | None = None
        self.peer_addr = ""  # REMOTE_ADDR and REMOTE_PORT
        self.peer_port = ""
        self.base_environ = worker.base_environ  # its listener's (connection_made)
        # The connection's own context: its requests' app calls, every step of their
        # bodies and their close() run in it, entered from each loop callback that leads
        # to app code (never from inside one another: a context cannot be entered twice).
        # A response continued in a later callback would otherwise run in another context,
        # and a ContextVar token the app made in the call could not be reset there (Flask's
        # stream_with_context, OpenTelemetry's and structlog's context managers).
        self.context = contextvars.copy_context()
        # secure_scheme_headers when the peer is a trusted front end (wsgi/proxies.py).
        self.scheme_headers: dict[bytes, bytes] | None = None
        self.request: Request | None = None
        # A list of pieces, one bytearray past MAX_BODY_PIECES, or a temporary file past
        # MAX_MEMORY_BODY.
        self.body: Any = None
        self.body_size = 0
        self.deadline = 0.0
        self.phase = _HEAD
        self.write_paused = False
        self.paused_at = 0.0  # when write_paused became True, or the client last took some
        self.paused_size = 0  # the output buffered then (less later: the client took some)
        self.paused_reading = False
        self.busy = False  # a response is being produced (streaming or sendfile)
        self.dispatching = False  # inside _process() -> _respond()
        self.queued = False  # in worker.ready, to be served at the end of the I/O phase
        self.iterator: Iterator[bytes] | None = None
        self.exchange: Exchange | None = None
        self.environ: dict[str, Any] | None = None
        self.result: Any = None
        self.drain_waiter: asyncio.Future[None] | None = None

    # -- asyncio callbacks ---------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        worker = self.worker
        if len(worker.connections) + len(worker.lingering) >= worker.max_connections and (
            len(worker.connections) + worker.lingering_with_output() >= worker.max_connections
        ):
            # Refused politely: a status the client can read, our FIN, and its request
            # read and dropped until it closes (a close with it unread would be a reset,
            # which can destroy the answer). Closing ones count against the cap only
            # while their last response is still in our buffer (memory held for them).
            answer = raw_error_response(503, "Service Unavailable", worker.server_line)
            transport.write(answer)  # type: ignore[attr-defined]
            if transport.can_write_eof():  # type: ignore[attr-defined]
                transport.write_eof()  # type: ignore[attr-defined]
                transport.set_protocol(_Lingering(worker, transport))  # type: ignore[arg-type]
            else:
                transport.close()
            worker.refused_overloaded()
            return
        worker.connections.add(self)
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple):
            self.peer_addr = str(peer[0])
            self.peer_port = str(peer[1])
        if worker.base_environs is not None:  # several listeners: which one is this?
            self.base_environ = base_environ_for(worker, transport.get_extra_info("sockname"))
        front_ends = worker.front_ends
        if front_ends is not None:
            # Decided once per connection. A TCP client gone before this has no address
            # and is not trusted; "" for a Unix socket peer is (wsgi/proxies.py).
            sock = transport.get_extra_info("socket")
            if isinstance(peer, tuple) or (sock is not None and sock.family == socket.AF_UNIX):
                self.scheme_headers = front_ends.scheme_headers_for(self.peer_addr)
        transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)  # type: ignore[attr-defined]
        self.deadline = _monotonic() + worker.head_timeout

    def _enter(self, method: Any, *args: Any) -> None:
        """Run ``method`` in the connection's context (see ``__init__``): every loop
        callback that leads to app code comes through here. A QUIT or INT that interrupted
        the app (``FastWorker.handle_quit``) ends here, not in uvloop, which would report
        it as a transport error: the loop's own callback, already scheduled, ends the
        worker."""
        try:
            self.context.run(method, *args)
        except WorkerExit:
            pass

    def connection_lost(self, exc: Exception | None) -> None:
        self.worker.connections.discard(self)
        self.transport = None
        self._end_drain_wait()  # a file body's task sees transport None and ends
        if self.iterator is not None:
            # A stream cut short (the client left, or was dropped for not reading): the
            # request still ends, failed, in the access log, the hooks and the count.
            self._enter(self._end_streaming, False)
            return
        if self.result is not None:
            self._enter(close_result, self.result, self.worker.log)
            self.result = None
        body = self.body  # an upload cut short: its memory, or its spill file, goes now
        self.body = None
        if body is not None:
            # Logged as the other classes log it (their app's read fails): nothing is lost
            # without a trace. A body that did arrive complete was answered, not cut short.
            if self.phase == _BODY:
                log_refused(
                    self.worker,
                    self.conn,
                    IncompleteBodyError("connection lost before the request body was complete"),
                    (self.peer_addr, self.peer_port),
                )
            if body.__class__ is not list and body.__class__ is not bytearray:
                body.close()
            elif self.body_size >= LARGE_BODY:
                self.worker.released_body_bytes += self.body_size

    def pause_writing(self) -> None:
        self.write_paused = True
        # The client is not reading what we sent (a response in progress, or the answers
        # to requests it pipelines). It must take some within the send timeout
        # (``timeout``, the other classes' socket timeout), or the sweep drops it, with a
        # log line: it must not hold the connection, its buffers and the app's iterable
        # or file forever, and its pipelined requests are not dropped any sooner. Taking
        # some of it counts (``expire``): a slow reader of a long download is not cut.
        self.paused_at = _monotonic()
        self.paused_size = self._pending_output()

    def _pending_output(self) -> int:
        transport = self.transport
        return 0 if transport is None else _pending_output_of(transport)

    def resume_writing(self) -> None:
        self.write_paused = False
        if self._end_drain_wait():  # a file body waited for the transport to drain
            return
        if self.transport is None or self.transport.is_closing():
            return  # its last response is on its way out (_close): nothing more to serve
        if self.iterator is not None:
            self._enter(self._stream)
        elif not self.busy:
            if self.phase == _IDLE:
                self.deadline = _monotonic() + self.worker.keepalive  # back to idle time
            self._resume_reading()
            if self.conn.has_buffered and not self.dispatching:
                # What arrived while the client was not reading.
                self._enter(self._process)

    def data_received(self, data: bytes) -> None:
        conn = self.conn
        conn.receive_data(data)
        if self.busy:
            # A response is in progress; _end_streaming goes on from there. What the
            # client sends meanwhile waits in the parser's buffer, which nothing bounds
            # until it is parsed: past BUSY_BUFFER, stop reading (TCP then holds the rest
            # back), or a client reading a long stream could send gigabytes into memory.
            if conn.buffered_size > BUSY_BUFFER:
                self._pause_reading()
            return
        if self.write_paused:
            # The client is not reading its responses: keep what it sends for
            # resume_writing, and stop reading until then.
            self._pause_reading()
            return
        worker = self.worker
        if not worker.long_turns:
            try:  # short turns: served as read, the cheapest path (_enter, inlined)
                self.context.run(self._process)
            except WorkerExit:
                pass
        elif not self.queued:
            # Long turns: served by FastWorker.serve_ready, once every connection with
            # data in this turn has been read, in the order their previous responses ended.
            self.queued = True
            ready = worker.ready
            if not ready:
                worker.loop.call_soon(worker.serve_ready)
            ready.append(self)

    def eof_received(self) -> bool | None:
        """The client half-closed: answer what it sent, then close."""
        self.conn.receive_data(b"")
        if self.busy:
            return True  # keep the transport for the response in progress; _finish closes
        self._enter(self._process)
        return None

    # -- request processing --------------------------------------------------------------
    def _process(self) -> None:
        """Handle every complete event in the buffer, answering requests in order."""
        conn = self.conn
        try:
            while True:
                event = conn.next_event()
                cls = event.__class__
                if cls is Request:
                    self.request = event  # type: ignore[assignment]
                    if event.content_length != 0:  # type: ignore[union-attr]
                        self._start_body(event)  # type: ignore[arg-type]
                        continue
                    conn.end_without_body()
                elif cls is Data:
                    self._add_body(event.data)  # type: ignore[union-attr]
                    continue
                elif cls is not EndOfMessage:
                    if event is NEED_DATA:
                        if self.phase == _IDLE and conn.has_buffered:
                            # A new head started: all of it must arrive in time, however
                            # slowly its bytes trickle in.
                            self.phase = _HEAD
                            self.deadline = _monotonic() + self.worker.head_timeout
                    elif event is CLOSED:
                        self._close()
                    return
                # A complete request: answer it, then go on with any pipelined one.
                self.dispatching = True
                try:
                    self._respond()
                finally:
                    self.dispatching = False
                if self.busy or self.phase != _IDLE:
                    return
                if not conn.start_next_cycle():  # nothing pipelined behind it
                    if conn.peer_closed:
                        self._close()
                    return
                if self.write_paused:
                    # A client that pipelines requests without reading the responses:
                    # stop reading it until it does (resume_writing goes on from here).
                    self._pause_reading()
                    return
        except ProtocolError as exc:
            self._fail(exc)
        except Exception:
            self.worker.log.exception("Unexpected error on a connection")
            self._close()

    def _start_body(self, request: Request) -> None:
        self.body = []
        self.body_size = 0
        self.phase = _BODY
        self.deadline = _monotonic() + self.worker.head_timeout
        interim = self.conn.send_continue()
        if interim and self.transport is not None:
            self._send(interim)  # not a whole response: goes out at once

    def _add_body(self, data: bytes) -> None:
        self.body_size += len(data)
        body = self.body
        cls = body.__class__
        if cls is list or cls is bytearray:
            if cls is list:
                body.append(data)
                if len(body) > MAX_BODY_PIECES:
                    self.body = body = bytearray(b"".join(body))
            else:
                body += data
            if self.body_size > MAX_MEMORY_BODY:
                self._spill(body)
        else:
            try:
                body.write(data)
            except OSError as exc:
                raise self._not_stored(exc) from None
        worker = self.worker
        rate = worker.body_min_rate
        if rate:
            # Each body_min_rate bytes buys one more second (mod_reqtimeout's MinRate), but
            # a burst buys at most header_timeout of silence from now, so a client cannot
            # send a megabyte and then hold the buffered body for an hour.
            self.deadline = min(
                self.deadline + len(data) / rate, _monotonic() + worker.head_timeout
            )
        else:
            # No minimum rate: an idle timer of ``timeout``, as the other classes' socket
            # timeout is (a steady upload longer than header_timeout is not cut).
            self.deadline = _monotonic() + worker.send_timeout

    def _spill(self, body: list[bytes] | bytearray) -> None:
        """Move a body past the in-memory bound to a temporary file."""
        try:
            spill = tempfile.TemporaryFile()  # noqa: SIM115 - closed with wsgi.input
        except OSError as exc:
            raise self._not_stored(exc) from None
        self.body = spill
        try:
            spill.write(body if isinstance(body, bytearray) else b"".join(body))
        except OSError as exc:
            raise self._not_stored(exc) from None

    def _not_stored(self, exc: OSError) -> BodyNotStoredError:
        """A full disk or a vanished temporary directory: the request is answered 500 and
        the connection closed (``_process``), the file dropped now, not at the close."""
        body = self.body
        self.body = None
        if body is not None and body.__class__ is not list and body.__class__ is not bytearray:
            body.close()
        return BodyNotStoredError(
            f"could not write the request body to a temporary file in "
            f"{tempfile.gettempdir()}: {exc.strerror or exc}"
        )

    def _body_stream(self) -> Any:
        body = self.body
        self.body = None
        if body is None:
            return _EMPTY_INPUT
        cls = body.__class__
        if cls is list or cls is bytearray:
            if self.body_size >= LARGE_BODY:
                self.worker.released_body_bytes += self.body_size  # once the app is done
            return BufferedInput(io.BytesIO(b"".join(body) if cls is list else body))
        body.seek(0)
        return BufferedInput(body)

    def _respond(self) -> None:
        """Run the app for the complete request and start its response.

        The common case (a one-item list) is written out inline: this is the hot path
        measured by bench/README.md's hello numbers, so it avoids every call it can.
        """
        worker = self.worker
        # Set by _process() (no assert: this is the hot path).
        request: Request = self.request  # type: ignore[assignment]
        conn = self.conn
        environ = build_environ(
            self.base_environ,
            request,
            self.peer_addr,
            self.peer_port,
            _EMPTY_INPUT if self.body is None else self._body_stream(),
            worker.header_map,
            self.scheme_headers,
        )
        if request.chunked:
            # The whole body is here, so say its size, as waitress does: frameworks that
            # read CONTENT_LENGTH bytes and no more (Django, Falcon's bounded_stream) see
            # an empty body otherwise, as they do under gunicorn and the other classes.
            environ["CONTENT_LENGTH"] = str(self.body_size)
            # The body the app reads is no longer chunked: say so, or a proxy app that
            # rebuilds headers from the environ would pass on both framings.
            environ.pop("HTTP_TRANSFER_ENCODING", None)
        if worker.close_connections:
            conn.close_after_response = True
        started = _monotonic()
        if not worker.pending or started - worker.batch_started > FLUSH_AFTER:
            # This request starts a batch, or the batch has waited long enough: a slow
            # app must not hold back the responses already made.
            if worker.pending:
                worker.flush()
                worker.bounded = True  # this turn is long (see serve_ready)
            worker.batch_started = started
        worker.slot.request_started(request.request_line, started)
        exchange = Exchange(conn, self._send, started)
        try:
            if worker.hook_pre_request:  # a hook that raises is answered like the app
                worker.cfg.pre_request(worker, HookRequest(request, environ))
            result = worker.wsgi(environ, exchange.start_response)  # type: ignore[misc]
        except ProtocolError:
            raise
        except BaseException as exc:
            if not is_app_error(exc):
                raise
            ok = app_failed(exchange, environ, worker.log, sys.exc_info())
            if not worker.told_websocket and "websocket" in environ.get("HTTP_UPGRADE", "").lower():
                # The likely cause, said once: this class has no socket to hand over.
                worker.told_websocket = True
                worker.log.warning(
                    "A WebSocket handshake failed in the app: the fast worker cannot hand a "
                    "connection over (no environ['gunicorn.socket']); serve WebSockets with "
                    "-k gevent, eventlet or gthread"
                )
            self._finish(exchange, environ, ok)
            return
        try:
            if (
                result.__class__ is list
                and len(result) == 1
                and result[0].__class__ is bytes
                and exchange.status is not None
                and not exchange.head_sent
            ):
                body = result[0]
                # One clock reading for the Date header, the heartbeat and the log.
                done = _monotonic()
                date = dates.value if done < dates.expires else dates.refresh(done)
                # Encoded before head_sent is set: a refused status or header is then
                # still answered with a 500 (app_failed).
                data = conn.send_whole(exchange.status, exchange.headers, date, body)
                exchange.head_sent = True
                exchange.sent = conn.body_bytes
                self._defer(data)
                self._finish(exchange, environ, True, done)
                return
            whole = single_body(result, exchange)
            if whole is not None:
                exchange.write_whole(whole)
                close_result(result, worker.log)
                self._finish(exchange, environ, True)
                return
            # A file after write() goes piece by piece, under the framing already sent.
            file = (
                result.regular_file()
                if isinstance(result, FileWrapper) and not exchange.head_sent
                else None
            )
            if file is not None:
                self.result = result
                self.exchange = exchange
                self.environ = environ
                self.busy = True
                self._pause_reading()
                # On the worker's loop by name: the running loop is cleared here.
                worker.tasks.add(worker.loop.create_task(self._sendfile(file, exchange, environ)))
                return
            iterator = iter(result)
            # _END, not None: a None the app yields is its error, not the end.
            first = next(iterator, _END)
            if first.__class__ is bytes:
                # Flask, Django and most frameworks return an iterable of one chunk with a
                # Content-Length. When that chunk completes the response and nothing
                # follows, finish here rather than through _stream and _end_streaming.
                exchange.write(first)
                transport = self.transport
                if transport is None:  # gone while writing: nothing more to send
                    close_result(result, worker.log)
                    return
                if transport.is_closing():
                    # The send failed: connection_lost, on its way, ends the request as
                    # a stream cut short (failed, logged, the iterable closed).
                    self.result = result
                    self.exchange = exchange
                    self.environ = environ
                    self.busy = True
                    self.iterator = iterator
                    return
                if conn.response_complete:
                    # One more step, as _stream would take: a chunk past the
                    # Content-Length is the app's error and must be reported, not dropped.
                    first = next(iterator, _END)
                    if first is _END:
                        exchange.finish()
                        close_result(result, worker.log)
                        self._finish(exchange, environ, True)
                        return
                    iterator = itertools.chain((first,), iterator)
            elif first is not _END:
                # Not bytes: _stream's check reports it as the app's error.
                iterator = itertools.chain((first,), iterator)
            self.result = result
            self.exchange = exchange
            self.environ = environ
            self.busy = True
            self.iterator = iterator
            self._stream()
        except ProtocolError:
            raise
        except BaseException as exc:
            if not is_app_error(exc):
                raise
            ok = app_failed(exchange, environ, worker.log, sys.exc_info())
            self.result = None
            self.busy = False
            close_result(result, worker.log)
            self._finish(exchange, environ, ok)

    def _stream_on(self) -> None:
        """``_stream`` again, after it handed the loop back (unless the response ended,
        the client left, or the transport paused: then resume_writing goes on)."""
        if self.iterator is not None and self.transport is not None and not self.write_paused:
            self._enter(self._stream)

    def _stream(self) -> None:
        """Pull chunks while the transport accepts them (write backpressure)."""
        iterator = self.iterator
        exchange = self.exchange
        assert iterator is not None and exchange is not None
        write = exchange.write
        conn = exchange.conn
        budget = STREAM_TURN_BYTES
        pieces = STREAM_TURN_PIECES
        after = PIECES_AFTER_COMPLETE
        try:
            while not self.write_paused:
                data = next(iterator, _END)
                if data is _END:
                    break
                if data.__class__ is not bytes and not isinstance(data, bytes):
                    raise TypeError(f"app yielded {type(data).__name__}, not bytes")
                write(data)
                if conn.response_complete:
                    after -= 1
                    if after < 0:
                        break  # see PIECES_AFTER_COMPLETE (wsgi/cycle.py)
                    continue  # dropped: no output, so not counted against the turn
                transport = self.transport
                if transport is None or transport.is_closing():
                    # The client is gone (a failed send closes the transport at once;
                    # connection_lost, which closes the iterable, comes at the loop's
                    # next turn): pull no more. Writes to a closing transport are
                    # dropped without filling its buffer, so backpressure would never
                    # stop an endless stream here.
                    return
                budget -= len(data)
                pieces -= 1
                if budget <= 0 or pieces <= 0:
                    # A client that takes everything at once never pauses the transport:
                    # go on at the loop's next turn, after the others (and the heartbeat).
                    self.worker.loop.call_soon(self._stream_on)
                    return
            else:
                self._pause_reading()
                return  # resume_writing() calls us again
            exchange.finish()
            ok = True
        except BaseException as exc:
            if not is_app_error(exc):
                raise
            ok = app_failed(exchange, self.environ or {}, self.worker.log, sys.exc_info())
        self._end_streaming(ok)

    async def _sendfile(self, file: tuple[int, int, int], exchange: Exchange, environ: Any) -> None:
        ok = True
        try:
            fd, offset, size = file
            head, count = exchange.file_head(size)
            transport = self.transport
            if transport is None:
                return
            # The head goes out now, after what this turn has pending (a response
            # pipelined before this one may be among it), and before any of the file.
            self.worker.flush()
            transport.write(head)
            if count:
                sent, ended = await self._send_file_body(transport, fd, offset, count)
                exchange.sent += sent
                if sent < count:
                    ok = False  # the file shrank, or the client left: close
                    if ended:
                        exchange.conn.body_mismatch = file_ended_early(sent, count)
            if self.transport is not None:
                tail = exchange.conn.send_end()
                if tail:
                    self._send(tail)
        except Exception:
            ok = app_failed(exchange, environ, self.worker.log, sys.exc_info())
        finally:
            # Named: the running loop is cleared (module docstring).
            task = asyncio.current_task(self.worker.loop)
            if task is not None:
                self.worker.tasks.discard(task)
        # The app's close(), and perhaps the next request.
        self._enter(self._end_streaming, ok)

    async def _send_file_body(
        self, transport: asyncio.Transport, fd: int, offset: int, count: int
    ) -> tuple[int, bool]:
        """Send ``count`` bytes of the file from ``offset``; return how many went, and
        whether the file ended before them (it shrank meanwhile).

        uvloop has no ``loop.sendfile``, so the worker calls ``os.sendfile`` on the
        socket itself (as asyncio's own loop would), but only while the transport holds
        nothing, so the bytes stay in order. When the socket is full, one block is
        copied through the transport instead, and with the transport's limits at zero
        ``pause_writing`` comes at once and ``resume_writing`` only once that block has
        gone: then sendfile takes over again. ``--no-sendfile``, or a transport without
        a socket, copies every block, with the usual high-water mark.
        """
        sock = transport.get_extra_info("socket") if self.worker.use_sendfile else None
        out = sock.fileno() if sock is not None else -1
        if out >= 0:
            transport.set_write_buffer_limits(high=0, low=0)
        sent = 0
        ended = False
        try:
            while sent < count:
                if self.write_paused:
                    await self._drained()
                if self.transport is None or transport.is_closing():
                    break  # the client left (or was dropped)
                size = min(FILE_BLOCK, count - sent)
                n = -1  # -1: copy this block through the transport
                if out >= 0 and not transport.get_write_buffer_size():
                    try:
                        n = os.sendfile(out, fd, offset + sent, size)
                    except BlockingIOError:
                        pass  # the socket is full
                    except OSError as exc:
                        if exc.errno not in _NO_SENDFILE:
                            break  # the connection failed: connection_lost follows
                        out = -1  # a file system without sendfile: copy from now on
                        transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)
                    if n == 0:
                        ended = True  # the file is shorter than it was
                        break
                if n < 0:
                    block = os.pread(fd, size, offset + sent)
                    if not block:
                        ended = True
                        break
                    transport.write(block)
                    n = len(block)
                sent += n
                if not self.write_paused:
                    await asyncio.sleep(0)  # between blocks, the loop serves the others
        finally:
            if out >= 0 and self.transport is not None:
                transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)
        return sent, ended

    def _drained(self) -> asyncio.Future[None]:
        """A future that ``resume_writing`` (or ``connection_lost``) completes."""
        waiter: asyncio.Future[None] = self.worker.loop.create_future()
        self.drain_waiter = waiter
        return waiter

    def _end_drain_wait(self) -> bool:
        """Complete the file body's wait, if it is waiting."""
        waiter = self.drain_waiter
        if waiter is None:
            return False
        self.drain_waiter = None
        _settle(waiter)
        return True

    def _send(self, data: bytes) -> None:
        """Write what the exchange produced: the end of a response waits for the end of
        this turn of the loop (``FastWorker.flush``), anything else goes out at once: the
        head and first chunk of a stream must not wait for the app's next chunk."""
        if self.conn.response_complete:
            self._defer(data)
            return
        transport = self.transport
        if transport is not None:
            self.worker.flush()  # what this connection has pending goes first
            transport.write(data)

    def _defer(self, data: bytes) -> None:
        """Write a complete response at the end of this turn of the loop.

        Under load a turn serves every connection with a request waiting; writing their
        responses together, after the last app call, instead of one between each two,
        saves the client side a wake-up per response and keeps the app's code in the CPU's
        caches (bench/HISTORY.md: 1.06x to 1.31x on todo, pinned). ``_respond`` bounds the wait.
        """
        transport = self.transport
        if transport is None:
            return  # the connection is gone (a late part of a failed response)
        worker = self.worker
        pending = worker.pending
        if not worker.turn_ending:
            # Once per turn, even when a bound flushed the batch in between: end_turn
            # also decides whether this turn was long.
            worker.turn_ending = True
            if not worker.serving:  # serve_ready ends the turn itself
                worker.loop.call_soon(worker.end_turn)
        pending.append((transport, data))
        worker.pending_bytes += len(data)
        if worker.pending_bytes > FLUSH_BYTES:
            # Out now: large responses gain nothing from waiting, and the transport's
            # high-water mark (pause_writing) must see them to hold back a client that
            # pipelines requests without reading the responses.
            worker.flush()

    def _end_streaming(self, ok: bool) -> None:
        exchange = self.exchange
        environ = self.environ
        self.iterator = None
        self.exchange = None
        self.environ = None
        result, self.result = self.result, None
        if result is not None:
            close_result(result, self.worker.log)
        self.busy = False
        if exchange is not None:
            self._finish(exchange, environ or {}, ok)
        if self.phase == _IDLE and self.transport is not None and not self.dispatching:
            # The response ended later than _respond() (backpressure, sendfile): go on
            # with the connection from here. Otherwise _process() does it.
            self._resume_reading()
            self.conn.start_next_cycle()
            self._process()

    def _finish(
        self, exchange: Exchange, environ: dict[str, Any], ok: bool, now: float | None = None
    ) -> None:
        """Bookkeeping after a response: logs, hooks, keep-alive or close."""
        worker = self.worker
        finish_request(worker, self.request, environ, exchange, now)  # type: ignore[arg-type]
        conn = self.conn
        self.request = None
        if not ok or not conn.keep_alive:
            if conn.body_mismatch:
                log_body_mismatch(worker, environ, conn.body_mismatch)
            self.phase = _CLOSING
            # Closed at once, the socket would be reset by a request the client sends
            # meanwhile, and the reset throws away what of this response the kernel still
            # holds: so it lingers (our FIN, what comes read and dropped until the client
            # closes) while the client sent more or has not acknowledged all of the
            # response (session.py's close_must_linger), looked at once it is written.
            if worker.pending:
                worker.flush()
            if conn.has_buffered or self._pending_output() or self._bytes_waiting():
                self._linger()
            else:
                self._close()
            return
        if conn.body_mismatch:  # cut at its Content-Length: the framing held, it goes on
            log_body_mismatch(worker, environ, conn.body_mismatch)
            conn.body_mismatch = ""
        self.phase = _IDLE
        # From the response's end, not from the sweep's clock: that one can be a second
        # old, which would cut the keep-alive window short by as much.
        self.deadline = (now or _monotonic()) + worker.keepalive

    def _fail(self, exc: ProtocolError) -> None:
        transport = self.transport
        if transport is None:
            return
        answer = protocol_error_answer(self.conn, exc)
        if answer:
            self._defer(answer)  # _close() flushes it
        log_refused(self.worker, self.conn, exc, (self.peer_addr, self.peer_port), bool(answer))
        self.phase = _CLOSING  # logged once: connection_lost must not take it for a cut upload
        self._linger()

    def _linger(self) -> None:
        """After the last response (a refusal's answer, or any response the connection
        closes on): our FIN goes out behind it, and what the client still sends is read
        and dropped (``_Lingering``) until it closes, for LINGER_TIME at most once the
        response has left our buffer. Closed at once, a socket with unread bytes resets
        the connection, and the reset can destroy the answer before the client reads it
        (RFC 9112 §9.6)."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if self.conn.peer_closed or not transport.can_write_eof():
            self._close()
            return
        if self.worker.pending:
            self.worker.flush()  # the answer, before our FIN
        transport.write_eof()
        request = self.request or self.conn.request
        line = request.request_line if request is not None else b""
        transport.set_protocol(_Lingering(self.worker, transport, line))
        if self.paused_reading:
            transport.resume_reading()
        self.connection_lost(None)  # this protocol's part ends here: its cleanup

    def _close(self) -> None:
        transport = self.transport
        if transport is not None:
            closing = transport.is_closing()  # (this ran before)
            if not closing:
                if self.worker.pending:
                    self.worker.flush()  # this connection's last response may be among them
                transport.close()  # after the buffered output: then connection_lost
            if transport.get_write_buffer_size():
                # Its last response is still on its way: it stays among the connections,
                # counted (worker_connections) and swept (the send timeout, ``expire``),
                # and a graceful stop waits for it; connection_lost takes it out.
                if not closing:
                    self.phase = _CLOSING
                    self.paused_at = _monotonic()
                    self.paused_size = self._pending_output()
                return
        self.worker.connections.discard(self)

    def _pause_reading(self) -> None:
        if not self.paused_reading and self.transport is not None:
            self.paused_reading = True
            self.transport.pause_reading()

    def _resume_reading(self) -> None:
        if self.paused_reading and self.transport is not None:
            self.paused_reading = False
            self.transport.resume_reading()

    # -- called by the worker's sweep ----------------------------------------------------
    def expire(self, now: float) -> None:
        """Close the connection if its deadline passed (idle, slow head, slow body, or a
        response the client stopped reading)."""
        if self.write_paused or self.phase == _CLOSING:
            # A client not taking its response; or its connection's last response still
            # on its way out after our close (``_close``), under the same send timeout.
            transport = self.transport
            if transport is None:
                return
            size = self._pending_output()
            if size < self.paused_size:
                # The client took some since the last look: progress, as a completed send
                # is on the other classes. The send timeout starts again from here.
                self.paused_size = size
                self.paused_at = now
                return
            if now >= self.paused_at + self.worker.send_timeout:
                request = self.request or self.conn.request
                self.worker.log.info(
                    "Dropped a client that read nothing more of its response for %gs: %s",
                    self.worker.send_timeout,
                    request.request_line.decode("latin-1") if request is not None else "",
                )
                transport.abort()  # close() would wait for the buffer to drain
            return
        if self.busy or now < self.deadline:
            return
        if self.phase == _IDLE or (self.request is None and not self.conn.has_buffered):
            # Idle, or never sent a byte: nothing to answer. Unless its next request is
            # in the kernel's buffer, not yet read because the loop was busy (an app that
            # blocked it past the deadline): that one is read and served, not reset.
            if not self._bytes_waiting():
                self._close()
            return
        self._fail(RequestTimeoutError("request not received in time"))

    def close_idle(self) -> None:
        """Graceful stop: close a connection that is between requests (or has sent
        nothing at all)."""
        if (
            not self.busy
            and self.request is None
            and not self.conn.has_buffered
            and not self._bytes_waiting()
        ):
            self._close()

    def _bytes_waiting(self) -> bool:
        """A request may sit in the kernel's buffer, not yet handed to data_received: it is
        read and served instead of reset by a close (see ``bytes_waiting``)."""
        transport = self.transport
        sock = transport.get_extra_info("socket") if transport is not None else None
        return sock is not None and bytes_waiting(sock.fileno())


_EMPTY_INPUT = EmptyInput()


def _find_malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, or None where the C library has none (musl, macOS)."""
    try:
        import ctypes

        trim = ctypes.CDLL(None).malloc_trim
    except (ImportError, OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


def _pending_output_of(transport: Any) -> int:
    """Bytes of output a transport's client has yet to take: in the transport's buffer and
    in the kernel's send queue. The transport's buffer alone moves only when the kernel
    wakes us for room, after a third of its own buffer drained: a slow reader then shows
    no progress for longer than the send timeout."""
    sock = transport.get_extra_info("socket")
    unsent = bytes_unsent(sock.fileno()) if sock is not None else 0
    return int(transport.get_write_buffer_size()) + unsent


class _Lingering(asyncio.Protocol):
    """A connection's last moments after its last response (``HttpProtocol._linger``):
    its input is dropped until the client closes or the sweep finds LINGER_TIME passed
    since the response left our buffer. Until then the response is bounded as any send:
    a client that takes none of it for ``send_timeout`` is dropped."""

    __slots__ = ("deadline", "progress_at", "request_line", "size", "transport", "worker")

    def __init__(
        self, worker: FastWorker, transport: asyncio.Transport, request_line: bytes = b""
    ) -> None:
        self.worker = worker
        self.transport = transport
        self.request_line = request_line  # for the log line of a client dropped
        self.progress_at = now = _monotonic()
        self.deadline = now + LINGER_TIME
        self.size = _pending_output_of(transport)
        worker.lingering.add(self)

    def sending(self) -> bool:
        """Is the response still going out (in our buffer, or the kernel's, not
        acknowledged)? A stopping worker waits for it: exiting would cut it."""
        return _pending_output_of(self.transport) > 0

    def data_received(self, data: bytes) -> None:
        pass

    def eof_received(self) -> bool:
        return False  # the client closed too: the transport closes, cleanly

    def connection_lost(self, exc: Exception | None) -> None:
        self.worker.lingering.discard(self)

    def expire(self, now: float) -> None:
        transport = self.transport
        if transport.get_write_buffer_size():  # abort() would throw the rest away
            size = _pending_output_of(transport)
            if size < self.size:  # the client took some: as a completed send elsewhere
                self.size, self.progress_at = size, now
            elif now >= self.progress_at + self.worker.send_timeout:
                self.worker.log.info(
                    "Dropped a client that read nothing more of its response for %gs: %s",
                    self.worker.send_timeout,
                    self.request_line.decode("latin-1"),
                )
                transport.abort()
                return
            self.deadline = now + LINGER_TIME
            return
        if now >= self.deadline:
            transport.abort()


def _quit_now() -> None:
    raise WorkerExit(0)


def _shut_write(transport: Any) -> None:
    """Send our FIN on a transport's socket at once, loop or not (best effort): through a
    duplicate of its descriptor, since uvloop's socket object is only a stand-in."""
    sock = transport.get_extra_info("socket")
    if sock is None:
        return
    try:
        with socket.socket(fileno=os.dup(sock.fileno())) as dup:
            dup.shutdown(socket.SHUT_WR)
    except OSError:
        pass


def _settle(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _drain_pipe(fd: int) -> None:
    try:
        while os.read(fd, 4096):
            pass
    except OSError:
        pass


class FastWorker(Worker):
    """The event-loop worker: a protocol per connection, the app called inline."""

    one_cpu_each = True
    # The sweep's wait, once the loop runs (_serve). A class default: TERM can reach a
    # worker still importing the app, and its handler asks for it (_wake).
    nap: asyncio.Future[None] | None = None

    def run(self) -> None:
        self.prepare()
        loop = self._new_loop()
        self.loop = loop
        # asyncio's own loop accepts in one callback and sets each connection up in a task
        # of its own (see _close_servers); uvloop does both in its accept callback.
        self.accepts_in_tasks = isinstance(loop, asyncio.selector_events.BaseSelectorEventLoop)
        self.servers: list[asyncio.Server] = []
        try:
            loop.run_until_complete(self._serve())
        finally:
            loop.close()

    def prepare(self) -> None:
        """Per-process state the protocols read on every request."""
        prepare_http(self, multithread=False)
        cfg = self.cfg
        self.connections: set[HttpProtocol] = set()
        self.lingering: set[_Lingering] = set()  # refused connections closing (_linger)
        self.tasks: set[asyncio.Future[Any]] = set()  # keeps sendfile tasks referenced
        self.adopting = 0  # connections drained from the accept queue, not yet protocols
        self.closing_servers = False  # _close_servers is scheduled, not yet run
        self.released_body_bytes = 0  # large bodies released since the last _trim_heap
        self.malloc_trim = _find_malloc_trim()
        # How long a response may wait for its client to read (0: no limit).
        self.send_timeout = float(cfg.timeout or 0) or float("inf")
        # The sweep is also the heartbeat of a loop with nothing else to do (a response
        # streaming to a slow client): often enough that the master's timeout, or
        # request_timeout, never mistakes it for a hung app. And it enforces the header
        # and keep-alive deadlines, each within half of itself (a 1 s header_timeout
        # fired after up to 2 s with a sweep a second).
        limits = [
            t
            for t in (
                float(cfg.timeout or 0),
                float(cfg.request_timeout or 0),
                float(cfg.header_timeout or 0),
                float(cfg.keepalive or 0),
            )
            if t > 0
        ]
        self.sweep_every = max(0.1, min([SWEEP_INTERVAL, *(t / 2 for t in limits)]))
        self.max_connections = int(cfg.worker_connections)
        self.head_timeout = float(cfg.header_timeout) or float("inf")  # 0: no deadline
        self.keepalive = float(cfg.keepalive)
        self.body_min_rate = float(cfg.body_min_rate)
        # Every response says Connection: close (no keep-alive, or stopping).
        # max_requests 1: the first response is the last (last_request_next is never due).
        self.close_connections = self.keepalive <= 0 or self.max_requests == 1
        self.now = _monotonic()
        # Connections that received data in this turn of the loop (serve_ready).
        self.ready: list[HttpProtocol] = []
        self.serving = False  # inside serve_ready, which writes the responses at its end
        # Turns are long (a batch reached FLUSH_AFTER in the last one): serve_ready orders
        # them. ``bounded`` records it during a turn, end_turn/serve_ready copy it here.
        self.long_turns = False
        self.bounded = False
        self.turn_ending = False  # end_turn is due (scheduled, or serve_ready will call it)
        # Responses made in this turn of the loop, written together at its end (flush).
        self.pending: list[tuple[asyncio.Transport, bytes]] = []
        self.pending_bytes = 0
        self.batch_started = 0.0  # when the first request of the pending batch started
        self.told_websocket = False  # the WebSocket hint was logged (_respond)

    def serve_ready(self) -> None:
        """Serve the connections that received data in this turn, the one that has waited
        longest first: ordered by deadline, which for a keep-alive connection is when its
        previous response ended plus ``keepalive``.

        Why not in the order epoll reported them: a connection still readable at a poll
        keeps its place in epoll's ready list, one that was not gets queued again at the
        tail. Under load the connections served last in a turn have their responses
        written last, their next request arrives just after the next poll, and they miss
        a turn; served in epoll's order they stay last and miss one turn in two. Served
        oldest first, a connection that missed a poll goes first in the next turn. With
        the Flask todo app pinned at 50 connections, p99 latency went from 17-28 ms to
        10-24 ms, lower in each of 4 rounds (bench/HISTORY.md).

        Only while turns are long (``long_turns``: a batch reached ``FLUSH_AFTER`` in the
        last turn): queueing every request cost hello about a tenth of its throughput,
        and a short turn has no tail to fix.
        """
        ready = self.ready
        self.ready = []
        if len(ready) > 1:
            ready.sort(key=_by_deadline)
        self.serving = True  # the responses are written below, not in a callback of their own
        try:
            for protocol in ready:
                protocol.queued = False
                if protocol.transport is None or protocol.busy or protocol.phase == _CLOSING:
                    continue  # closed since, or a response in progress picks it up
                if protocol.write_paused:
                    protocol._pause_reading()  # as data_received does (resume_writing serves it)
                    continue
                protocol._enter(protocol._process)
        finally:
            self.serving = False
        # Before the loop polls again, as end_turn would: not one poll later.
        self.end_turn()

    def end_turn(self) -> None:
        """The end of a turn that made responses: write them, and note whether the turn
        was long (``serve_ready``)."""
        if self.turn_ending:  # not a callback left over from a turn serve_ready ended
            self.turn_ending = False
            self.long_turns = self.bounded
            self.bounded = False
        self.flush()

    def flush(self) -> None:
        """Write the responses made since the last flush (see ``HttpProtocol._defer``)."""
        pending = self.pending
        if pending:
            self.pending = []
            self.pending_bytes = 0
            for transport, data in pending:
                if not transport.is_closing():
                    transport.write(data)

    def _new_loop(self) -> asyncio.AbstractEventLoop:
        try:
            import uvloop
        except ImportError:
            self.log.info(
                "uvloop is not installed: using the standard asyncio loop "
                "(pip install 'forkhorn[fast]')"
            )
            return asyncio.new_event_loop()
        loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
        return loop

    async def _serve(self) -> None:
        loop = self.loop
        # The app must not see a running loop (module docstring). Cleared here, once, in
        # the loop's first callback and before any connection: clearing and restoring it
        # around each callback instead cost hello 5 % (each set, and each read while a
        # loop is set, is a getpid() system call on CPython 3.11). From here on the
        # worker's own coroutines name their loop instead of asking for the running one.
        _set_running_loop(None)
        # The base class's Python-level handlers stay: they run even while an app blocks
        # the loop (between bytecodes), so a response finished after TERM says
        # Connection: close. A wake-up pipe makes an idle loop notice a signal at once:
        # the C-level handler writes to it, the loop runs our reader, and Python runs the
        # pending handler right there.
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_r, False)
        os.set_blocking(wake_w, False)
        signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
        loop.add_reader(wake_r, _drain_pipe, wake_r)
        for listener in self.sockets:
            if not self.alive:
                break  # told to stop while starting: the listeners may be closed already
            sock = listener.sock
            sock.setblocking(False)
            server = await loop.create_server(
                lambda: HttpProtocol(self), sock=sock, backlog=int(self.cfg.backlog)
            )
            self.servers.append(server)
        while self.alive:
            self.tick()
            self.now = now = _monotonic()
            self._sweep(now)
            if self.released_body_bytes >= TRIM_AFTER:
                self._trim_heap()
            # A wait that _wake() can end: a stop or a retirement is acted on at once,
            # not at the next sweep (the replacement of a retiring worker waits for it).
            await self._pause(self.sweep_every, wakeable=True)
        await self._drain()

    def _sweep(self, now: float) -> None:
        # A method of its own, so that no local keeps the last connection alive until
        # the next sweep.
        for protocol in list(self.connections):
            protocol.expire(now)
        for lingering in list(self.lingering):
            lingering.expire(now)

    def _trim_heap(self) -> None:
        """Give the heap's free memory back to the system after large bodies.

        A body is kept as the pieces read, in malloc's heap. After a burst of large
        uploads (finished, or cut short) the heap holds the burst's size, free but kept:
        glibc returns memory only from the heap's top on its own, and a few live blocks
        above hold the rest (300 uploads of 1 MB cut short left a worker at 140 MB, its
        in-use heap under 5 MB). ``malloc_trim`` releases the free pages wherever they
        are. It costs a walk of the heap, so it runs from the sweep, at most once a
        second, and only after TRIM_AFTER bytes of large bodies. Copying bodies into
        memory maps instead, with the parser dropping its last piece read early, made
        256 KiB uploads 3.5 times slower (the early drop alone: 1.6 times).
        """
        self.released_body_bytes = 0
        if self.malloc_trim is not None:
            self.malloc_trim(0)

    def _wake(self) -> None:
        # From a signal handler (TERM) or retire(): the loop may be anywhere, so the
        # sweep's wait is ended through the thread-safe entry, at its next turn.
        nap = self.nap
        if nap is not None:
            self.loop.call_soon_threadsafe(_settle, nap)

    def recycling_deferred(self) -> None:
        if self.alive:
            self.close_connections = self.keepalive <= 0

    def last_request_next(self) -> None:
        # The response that reaches max_requests says Connection: close, as on the other
        # classes; without this it went out kept alive and one more request was served.
        self.close_connections = True

    def unregister_listeners(self) -> None:
        # Runs in a signal handler (TERM) or on retirement: every response composed from
        # now on announces Connection: close.
        self.close_connections = True
        for protocol in getattr(self, "connections", ()):
            protocol.conn.close_after_response = True
        if getattr(self, "servers", None) and not self.closing_servers:
            self.closing_servers = True
            # Take what the kernel queued now: safe inside uvloop's accept callback, where
            # a Python signal handler can run; so is the shutdown that follows in the
            # base class (refuse_if_stopping; uvloop then sees EINVAL on its next accept
            # and closes its server quietly). So the kernel refuses new connections at
            # once, even while an app blocks this loop.
            for sock, _ in self.drain_queued():
                self.loop.call_soon(self._adopt, sock)
            # Closing a server is not safe there (the connection uvloop is setting up
            # would fail to attach to it): the loop does it at its next turn.
            self.loop.call_soon_threadsafe(self._close_servers)

    def close_listeners(self) -> None:
        if getattr(self, "servers", None):
            # _close_servers closes them, once the servers stop watching them: asyncio's
            # own loop serves the very socket object, and closing it first breaks its
            # server.close() (uvloop serves a duplicate and does not mind).
            return
        super().close_listeners()

    def _close_servers(self) -> None:
        """Take anything queued since, then close the servers and with them this
        process's copies of the listening sockets.

        On asyncio's own loop the servers stop accepting here but close one turn later
        (``_end_servers``). Its accept callback takes up to ``backlog`` connections at a
        time and sets each up in a task that starts at the next turn, where it attaches
        its transport to the server: once the server is closed, that fails (an assertion
        in ``Server._attach``, dropped unless the loop is in debug mode) and the accepted
        socket is closed unanswered, reset if its request had arrived. Under load the
        callback often runs after the retirement in the same turn, and takes connections
        that arrived after ``drain_queued``: its tasks then came after this call, and wrk
        counted their resets as read errors (0 to 37 a run of a few hundred recycles).
        Stopping the accept callback first and closing behind every task it already made
        leaves none (tests/integration/test_faults.py arranges that turn).
        """
        try:
            for sock, _ in self.drain_queued():
                self._adopt(sock)
            if self.accepts_in_tasks:
                for server in self.servers:
                    for sock in server.sockets:
                        self.loop.remove_reader(sock)  # no new accept tasks from here
        finally:
            if self.accepts_in_tasks:
                self.loop.call_soon(self._end_servers)  # after the tasks already queued
            else:
                self._end_servers()

    def _end_servers(self) -> None:
        try:
            for server in self.servers:
                server.close()
        finally:
            self.servers = []
            self.closing_servers = False
            super().close_listeners()

    def _adopt(self, sock: Any) -> None:
        self.adopting += 1
        task = self.loop.create_task(
            self.loop.connect_accepted_socket(lambda: HttpProtocol(self), sock)
        )
        self.tasks.add(task)
        task.add_done_callback(self._adopted)

    def _adopted(self, task: asyncio.Future[Any]) -> None:
        # By now the protocol is in self.connections (connection_made ran), or the
        # adoption failed and the socket is closed: either way it is no longer pending.
        self.adopting -= 1
        self.tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self.log.debug("Could not adopt a drained connection: %s", task.exception())

    def tune_gc(self) -> None:
        """Also collect the youngest generation less often: the request path allocates a
        few dozen short-lived containers, and at the default threshold (700) a collection
        runs every few dozen requests; at 10000 hello goes from about 44k to 60k requests
        a second per worker here (bench/README.md), and a full collection still runs
        every million or so allocations. Override in ``post_worker_init`` if needed."""
        super().tune_gc()
        gc.set_threshold(10_000, 10, 10)

    def handle_quit(self, signum: int, frame: Any) -> None:
        # Raised here, the WorkerExit would land in whatever callback the loop is running
        # (a connection's data_received, under load), which uvloop reports as a transport
        # error and carries on: the worker would go on serving until the master's SIGKILL,
        # with neither worker_exit nor "Worker exiting". Raised from a callback of the
        # loop's own, it ends run_until_complete and the worker exits as on any class.
        loop = getattr(self, "loop", None)
        if loop is None or not loop.is_running():
            super().handle_quit(signum, frame)
            return
        self.alive = False
        try:
            self._run_exit_hook("worker_int")
        finally:
            loop.call_soon(_quit_now)
        if any(p.dispatching or p.iterator is not None for p in self.connections):
            # The app may hold the loop (a long or hung request, a stream): the scheduled
            # exit would wait for it, where the other classes stop at once. Raised into
            # it; the connection's _enter takes it, and the loop runs _quit_now.
            raise WorkerExit(0)

    def handle_abort(self, signum: int, frame: Any) -> None:
        # uvloop reports a SystemExit raised inside a callback as a transport error and
        # carries on; an aborted worker must end here (after the worker_abort hook).
        answered: list[tuple[HttpProtocol, bytes]] = []
        try:
            answered = self._answer_before_abort()
        except Exception:
            pass  # best effort: the process ends either way
        try:
            super().handle_abort(signum, frame)
        finally:
            # After worker_abort, as on sync: the hung request's post_request; then what
            # the master's child code does after the other classes' exit, the "Worker
            # exiting" line and worker_exit (the os._exit skips it).
            try:
                for protocol, answer in answered:
                    self._finish_aborted(protocol, frame, answer)
                self.leaving()
            finally:
                os._exit(1)

    def _answer_before_abort(self) -> list[tuple[HttpProtocol, bytes]]:
        """Killed for a hang: the responses this turn already made go out, and the request
        the app hangs in is answered 500 (as the sync worker's), instead of both being
        dropped. The loop is stopped inside the app, so the writes go straight to the
        sockets (a transport with nothing buffered writes at once). Returns the requests
        answered so, with their answers.

        Idle keep-alive connections get our FIN first: a proxy's pooled connection would
        otherwise stay open until the process is gone, and a request sent on it meanwhile
        was reset (nginx answered 502 for a POST).

        Connections whose next request came while the app held the loop (in the kernel's
        buffer, or read and queued) are answered 503: the app never saw it, so a client
        or proxy may send it again; without an answer, the exit reset them."""
        self.flush()
        connections = list(getattr(self, "connections", ()))
        waiting = 0
        for protocol in connections:
            transport = protocol.transport
            if (
                transport is None
                or protocol.dispatching
                or protocol.busy
                or protocol.iterator is not None
            ):
                continue
            if protocol.queued or protocol.conn.has_buffered or protocol._bytes_waiting():
                sock = transport.get_extra_info("socket")
                if sock is None:
                    continue
                try:
                    # On a duplicate, closed after the answer and the drain of what the
                    # client sent (refuse_overloaded), so the exit closes cleanly.
                    dup = socket.socket(fileno=os.dup(sock.fileno()))
                except OSError:
                    continue
                refuse_overloaded(dup, self.server_line)
                waiting += 1
        if waiting:
            self.log.warning(
                "Answered %d request(s) that waited behind the hung one with 503: never run",
                waiting,
            )
        for protocol in connections:
            transport = protocol.transport
            if protocol.phase == _IDLE and transport is not None:
                _shut_write(transport)
        answered: list[tuple[HttpProtocol, bytes]] = []
        for protocol in connections:
            transport = protocol.transport
            if transport is None:
                continue
            if protocol.dispatching and not protocol.conn.response_started:
                answer = error_response(protocol.conn, 500, "Internal Server Error")
                transport.write(answer)
                answered.append((protocol, answer))
            elif protocol.dispatching or protocol.iterator is not None:
                # Hung in the middle of its body: cut (the connection closes with the
                # process), and logged with what went out, as sync logs it.
                answered.append((protocol, b""))
        return answered

    def _finish_aborted(self, protocol: HttpProtocol, frame: Any, answer: bytes) -> None:
        """The hung request's access-log line and post_request (status 500, or the app's
        when its response had begun), as the other classes give theirs. Its environ and
        exchange are ``_respond``'s locals, in the frames the signal interrupted (looked
        up here rather than kept on the protocol, which would cost two stores on every
        request for this rare path), or the stream's, kept on the protocol."""
        request = protocol.request
        if protocol.iterator is not None and not protocol.dispatching:
            environ, exchange = protocol.environ, protocol.exchange
        else:
            code = HttpProtocol._respond.__code__
            while frame is not None and frame.f_code is not code:
                frame = frame.f_back
            if frame is None or frame.f_locals.get("self") is not protocol:
                return
            environ = frame.f_locals.get("environ")
            exchange = frame.f_locals.get("exchange")
        if environ is None or exchange is None or request is None:
            return
        if answer:
            exchange.status = "500 Internal Server Error"
            exchange.headers = [("Content-Type", "text/plain; charset=utf-8")]
            exchange.sent = len(answer) - answer.index(b"\r\n\r\n") - 4
        try:
            finish_request(self, request, environ, exchange)
        except Exception:
            self.log.exception("Error logging the aborted request")

    def lingering_with_output(self) -> int:
        """Lingering connections whose last response is still in the transport's buffer:
        they hold memory, so they count against worker_connections (``connection_made``)
        as an open connection does."""
        return sum(1 for lingering in self.lingering if lingering.transport.get_write_buffer_size())

    def _draining(self) -> bool:
        """Work left before exit: open connections, drained connections being adopted,
        sendfile tasks (each belongs to a connection) and a scheduled _close_servers."""
        return bool(
            self.connections
            or self.adopting
            or self.tasks
            or self.closing_servers
            or any(lingering.sending() for lingering in self.lingering)
        )

    async def _pause(self, delay: float, wakeable: bool = False) -> None:
        """``asyncio.sleep(delay)``, which asks for the running loop (cleared, see _serve);
        ``asyncio.sleep(0)`` does not (it only yields), and stays. ``wakeable``: _wake()
        may end the wait early (the sweep's wait, ``self.nap``)."""
        nap: asyncio.Future[None] = self.loop.create_future()
        timer = self.loop.call_later(delay, _settle, nap)
        if wakeable:
            self.nap = nap
        try:
            await nap
        finally:
            timer.cancel()
            if wakeable:
                self.nap = None

    async def _drain(self) -> None:
        """Graceful stop: no new connections; busy ones finish; the others are closed.

        Connections between requests (idle keep-alive, or just taken from the accept
        queue) get a last short window (``DRAIN_IDLE``): a request already on its way is
        served, with ``Connection: close``, rather than cut off by our FIN.
        """
        # asyncio's own loop sets up an accepted connection in a task of its own, a few
        # turns after the accept: let those finish, so that each is in self.connections
        # (and served or closed cleanly) before the loop stops. uvloop does it at once.
        # The last of those tasks start before the servers close (_close_servers).
        while self.closing_servers:
            await asyncio.sleep(0)
        for _ in range(4):
            await asyncio.sleep(0)
        now = _monotonic()
        deadline = now + float(self.cfg.graceful_timeout)
        idle_until = now + min(DRAIN_IDLE, self.keepalive) if self.keepalive > 0 else now
        for protocol in list(self.connections):
            protocol.conn.close_after_response = True
        next_sweep = now + self.sweep_every
        while self._draining() and _monotonic() < deadline:
            now = _monotonic()
            if now >= idle_until:
                for protocol in list(self.connections):
                    protocol.close_idle()
            if now >= next_sweep:
                # The deadlines still hold: a client that takes none of its response (or
                # sends none of its body) must not hold the stop to graceful_timeout.
                next_sweep = now + self.sweep_every
                self._sweep(now)
            if not self._draining():
                break
            self.notify()
            await self._pause(0.05)
        for protocol in list(self.connections):
            protocol._close()
        for lingering in list(self.lingering):
            lingering.transport.abort()
