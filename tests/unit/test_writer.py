"""The response writer, byte for byte: status line, headers, framing, keep-alive.

Every test parses a real request first (the writer answers "the current request"), then
compares the exact bytes returned by ``send_response`` / ``send_data`` / ``send_end``.
Header order in the head: the app's headers as given, then the framing header the server
adds (Content-Length from ``body_length`` or Transfer-Encoding), then Connection, Date and
Server.
"""

from __future__ import annotations

import pytest

from forkhorn.http import (
    NEED_DATA,
    PAUSED,
    Data,
    EndOfMessage,
    InvalidResponseError,
    ProtocolError,
    Request,
    ServerConnection,
)

DATE = b"Sun, 06 Nov 1994 08:49:37 GMT"
GET11 = b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n"
GET10 = b"GET / HTTP/1.0\r\n\r\n"
GET10_KEEP = b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"
HEAD11 = b"HEAD / HTTP/1.1\r\nHost: example.com\r\n\r\n"
CLOSE11 = b"GET / HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n\r\n"


def conn_for(raw: bytes, **kwargs: object) -> ServerConnection:
    """A connection whose current request is ``raw`` (read to its end)."""
    conn = ServerConnection(**kwargs)  # type: ignore[arg-type]
    conn.receive_data(raw)
    event = conn.next_event()
    assert isinstance(event, Request)
    while not isinstance(event, EndOfMessage):
        event = conn.next_event()
        assert event is not NEED_DATA
    return conn


def test_status_line_app_headers_date_server() -> None:
    conn = conn_for(GET11)
    head = conn.send_response(
        "200 OK", [("Content-Type", "text/plain"), ("Content-Length", "5")], date=DATE
    )
    assert head == (
        b"HTTP/1.1 200 OK\r\n"
        b"Content-Type: text/plain\r\n"
        b"Content-Length: 5\r\n"
        b"Date: Sun, 06 Nov 1994 08:49:37 GMT\r\n"
        b"Server: forkhorn\r\n"
        b"\r\n"
    )
    assert conn.send_data(b"hello") == b"hello"
    assert conn.send_end() == b""
    assert conn.keep_alive


def test_no_date_and_server_off() -> None:
    conn = conn_for(GET11, server_header=b"")
    head = conn.send_response("404 Not Found", [("Content-Length", "0")])
    assert head == b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"


def test_custom_server_header() -> None:
    conn = conn_for(GET11, server_header=b"edge/1.0")
    head = conn.send_response("204 No Content", [], date=DATE)
    assert head == (
        b"HTTP/1.1 204 No Content\r\nDate: Sun, 06 Nov 1994 08:49:37 GMT\r\n"
        b"Server: edge/1.0\r\n\r\n"
    )


def test_app_date_and_server_are_not_doubled() -> None:
    conn = conn_for(GET11)
    head = conn.send_response(
        "200 OK",
        [("Date", "Mon, 07 Nov 1994 00:00:00 GMT"), ("Server", "app"), ("Content-Length", "0")],
        date=DATE,
    )
    assert head == (
        b"HTTP/1.1 200 OK\r\nDate: Mon, 07 Nov 1994 00:00:00 GMT\r\nServer: app\r\n"
        b"Content-Length: 0\r\n\r\n"
    )


def test_reason_phrase_kept_verbatim() -> None:
    conn = conn_for(GET11, server_header=b"")
    head = conn.send_response("418 I'm a teapot (RFC 2324)", [("Content-Length", "0")])
    assert head.startswith(b"HTTP/1.1 418 I'm a teapot (RFC 2324)\r\n")


def test_value_whitespace_trimmed_and_obs_text_latin1() -> None:
    conn = conn_for(GET11, server_header=b"")
    head = conn.send_response("200 OK", [("X-Name", "  caf\u00e9\t"), ("Content-Length", "0")])
    assert head == b"HTTP/1.1 200 OK\r\nX-Name: caf\xe9\r\nContent-Length: 0\r\n\r\n"


