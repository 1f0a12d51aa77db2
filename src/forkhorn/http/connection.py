"""One HTTP/1.1 server connection: the parser and the writer, and the rules between them.

``ServerConnection`` is the only object a worker talks to. It does no I/O: the worker
hands it received bytes and sends the bytes it returns.

Rules kept:
- Requests are answered in order. After a request's ``EndOfMessage`` the parser pauses
  (``PAUSED``) until the worker calls ``start_next_cycle()`` after finishing the response,
  so pipelined requests wait in the buffer, never parsed ahead.
- Keep-alive (RFC 9112 §9.3): HTTP/1.1 persists unless either side says ``close``;
  HTTP/1.0 only with ``Connection: keep-alive`` and a response with a known length. The
  server side closes after any protocol error, a response whose framing broke (fewer bytes
  than its Content-Length), a response without a length on HTTP/1.0, when the worker sets
  ``close_after_response``, or when an unread request body is too large to drain
  (``max_drain_size``) or was never sent because we did not answer ``100 Continue``.
- ``Expect: 100-continue`` (RFC 9110 §10.1.1): ``send_continue()`` returns the interim
  response only while it is still useful: the request asked for it, the body is not read,
  and no final response has started. Workers call it when the app first reads the body.
- Responses to HEAD, 1xx, 204 and 304 never carry a body, whatever the app yields.

How it works (hot path): the buffer is a ``bytes`` object plus a read position, so a
request that arrives in one ``recv()`` is parsed with no copy; the head's end is found with
one ``bytes.find`` that resumes where the last incomplete search stopped.
"""

from __future__ import annotations

from . import writer
from .body import ChunkedReader, ContentLengthReader
from .errors import (
    BadRequestError,
    IncompleteHeadError,
    InvalidResponseError,
    ProtocolError,
    TunnelResponseError,
)
from .events import CLOSED, NEED_DATA, PAUSED, Data, EndOfMessage, Request, Sentinel
from .head import check_partial_head, parse_head, refused_head

# Their side (the request) and our side (the response).
_IDLE, _BODY, _DONE, _ERROR = range(4)
# Response body framing.
_NO_BODY, _LENGTH, _CHUNKED, _UNTIL_CLOSE = range(4)

_head_cache = writer.head_cache

# The end of every request without a chunked body. Shared: events are read-only.
_END_NO_TRAILERS = EndOfMessage()

#: An unread request body up to this size is read and discarded so that the connection can
#: be kept alive; beyond it the connection is closed instead (gunicorn reads them whole).
DEFAULT_MAX_DRAIN_SIZE = 64 * 1024


