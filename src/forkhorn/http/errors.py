"""Protocol errors: every way a request can be refused, each with its status.

Rules:
- The parser raises only subclasses of ``ProtocolError``; anything else escaping it is a
  bug (the fuzz test holds it to that).
- Every class carries ``status`` and ``reason`` so that the error path in a worker is one
  line: answer ``status``, log, close. The connection is never reused after a
  ``ProtocolError``: the framing of whatever follows can no longer be trusted.
- ``InvalidResponseError`` is not a protocol error: it means the *application* handed the
  writer a status or header that would corrupt the response (CR/LF injection and the like);
  the request cycle turns it into a 500.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .events import Request


class ProtocolError(Exception):
    """The peer sent something we refuse. ``status`` is the answer to give it."""

    status = 400
    reason = "Bad Request"
    #: A head that was read whole and then refused (conflicting framing, a bad Host...):
    #: its request line and fields as far as they parse, for the access log's line.
    request: Request | None = None

    def __init__(self, detail: str = "") -> None:
        super().__init__(detail or self.reason)
        self.detail = detail or self.reason

    def detached(self) -> ProtocolError:
        """The same error without a traceback (and with none of the frames it holds), for
        keeping: see ``ServerConnection.error``."""
        twin = self.__class__.__new__(self.__class__, *self.args)
        twin.__dict__.update(self.__dict__)
        return twin


class BadRequestError(ProtocolError):
    status = 400
    reason = "Bad Request"


class IncompleteBodyError(BadRequestError):
    """The connection closed, or broke, before the request body was complete.

    Still a 400 (the request as received is not one), but the client's doing, not a
    malformed message: the workers log it at INFO, not as an invalid request.
    """


class IncompleteHeadError(BadRequestError):
    """The connection closed before the request head was complete.

    A 400 for the same reason as ``IncompleteBodyError``, and likewise the client's doing
    (a client or a health check that gave up mid-head): logged at INFO, as gunicorn logs a
    premature disconnection at DEBUG, so any client cannot fill the log with warnings.
    """


class RequestTimeoutError(ProtocolError):
    """The request (head or body) did not arrive within its deadline."""

    status = 408
    reason = "Request Timeout"


class UriTooLongError(ProtocolError):
    status = 414
    reason = "URI Too Long"


class HeaderFieldsTooLargeError(ProtocolError):
    status = 431
    reason = "Request Header Fields Too Large"


class BodyTooLargeError(ProtocolError):
    status = 413
    reason = "Content Too Large"


class ExpectationFailedError(ProtocolError):
    status = 417
    reason = "Expectation Failed"


class UnsupportedTransferCodingError(ProtocolError):
    status = 501
    reason = "Not Implemented"


class UnsupportedVersionError(ProtocolError):
    status = 505
    reason = "HTTP Version Not Supported"


class BodyNotStoredError(ProtocolError):
    """The server could not keep the request's body (the fast worker spills a large one
    to a temporary file, and the disk was full or the directory gone).

    The server's fault, not the client's: a 500 and an ERROR line, not a 400 blaming the
    client. A ``ProtocolError`` still, so the connection is answered and closed like any
    refused request (the rest of the body was never read).
    """

    status = 500
    reason = "Internal Server Error"


class InvalidResponseError(ValueError):
    """The application gave a status or header that cannot be sent safely."""


class TunnelResponseError(InvalidResponseError):
    """The app answered CONNECT with a 2xx, which would turn the connection into a tunnel
    (RFC 9110 §9.3.6) that a WSGI response cannot be. Any client can send CONNECT, and an
    app that ignores the method answers it like a GET, so this is the client's doing more
    than the app's bug: the server says 501 and logs one line, not a traceback."""