def test_body_length_hint_adds_content_length() -> None:
    conn = conn_for(GET11, server_header=b"")
    head = conn.send_response("200 OK", [("Content-Type", "text/plain")], body_length=3)
    assert head == (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\n\r\n")
    assert conn.send_data(b"abc") == b"abc"
    assert conn.send_end() == b""
    assert conn.keep_alive


def test_app_content_length_wins_over_hint() -> None:
    conn = conn_for(GET11, server_header=b"")
    head = conn.send_response("200 OK", [("Content-Length", "2")], body_length=3)
    assert head == b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n"


def test_chunked_on_http11_without_length() -> None:
    conn = conn_for(GET11, server_header=b"")
    head = conn.send_response("200 OK", [("Content-Type", "text/plain")])
    assert head == (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    assert conn.send_data(b"hello") == b"5\r\nhello\r\n"
    assert conn.send_data(b"x" * 26) == b"1a\r\n" + b"x" * 26 + b"\r\n"
    assert conn.send_data(b"") == b""  # an empty chunk would end the body
    assert conn.send_end() == b"0\r\n\r\n"
    assert conn.keep_alive


def test_app_transfer_encoding_is_dropped() -> None:
    conn = conn_for(GET11, server_header=b"")
    head = conn.send_response("200 OK", [("Transfer-Encoding", "chunked"), ("Keep-Alive", "5")])
    assert head == b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"


def test_close_delimited_on_http10() -> None:
    conn = conn_for(GET10, server_header=b"")
    head = conn.send_response("200 OK", [("Content-Type", "text/plain")])
    assert head == b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n"
    assert conn.send_data(b"raw body") == b"raw body"
    assert conn.send_end() == b""
    assert not conn.keep_alive


def test_http10_keep_alive_with_length() -> None:
    conn = conn_for(GET10_KEEP, server_header=b"")
    head = conn.send_response("200 OK", [("Content-Length", "2")])
    assert head == b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\n"
    conn.send_data(b"ok")
    conn.send_end()
    assert conn.keep_alive


def test_http10_keep_alive_without_length_closes() -> None:
    conn = conn_for(GET10_KEEP, server_header=b"")
    head = conn.send_response("200 OK", [])
    assert head == b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n"
    conn.send_end()
    assert not conn.keep_alive


def test_http10_default_close_with_length() -> None:
    conn = conn_for(GET10, server_header=b"")
    head = conn.send_response("200 OK", [("Content-Length", "0")])
    assert head == b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    conn.send_end()
    assert not conn.keep_alive


def test_head_keeps_headers_but_sends_no_body() -> None:
    conn = conn_for(HEAD11, server_header=b"")
    head = conn.send_response("200 OK", [("Content-Type", "text/html"), ("Content-Length", "5")])
    assert head == b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: 5\r\n\r\n"
    assert conn.send_data(b"hello") == b""
    assert conn.send_end() == b""
    assert conn.keep_alive


def test_head_with_length_hint() -> None:
    conn = conn_for(HEAD11, server_header=b"")
    head = conn.send_response("200 OK", [], body_length=42)
    assert head == b"HTTP/1.1 200 OK\r\nContent-Length: 42\r\n\r\n"
    assert conn.send_data(b"x" * 42) == b""


def test_head_without_length_is_not_chunked() -> None:
    conn = conn_for(HEAD11, server_header=b"")
    head = conn.send_response("200 OK", [])
    assert head == b"HTTP/1.1 200 OK\r\n\r\n"
    assert conn.send_data(b"x") == b""
    assert conn.send_end() == b""
    assert conn.keep_alive


def test_204_has_no_body_and_no_content_length() -> None:
    conn = conn_for(GET11, server_header=b"")
    head = conn.send_response("204 No Content", [("Content-Length", "5")])
    assert head == b"HTTP/1.1 204 No Content\r\n\r\n"
    assert conn.send_data(b"hello") == b""
    assert conn.send_end() == b""
    assert conn.keep_alive


def test_304_has_no_body_and_is_not_chunked() -> None:
    conn = conn_for(GET11, server_header=b"")
    head = conn.send_response("304 Not Modified", [("ETag", '"abc"')])
    assert head == b'HTTP/1.1 304 Not Modified\r\nETag: "abc"\r\n\r\n'
    assert conn.send_data(b"hello") == b""
    assert conn.send_end() == b""
    assert conn.keep_alive


@pytest.mark.parametrize("status", ["100 Continue", "101 Switching Protocols", "103 Early Hints"])
def test_interim_status_from_app_is_refused(status: str) -> None:
    # forkhorn's choice: WSGI cannot send an interim and then a final response, so a 1xx
    # from the app is an application error (answered 500 by the request cycle).
    conn = conn_for(GET11)
    with pytest.raises(InvalidResponseError):
        conn.send_response(status, [])


def test_request_connection_close() -> None:
    conn = conn_for(CLOSE11, server_header=b"")
    head = conn.send_response("200 OK", [("Content-Length", "0")])
    assert head == b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    conn.send_end()
    assert not conn.keep_alive


def test_server_side_close_after_response() -> None:
    conn = conn_for(GET11, server_header=b"")
    conn.close_after_response = True
    head = conn.send_response("200 OK", [("Content-Length", "0")])
    assert head == b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    conn.send_end()
    assert not conn.keep_alive


def test_app_connection_close_is_honoured_once() -> None:
    conn = conn_for(GET11, server_header=b"")
    head = conn.send_response("200 OK", [("Connection", "Close"), ("Content-Length", "0")])
    assert head == b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    conn.send_end()
    assert not conn.keep_alive


def test_app_connection_keep_alive_is_dropped() -> None:
    conn = conn_for(GET11, server_header=b"")
    head = conn.send_response("200 OK", [("Connection", "keep-alive"), ("Content-Length", "0")])
    assert head == b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"


def test_a_426_keeps_its_upgrade_with_the_upgrade_option() -> None:
    """RFC 9110 §15.5.22: a 426 MUST send Upgrade, and §7.8 Upgrade comes with Connection:
    upgrade. The server's own Connection line adds to it. Elsewhere Upgrade is dropped."""
    headers = [("Upgrade", "TLS/1.3"), ("Connection", "Upgrade"), ("Content-Length", "0")]
    conn = conn_for(GET11, server_header=b"")
    head = conn.send_response("426 Upgrade Required", headers)
    assert head == (
        b"HTTP/1.1 426 Upgrade Required\r\nUpgrade: TLS/1.3\r\nContent-Length: 0\r\n"
        b"Connection: upgrade\r\n\r\n"
    )
    conn = conn_for(CLOSE11, server_header=b"")
    head = conn.send_response("426 Upgrade Required", headers)
    assert head.endswith(b"Connection: upgrade\r\nConnection: close\r\n\r\n")
    conn = conn_for(GET11, server_header=b"")
    head = conn.send_response("200 OK", headers)
    assert head == b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"


def test_short_body_closes_the_connection() -> None:
    conn = conn_for(GET11, server_header=b"")
    conn.send_response("200 OK", [("Content-Length", "10")])
    assert conn.send_data(b"12345") == b"12345"
    assert conn.send_end() == b""
    assert not conn.keep_alive


def test_long_body_is_cut_and_the_connection_goes_on() -> None:
    """Exactly the declared bytes go out, so the framing holds (as in gunicorn); the
    mismatch is there for the worker to log."""
    conn = conn_for(GET11, server_header=b"")
    conn.send_response("200 OK", [("Content-Length", "3")])
    assert conn.send_data(b"abcdef") == b"abc"
    assert conn.send_data(b"more") == b""
    conn.send_end()
    assert conn.keep_alive
    assert conn.body_mismatch == "the app's body went past its Content-Length, 3, and was cut there"


def test_unread_chunked_body_closes_the_connection() -> None:
    conn = ServerConnection(server_header=b"")
    conn.receive_data(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel")
    assert isinstance(conn.next_event(), Request)
    head = conn.send_response("413 Content Too Large", [("Content-Length", "0")])
    assert head.endswith(b"Connection: close\r\n\r\n")
    conn.send_end()
    assert not conn.keep_alive


def test_keep_alive_cycle_then_next_pipelined_request() -> None:
    conn = ServerConnection(server_header=b"")
    conn.receive_data(GET11 + b"GET /next HTTP/1.1\r\nHost: example.com\r\n\r\n")
    assert isinstance(conn.next_event(), Request)
    assert isinstance(conn.next_event(), EndOfMessage)
    assert conn.next_event() is PAUSED
    conn.send_response("200 OK", [("Content-Length", "0")])
    conn.send_end()
    assert conn.keep_alive
    assert conn.start_next_cycle() is True  # the pipelined request is waiting
    event = conn.next_event()
    assert isinstance(event, Request) and event.target == b"/next"
    assert isinstance(conn.next_event(), EndOfMessage)
    conn.send_response("200 OK", [("Content-Length", "0")])
    conn.send_end()
    assert conn.start_next_cycle() is False  # nothing left in the buffer


def test_head_cache_is_keyed_by_status_and_headers() -> None:
    # Same headers, another status: each response gets its own status line, and the
    # cached entry of one never leaks into the other.
    for status in ("200 OK", "404 Not Found", "200 OK"):
        conn = ServerConnection(server_header=b"")
        conn.receive_data(GET11)
        conn.next_event()
        head = conn.send_response(status, [("Content-Length", "0")])
        assert head.startswith(b"HTTP/1.1 " + status.encode() + b"\r\n")


def test_headers_as_lists_are_validated_every_time() -> None:
    # Unhashable pairs cannot be cached: a bad one must still be refused on later calls.
    for _ in range(2):
        conn = ServerConnection(server_header=b"")
        conn.receive_data(GET11)
        conn.next_event()
        assert conn.send_response("200 OK", [["X-A", "1"]]).startswith(  # type: ignore[list-item]
            b"HTTP/1.1 200 OK\r\nX-A: 1\r\n"
        )
        conn = ServerConnection(server_header=b"")
        conn.receive_data(GET11)
        conn.next_event()
        with pytest.raises(InvalidResponseError):
            conn.send_response("200 OK", [["X-A", "1\r\nX-B: 2"]])  # type: ignore[list-item]


def test_send_continue_once_and_only_when_expected() -> None:
    conn = ServerConnection()
    conn.receive_data(
        b"POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n"
    )
    event = conn.next_event()
    assert isinstance(event, Request) and event.expect_continue
    assert conn.send_continue() == b"HTTP/1.1 100 Continue\r\n\r\n"
    assert conn.send_continue() == b""
    conn.receive_data(b"ok")
    event = conn.next_event()
    assert isinstance(event, Data) and event.data == b"ok"

    plain = conn_for(GET11)
    assert plain.send_continue() == b""


def test_expect_continue_without_content_sends_no_100_and_keeps_the_connection() -> None:
    """Content-Length: 0 with Expect: 100-continue: nothing to wait for, so no 100, and an
    app that never reads the (empty) body does not cost the connection."""
    conn = ServerConnection()
    conn.receive_data(
        b"POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 0\r\n\r\n"
    )
    assert isinstance(conn.next_event(), Request)
    assert conn.send_continue() == b""
    head = conn.send_response("200 OK", [("Content-Length", "0")])
    assert b"Connection: close" not in head
    assert conn.keep_alive


def test_response_for_protocol_error_path_never_raises() -> None:
    """A worker answers a ProtocolError with its status; the parser must stay raising."""
    conn = ServerConnection()
    conn.receive_data(b"GET / HTTP/1.1\r\n\r\n")
    with pytest.raises(ProtocolError) as info:
        conn.next_event()
    assert info.value.status == 400
    assert not conn.keep_alive


# --- injection attempts: the app can never split the response ---------------------------

BAD_HEADERS = [
    pytest.param(("X-A", "v\r\nSet-Cookie: evil=1"), id="crlf-in-value"),
    pytest.param(("X-A", "v\nSet-Cookie: evil=1"), id="lf-in-value"),
    pytest.param(("X-A", "v\rSet-Cookie: evil=1"), id="cr-in-value"),
    pytest.param(("X-A", "v\x00w"), id="nul-in-value"),
    pytest.param(("X-A", "v\x7fw"), id="del-in-value"),
    pytest.param(("X-A", "v\x0bw"), id="vt-in-value"),
    pytest.param(("X-A", "caf\u20ac"), id="non-latin1-value"),
    pytest.param(("X A", "v"), id="space-in-name"),
    pytest.param(("X-A:", "v"), id="colon-in-name"),
    pytest.param(("X-A\r\nSet-Cookie", "v"), id="crlf-in-name"),
    pytest.param(("", "v"), id="empty-name"),
    pytest.param(("X-\u00e9", "v"), id="non-token-name"),
    pytest.param(("X-A\x00", "v"), id="nul-in-name"),
    pytest.param((b"X-A", "v"), id="bytes-name"),
    pytest.param(("X-A", b"v"), id="bytes-value"),
    pytest.param(("Content-Length", "abc"), id="content-length-word"),
    pytest.param(("Content-Length", "-1"), id="content-length-negative"),
    pytest.param(("Content-Length", "1 2"), id="content-length-space"),
    pytest.param(("Content-Length", "\u0661"), id="content-length-unicode-digit"),
]


@pytest.mark.parametrize("header", BAD_HEADERS)
def test_bad_header_from_app_is_refused(header: tuple[object, object]) -> None:
    conn = conn_for(GET11)
    with pytest.raises(InvalidResponseError):
        conn.send_response("200 OK", [header])  # type: ignore[list-item]


def test_conflicting_content_lengths_from_app_are_refused() -> None:
    conn = conn_for(GET11)
    with pytest.raises(InvalidResponseError):
        conn.send_response("200 OK", [("Content-Length", "1"), ("Content-Length", "2")])


@pytest.mark.parametrize(
    ("status", "line"),
    [
        ("200", b"HTTP/1.1 200 OK\r\n"),
        ("404", b"HTTP/1.1 404 Not Found\r\n"),
        ("299", b"HTTP/1.1 299 \r\n"),
    ],
)
def test_a_status_without_its_reason_phrase_gets_the_usual_one(status: str, line: bytes) -> None:
    """PEP 3333 wants a reason phrase; gunicorn sends "200" as it is (with no space, which
    RFC 9112 requires). Sent with the usual phrase, or an empty one."""
    conn = conn_for(GET11)
    assert conn.send_response(status, [("Content-Length", "0")], b"x").startswith(line)


@pytest.mark.parametrize(
    "status",
    [
        "20",
        "20 OK",
        "2000 OK",
        "abc OK",
        "200 OK\r\nX-Evil: 1",
        "200 OK\n",
        "200 OK\x00",
        "200\tOK",
        "200 caf\u20ac",
        " 200 OK",
        "099 Low",
    ],
)
def test_bad_status_from_app_is_refused(status: str) -> None:
    conn = conn_for(GET11)
    with pytest.raises(InvalidResponseError):
        conn.send_response(status, [])


def test_invalid_response_error_is_not_a_protocol_error() -> None:
    assert not issubclass(InvalidResponseError, ProtocolError)


# --- send_whole: the one-call path for a body known up front -----------------------------


@pytest.mark.parametrize(
    ("raw", "status", "headers"),
    [
        pytest.param(GET11, "200 OK", [("Content-Type", "text/plain")], id="get11-no-length"),
        pytest.param(GET11, "200 OK", [("Content-Length", "5")], id="get11-app-length"),
        pytest.param(GET10, "200 OK", [], id="get10"),
        pytest.param(GET10_KEEP, "200 OK", [], id="get10-keep-alive"),
        pytest.param(HEAD11, "200 OK", [], id="head"),
        pytest.param(GET11, "204 No Content", [], id="204"),
        pytest.param(GET11, "304 Not Modified", [("ETag", '"x"')], id="304"),
        pytest.param(CLOSE11, "404 Not Found", [], id="close"),
    ],
)
def test_send_whole_equals_the_three_calls(
    raw: bytes, status: str, headers: list[tuple[str, str]]
) -> None:
    body = b"hello"
    one = conn_for(raw)
    whole = one.send_whole(status, headers, DATE, body)
    three = conn_for(raw)
    parts = three.send_response(status, headers, DATE, body_length=len(body))
    parts += three.send_data(body) + three.send_end()
    assert whole == parts
    assert one.keep_alive == three.keep_alive


def test_send_whole_exact_bytes() -> None:
    conn = conn_for(GET11, server_header=b"")
    out = conn.send_whole("200 OK", [("Content-Type", "text/plain")], b"", b"hi")
    assert out == b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nhi"
    assert conn.keep_alive


@pytest.mark.parametrize(
    ("declared", "kept", "keeps"), [("3", b"abc", True), ("9", b"abcdef", False)]
)
def test_send_whole_with_wrong_app_length(declared: str, kept: bytes, keeps: bool) -> None:
    """Too long: cut at the declared length, the framing holds and the connection goes
    on (as in gunicorn). Too short: only the close can end the response."""
    conn = conn_for(GET11, server_header=b"")
    out = conn.send_whole("200 OK", [("Content-Length", declared)], b"", b"abcdef")
    assert out == b"HTTP/1.1 200 OK\r\nContent-Length: " + declared.encode() + b"\r\n\r\n" + kept
    assert conn.keep_alive is keeps
    assert conn.body_mismatch
