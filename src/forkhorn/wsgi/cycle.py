"""THE request cycle: call a WSGI app for one request and feed its response to the core.

Every worker class goes through ``Exchange`` and ``run_app``; a worker only supplies the
two ways to move bytes (``send`` and, for file responses, ``sendfile``).

Rules kept (PEP 3333):
- ``start_response`` may be called again only with ``exc_info`` and only before the head
  is sent; after that it re-raises ``exc_info``. Its return value is the ``write()``
  callable.
- The head is sent with the first non-empty body chunk (or at the end), so an app that
  fails before producing output still gets a clean 500.
- ``close()`` is always called on the iterable, even when iterating fails.
- An app exception before the head is sent gives a 500 and a logged traceback; after it,
  the connection is closed (the client sees a truncated response, never a wrong one).
- A request framing error found while the app reads ``wsgi.input`` raises from ``read()``
  and the worker answers 400 (if nothing was sent) and closes; the app never sees a
  silently truncated body.
- An app that took the connection over through ``environ["gunicorn.socket"]`` (a
  WebSocket library such as simple-websocket, which Flask-Sock uses) says so by raising
  ``StopIteration`` from the app call, gunicorn's convention: ``call_app`` raises
  ``ConnectionTakenOver`` and the worker writes nothing more and closes. Only on a request
  that asked for another protocol (``Upgrade``, or ``CONNECT``); elsewhere a
  ``StopIteration`` is a bug in the app, answered 500 and logged.
"""

from __future__ import annotations

import io
import os
import stat
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from email.utils import formatdate
from types import TracebackType
from typing import Any

from forkhorn.errors import RequestHungError, WorkerExit
from forkhorn.http import (
    InvalidResponseError,
    ProtocolError,
    ServerConnection,
    TunnelResponseError,
)
from forkhorn.wsgi.environ import split_non_origin

ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None]
WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class ConnectionTakenOver(Exception):
    """The app took the connection over (``StopIteration`` from the app call, see the
    module docstring): no response may follow, and the connection is closed."""


class DateCache:
    """The ``Date`` header value, formatted at most once per second (RFC 9110 §6.6.1).

    ``value`` is current while ``time.monotonic()`` is below ``expires`` (the next
    wall-clock second, on the monotonic clock); ``refresh()`` formats it again. A caller
    that has just read the monotonic clock does that check itself; ``get()`` reads it.
    """

    __slots__ = ("expires", "second", "value")

    def __init__(self) -> None:
        self.second = -1
        self.value = b""
        self.expires = 0.0

    def get(self) -> bytes:
        now = time.monotonic()
        return self.value if now < self.expires else self.refresh(now)

    def refresh(self, monotonic_now: float) -> bytes:
        """The value at ``monotonic_now`` (a reading just made); sets ``expires``."""
        wall = time.time()
        second = int(wall)
        if second != self.second:
            self.second = second
            self.value = formatdate(second, usegmt=True).encode("ascii")
        self.expires = monotonic_now + (second + 1 - wall)
        return self.value


dates = DateCache()
http_date = dates.get


#: Buffered file objects whose ``read()`` is their raw file's bytes (not subclasses, which
#: may change what ``read()`` gives).
_BUFFERED_FILES = (io.BufferedReader, io.BufferedRandom)


def _plain_file(filelike: Any) -> Any:
    """``filelike`` if its bytes are its descriptor's, or the plain file inside a wrapper
    that reads straight from it (Django's ``File``, ``NamedTemporaryFile``), else None."""
    if _is_plain(filelike):
        return filelike
    inner: Any = getattr(filelike, "file", None)
    if _is_plain(inner) and (
        isinstance(filelike, tempfile._TemporaryFileWrapper)  # (reads through to .file)
        or getattr(filelike, "read", None) == inner.read  # a proxy of its read (Django)
    ):
        return inner
    return None


def _is_plain(filelike: Any) -> bool:
    return isinstance(filelike, io.FileIO) or (
        type(filelike) in _BUFFERED_FILES and isinstance(filelike.raw, io.FileIO)
    )


