"""forkhorn's HTTP/1.1 core: a strict, sans-IO request parser and response writer.

Every worker class goes through this package; none parses HTTP on its own. It does no I/O
and imports no socket, thread, time, os or logging module (``tests/unit/test_layering.py``
keeps it so): bytes in, events out; response parts in, bytes out. Limits arrive as plain
numbers.

Usage, for one connection::

    conn = ServerConnection(max_line_size=4094, max_fields=100, max_field_size=8190,
                            max_body_size=0, server_header=b"forkhorn")
    conn.receive_data(received)          # b"" when the peer closed
    event = conn.next_event()            # Request, Data..., EndOfMessage, then PAUSED
                                         # NEED_DATA: receive more; CLOSED: peer is gone
                                         # raises ProtocolError (.status, .reason): answer
                                         # the status and close
    out = conn.send_response("200 OK", headers, date=b"...", body_length=None)
    out += conn.send_data(b"body")       # framed (chunked when no length on HTTP/1.1)
    out += conn.send_end()
    if conn.keep_alive:                  # after draining an unread body (conn.must_drain)
        conn.start_next_cycle()

Modules: ``grammar`` (RFC patterns), ``events``, ``errors``, ``head`` (request line and
fields), ``body`` (Content-Length and chunked readers), ``writer`` (status and header
encoding), ``connection`` (state, keep-alive, 100-continue).
"""

from .connection import DEFAULT_MAX_DRAIN_SIZE, ServerConnection
from .errors import (
    BadRequestError,
    BodyNotStoredError,
    BodyTooLargeError,
    ExpectationFailedError,
    HeaderFieldsTooLargeError,
    IncompleteBodyError,
    IncompleteHeadError,
    InvalidResponseError,
    ProtocolError,
    RequestTimeoutError,
    TunnelResponseError,
    UnsupportedTransferCodingError,
    UnsupportedVersionError,
    UriTooLongError,
)
from .events import CLOSED, NEED_DATA, PAUSED, Data, EndOfMessage, Event, Request, Sentinel

__all__ = [
    "CLOSED",
    "DEFAULT_MAX_DRAIN_SIZE",
    "NEED_DATA",
    "PAUSED",
    "BadRequestError",
    "BodyNotStoredError",
    "BodyTooLargeError",
    "Data",
    "EndOfMessage",
    "Event",
    "ExpectationFailedError",
    "HeaderFieldsTooLargeError",
    "IncompleteBodyError",
    "IncompleteHeadError",
    "InvalidResponseError",
    "ProtocolError",
    "Request",
    "RequestTimeoutError",
    "Sentinel",
    "ServerConnection",
    "TunnelResponseError",
    "UnsupportedTransferCodingError",
    "UnsupportedVersionError",
    "UriTooLongError",
]