class ServerConnection:
    """The server side of one HTTP/1.1 connection. Not thread-safe; one per connection."""

    __slots__ = (
        "_buf",
        "_continue_sent",
        "_eof",
        "_error",
        "_framing",
        "_keep",
        "_our_state",
        "_out_remaining",
        "_pos",
        "_reader",
        "_request",
        "_scan",
        "_skipped_crlf",
        "_status_code",
        "_their_state",
        "body_bytes",
        "body_mismatch",
        "close_after_response",
        "max_body_size",
        "max_drain_size",
        "max_field_size",
        "max_fields",
        "max_head_size",
        "max_line_size",
        "server_line",
    )

    def __init__(
        self,
        max_line_size: int = 4094,
        max_fields: int = 100,
        max_field_size: int = 8190,
        max_body_size: int = 0,
        server_header: bytes = b"forkhorn",
        max_drain_size: int = DEFAULT_MAX_DRAIN_SIZE,
    ) -> None:
        self.max_line_size = max_line_size
        self.max_fields = max_fields
        self.max_field_size = max_field_size
        #: 0 means no limit.
        self.max_body_size = max_body_size
        # The largest head the limits above allow: one request line and max_fields lines.
        self.max_head_size = max_line_size + 2 + max_fields * (max_field_size + 2) + 2
        self.max_drain_size = max_drain_size
        self.server_line = writer.server_line(server_header)
        #: Set by the worker (shutdown, max_requests) to announce Connection: close.
        self.close_after_response = False
        self._buf: bytes | bytearray = b""
        self._pos = 0
        self._scan = 0
        self._eof = False
        self._their_state = _IDLE
        self._reader: ContentLengthReader | ChunkedReader | None = None
        self._error: ProtocolError | None = None
        self._request: Request | None = None
        self._skipped_crlf = False
        self._our_state = _IDLE
        self._framing = _NO_BODY
        self._out_remaining = 0
        self._keep = False
        self._continue_sent = False
        self._status_code = 0
        #: Body bytes of the current response the framing let through (the access log's
        #: ``%(b)s``): none for HEAD, 204 and 304, and not more than a Content-Length.
        self.body_bytes = 0
        #: How the app's body missed its own Content-Length, for the worker to log (and
        #: clear, when the connection goes on: a body cut at its length); set only then.
        self.body_mismatch = ""

    # ------------------------------------------------------------------ receiving
    def receive_data(self, data: bytes) -> None:
        """Add received bytes; ``b""`` means the peer closed its sending side."""
        if not data:
            self._eof = True
            return
        pos = self._pos
        buf = self._buf
        if pos >= len(buf):
            # The common case: everything before was consumed; no copy at all.
            self._buf = data
            self._scan = 0
        else:
            # Bytes are waiting (an incomplete head, a partial chunk line). Accumulate in a
            # bytearray so that a client sending one byte at a time costs O(n) in total,
            # not O(n^2) copies; consumers turn what they hand out back into bytes.
            if isinstance(buf, bytearray):
                if pos:
                    del buf[:pos]
            else:
                buf = bytearray(buf[pos:]) if pos else bytearray(buf)
            buf += data
            self._buf = buf
            self._scan = max(0, self._scan - pos)
        self._pos = 0

    @property
    def buffered(self) -> bytes:
        """Received bytes the parser has not consumed yet."""
        return bytes(self._buf[self._pos :])

    @property
    def request(self) -> Request | None:
        """The request being served (None before the first head)."""
        return self._request

    @property
    def peer_closed(self) -> bool:
        return self._eof

    def next_event(self) -> Request | Data | EndOfMessage | Sentinel:
        """The next event, or NEED_DATA / PAUSED / CLOSED. Raises ProtocolError."""
        state = self._their_state
        try:
            if state == _BODY:
                reader = self._reader
                if reader is None:
                    self._their_state = _DONE
                    return _END_NO_TRAILERS
                event, self._pos = reader.read(self._buf, self._pos, self._eof)
                if event.__class__ is EndOfMessage:
                    self._their_state = _DONE
                return event
            if state == _IDLE:
                return self._next_head()
            if state == _DONE:
                return PAUSED
        except ProtocolError as exc:
            self._their_state = _ERROR
            # Kept as a copy without the traceback the raised one gathers: its frames hold
            # the worker's objects for this connection (the fast worker's protocol, its
            # buffers, an upload), which hold this connection; a cycle that pinned them
            # until a rare full collection. Every later raise gets a fresh copy too.
            self._error = exc.detached()
            raise
        assert self._error is not None
        raise self._error.detached()

    def end_without_body(self) -> None:
        """Take the ``EndOfMessage`` of a request without a body (``content_length`` 0,
        not chunked) as read: what the ``next_event()`` call after its ``Request`` would
        return, for the fast worker's hot path, which has nothing to do with it."""
        self._their_state = _DONE

    def _next_head(self) -> Request | Sentinel:
        buf = self._buf
        pos = self._pos
        if pos >= len(buf):
            return CLOSED if self._eof else NEED_DATA
        # A request line starts with a token character (above 0x20); one test of the
        # first byte keeps the empty-line handling off the common path.
        if buf[pos] < 0x21 and (buf[pos] == 0x0D or buf[pos] == 0x0A):
            # RFC 9112 §2.2: a server SHOULD ignore at least one empty line received before
            # the request line. We ignore exactly one.
            if buf.startswith(b"\r\n", pos) and not self._skipped_crlf:
                self._skipped_crlf = True
                self._pos = pos = pos + 2
                self._scan = pos
                if pos >= len(buf):
                    return CLOSED if self._eof else NEED_DATA
            elif buf[pos:] == b"\r" and not self._skipped_crlf and not self._eof:
                return NEED_DATA
            else:
                raise BadRequestError("empty line before the request line")
            if buf[pos] == 0x0D or buf[pos] == 0x0A:
                if buf[pos:] == b"\r" and not self._eof:
                    return NEED_DATA
                raise BadRequestError("more than one empty line before the request line")
        scan = self._scan
        end = buf.find(b"\r\n\r\n", scan if scan > pos else pos)
        if end < 0:
            check_partial_head(
                buf,
                pos,
                max(pos, scan - 1),
                self.max_line_size,
                self.max_field_size,
                self.max_head_size,
            )
            if self._eof:
                raise IncompleteHeadError("connection closed before the request head was complete")
            self._scan = max(pos, len(buf) - 3)
            return NEED_DATA
        part = buf[pos : end + 2]
        head = part if part.__class__ is bytes else bytes(part)
        try:
            request = parse_head(
                head,
                self.max_line_size,
                self.max_fields,
                self.max_field_size,
                self.max_body_size,
            )
        except ProtocolError as exc:
            exc.request = refused_head(head, self.max_line_size)
            raise
        if buf.__class__ is bytes:
            self._pos = end + 4
        else:  # back to an immutable buffer: readers hand out slices of it as Data
            self._buf = bytes(buf[end + 4 :])
            self._pos = 0
        self._scan = 0
        self._request = request
        self._their_state = _BODY
        if request.chunked:
            self._reader = ChunkedReader(self.max_body_size, self.max_fields, self.max_field_size)
        elif request.content_length:
            self._reader = ContentLengthReader(request.content_length)
        else:
            self._reader = None
        return request

    @property
    def error(self) -> ProtocolError | None:
        """The protocol error that ended the request side, if any (the worker answers it
        even when the app caught the exception raised from ``wsgi.input``). A fresh copy
        each time, so that raising it ties no traceback to this connection."""
        error = self._error
        return None if error is None else error.detached()

    @property
    def body_complete(self) -> bool:
        """Has the current request's body been read to its end?"""
        return self._their_state == _DONE

    # ------------------------------------------------------------------ sending
    def send_continue(self) -> bytes:
        """``100 Continue`` if the client waits for it and it is still useful, else b""."""
        request = self._request
        if (
            request is not None
            and request.expect_continue
            and not self._continue_sent
            and self._our_state == _IDLE
            and self._their_state == _BODY
            and self._reader is not None  # no content: nothing to wait for (RFC 9110 §10.1.1)
        ):
            self._continue_sent = True
            return writer.CONTINUE
        return b""

    def send_response(
        self,
        status: str,
        headers: list[tuple[str, str]],
        date: bytes = b"",
        body_length: int | None = None,
    ) -> bytes:
        """Encode the response head for the current request.

        ``headers`` are the app's (validated here; InvalidResponseError on bad input).
        ``date`` is the IMF-fixdate for the Date header (the caller owns the clock).
        ``body_length``: the server knows the whole body's size (e.g. a one-item list) and
        a Content-Length is added when the app gave none.
        """
        request = self._request
        if request is None or self._our_state != _IDLE:
            raise RuntimeError("send_response() without a request, or twice")
        # The status and the app's header list, validated and encoded together (cached
        # by value: the lookup is inlined here, this being every response's path).
        try:
            entry = _head_cache.get((status, tuple(headers)))
        except TypeError:  # unhashable pairs
            entry = None
        if entry is None:
            entry = writer.encode_head(status, headers)
        code, prefix, length, app_close, has_date, has_server = entry

        keep = request.keep_alive and not app_close and not self.close_after_response
        framing_line = b""
        if code < 200:
            # A 1xx is an interim response: the client would go on waiting for the final
            # one. WSGI has no way to send both, so this is an application error.
            raise InvalidResponseError(f"{code} is not a final status")
        if code < 300 and request.method == b"CONNECT":
            # RFC 9110 §9.3.6: a 2xx to CONNECT turns the connection into a tunnel and has
            # no framing; a WSGI response cannot be one (takeover, which can, never gets
            # here).
            raise TunnelResponseError("a 2xx answer to CONNECT would open a tunnel")
        if code == 204 or code == 304:
            framing = _NO_BODY
            if code == 204 and length >= 0:
                # RFC 9110 §8.6: a server MUST NOT send Content-Length in a 204.
                prefix = writer.without_content_length(prefix)
        elif request.method == b"HEAD":
            framing = _NO_BODY
            if length < 0 and body_length is not None and body_length > 0:
                framing_line = b"Content-Length: %d\r\n" % body_length
        elif length >= 0:
            framing = _LENGTH
        elif body_length is not None:
            framing = _LENGTH
            length = body_length
            framing_line = b"Content-Length: %d\r\n" % body_length
        elif request.http_version == b"1.1":
            framing = _CHUNKED
            framing_line = b"Transfer-Encoding: chunked\r\n"
        else:
            framing = _UNTIL_CLOSE
            keep = False

        if keep and self._their_state == _BODY:
            # The app answered without reading the whole body. Draining keeps the
            # connection only when the rest is small and will actually arrive.
            reader = self._reader
            if reader is not None and (  # None: no content, nothing to drain
                request.chunked
                or (request.expect_continue and not self._continue_sent)
                or (
                    isinstance(reader, ContentLengthReader)
                    and reader.remaining > self.max_drain_size
                )
            ):
                keep = False

        if keep:
            connection_line = (
                b"Connection: keep-alive\r\n" if request.http_version == b"1.0" else b""
            )
        else:
            connection_line = b"Connection: close\r\n"
        server_line = b"" if has_server else self.server_line

        self._our_state = _BODY
        self._framing = framing
        self._out_remaining = length
        self._keep = keep
        self._status_code = code
        self.body_bytes = 0
        # One formatting operation instead of a list and a join: every response's path.
        if date and not has_date:
            return b"%s%s%sDate: %s\r\n%s\r\n" % (
                prefix,
                framing_line,
                connection_line,
                date,
                server_line,
            )
        return b"%s%s%s%s\r\n" % (prefix, framing_line, connection_line, server_line)

    def send_whole(
        self, status: str, headers: list[tuple[str, str]], date: bytes, body: bytes
    ) -> bytes:
        """A complete response whose body is known up front: head, body and end in one.

        The same as ``send_response(..., body_length=len(body))``, ``send_data(body)`` and
        ``send_end()``, in one call because it is the hot path of every worker.
        """
        head = self.send_response(status, headers, date, len(body))
        if self._framing == _LENGTH:
            remaining = self._out_remaining
            if len(body) > remaining:
                # Cut at the Content-Length, the framing is intact: the connection goes on,
                # as in gunicorn (closing it unannounced failed a client's next request).
                self.body_mismatch = (
                    f"the app's body of {len(body)} bytes was cut at its Content-Length, "
                    f"{remaining}"
                )
                body = body[:remaining]
            elif len(body) < remaining:
                self._keep = False  # the app's Content-Length promised more
                self.body_mismatch = (
                    f"the app sent {len(body)} of the {remaining} bytes its Content-Length "
                    "announced; the connection is closed"
                )
            self._out_remaining = 0
            self._our_state = _DONE
            self.body_bytes = len(body)
            return head + body
        out = head + self.send_data(body)
        return out + self.send_end()

    def send_data(self, data: bytes) -> bytes:
        """Frame a piece of the response body. Returns what to send (maybe b"")."""
        framing = self._framing
        if framing == _LENGTH:
            remaining = self._out_remaining
            if len(data) > remaining:
                # The app wrote more than its Content-Length: cut it. Exactly the announced
                # bytes go out, so the framing is intact and the connection goes on, as in
                # gunicorn (closing it unannounced failed a client's next request on it).
                self.body_mismatch = (
                    "the app's body went past its Content-Length, "
                    f"{self.body_bytes + remaining}, and was cut there"
                )
                data = data[:remaining]
            self._out_remaining = remaining - len(data)
            self.body_bytes += len(data)
            return data
        if framing == _CHUNKED:
            self.body_bytes += len(data)
            return writer.chunk(data) if data else b""
        if framing == _UNTIL_CLOSE:
            self.body_bytes += len(data)
            return data
        return b""

    def sendfile_allowance(self, count: int) -> int:
        """How many bytes of a file may be sent raw after the head (``sendfile()``).

        The count is taken from the framing as if sent; a caller that sends fewer must
        close the connection. 0 means send nothing raw (no body, or chunked framing).
        """
        framing = self._framing
        if framing == _LENGTH:
            count = min(count, self._out_remaining)
            self._out_remaining -= count
            self.body_bytes += count
            return count
        if framing == _UNTIL_CLOSE:
            return count
        return 0

    def send_end(self) -> bytes:
        """End the response body. Returns the bytes that end it (maybe b"")."""
        framing = self._framing
        self._our_state = _DONE
        if framing == _CHUNKED:
            return writer.LAST_CHUNK
        if framing == _LENGTH and self._out_remaining:
            # Fewer bytes than announced: the client will wait for the rest; only closing
            # the connection ends the response (RFC 9112 §8).
            self._keep = False
            self.body_mismatch = (
                f"the app sent {self.body_bytes} of the "
                f"{self.body_bytes + self._out_remaining} bytes its Content-Length announced; "
                "the connection is closed"
            )
        return b""

    @property
    def response_started(self) -> bool:
        return self._our_state != _IDLE

    @property
    def response_complete(self) -> bool:
        """Has every byte of the response been produced? True once the head of a response
        without a body is out, or its Content-Length is reached, or ``send_end()`` ran."""
        state = self._our_state
        if state == _BODY:
            framing = self._framing
            return framing == _NO_BODY or (framing == _LENGTH and self._out_remaining == 0)
        return state == _DONE

    @property
    def status_code(self) -> int:
        """Status of the response sent (0 before ``send_response``)."""
        return self._status_code

    @property
    def response_chunked(self) -> bool:
        """Is the response body sent in chunked coding?"""
        return self._framing == _CHUNKED

    @property
    def keep_alive(self) -> bool:
        """May this connection carry another request after the current response? After
        the peer half-closed, only what it sent before: requests pipelined behind this
        one are still answered (it closed its side after sending them, as ``nc -N`` and
        some health checks do), and then the connection closes."""
        return (
            self._keep
            and self._their_state != _ERROR
            and (not self._eof or self._pos < len(self._buf))
        )

    @property
    def buffered_size(self) -> int:
        """How many received bytes the parser has not consumed yet."""
        return len(self._buf) - self._pos

    @property
    def has_buffered(self) -> bool:
        """Are there received bytes the parser has not consumed (pipelined requests)?"""
        return self._pos < len(self._buf)

    @property
    def body_still_coming(self) -> bool:
        """May the client still be sending the current request's body? (The app answered
        without reading all of it; then a close with the rest arriving resets the
        connection, which can destroy the response: the worker lingers instead.) False
        when the body's end is received or the peer closed. A client that asked for
        ``100 Continue`` and never got it counts: it may send the body anyway (RFC 9110
        §10.1.1; curl does after a second), and one that waits sees the response and our
        FIN, and closes, which ends the lingering at once."""
        if self._their_state != _BODY or self._eof:
            return False
        request = self._request
        reader = self._reader
        if request is None or reader is None:
            return False
        if isinstance(reader, ContentLengthReader):
            return reader.remaining > len(self._buf) - self._pos
        return True  # chunked: its end is not received yet

    @property
    def must_drain(self) -> bool:
        """The response is done and the request body must be read and discarded first."""
        return self._their_state == _BODY

    def start_next_cycle(self) -> bool:
        """Reset for the next request once the response is sent and the body consumed.

        Returns ``has_buffered`` (a pipelined request may be waiting), which every caller
        asks next: one call instead of two on the keep-alive path.
        """
        if self._their_state != _DONE or self._our_state != _DONE:
            raise RuntimeError("start_next_cycle() before the request/response finished")
        self._their_state = self._our_state = _IDLE
        self._request = self._reader = None
        self._skipped_crlf = self._continue_sent = self.close_after_response = False
        return self._pos < len(self._buf)