class FileWrapper:
    """``wsgi.file_wrapper``: lets the worker send a file with ``sendfile()``.

    Iterating it reads ``block_size`` pieces, so it also works where sendfile cannot
    (chunked framing, files without a descriptor).
    """

    def __init__(self, filelike: Any, block_size: int = 8192) -> None:
        self.filelike = filelike
        self.block_size = block_size
        if hasattr(filelike, "close"):
            self.close = filelike.close

    def __iter__(self) -> FileWrapper:
        return self

    def __next__(self) -> bytes:
        data: bytes = self.filelike.read(self.block_size)
        if data:
            return data
        raise StopIteration

    def regular_file(self) -> tuple[int, int, int] | None:
        """``(fd, offset, size)`` of what is left to send when the file can go through
        sendfile (a regular file with a descriptor), else None (iterate instead).

        Only for a plain file object (``open(path, "rb")``, ``io.FileIO``), whose bytes
        are its descriptor's: a ``gzip.open`` file has the descriptor of the compressed
        file and went out compressed, under the app's length of the plain text. And not
        when the file says it is empty: ``/proc`` and ``/sys`` files do, and have bytes
        only for ``read()``."""
        filelike = _plain_file(self.filelike)
        if filelike is None:
            return None
        try:
            fd: int = filelike.fileno()
            st = os.fstat(fd)
        except (AttributeError, OSError, ValueError):
            return None
        if not stat.S_ISREG(st.st_mode) or st.st_size == 0:
            return None
        try:
            offset: int = filelike.tell()
        except (AttributeError, OSError):
            offset = 0
        return fd, offset, max(st.st_size - offset, 0)


class Exchange:
    """One request's response: ``start_response``, ``write`` and the framing state.

    Also the ``resp`` object handed to the ``post_request`` hook, with gunicorn's
    attributes: ``status``, ``status_code``, ``headers``, ``sent``, ``response_length``,
    ``chunked``, ``must_close``/``should_close()``, ``headers_sent``.
    """

    __slots__ = (
        "broken",
        "conn",
        "head_sent",
        "headers",
        "send",
        "sent",
        "started",
        "status",
    )

    def __init__(
        self, conn: ServerConnection, send: Callable[[bytes], Any], started: float = 0.0
    ) -> None:
        self.conn = conn
        self.send = send
        self.status: str | None = None
        self.headers: list[tuple[str, str]] = []
        self.head_sent = False
        self.broken = False  # the response cannot be completed: close the connection
        self.sent = 0  # body bytes the framing let through (for the access log)
        #: time.monotonic() when the request started (the access log's duration); the
        #: caller passes the clock reading it already made for the scoreboard.
        self.started = started or time.monotonic()

    @property
    def status_code(self) -> int:
        status = self.status
        return int(status[:3]) if status and status[:3].isdigit() else 0

    # gunicorn's Response attributes, for hooks (never read on the request path).
    @property
    def response_length(self) -> int | None:
        """The app's Content-Length, None when it gave none."""
        for name, value in self.headers:
            if name.lower() == "content-length":
                return int(value) if value.isdigit() else None
        return None

    @property
    def chunked(self) -> bool:
        return self.conn.response_chunked

    @property
    def must_close(self) -> bool:
        """Will the connection close after this response?"""
        return not self.conn.keep_alive

    def should_close(self) -> bool:
        return self.must_close

    @property
    def headers_sent(self) -> bool:
        return self.head_sent

    def start_response(
        self,
        status: str,
        headers: list[tuple[str, str]],
        exc_info: ExcInfo | None = None,
    ) -> Callable[[bytes], None]:
        if exc_info is not None:
            try:
                if self.head_sent:
                    raise exc_info[1].with_traceback(exc_info[2])
            finally:
                exc_info = None  # no reference cycle through the traceback
        elif self.status is not None:
            raise AssertionError("start_response() called twice without exc_info")
        if not isinstance(status, str):
            raise InvalidResponseError(f"status must be str, not {type(status).__name__}")
        if not isinstance(headers, list):
            raise InvalidResponseError(f"headers must be a list, not {type(headers).__name__}")
        self.status = status
        self.headers = headers
        return self.write

    def write(self, data: bytes) -> None:
        """The ``write()`` callable and the body path for iterated chunks."""
        if data.__class__ is not bytes:
            # Before the head is encoded: the app's error is then still a 500.
            data = _as_bytes(data)
        if not self.head_sent:
            if self.status is None:
                raise AssertionError("write() before start_response()")
            if not data:
                return
            if self.conn.error is not None:
                raise self.conn.error
            head = self.conn.send_response(self.status, self.headers, http_date())
            self.head_sent = True
            body = self.conn.send_data(data)
            self.sent = self.conn.body_bytes
            self.send(head + body)
            return
        if data:
            out = self.conn.send_data(data)
            self.sent = self.conn.body_bytes
            if out:
                self.send(out)

    def write_whole(self, body: bytes) -> None:
        """The entire body is known: one head with Content-Length, one send."""
        if self.status is None:
            raise AssertionError("app returned without calling start_response()")
        if self.conn.error is not None:
            raise self.conn.error
        # Encoded first: a status or header the core refuses raises here, with nothing
        # sent yet, so app_failed can still answer 500 instead of closing silently.
        data = self.conn.send_whole(self.status, self.headers, http_date(), body)
        self.head_sent = True
        self.sent = self.conn.body_bytes
        self.send(data)

    def file_head(self, size: int) -> tuple[bytes, int]:
        """The head of a file response of ``size`` bytes, and how many of them may follow
        raw through sendfile (the framing decides: 0 for HEAD, 204, 304)."""
        if self.status is None:
            raise AssertionError("app returned without calling start_response()")
        head = self.conn.send_response(self.status, self.headers, http_date(), size)
        self.head_sent = True
        return head, self.conn.sendfile_allowance(size)

    def finish(self) -> None:
        """End the response: the head if nothing was sent yet, then the last chunk."""
        if not self.head_sent:
            if self.status is None:
                raise AssertionError("app returned without calling start_response()")
            if self.conn.error is not None:
                raise self.conn.error
            head = self.conn.send_response(self.status, self.headers, http_date(), 0)
            self.head_sent = True
            self.send(head + self.conn.send_end())
            return
        tail = self.conn.send_end()
        if tail:
            self.send(tail)


