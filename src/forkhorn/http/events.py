"""Events the parser emits, and the sentinels ``next_event()`` returns when it has none.

A request is always ``Request``, then zero or more ``Data``, then one ``EndOfMessage``.
Objects are slotted and built once per request: they sit on the hot path.
"""

from __future__ import annotations


class Request:
    """A complete, validated request head.

    ``headers`` holds (lower-cased name, value) pairs in arrival order, values with their
    surrounding SP/HTAB trimmed. Framing is decided here, once, before the app runs:
    ``content_length`` is the body size (0 when there is no body, None when ``chunked``).
    ``keep_alive`` is what the client asked for (HTTP version and ``Connection``).
    """

    __slots__ = (
        "chunked",
        "content_length",
        "expect_continue",
        "headers",
        "http_version",
        "keep_alive",
        "method",
        "request_line",
        "target",
    )

    def __init__(
        self,
        method: bytes,
        target: bytes,
        http_version: bytes,
        headers: list[tuple[bytes, bytes]],
        content_length: int | None = 0,
        chunked: bool = False,
        expect_continue: bool = False,
        keep_alive: bool = True,
        request_line: bytes = b"",
    ) -> None:
        self.method = method
        self.target = target
        self.http_version = http_version
        self.headers = headers
        self.content_length = content_length
        self.chunked = chunked
        self.expect_continue = expect_continue
        self.keep_alive = keep_alive
        #: The first line as received (for logs and the scoreboard).
        self.request_line = request_line or b"%s %s HTTP/%s" % (method, target, http_version)

    def __repr__(self) -> str:
        return (
            f"Request(method={self.method!r}, target={self.target!r}, "
            f"http_version={self.http_version!r}, headers={self.headers!r}, "
            f"content_length={self.content_length!r}, chunked={self.chunked!r})"
        )


class Data:
    """A piece of the request body (any split: callers must not rely on boundaries)."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data

    def __repr__(self) -> str:
        return f"Data({self.data!r})"


class EndOfMessage:
    """The request body is complete. ``trailers`` come from a chunked body only.

    Events are read-only: the parser may hand out one shared instance.
    """

    __slots__ = ("trailers",)

    def __init__(self, trailers: list[tuple[bytes, bytes]] | None = None) -> None:
        self.trailers = trailers if trailers is not None else []

    def __repr__(self) -> str:
        return f"EndOfMessage(trailers={self.trailers!r})"


class Sentinel:
    """A named marker returned by ``next_event()`` instead of an event."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


#: More bytes are needed before the next event.
NEED_DATA = Sentinel("NEED_DATA")
#: The request is complete; call ``start_next_cycle()`` after responding to go on.
PAUSED = Sentinel("PAUSED")
#: The peer closed the connection cleanly between requests.
CLOSED = Sentinel("CLOSED")

Event = Request | Data | EndOfMessage | Sentinel
