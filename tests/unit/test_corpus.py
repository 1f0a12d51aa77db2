"""The parser corpus: every case file fed to ``ServerConnection`` in every way bytes can arrive.

Each case (``corpus/<area>-<what>.toml``, schema in ``corpus/README.md``) runs once per
strategy, one test each, so a failure names both, e.g. ``te-xchunked.toml-bytewise``:

- ``whole``: the raw bytes in one ``receive_data``;
- ``bytewise``: one byte at a time;
- ``split``: two pieces, split at every index (sampled deterministically above ~600 bytes);
- ``random``: seeded random chunk sizes, three seeds;
- ``trailing``: the raw bytes followed by the start of another request (``GET / HT``) in one
  piece; for valid cases the parser must leave exactly those bytes in ``conn.buffered``.

Valid cases must produce exactly the expected requests and, after EOF, ``CLOSED``. Error
cases must raise a ``ProtocolError`` with the expected status (EOF is fed at the end, so a
truncated request is an error too); anything else raised fails the test.
"""

from __future__ import annotations

import random

import pytest
from corpus_cases import AREAS, LIMIT_NAMES, Case, Run, load_cases, run_case

from forkhorn.http import (
    NEED_DATA,
    ProtocolError,
    ServerConnection,
)
from forkhorn.http.errors import (
    BadRequestError,
    BodyTooLargeError,
    ExpectationFailedError,
    HeaderFieldsTooLargeError,
    UnsupportedTransferCodingError,
    UnsupportedVersionError,
    UriTooLongError,
)

CASES = load_cases()
TRAILING = b"GET / HT"
SEEDS = (1, 2, 3)
SPLIT_ALL_UP_TO = 600

ERROR_CLASSES: dict[int, type[ProtocolError]] = {
    400: BadRequestError,
    413: BodyTooLargeError,
    414: UriTooLongError,
    417: ExpectationFailedError,
    431: HeaderFieldsTooLargeError,
    501: UnsupportedTransferCodingError,
    505: UnsupportedVersionError,
}