def _as_bytes(data: object) -> bytes:
    """What write() takes, as it always did: bytes, and the buffers the framing can send.
    A memoryview as its bytes (``len()`` counts its items, which may be wider than a
    byte: a chunk-size line of 3 for 6 bytes broke the stream); a bytearray as it is (it
    counts bytes); anything else refused."""
    if isinstance(data, bytes):
        return data
    if isinstance(data, bytearray):
        return data  # type: ignore[return-value]  # (the framing takes any buffer)
    if isinstance(data, memoryview):
        return data.tobytes()
    raise InvalidResponseError(f"app wrote {type(data).__name__}, not bytes")


def error_body(status: int, reason: str, detail: str = "") -> bytes:
    """The plain-text body of every error response the server makes itself."""
    if not detail:
        return f"{status} {reason}\n".encode("latin-1")
    return f"{status} {reason}: {detail}\n".encode("latin-1", "replace")


def error_response(conn: ServerConnection, status: int, reason: str, detail: str = "") -> bytes:
    """A complete plain-text error response that closes the connection."""
    body = error_body(status, reason, detail)
    conn.close_after_response = True
    head = conn.send_response(
        f"{status} {reason}",
        [("Content-Type", "text/plain; charset=utf-8")],
        http_date(),
        len(body),
    )
    return head + conn.send_data(body) + conn.send_end()


def protocol_error_answer(conn: ServerConnection, exc: ProtocolError) -> bytes:
    """What to send for a refused request: its status if no response started, else b"".

    Every worker class answers a ``ProtocolError`` through this, then closes.
    """
    if conn.response_started:
        return b""
    try:
        if conn.request is not None:
            return error_response(conn, exc.status, exc.reason)
    except ProtocolError:
        pass
    return raw_error_response(exc.status, exc.reason, conn.server_line)


def raw_error_response(status: int, reason: str, server_line: bytes = b"") -> bytes:
    """An error response for input the core refused before there was a request to frame.

    ``server_line`` is the connection's ``Server:`` field line (``b""`` when the
    ``server_header`` setting is empty), so these answers carry it like every other."""
    body = error_body(status, reason)
    return (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n".encode("latin-1")
        + server_line
        + b"Date: "
        + http_date()
        + b"\r\n\r\n"
        + body
    )


def is_app_error(exc: BaseException) -> bool:
    """Is this exception, raised out of the app, the app's failure (answered 500, logged)?

    Every ``Exception`` is, and so are the other ``BaseException`` kinds app code may
    raise itself: ``sys.exit()`` or ``KeyboardInterrupt`` in a view, an escaped
    ``gevent.Timeout``. Letting those through would end the thread or the process that
    serves other clients too (a gthread pool thread died quietly, a gevent worker cut
    every response in flight). Not the worker's own: ``WorkerExit`` (its stop and abort
    signal handlers), ``RequestHungError`` (the watchdog) and greenlet's ``GreenletExit``
    (a greenlet being killed), which must unwind the request.
    """
    if isinstance(exc, Exception):
        return True
    if isinstance(exc, (WorkerExit, RequestHungError)):
        return False
    greenlet = sys.modules.get("greenlet")  # only if a green worker imported it
    return greenlet is None or not isinstance(exc, greenlet.GreenletExit)


