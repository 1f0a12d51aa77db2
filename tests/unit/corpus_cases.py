"""Loading the parser corpus (``tests/unit/corpus/*.toml``) and driving a connection with it.

Shared by ``test_corpus.py`` (every case, every feeding strategy), ``test_oracle_h11.py``
(valid cases against h11) and ``test_fuzz.py`` (valid cases as mutation seeds). The case
schema is documented in ``corpus/README.md``.

How the driver works: it feeds the pieces one by one; after each piece it pulls events
until ``NEED_DATA``. On ``PAUSED`` it answers like a server would (an empty 200 response),
stops if the request asked to close, else calls ``start_next_cycle()``. A ``ProtocolError``
ends the run and is recorded; any other exception propagates and fails the test.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

from forkhorn.http import (
    CLOSED,
    NEED_DATA,
    PAUSED,
    Data,
    EndOfMessage,
    ProtocolError,
    Request,
    ServerConnection,
)

CORPUS_DIR = Path(__file__).parent / "corpus"
AREAS = frozenset(
    (
        "line",
        "field",
        "host",
        "cl",
        "te",
        "chunk",
        "trailer",
        "pipeline",
        "limits",
        "smuggle",
        "valid",
        "expect",
    )
)
LIMIT_NAMES = frozenset(("max_line_size", "max_fields", "max_field_size", "max_body_size"))
# A guard against a parser that never asks for more data.
MAX_EVENTS_PER_PIECE = 1_000_000


@dataclass(frozen=True)
class SeenRequest:
    """One complete request as the parser reported it (head, joined body, trailers)."""

    method: bytes
    target: bytes
    version: bytes
    headers: tuple[tuple[bytes, bytes], ...]
    body: bytes
    trailers: tuple[tuple[bytes, bytes], ...]
    keep_alive: bool
    expect_continue: bool
    chunked: bool
    content_length: int | None


@dataclass
class Case:
    name: str  # file name, e.g. "te-xchunked.toml"
    description: str
    cite: str
    raw: bytes
    limits: dict[str, int]
    error: int | None
    requests: list[SeenRequest] | None
    data: dict[str, Any]


@dataclass
class Run:
    """What one feeding of a case produced."""

    requests: list[SeenRequest] = field(default_factory=list)
    error: ProtocolError | None = None
    closed: bool = False  # CLOSED was returned
    stopped: bool = False  # a request asked to close; we stopped like a server would
    buffered_at_last_eom: bytes | None = None


def _latin1(text: str) -> bytes:
    return text.encode("latin-1")


def _pairs(raw_pairs: list[list[str]]) -> tuple[tuple[bytes, bytes], ...]:
    return tuple((_latin1(name), _latin1(value)) for name, value in raw_pairs)


def _expected_request(entry: dict[str, Any]) -> SeenRequest:
    chunked = bool(entry.get("chunked", False))
    body = _latin1(entry["body"])
    return SeenRequest(
        method=_latin1(entry["method"]),
        target=_latin1(entry["target"]),
        version=_latin1(entry["version"]),
        headers=_pairs(entry["headers"]),
        body=body,
        trailers=_pairs(entry.get("trailers", [])),
        keep_alive=bool(entry["keep_alive"]),
        expect_continue=bool(entry.get("expect_continue", False)),
        chunked=chunked,
        # The API: None when chunked, else the body length (0 when there is none).
        content_length=None if chunked else len(body),
    )


def load_case(path: Path) -> Case:
    with path.open("rb") as f:
        data = tomllib.load(f)
    requests = data.get("requests")
    return Case(
        name=path.name,
        description=data.get("description", ""),
        cite=data.get("cite", ""),
        raw=_latin1(data.get("raw", "")),
        limits=dict(data.get("limits", {})),
        error=data.get("error"),
        requests=None if requests is None else [_expected_request(r) for r in requests],
        data=data,
    )


def load_cases() -> list[Case]:
    return [load_case(path) for path in sorted(CORPUS_DIR.glob("*.toml"))]


def run_case(case: Case, pieces: list[bytes], *, eof: bool = True) -> Run:
    """Feed ``pieces`` (then EOF when ``eof``) to a fresh connection; collect what happens."""
    conn = ServerConnection(**case.limits)
    run = Run()
    current: Request | None = None
    body: list[bytes] = []
    # An empty piece would mean EOF to receive_data(), so split points at the edges are
    # simply one piece.
    feed = [piece for piece in pieces if piece] + ([b""] if eof else [])
    for piece in feed:
        conn.receive_data(piece)
        for _ in range(MAX_EVENTS_PER_PIECE):
            try:
                event = conn.next_event()
            except ProtocolError as exc:
                run.error = exc
                return run
            if event is NEED_DATA:
                break
            if event is CLOSED:
                run.closed = True
                return run
            if event is PAUSED:
                assert current is not None, "PAUSED before any request"
                # A 2xx to CONNECT would be a tunnel, which the writer refuses.
                status = "405 Method Not Allowed" if current.method == b"CONNECT" else "200 OK"
                conn.send_response(status, [("Content-Length", "0")])
                conn.send_end()
                if not current.keep_alive:
                    run.stopped = True
                    return run
                conn.start_next_cycle()
                current = None
            elif isinstance(event, Request):
                assert current is None, f"a second Request before EndOfMessage: {event!r}"
                current = event
                body = []
            elif isinstance(event, Data):
                assert current is not None, "Data before Request"
                assert isinstance(event.data, bytes)
                body.append(event.data)
            elif isinstance(event, EndOfMessage):
                assert current is not None, "EndOfMessage before Request"
                run.requests.append(
                    SeenRequest(
                        method=current.method,
                        target=current.target,
                        version=current.http_version,
                        headers=tuple((n, v) for n, v in current.headers),
                        body=b"".join(body),
                        trailers=tuple((n, v) for n, v in event.trailers),
                        keep_alive=current.keep_alive,
                        expect_continue=current.expect_continue,
                        chunked=current.chunked,
                        content_length=current.content_length,
                    )
                )
                run.buffered_at_last_eom = conn.buffered
            else:
                raise AssertionError(f"unexpected event {event!r}")
        else:
            raise AssertionError("the parser never returned NEED_DATA")
    return run
