"""Property-based tests (hypothesis) for the HTTP core.

Invariants:
1. Parser: any bytes, cut into any chunks, give events or a ``ProtocolError``; nothing else
   ever escapes, it never loops without asking for data, and ``buffered`` never holds more
   than was received. Checked on raw random bytes and on mutations of the valid corpus
   cases (closer to real requests, so the mutations reach deep parser states).
2. Writer: whatever valid response an app produces (status, headers, body pieces, length
   or not, or all at once with ``send_whole``, for GET/HEAD/POST on HTTP/1.0 and 1.1)
   re-parses, with the small independent client-side parser below, to exactly that status,
   those headers and that body.
"""

from __future__ import annotations

import re

from corpus_cases import load_cases
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

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

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SEEDS = [case.raw for case in load_cases() if case.error is None and len(case.raw) < 2048]
# Bytes that matter to HTTP/1.1 framing: the mutations favour them.
INTERESTING = [
    b"\r",
    b"\n",
    b"\r\n",
    b" ",
    b"\t",
    b"\x00",
    b":",
    b",",
    b";",
    b"=",
    b'"',
    b"0",
    b"9",
    b"a",
    b"f",
    b"g",
    b"-",
    b"+",
    b"\x0b",
    b"\x7f",
    b"\x80",
    b"\xff",
    b"chunked",
    b"Content-Length: 5\r\n",
    b"Transfer-Encoding: chunked\r\n",
    b"Host: x\r\n",
    b"\r\n\r\n",
    b"0\r\n\r\n",
    b"HTTP/1.0",
    b"HTTP/2.0",
]


def chunked_feed(data: bytes, sizes: list[int]) -> list[bytes]:
    pieces = []
    pos = 0
    for size in sizes:
        if pos >= len(data):
            break
        pieces.append(data[pos : pos + size])
        pos += size
    if pos < len(data):
        pieces.append(data[pos:])
    return pieces


def drive(pieces: list[bytes], **limits: int) -> None:
    """Feed the pieces then EOF, acting like a server; only ProtocolError may stop it."""
    conn = ServerConnection(**limits)
    received = 0
    request: Request | None = None
    for piece in [p for p in pieces if p] + [b""]:
        conn.receive_data(piece)
        received += len(piece)
        for _ in range(100_000):
            try:
                event = conn.next_event()
            except ProtocolError as exc:
                assert isinstance(exc.status, int) and 400 <= exc.status <= 599
                assert isinstance(exc.reason, str)
                return
            assert len(conn.buffered) <= received
            if event is NEED_DATA:
                break
            if event is CLOSED:
                return
            if event is PAUSED:
                assert request is not None
                # A 2xx to CONNECT would be a tunnel, which the writer refuses.
                status = "405 Method Not Allowed" if request.method == b"CONNECT" else "200 OK"
                conn.send_response(status, [("Content-Length", "0")])
                conn.send_end()
                if not conn.keep_alive:
                    return
                conn.start_next_cycle()
                request = None
            elif isinstance(event, Request):
                request = event
                assert event.content_length is None or event.content_length >= 0
            elif isinstance(event, Data):
                assert isinstance(event.data, bytes)
            else:
                assert isinstance(event, EndOfMessage)
        else:
            raise AssertionError("the parser never returned NEED_DATA")
    raise AssertionError("EOF fed but the parser neither closed nor refused")


@FUZZ
@given(st.binary(max_size=1500), st.lists(st.integers(1, 64), max_size=60))
def test_any_bytes_give_events_or_protocol_error(data: bytes, sizes: list[int]) -> None:
    drive(chunked_feed(data, sizes))


@FUZZ
@given(st.binary(max_size=600), st.lists(st.integers(1, 16), max_size=40))
def test_any_bytes_after_a_valid_head(data: bytes, sizes: list[int]) -> None:
    head = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
    drive(chunked_feed(head + data, sizes), max_body_size=300)


@st.composite
def mutated_requests(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["insert", "replace", "delete", "duplicate", "lf", "cut"]))
        pos = draw(st.integers(0, len(data)))
        if op == "insert":
            data[pos:pos] = draw(st.sampled_from(INTERESTING))
        elif op == "replace" and pos < len(data):
            data[pos] = draw(st.integers(0, 255))
        elif op == "delete":
            del data[pos : pos + draw(st.integers(1, 8))]
        elif op == "duplicate":
            start = data.rfind(b"\r\n", 0, pos) + 2 if b"\r\n" in data[:pos] else 0
            end = data.find(b"\r\n", pos)
            if end >= 0:
                data[end + 2 : end + 2] = data[start : end + 2]
        elif op == "lf":
            data = bytearray(data.replace(b"\r\n", b"\n", 1))
        elif op == "cut":
            del data[pos:]
    return bytes(data)


@FUZZ
@given(mutated_requests(), st.lists(st.integers(1, 32), max_size=80))
def test_mutated_corpus_requests_give_events_or_protocol_error(
    data: bytes, sizes: list[int]
) -> None:
    drive(chunked_feed(data, sizes))


@FUZZ
@given(mutated_requests(), st.integers(1, 64), st.integers(1, 8), st.integers(1, 64))
def test_mutated_requests_under_tight_limits(
    data: bytes, line: int, fields: int, field_size: int
) -> None:
    drive(
        [data], max_line_size=line, max_fields=fields, max_field_size=field_size, max_body_size=16
    )


# --- the writer's output re-parses to what was written -----------------------------------