def call_app(
    app: WSGIApp, environ: dict[str, Any], exchange: Exchange, log: Any
) -> Iterable[bytes] | None:
    """Call the app. None means it failed and the error response was already sent."""
    try:
        result = app(environ, exchange.start_response)
        if result is None:
            # A view that forgot its return: PEP 3333 wants an iterable. Said here, as the
            # app's error, rather than taken for "failed and answered" below.
            raise TypeError("the app returned None instead of an iterable of bytes")
        return result
    except (ProtocolError, ClientGoneError):
        raise  # (a write() whose client left: not the app's failure)
    except BaseException as exc:
        if not is_app_error(exc):
            raise
        # StopIteration before any output, on a request that asked for another protocol:
        # the app took the connection over (module docstring). On a plain request (a
        # next() on an exhausted iterator in a view) or after output through write(), it
        # is an error like any other: gunicorn's empty reply would leave no trace.
        if (
            isinstance(exc, StopIteration)
            and not exchange.head_sent
            and ("HTTP_UPGRADE" in environ or environ.get("REQUEST_METHOD") == "CONNECT")
        ):
            raise ConnectionTakenOver from None
        app_failed(exchange, environ, log, sys.exc_info())
        return None


def single_body(result: Iterable[bytes], exchange: Exchange) -> bytes | None:
    """The body when the app returned a one-item list or tuple (the common case), so the
    response can carry a Content-Length and go out in one write."""
    if (
        (result.__class__ is list or result.__class__ is tuple)
        and len(result) == 1
        and not exchange.head_sent
    ):
        body = result[0]
        if body.__class__ is bytes:
            return body
        if not isinstance(body, bytes):
            raise InvalidResponseError(f"app yielded {type(body).__name__}, not bytes")
        return bytes(body)
    return None


def close_result(result: Iterable[bytes], log: Any) -> None:
    """PEP 3333: call ``close()`` on the iterable whatever happened."""
    close = getattr(result, "close", None)
    if close is not None:
        try:
            close()
        except BaseException as exc:
            if not is_app_error(exc):
                raise
            log.exception("Error closing the response iterable")


#: Pieces still taken once a response is complete (HEAD, 204 and 304 after the head;
#: otherwise the Content-Length reached). They are dropped by the framing, which, past a
#: Content-Length, also closes the connection after the response. Then the server stops
#: iterating, as PEP 3333 allows: iterating on would drop pieces for as long as the app
#: yields, for ever for a HEAD to an endless stream, taking the worker with it. A few are
#: taken rather than none, so that a generator that ends soon (a commit or a log line
#: after its last yield, a HEAD to a short stream) still runs to its end, as it does under
#: gunicorn.
PIECES_AFTER_COMPLETE = 64


class ClientGoneError(ConnectionError):
    """Sending the response failed: the client left, or took nothing of it for the send
    timeout (``__cause__`` says which). Raised by the blocking classes' sends, so that an
    ``OSError`` the app raises itself (a file it streams, a service it calls) is told
    apart: that one is the app's failure, logged, where this one ends the request
    quietly."""

    #: Bytes of a file that went out before the failure (sendfile), for the access log.
    sent = 0


def run_app(
    app: WSGIApp,
    environ: dict[str, Any],
    exchange: Exchange,
    sendfile: Callable[[int, int, int], int] | None,
    log: Any,
) -> bool:
    """Run the app for one request and send its whole response (blocking workers).

    Returns False when the connection must be closed without further ado (the response
    could not be completed). Protocol errors from ``wsgi.input`` propagate to the caller
    only when nothing was sent yet; after that they end the response.
    """
    result = call_app(app, environ, exchange, log)
    if result is None:
        return not exchange.broken
    try:
        body = single_body(result, exchange)
        if body is not None:
            exchange.write_whole(body)
        elif isinstance(result, FileWrapper) and sendfile is not None and not exchange.head_sent:
            # After write(), the head is out: the file goes piece by piece under it.
            _send_file(exchange, result, sendfile)
        else:
            _write_pieces(exchange, result)
    except ProtocolError:
        if exchange.head_sent:
            return False
        raise
    except ClientGoneError:
        raise  # the worker closes quietly
    except BaseException as exc:
        if not is_app_error(exc):
            raise
        return app_failed(exchange, environ, log, sys.exc_info())
    finally:
        close_result(result, log)
    return True


def _write_pieces(exchange: Exchange, pieces: Iterable[bytes]) -> None:
    """Write a response body given piece by piece, then end it: up to
    ``PIECES_AFTER_COMPLETE`` pieces past its completion, no more."""
    write = exchange.write
    conn = exchange.conn
    after = PIECES_AFTER_COMPLETE
    for data in pieces:
        if data.__class__ is not bytes and not isinstance(data, bytes):
            raise InvalidResponseError(f"app yielded {type(data).__name__}, not bytes")
        write(data)
        if conn.response_complete:
            after -= 1
            if after < 0:
                break
    exchange.finish()


