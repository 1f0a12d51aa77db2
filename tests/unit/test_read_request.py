"""``session.read_request`` (the green workers' wait for the next request): a keep-alive
wait that times out just as the client's request arrives reads that request instead of
closing the connection (which would reset it); a wait with nothing sent ends quietly."""

from __future__ import annotations

import socket
from typing import Any

from forkhorn.http import NEED_DATA, ProtocolError, Request, ServerConnection
from forkhorn.workers.session import bytes_waiting, read_request


class LateWake:
    """A socket whose first wait times out although the request is already there: the
    race between the keep-alive timer and the request's arrival, made deterministic."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.timeouts = 1

    def settimeout(self, value: float | None) -> None:
        self.sock.settimeout(value)

    def fileno(self) -> int:
        return self.sock.fileno()

    def recv(self, size: int) -> bytes:
        if self.timeouts:
            self.timeouts -= 1
            raise TimeoutError("timed out")
        return self.sock.recv(size)


def test_request_arriving_as_the_keepalive_wait_ends_is_read() -> None:
    ours, theirs = socket.socketpair()
    with ours, theirs:
        theirs.sendall(b"GET /late HTTP/1.1\r\nHost: t\r\n\r\n")
        request: Any = read_request(LateWake(ours), ServerConnection(), 2.0, 5.0)  # type: ignore[arg-type]
        assert isinstance(request, Request) and request.target == b"/late"


def test_idle_keepalive_wait_ends_quietly() -> None:
    ours, theirs = socket.socketpair()
    with ours, theirs:
        assert read_request(LateWake(ours), ServerConnection(), 2.0, 5.0) is None  # type: ignore[arg-type]


def test_bytes_waiting() -> None:
    ours, theirs = socket.socketpair()
    with ours, theirs:
        assert not bytes_waiting(ours.fileno())
        theirs.sendall(b"x")
        assert bytes_waiting(ours.fileno())
        ours.recv(1)
        assert not bytes_waiting(ours.fileno())
    assert not bytes_waiting(ours.fileno())  # closed: -1, no error


def test_a_kept_protocol_error_holds_no_frames() -> None:
    """The error a connection keeps (``conn.error``, and what later calls raise) carries no
    traceback: the one raised gathers the worker's frames, which hold the worker's objects
    for the connection, which hold the connection: a cycle that kept the fast worker's
    dead protocols and their buffers until a full collection."""
    conn = ServerConnection()
    conn.receive_data(b"GET / HTTP/1.1\r\nHost: t\r\nBad Name: x\r\n\r\n")
    raised = []
    for _ in range(2):
        try:
            conn.next_event()
        except ProtocolError as exc:
            assert exc.__traceback__ is not None
            raised.append(exc)
    assert len(raised) == 2 and raised[0] is not raised[1]
    kept = conn.error
    assert kept is not None and kept.__traceback__ is None
    assert conn._error is not None and conn._error.__traceback__ is None
    assert (type(kept), kept.status, kept.detail) == (
        type(raised[0]),
        raised[0].status,
        raised[0].detail,
    )


def test_a_head_that_cannot_start_with_a_method_is_refused_before_it_ends() -> None:
    """A TLS ClientHello (or another protocol) on the plain port: refused at its first
    bytes, not held until header_timeout waiting for a CRLF that may never come."""
    hello = bytes.fromhex("160301020001000200fc0303") + bytes(range(0x20, 0x40))
    conn = ServerConnection()
    conn.receive_data(hello)
    try:
        conn.next_event()
    except ProtocolError as exc:
        assert exc.status == 400 and "method" in exc.detail
    else:
        raise AssertionError("a ClientHello was not refused")
    for partial in (b"GE", b"GET", b"GET /a", b"M-SEARCH * HT"):
        conn = ServerConnection()
        conn.receive_data(partial)
        assert conn.next_event() is NEED_DATA, partial
