"""``wsgi.input`` of the blocking classes (``InputStream``): a real ``ServerConnection``
fed a request whose body arrives in pieces, as a socket gives it."""

from __future__ import annotations

import random

import pytest

from forkhorn.http import Request, ServerConnection
from forkhorn.wsgi.input import InputStream


def _stream(body: bytes, piece: int, chunked: bool = False) -> InputStream:
    conn = ServerConnection()
    if chunked:
        framing = b"Transfer-Encoding: chunked\r\n"
        wire = b"".join(
            b"%x\r\n%s\r\n" % (len(body[i : i + 1000]), body[i : i + 1000])
            for i in range(0, len(body), 1000)
        )
        wire += b"0\r\n\r\n"
    else:
        framing = b"Content-Length: %d\r\n" % len(body)
        wire = body
    conn.receive_data(b"POST / HTTP/1.1\r\nHost: x\r\n" + framing + b"\r\n")
    assert isinstance(conn.next_event(), Request)
    pieces = [wire[i : i + piece] for i in range(0, len(wire), piece)]
    pieces.reverse()

    def recv(size: int) -> bytes:
        return pieces.pop() if pieces else b""

    return InputStream(conn, recv, lambda data: None)


@pytest.mark.parametrize("chunked", [False, True])
@pytest.mark.parametrize("piece", [1, 7, 1000, 65536])
def test_reads_of_every_kind_give_the_body_back_exactly(piece: int, chunked: bool) -> None:
    rng = random.Random(piece)
    lines = [b"x" * rng.randrange(0, 3000) + b"\n" for _ in range(40)]
    body = b"".join(lines) + b"no newline at the end"
    if piece == 1 and chunked:
        body = body[:5000]
    stream = _stream(body, piece, chunked)
    got: list[bytes] = []
    while True:
        kind = rng.randrange(3)
        if kind == 0:
            part = stream.read(rng.randrange(1, 5000))
        elif kind == 1:
            part = stream.readline()
            assert part.endswith(b"\n") or b"\n" not in part
        else:
            size = rng.randrange(1, 200)
            part = stream.readline(size)
            assert len(part) <= size and b"\n" not in part[:-1]
        if not part:
            break
        got.append(part)
    assert b"".join(got) == body
    assert stream.read() == b"" and stream.readline() == b""
    assert _stream(body, piece, chunked).read() == body
    assert _stream(body, piece, chunked).read(None) == body


def test_a_large_body_read_whole_comes_back_whole() -> None:
    # 32 MiB in 64 KiB pieces: the buffer used to be copied for every piece (quadratic:
    # about 15 s, where a server is expected to take a fraction of a second).
    body = bytes(range(256)) * (32 * 4096)
    assert _stream(body, 65536).read(len(body)) == body
    stream = _stream(body, 65536)
    assert stream.read(10) == body[:10]
    assert stream.read() == body[10:]


def test_iteration_and_readlines_split_at_newlines() -> None:
    body = b"one\ntwo\n\nthree"
    assert list(_stream(body, 3)) == [b"one\n", b"two\n", b"\n", b"three"]
    assert _stream(body, 5).readlines() == [b"one\n", b"two\n", b"\n", b"three"]
    assert _stream(body, 5).readlines(5) == [b"one\n", b"two\n"]


def test_a_green_workers_body_reads_give_the_others_a_turn() -> None:
    # gevent's recv does not switch while data is waiting: the body's reads must, every
    # TURN_BYTES, or a fast upload holds every other connection (and the heartbeat).
    from forkhorn.workers.session import TURN_BYTES, TURN_PIECE, _cooperating_recv

    reads = 0
    turns: list[int] = []  # the read each turn came after

    def recv(size: int) -> bytes:
        nonlocal reads
        reads += 1
        return b"x" * size

    recv_and_cooperate = _cooperating_recv(recv, lambda: turns.append(reads))
    for _ in range(40):
        recv_and_cooperate(65536)
    per_turn = -(-TURN_BYTES // (65536 + TURN_PIECE))  # reads to use up a turn's budget
    assert turns == list(range(per_turn, 41, per_turn))


def test_past_the_body_limit_what_has_arrived_is_still_read() -> None:
    """sync's whole-body limit (a little before the master's timeout): an app that worked
    until past it and then read a body already received got 408; only waiting for more
    is refused."""
    import time

    from forkhorn.http import RequestTimeoutError

    body = b"y" * 5000
    conn = ServerConnection()
    conn.receive_data(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10000\r\n\r\n")
    assert isinstance(conn.next_event(), Request)
    pieces = [body]
    timeouts: list[float | None] = []

    def recv(size: int) -> bytes:
        if pieces:
            return pieces.pop()
        raise TimeoutError  # nothing more: the client stalled

    stream = InputStream(
        conn, recv, lambda data: None, timeouts.append, 30.0, 0.0, 0.0, time.monotonic() - 1
    )
    assert stream.read(5000) == body  # arrived before: taken
    assert timeouts[0] is not None and timeouts[0] <= 0.01  # no waiting past the limit
    with pytest.raises(RequestTimeoutError):
        stream.read()