def _send_file(
    exchange: Exchange, wrapper: FileWrapper, sendfile: Callable[[int, int, int], int]
) -> None:
    file = wrapper.regular_file()
    if file is None:
        _write_pieces(exchange, wrapper)
        return
    fd, offset, size = file
    head, count = exchange.file_head(size)
    exchange.send(head)
    if count > 0:
        try:
            sent = sendfile(fd, offset, count)
        except ClientGoneError as exc:
            exchange.sent += exc.sent  # the access log's %(b)s: what did go out
            raise
        exchange.sent += sent
        if sent < count:
            # sendfile (or the copy) found the file's end early: a client that left raises
            # above. The worker logs it as it logs a body short of its Content-Length.
            exchange.conn.body_mismatch = file_ended_early(sent, count)
            raise ClientGoneError("the file ended before it was sent")
    tail = exchange.conn.send_end()
    if tail:
        exchange.send(tail)


def file_ended_early(sent: int, count: int) -> str:
    """What the log says of a file that was shorter than when its response began (it
    was truncated or replaced meanwhile): its Content-Length was already out."""
    return (
        f"the file ended after {sent} of the {count} bytes announced (it shrank while being "
        "sent); the connection is closed"
    )


def app_failed(exchange: Exchange, environ: dict[str, Any], log: Any, exc: Any) -> bool:
    request_line = f"{environ.get('REQUEST_METHOD')} {environ.get('RAW_URI')}"
    if isinstance(exc[1], TunnelResponseError) and not exchange.head_sent:
        # A scanner's CONNECT to an app that does not look at the method: one line, and
        # the status for a method the server does not do (RFC 9110 §15.6.2).
        log.warning("Refused request %s: %s; sent 501", request_line, exc[1])
        code, reason = 501, "Not Implemented"
    else:
        log.error("Error handling request %s", request_line, exc_info=exc)
        if exchange.head_sent:
            exchange.broken = True
            return False
        code, reason = 500, "Internal Server Error"
    conn = exchange.conn
    exchange.status = f"{code} {reason}"
    exchange.headers = []
    exchange.head_sent = True
    exchange.send(error_response(conn, code, reason))
    exchange.sent = conn.body_bytes  # the access log's %(b)s: our answer's body
    return True


class HookRequest:
    """The ``req`` that the ``pre_request`` and ``post_request`` hooks receive.

    gunicorn's attribute names and types, so its documented hooks work unchanged
    (``req.method``, ``req.path`` are str; ``req.headers`` holds upper-case str names).
    Anything else is read from forkhorn's own ``Request`` (``target``, ``request_line``...,
    as bytes). Made only when a hook is set.
    """

    __slots__ = ("_environ", "_request")

    def __init__(self, request: Any, environ: Mapping[str, Any]) -> None:
        self._request = request
        self._environ = environ

    def __getattr__(self, name: str) -> Any:
        return getattr(self._request, name)

    @property
    def method(self) -> str:
        return str(self._request.method.decode("latin-1"))

    @property
    def uri(self) -> str:
        return str(self._request.target.decode("latin-1"))

    @property
    def path(self) -> str:
        """The target's path, not percent-decoded (``PATH_INFO`` is decoded), so that an
        encoded CR or LF stays encoded in a log line (the default pre_request logs it)."""
        target = self._request.target
        if target[:1] != b"/":  # absolute-, asterisk- or authority-form: as the environ splits it
            return split_non_origin(target)[0].decode("latin-1")
        return str(target.partition(b"?")[0].partition(b"#")[0].decode("latin-1"))

    @property
    def query(self) -> str:
        return str(self._environ.get("QUERY_STRING", ""))

    @property
    def fragment(self) -> str:
        return self.uri.partition("#")[2]

    @property
    def version(self) -> tuple[int, int]:
        return (1, 1) if self._request.http_version == b"1.1" else (1, 0)

    @property
    def headers(self) -> list[tuple[str, str]]:
        return [
            (name.decode("latin-1").upper(), value.decode("latin-1"))
            for name, value in self._request.headers
        ]

    @property
    def scheme(self) -> str:
        return str(self._environ.get("wsgi.url_scheme", "http"))

    @property
    def body(self) -> Any:
        return self._environ.get("wsgi.input")

    @property
    def peer_addr(self) -> tuple[str, int]:
        port = str(self._environ.get("REMOTE_PORT") or "0")
        return str(self._environ.get("REMOTE_ADDR", "")), int(port) if port.isdigit() else 0

    remote_addr = peer_addr