def split_points(raw: bytes) -> list[int]:
    """Every index for short inputs; for long ones the edges, the head's end and a stride."""
    n = len(raw)
    if n <= SPLIT_ALL_UP_TO:
        return list(range(n + 1))
    points = set(range(0, 151)) | set(range(n - 150, n + 1))
    head_end = raw.find(b"\r\n\r\n")
    if head_end >= 0:
        points |= set(range(max(0, head_end - 40), min(n, head_end + 44) + 1))
    points |= set(range(0, n + 1, max(1, n // 200)))
    return sorted(points)


def random_pieces(raw: bytes, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    largest = max(2, len(raw) // 4)
    pieces = []
    pos = 0
    while pos < len(raw):
        size = rng.randint(1, largest)
        pieces.append(raw[pos : pos + size])
        pos += size
    return pieces


def check(case: Case, run: Run, how: str) -> None:
    """Assert that ``run`` is what ``case`` expects; ``how`` says which feeding it was."""
    if case.error is not None:
        assert run.error is not None, (
            f"{how}: expected {case.error}, got no error; parsed {run.requests}"
        )
        assert run.error.status == case.error, (
            f"{how}: expected {case.error}, got {run.error.status} "
            f"{type(run.error).__name__}({run.error})"
        )
        assert isinstance(run.error, ERROR_CLASSES[case.error]), how
        assert isinstance(run.error.reason, str) and run.error.reason, how
        # Only the requests the case lists may complete before the error.
        assert run.requests == (case.requests or []), f"{how}: requests before the error differ"
        return
    assert run.error is None, (
        f"{how}: unexpected {run.error.status} {type(run.error).__name__}({run.error})"
    )
    assert case.requests is not None
    assert run.requests == case.requests, how


def check_end(case: Case, run: Run, how: str) -> None:
    """After EOF a valid case ends in CLOSED, or stopped because the last request closes."""
    if case.error is None:
        assert case.requests is not None
        if case.requests[-1].keep_alive:
            assert run.closed, f"{how}: no CLOSED after EOF at a request boundary"
        else:
            assert run.stopped, how


def feed_whole(case: Case) -> None:
    run = run_case(case, [case.raw])
    check(case, run, "whole")
    check_end(case, run, "whole")


def feed_bytewise(case: Case) -> None:
    raw = case.raw
    run = run_case(case, [raw[i : i + 1] for i in range(len(raw))])
    check(case, run, "bytewise")
    check_end(case, run, "bytewise")


def feed_split(case: Case) -> None:
    raw = case.raw
    for i in split_points(raw):
        run = run_case(case, [raw[:i], raw[i:]])
        check(case, run, f"split at {i}")


def feed_random(case: Case) -> None:
    for seed in SEEDS:
        run = run_case(case, random_pieces(case.raw, seed))
        check(case, run, f"random seed {seed}")
        check_end(case, run, f"random seed {seed}")


def feed_trailing(case: Case) -> None:
    if case.error is not None:
        # The extra bytes can complete a truncated request (they become its body), so only
        # the status is compared here; the other strategies check what was parsed.
        run = run_case(case, [case.raw + TRAILING])
        assert run.error is not None and run.error.status == case.error, (
            f"trailing: expected {case.error}, got {run.error!r}"
        )
        return
    run = run_case(case, [case.raw + TRAILING], eof=False)
    check(case, run, "trailing")
    assert run.buffered_at_last_eom == TRAILING, (
        f"after the last EndOfMessage, buffered={run.buffered_at_last_eom!r}"
    )


STRATEGIES = {
    "whole": feed_whole,
    "bytewise": feed_bytewise,
    "split": feed_split,
    "random": feed_random,
    "trailing": feed_trailing,
}


@pytest.mark.parametrize(
    ("case", "strategy"),
    [
        pytest.param(case, strategy, id=f"{case.name}-{strategy}")
        for case in CASES
        for strategy in STRATEGIES
    ],
)
def test_corpus(case: Case, strategy: str) -> None:
    STRATEGIES[strategy](case)


def test_corpus_has_enough_cases() -> None:
    assert len(CASES) >= 150
    assert sum(case.error is None for case in CASES) >= 40
    assert sum(case.error is not None for case in CASES) >= 100


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_case_file_is_self_describing(case: Case) -> None:
    area = case.name.split("-", 1)[0]
    assert area in AREAS, f"unknown area {area!r}; see corpus/README.md"
    assert case.description and case.cite and case.raw
    assert set(case.data) <= {"description", "cite", "raw", "limits", "error", "requests"}
    assert set(case.limits) <= LIMIT_NAMES
    if case.error is None:
        assert case.requests, "a case needs either error or [[requests]]"
    else:
        assert case.error in ERROR_CLASSES
    for entry in case.data.get("requests", []):
        assert {"method", "target", "version", "headers", "body", "keep_alive"} <= set(entry)
        assert set(entry) <= {
            "method",
            "target",
            "version",
            "headers",
            "body",
            "trailers",
            "keep_alive",
            "expect_continue",
            "chunked",
        }


# --- streaming limits: endless input is refused early, never buffered --------------------

MEGABYTE = 1024 * 1024
PIECE = 64 * 1024


def feed_until_error(conn: ServerConnection, stream: bytes) -> tuple[ProtocolError, int]:
    """Feed ``stream`` in 64 KiB pieces until the parser refuses it; return the error and
    how many bytes had been fed. Fails if the whole stream is buffered without an error."""
    fed = 0
    while fed < len(stream):
        conn.receive_data(stream[fed : fed + PIECE])
        fed += PIECE
        try:
            event = conn.next_event()
        except ProtocolError as exc:
            return exc, fed
        assert event is NEED_DATA
        assert len(conn.buffered) <= fed
    raise AssertionError(f"{len(stream)} bytes buffered without an error")


def test_endless_request_line_is_refused_early() -> None:
    conn = ServerConnection()
    exc, fed = feed_until_error(conn, b"GET /" + b"a" * MEGABYTE)
    assert isinstance(exc, UriTooLongError)
    assert fed <= PIECE


def test_endless_field_line_is_refused_early() -> None:
    conn = ServerConnection()
    head = b"GET / HTTP/1.1\r\nHost: example.com\r\nX-Endless: "
    exc, fed = feed_until_error(conn, head + b"v" * MEGABYTE)
    assert isinstance(exc, HeaderFieldsTooLargeError)
    assert fed <= 2 * PIECE


def test_endless_field_lines_are_refused_early() -> None:
    conn = ServerConnection(max_fields=10)
    lines = b"X-Many: yes\r\n" * (MEGABYTE // 13)
    exc, fed = feed_until_error(conn, b"GET / HTTP/1.1\r\nHost: example.com\r\n" + lines)
    assert isinstance(exc, HeaderFieldsTooLargeError)
    assert fed < MEGABYTE // 2


def test_endless_chunk_extension_is_refused_early() -> None:
    conn = ServerConnection()
    conn.receive_data(b"POST / HTTP/1.1\r\nHost: example.com\r\nTransfer-Encoding: chunked\r\n\r\n")
    assert conn.next_event().__class__.__name__ == "Request"
    exc, fed = feed_until_error(conn, b"5;ext=" + b"x" * MEGABYTE)
    assert exc.status in (400, 431)
    assert fed < MEGABYTE // 2


def test_endless_trailer_is_refused_early() -> None:
    conn = ServerConnection()
    conn.receive_data(
        b"POST / HTTP/1.1\r\nHost: example.com\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n"
    )
    assert conn.next_event().__class__.__name__ == "Request"
    exc, fed = feed_until_error(conn, b"X-Trailer: " + b"t" * MEGABYTE)
    assert exc.status in (400, 431)
    assert fed < MEGABYTE // 2


def test_error_is_sticky() -> None:
    """After a ProtocolError the connection never parses again (framing is lost)."""
    conn = ServerConnection()
    conn.receive_data(
        b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n"
    )
    with pytest.raises(BadRequestError):
        conn.next_event()
    with pytest.raises(BadRequestError):
        conn.next_event()
    assert not conn.keep_alive