TOKEN_RE = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# Fields the writer owns or treats specially; the app-side strategy avoids them.
# The fields the writer owns: framing, date, server and every hop-by-hop field (it drops
# an app's Upgrade, TE, Trailer and Proxy-Connection; a 2-character "TE" was generated).
SPECIAL = {
    "content-length", "transfer-encoding", "connection", "keep-alive", "date", "server",
    "upgrade", "te", "trailer", "proxy-connection",
}  # fmt: skip
header_names = st.from_regex(r"[A-Za-z][A-Za-z0-9!#$%&'*+\-.^_`|~]{0,15}", fullmatch=True).filter(
    lambda name: name.lower() not in SPECIAL
)
value_chars = st.characters(min_codepoint=0x20, max_codepoint=0xFF, blacklist_characters="\x7f")
header_values = st.text(value_chars, max_size=30).map(lambda v: v.strip(" \t"))
STATUSES = [
    (200, "OK"),
    (201, "Created"),
    (204, "No Content"),
    (206, "Partial Content"),
    (301, "Moved Permanently"),
    (304, "Not Modified"),
    (404, "Not Found"),
    (418, "I'm a teapot"),
    (500, "Internal Server Error"),
    (503, ""),
]


def dechunk(data: bytes) -> bytes:
    """Strict chunked decoding of a whole body; the input must end exactly at its end."""
    body = []
    pos = 0
    while True:
        eol = data.index(b"\r\n", pos)
        size_text = data[pos:eol]
        assert re.fullmatch(rb"[0-9a-f]+", size_text), size_text
        size = int(size_text, 16)
        pos = eol + 2
        if size == 0:
            assert data[pos:] == b"\r\n", "bytes after the last chunk"
            return b"".join(body)
        assert size > 0
        body.append(data[pos : pos + size])
        assert data[pos + size : pos + size + 2] == b"\r\n"
        pos += size + 2


def parse_response(data: bytes, method: str) -> tuple[int, bytes, list[tuple[bytes, bytes]], bytes]:
    """A small strict client-side parser: (code, reason, headers, body)."""
    end = data.index(b"\r\n\r\n")
    status_line, *field_lines = data[:end].split(b"\r\n")
    version, code_text, reason = status_line.split(b" ", 2)
    assert version == b"HTTP/1.1"
    code = int(code_text)
    headers = []
    for line in field_lines:
        name, colon, value = line.partition(b": ")
        assert colon and TOKEN_RE.fullmatch(name), line
        assert b"\r" not in value and b"\n" not in value and b"\x00" not in value
        headers.append((name, value))
    names = [name.lower() for name, _ in headers]
    assert names.count(b"content-length") <= 1
    assert not (b"content-length" in names and b"transfer-encoding" in names)
    rest = data[end + 4 :]
    if method == "HEAD" or code in (204, 304):
        assert rest == b""
        assert b"transfer-encoding" not in names
        return code, reason, headers, b""
    if b"transfer-encoding" in names:
        assert dict(headers)[b"Transfer-Encoding"] == b"chunked"
        return code, reason, headers, dechunk(rest)
    if b"content-length" in names:
        length = int(next(v for n, v in headers if n.lower() == b"content-length"))
        assert len(rest) == length
        return code, reason, headers, rest
    # Close-delimited: the server must say so.
    assert (b"Connection", b"close") in headers
    return code, reason, headers, rest


@settings(max_examples=250, deadline=None)
@given(
    method=st.sampled_from(["GET", "HEAD", "POST"]),
    version=st.sampled_from(["1.0", "1.1"]),
    keep=st.booleans(),
    status=st.sampled_from(STATUSES),
    headers=st.lists(st.tuples(header_names, header_values), max_size=6),
    pieces=st.lists(st.binary(max_size=40), max_size=5),
    framing=st.sampled_from(["app-length", "hint", "none", "whole"]),
    server=st.sampled_from([b"", b"forkhorn"]),
)
def test_writer_output_reparses_to_what_was_written(
    method: str,
    version: str,
    keep: bool,
    status: tuple[int, str],
    headers: list[tuple[str, str]],
    pieces: list[bytes],
    framing: str,
    server: bytes,
) -> None:
    conn = ServerConnection(server_header=server)
    host = "Host: a\r\n" if version == "1.1" else ""
    connection = "Connection: keep-alive\r\n" if keep else "Connection: close\r\n"
    conn.receive_data(f"{method} / HTTP/{version}\r\n{host}{connection}\r\n".encode())
    assert isinstance(conn.next_event(), Request)
    assert isinstance(conn.next_event(), EndOfMessage)

    code, reason = status
    body = b"".join(pieces)
    app_headers = list(headers)
    hint = None
    if framing == "app-length":
        app_headers.append(("Content-Length", str(len(body))))
    elif framing == "hint":
        hint = len(body)
    date = b"Sun, 06 Nov 1994 08:49:37 GMT"
    if framing == "whole":
        out = conn.send_whole(f"{code} {reason}", app_headers, date, body)
    else:
        out = conn.send_response(f"{code} {reason}", app_headers, date=date, body_length=hint)
        for piece in pieces:
            out += conn.send_data(piece)
        out += conn.send_end()

    got_code, got_reason, got_headers, got_body = parse_response(out, method)
    assert got_code == code
    assert got_reason == reason.encode("latin-1")
    expected = [(n.encode("latin-1"), v.encode("latin-1")) for n, v in app_headers]
    if code == 204:
        expected = [(n, v) for n, v in expected if n.lower() != b"content-length"]
    assert got_headers[: len(expected)] == expected
    added = {name.lower() for name, _ in got_headers[len(expected) :]}
    assert added <= {b"content-length", b"transfer-encoding", b"connection", b"date", b"server"}
    assert (b"server" in added) == bool(server)
    no_body = method == "HEAD" or code in (204, 304)
    assert got_body == (b"" if no_body else body)
    if not keep or (version == "1.0" and framing == "none" and not no_body):
        assert not conn.keep_alive
