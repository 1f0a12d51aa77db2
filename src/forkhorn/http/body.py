"""Request body readers: Content-Length and chunked (RFC 9112 §6 and §7).

A reader is chosen once per request from the framing decided in ``head.py`` and is then
driven by the connection: ``read(buf, pos, eof)`` returns ``(event, new_pos)`` where the
event is ``Data``, ``EndOfMessage`` or ``NEED_DATA``. Readers never copy more than the slice
they return, and never buffer: unconsumed bytes stay in the connection's buffer.

Chunked rules kept: ``chunk-size`` is 1 to 16 HEXDIG (matched before ``int()`` sees it, so
"0x5", "+5" or " 5" are refused), extensions must match RFC 9112 §7.1.1 and the whole size
line is capped at ``MAX_CHUNK_LINE``; chunk data must end in CRLF; the trailer section is
parsed like a header block and may not carry framing or routing fields.
"""

from __future__ import annotations

from .errors import (
    BadRequestError,
    BodyTooLargeError,
    HeaderFieldsTooLargeError,
    IncompleteBodyError,
)
from .events import NEED_DATA, Data, EndOfMessage, Sentinel
from .grammar import BARE_LF_RE, CHUNK_LINE_RE
from .head import parse_trailers

#: Longest chunk-size line, extensions included. Extensions carry no meaning for us, and
#: 4 KiB is far above anything legitimate (h11 allows 4 KiB for the size line too).
MAX_CHUNK_LINE = 4096

_TRUNCATED = "connection closed before the request body was complete"

# Chunk-size lines already validated (no extensions), e.g. b"1000": uploads repeat the same
# few sizes, and a lookup is cheaper than the regex. Bounded, never evicted.
_sizes: dict[bytes, int] = {}
_SIZES_LIMIT = 1024


class ContentLengthReader:
    """Reads exactly ``remaining`` bytes."""

    __slots__ = ("remaining",)

    def __init__(self, length: int) -> None:
        self.remaining = length

    def read(
        self, buf: bytes | bytearray, pos: int, eof: bool
    ) -> tuple[Data | EndOfMessage | Sentinel, int]:
        remaining = self.remaining
        if not remaining:
            return EndOfMessage(), pos
        available = len(buf) - pos
        if not available:
            if eof:
                raise IncompleteBodyError(_TRUNCATED)
            return NEED_DATA, pos
        if available > remaining:
            available = remaining
        self.remaining = remaining - available
        end = pos + available
        piece = buf[pos:end] if pos or end != len(buf) else buf
        return Data(piece if piece.__class__ is bytes else bytes(piece)), end


_SIZE, _DATA, _DATA_END, _TRAILERS, _DONE = range(5)


class ChunkedReader:
    """Reads a chunked body, one ``Data`` per chunk piece, then the trailers."""

    __slots__ = (
        "max_body_size",
        "max_field_size",
        "max_fields",
        "remaining",
        "scanned",
        "state",
        "total",
    )

    def __init__(self, max_body_size: int, max_fields: int, max_field_size: int) -> None:
        self.state = _SIZE
        self.remaining = 0
        self.total = 0
        # How far past the trailer section's start an earlier call already searched
        # (relative, so it survives the connection compacting its buffer).
        self.scanned = 0
        self.max_body_size = max_body_size
        self.max_fields = max_fields
        self.max_field_size = max_field_size

    def read(
        self, buf: bytes | bytearray, pos: int, eof: bool
    ) -> tuple[Data | EndOfMessage | Sentinel, int]:
        while True:
            state = self.state
            if state == _DATA:
                available = len(buf) - pos
                if not available:
                    break
                remaining = self.remaining
                if available > remaining:
                    available = remaining
                remaining -= available
                self.remaining = remaining
                end = pos + available
                if not remaining:
                    # Consume the CRLF after the chunk now when it is already here.
                    if buf[end : end + 2] == b"\r\n":
                        self.state = _SIZE
                        piece = buf[pos:end]
                        return Data(piece if piece.__class__ is bytes else bytes(piece)), end + 2
                    self.state = _DATA_END
                piece = buf[pos:end]
                return Data(piece if piece.__class__ is bytes else bytes(piece)), end
            if state == _SIZE:
                eol = buf.find(b"\r\n", pos)
                if eol < 0:
                    self._check_partial_line(buf, pos)
                    break
                if eol - pos > MAX_CHUNK_LINE:
                    raise BadRequestError("chunk size line too long")
                line = buf[pos:eol]
                size = _sizes.get(line) if line.__class__ is bytes else None
                if size is None:
                    m = CHUNK_LINE_RE.fullmatch(line)
                    if m is None:
                        raise BadRequestError("invalid chunk size line")
                    size = int(m.group(1), 16)
                    if not m.group(2) and len(_sizes) < _SIZES_LIMIT:
                        _sizes[bytes(line)] = size
                pos = eol + 2
                if size:
                    self.total += size
                    if self.max_body_size and self.total > self.max_body_size:
                        raise BodyTooLargeError("chunked body over the limit")
                    self.remaining = size
                    self.state = _DATA
                else:
                    self.state = _TRAILERS
                continue
            if state == _DATA_END:
                if len(buf) - pos < 2:
                    if pos < len(buf) and buf[pos] != 0x0D:
                        raise BadRequestError("chunk data not followed by CRLF")
                    break
                if buf[pos] != 0x0D or buf[pos + 1] != 0x0A:
                    raise BadRequestError("chunk data not followed by CRLF")
                pos += 2
                self.state = _SIZE
                continue
            if state == _TRAILERS:
                if buf.startswith(b"\r\n", pos):
                    self.state = _DONE
                    return EndOfMessage(), pos + 2
                end = buf.find(b"\r\n\r\n", pos + self.scanned)
                if end < 0:
                    if len(buf) - pos > self.max_fields * (self.max_field_size + 2) + 2:
                        raise HeaderFieldsTooLargeError("trailer section too large")
                    # The line in progress starts after the last LF of the section, or
                    # at the section's start (not at the buffer's: the chunks before
                    # it may share the buffer).
                    line_start = max(pos, buf.rfind(b"\n", pos) + 1)
                    if len(buf) - line_start > self.max_field_size + 1:  # +1: its CR
                        raise HeaderFieldsTooLargeError("trailer field line too long")
                    _check_bare_lf(buf, max(pos, pos + self.scanned - 1))
                    self.scanned = max(0, len(buf) - pos - 3)
                    break
                block = buf[pos : end + 2]
                trailers = parse_trailers(
                    block if block.__class__ is bytes else bytes(block),
                    self.max_fields,
                    self.max_field_size,
                )
                self.state = _DONE
                return EndOfMessage(trailers), end + 4
            return EndOfMessage(), pos  # _DONE: only reached if called again
        if eof:
            raise IncompleteBodyError(_TRUNCATED)
        return NEED_DATA, pos

    @staticmethod
    def _check_partial_line(buf: bytes | bytearray, pos: int) -> None:
        _check_bare_lf(buf, pos)
        if len(buf) - pos > MAX_CHUNK_LINE + 1:  # +1: its CR may be here already
            raise BadRequestError("chunk size line too long")


def _check_bare_lf(buf: bytes | bytearray, pos: int) -> None:
    if BARE_LF_RE.search(buf, pos) is not None:
        raise BadRequestError("bare LF in chunked framing")
