"""``wsgi.input`` for blocking workers: the request body, read from the socket on demand.

Rules kept:
- ``100 Continue`` is sent the first time the app reads (RFC 9110 §10.1.1), never before.
- The body is never read past its framing; at its end ``read()`` returns b"" (so
  ``wsgi.input_terminated`` is True and apps may read to EOF).
- A framing error, a timeout or a lost client raises a ``ProtocolError`` from ``read()``
  (400 or 408): the app never sees a silently truncated body, and the worker, seeing the
  connection in error, answers the status if nothing was sent yet, then closes.
- With a minimum rate (``body_min_rate``), the body has a deadline, not an idle timer: it
  starts ``allowance`` seconds (``header_timeout``) after the first read, and each byte
  received pushes it ``1 / min_rate`` s further (Apache mod_reqtimeout's ``MinRate``). A
  client that trickles a byte a second falls behind and gets 408, however regular it is.
  The socket's own timeout (``io_timeout``) is put back after each receive, so the
  response is sent with it.
- A client that stops sending mid-body gets 408, not the hung-request treatment: where the
  master bounds the whole request by ``timeout`` (sync: no heartbeat while the app runs),
  the body must be in by ``limit_at`` (a little before the master would kill the worker).
  Where a watchdog bounds it instead, the worker's ``recv`` ends each wait a little before
  the watchdog's limit (``workers/session.py``).

Runs in: the worker, in whichever thread or greenlet runs the request.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Iterator

from forkhorn.http import (
    NEED_DATA,
    Data,
    IncompleteBodyError,
    RequestTimeoutError,
    ServerConnection,
)

RECV_SIZE = 65536


class InputStream:
    """A file-like, read-only view of the request body (PEP 3333 ``wsgi.input``)."""

    __slots__ = (
        "_allowance",
        "_buf",
        "_conn",
        "_deadline",
        "_done",
        "_io_timeout",
        "_limit_at",
        "_min_rate",
        "_recv",
        "_scanned",
        "_send",
        "_settimeout",
        "_started",
    )

    def __init__(
        self,
        conn: ServerConnection,
        recv: Callable[[int], bytes],
        send: Callable[[bytes], object],
        settimeout: Callable[[float | None], None] | None = None,
        io_timeout: float | None = None,
        allowance: float = 0.0,
        min_rate: float = 0.0,
        limit_at: float = 0.0,
    ) -> None:
        self._conn = conn
        self._recv = recv
        self._send = send
        # Appended at the end and taken from the front: a bytearray does both in place
        # (bytes copied the whole buffer for each piece: a 32 MiB read took 15 s).
        self._buf = bytearray()
        self._scanned = 0  # readline: the buffer's first bytes, known to hold no newline
        self._done = conn.body_complete
        self._started = False
        # The minimum-rate deadline (see the module docstring); off without ``settimeout``.
        self._settimeout = settimeout
        self._io_timeout = io_timeout
        self._allowance = allowance
        self._min_rate = min_rate if settimeout is not None else 0.0
        self._deadline = 0.0
        # The stall bound (module docstring); off without ``settimeout``.
        self._limit_at = limit_at if settimeout is not None else 0.0

    def _fill(self) -> bool:
        """Append the next piece of body to the buffer; False at the end of the body."""
        if self._done:
            return False
        conn = self._conn
        if not self._started:
            self._started = True
            interim = conn.send_continue()
            if interim:
                self._send(interim)
        while True:
            event = conn.next_event()
            if event.__class__ is Data:
                self._buf += event.data
                return True
            if event is NEED_DATA:
                try:
                    data = (
                        self._recv_paced()
                        if self._min_rate or self._limit_at
                        else self._recv(RECV_SIZE)
                    )
                except TimeoutError:
                    raise RequestTimeoutError("request body not received in time") from None
                except OSError as exc:
                    raise IncompleteBodyError(f"connection lost reading the body: {exc}") from None
                conn.receive_data(data)
                continue
            self._done = True  # EndOfMessage (PAUSED cannot come before it)
            return False

    def _recv_paced(self) -> bytes:
        """One receive under the minimum-rate deadline and the stall bound; raises
        TimeoutError past them."""
        now = time.monotonic()
        io_timeout = self._io_timeout
        wait = io_timeout
        if self._min_rate:
            if not self._deadline:
                self._deadline = now + self._allowance
            remaining = self._deadline - now
            if remaining <= 0:
                raise TimeoutError
            wait = remaining if wait is None else min(remaining, wait)
        if self._limit_at:
            # Past it, what has already arrived is still taken (an app that worked for
            # a while before reading its body): only waiting for more is refused.
            remaining = max(self._limit_at - now, 0.001)
            wait = remaining if wait is None else min(remaining, wait)
        settimeout = self._settimeout
        assert settimeout is not None
        settimeout(wait)
        try:
            data = self._recv(RECV_SIZE)
        finally:
            settimeout(io_timeout)
        if self._min_rate:
            self._deadline += len(data) / self._min_rate
        return data

    def _take(self, size: int) -> bytes:
        """The buffer's first ``size`` bytes (or all), removed from it."""
        buf = self._buf
        self._scanned = 0
        if size >= len(buf):
            data = bytes(buf)
            buf.clear()
            return data
        with memoryview(buf) as view:
            data = bytes(view[:size])
        del buf[:size]  # in place: a bytearray moves its start instead of its bytes
        return data

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            while self._fill():
                pass
            return self._take(len(self._buf))
        while len(self._buf) < size and self._fill():
            pass
        return self._take(size)

    def readline(self, size: int | None = -1) -> bytes:
        limit = -1 if size is None else size
        buf = self._buf
        while True:
            nl = buf.find(b"\n", self._scanned)
            if nl >= 0:
                end = nl + 1
                break
            self._scanned = len(buf)  # a long line is searched once, not once per piece
            if 0 <= limit <= len(buf):
                end = limit
                break
            if not self._fill():
                end = len(buf)
                break
        if 0 <= limit < end:
            end = limit
        return self._take(end)

    def readlines(self, hint: int | None = -1) -> list[bytes]:
        lines: list[bytes] = []
        total = 0
        while True:
            line = self.readline()
            if not line:
                return lines
            lines.append(line)
            total += len(line)
            if hint is not None and 0 < hint <= total:
                return lines

    def __iter__(self) -> Iterator[bytes]:
        while True:
            line = self.readline()
            if not line:
                return
            yield line

    def drain(self, limit: int) -> bool:
        """Read and discard the rest of the body, at most ``limit`` bytes more.

        Returns True when the body was read to its end (the connection can be reused).
        """
        self._buf.clear()
        self._scanned = 0
        seen = 0
        while self._fill():
            seen += len(self._buf)
            self._buf.clear()
            if seen > limit:
                return False
        return True


class EmptyInput:
    """``wsgi.input`` of a request without a body: reads nothing, holds nothing.

    Stateless, so one instance serves every such request of a worker (the fast worker's
    hot path) without one request seeing anything of another: it cannot be written,
    closed, repositioned or given attributes.
    """

    __slots__ = ()

    def read(self, size: int | None = -1) -> bytes:
        return b""

    def readline(self, size: int | None = -1) -> bytes:
        return b""

    def readlines(self, hint: int | None = -1) -> list[bytes]:
        return []

    def __iter__(self) -> Iterator[bytes]:
        return iter(())


class BufferedInput:
    """``wsgi.input`` of a body received whole before the app runs (the fast worker's): a
    ``BytesIO`` or, past the in-memory bound, a spilled temporary file.

    It has the methods of ``InputStream``, with the same keywords (``read(size=n)``:
    ``BytesIO`` and buffered files take their size only by position), so an app sees the
    same ``wsgi.input`` on every worker class; no ``seek`` or ``close``, which the others
    cannot offer. ``readinto`` is kept: Werkzeug's ``LimitedStream`` reads an upload into
    its own buffer through it when the stream has one, saving a copy. The file is closed,
    and a spilled one deleted, when the environ lets go of this object.
    """

    __slots__ = ("_file",)

    def __init__(self, file: io.BufferedIOBase) -> None:
        self._file = file

    def read(self, size: int | None = -1) -> bytes:
        return self._file.read(-1 if size is None else size)

    def readline(self, size: int | None = -1) -> bytes:
        return self._file.readline(-1 if size is None else size)

    def readlines(self, hint: int | None = -1) -> list[bytes]:
        return self._file.readlines(-1 if hint is None else hint)

    def readinto(self, buffer: bytearray | memoryview) -> int:
        return self._file.readinto(buffer)

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._file)
