"""The fast worker's protocol: the requests of a turn are served oldest connection first;
complete responses wait for the end of the loop's turn, with bounds; a stream is never
held; a client that does not read its responses is not read. A file body goes through
``os.sendfile``, or is copied with ``--no-sendfile``.

A real FastWorker and HttpProtocol, built as a worker process builds them, with a
transport that records what is written and a loop stand-in whose ``turn()`` runs what
was scheduled with ``call_soon``. Nothing is forked, no socket carries data.
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from forkhorn.arbiter.listeners import Listener
from forkhorn.arbiter.scoreboard import Scoreboard
from forkhorn.config import load_config
from forkhorn.logs import Logger
from forkhorn.workers import fast
from forkhorn.workers.fast import FastWorker, HttpProtocol

GET = b"GET / HTTP/1.1\r\nHost: t\r\n\r\n"


class Transport(asyncio.Transport):
    """Records writes and read pauses; can report a full buffer like asyncio does."""

    def __init__(self) -> None:
        super().__init__({"peername": ("127.0.0.1", 50000)})
        self.writes: list[bytes] = []
        self.reading = True
        self.protocol: HttpProtocol | None = None
        self.pause_after_write = False

    def write(self, data: bytes) -> None:  # type: ignore[override]
        self.writes.append(data)
        if self.pause_after_write and self.protocol is not None:
            self.protocol.pause_writing()  # over the high-water mark

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass  # the protocol sets its high-water mark; nothing is buffered here

    def is_closing(self) -> bool:
        return False

    def get_write_buffer_size(self) -> int:
        return 0  # nothing is buffered here (the send timeout's progress check asks)


class Loop:
    def __init__(self) -> None:
        self.ready: list[tuple[Callable[..., Any], tuple[Any, ...]]] = []

    def call_soon(self, callback: Callable[..., Any], *args: Any) -> None:
        self.ready.append((callback, args))

    def turn(self) -> None:
        """Run what was scheduled, then what that scheduled (serve_ready, then flush)."""
        while self.ready:
            ready, self.ready = self.ready, []
            for callback, args in ready:
                callback(*args)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The fast worker's clock, moved by hand: ``clock[0] += seconds``."""
    now = [1000.0]
    monkeypatch.setattr(fast, "_monotonic", lambda: now[0])
    return now


@pytest.fixture
def worker(clock: list[float]) -> Iterator[FastWorker]:
    # The clock stands still unless a test moves it: on a loaded host two calls a test
    # makes back to back can be further apart than FLUSH_AFTER (1 ms), which flushed a
    # batch early and failed a test about batching.
    cfg = load_config(["examples.hello:app"], {})
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    worker = FastWorker(
        1, os.getppid(), [Listener(listener)], "examples.hello:app", 30, cfg, Logger(cfg),
        Scoreboard(1).allocate(),
    )  # fmt: skip
    worker.load_wsgi()
    worker.prepare()
    worker.loop = Loop()  # type: ignore[assignment]
    yield worker
    listener.close()


def connect(worker: FastWorker) -> tuple[HttpProtocol, Transport]:
    protocol = HttpProtocol(worker)
    transport = Transport()
    transport.protocol = protocol
    protocol.connection_made(transport)  # type: ignore[arg-type]
    return protocol, transport


def recording_app(paths: list[str]) -> Callable[..., list[bytes]]:
    """A WSGI app that answers "ok" and appends each request's path to ``paths``."""

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        paths.append(environ["PATH_INFO"])
        start_response("200 OK", [("Content-Length", "2")])
        return [b"ok"]

    return app


def turn(worker: FastWorker) -> None:
    worker.loop.turn()  # type: ignore[attr-defined]


def test_responses_of_one_turn_are_written_at_its_end(worker: FastWorker) -> None:
    (a, ta), (b, tb) = connect(worker), connect(worker)
    a.data_received(GET)
    b.data_received(GET)
    assert ta.writes == [] and tb.writes == []
    turn(worker)
    assert len(ta.writes) == len(tb.writes) == 1
    assert ta.writes[0].startswith(b"HTTP/1.1 200 OK\r\n")
    assert ta.writes[0].endswith(b"Hello, World!")


def test_a_batch_older_than_flush_after_goes_out_before_the_next_app_call(
    worker: FastWorker, clock: list[float]
) -> None:
    (a, ta), (b, _) = connect(worker), connect(worker)
    seen_by_app: list[int] = []

    def slow_app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        seen_by_app.append(len(ta.writes))  # what connection a had received by now
        clock[0] += 0.002  # this call takes 2 ms, more than FLUSH_AFTER
        start_response("200 OK", [("Content-Length", "2")])
        return [b"ok"]

    worker.wsgi = slow_app
    a.data_received(GET)
    b.data_received(GET)
    turn(worker)  # same turn: a's response is 2 ms old when b's app starts
    assert seen_by_app == [0, 1]


def test_a_stream_is_written_as_it_is_produced(worker: FastWorker) -> None:
    protocol, transport = connect(worker)
    written_before_second_chunk: list[bytes] = []

    def streaming_app(environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        yield b"first"
        written_before_second_chunk.extend(transport.writes)
        yield b"second"

    worker.wsgi = streaming_app
    protocol.data_received(GET)
    turn(worker)
    assert b"".join(written_before_second_chunk).endswith(b"5\r\nfirst\r\n")
    assert b"".join(transport.writes).endswith(b"6\r\nsecond\r\n0\r\n\r\n")


def test_a_client_that_does_not_read_is_not_read(worker: FastWorker) -> None:
    protocol, transport = connect(worker)
    calls: list[str] = []
    worker.wsgi = recording_app(calls)
    protocol.pause_writing()  # its earlier responses fill the transport's buffer
    protocol.data_received(GET)
    assert not transport.reading and calls == [] and transport.writes == []
    protocol.resume_writing()  # it read them: the request kept meanwhile is served
    assert transport.reading and calls == ["/"]
    turn(worker)
    assert len(transport.writes) == 1


def test_pipelined_requests_wait_while_the_client_does_not_read(worker: FastWorker) -> None:
    protocol, transport = connect(worker)
    calls: list[str] = []
    size = fast.FLUSH_BYTES * 3 // 4  # two responses pass FLUSH_BYTES: written at once

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        calls.append(environ["PATH_INFO"])
        start_response("200 OK", [("Content-Length", str(size))])
        return [b"x" * size]

    worker.wsgi = app
    transport.pause_after_write = True
    protocol.data_received(
        b"GET /1 HTTP/1.1\r\nHost: t\r\n\r\n"
        b"GET /2 HTTP/1.1\r\nHost: t\r\n\r\n"
        b"GET /3 HTTP/1.1\r\nHost: t\r\n\r\n"
    )
    turn(worker)
    # The second response pushed the batch over FLUSH_BYTES; writing it filled the
    # transport, so the third request waits, and the connection is no longer read.
    assert calls == ["/1", "/2"]
    assert len(transport.writes) == 2 and not transport.reading
    transport.pause_after_write = False
    protocol.resume_writing()
    assert calls == ["/1", "/2", "/3"] and transport.reading
    turn(worker)
    assert len(transport.writes) == 3


def test_the_connection_waiting_longest_is_served_first(
    worker: FastWorker, clock: list[float]
) -> None:
    # epoll reports still-readable connections in a stable order; served in that order,
    # the ones whose responses went out last keep missing the next poll (serve_ready).
    order: list[str] = []
    worker.wsgi = recording_app(order)
    worker.long_turns = True  # as after a turn whose batch reached FLUSH_AFTER
    a, b, c = connect(worker)[0], connect(worker)[0], connect(worker)[0]
    for name, protocol in (("/c", c), ("/b", b), ("/a", a)):  # c's response ends first
        protocol.data_received(f"GET {name} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
        turn(worker)
        clock[0] += 0.01
        worker.long_turns = True  # a short turn just switched it off
    order.clear()
    for name, protocol in (("/a", a), ("/b", b), ("/c", c)):  # reported in this order
        protocol.data_received(f"GET {name} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
    assert order == []  # nothing is served while the turn's reads go on
    turn(worker)
    assert order == ["/c", "/b", "/a"]


def test_a_connection_read_twice_in_a_turn_is_queued_once(worker: FastWorker) -> None:
    protocol, transport = connect(worker)
    worker.long_turns = True
    protocol.data_received(GET[:10])
    protocol.data_received(GET[10:])
    assert worker.ready == [protocol]
    turn(worker)
    assert len(transport.writes) == 1 and worker.ready == []


def test_a_connection_lost_before_its_turn_is_not_served(worker: FastWorker) -> None:
    calls: list[str] = []
    worker.wsgi = recording_app(calls)
    worker.long_turns = True
    protocol, transport = connect(worker)
    protocol.data_received(GET)
    protocol.connection_lost(None)
    turn(worker)
    assert calls == [] and transport.writes == []


def test_requests_are_ordered_only_while_turns_are_long(
    worker: FastWorker, clock: list[float]
) -> None:
    cost = [0.002]  # each app call: 2 ms, more than FLUSH_AFTER

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        clock[0] += cost[0]
        start_response("200 OK", [("Content-Length", "2")])
        return [b"ok"]

    worker.wsgi = app
    (a, _), (b, _) = connect(worker), connect(worker)
    a.data_received(GET)
    b.data_received(GET)  # served as read: turns were short so far
    assert worker.ready == []
    turn(worker)
    assert worker.long_turns  # b's app call found a's response older than FLUSH_AFTER
    a.data_received(GET)
    assert worker.ready == [a]  # queued for serve_ready
    cost[0] = 0.0001
    turn(worker)
    assert not worker.long_turns  # one short turn: back to serving as read
    a.data_received(GET)
    assert worker.ready == []


def test_a_leftover_end_of_turn_callback_does_not_end_long_turns(
    worker: FastWorker, clock: list[float]
) -> None:
    paths: list[str] = []
    record = recording_app(paths)

    def slow_app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        clock[0] += 0.002  # longer than FLUSH_AFTER
        return record(environ, start_response)

    worker.wsgi = slow_app
    worker.long_turns = True
    (a, ta), (b, tb) = connect(worker), connect(worker)
    a.pause_writing()
    a.data_received(GET)  # kept: its client is not reading
    b.data_received(GET)  # queued for serve_ready
    a.resume_writing()  # served outside serve_ready: schedules its own end of turn
    turn(worker)  # serve_ready (a long turn, it ends it) and then that callback
    assert paths == ["/", "/"] and len(ta.writes) == len(tb.writes) == 1
    assert worker.long_turns


# -- wsgi.file_wrapper bodies ------------------------------------------------------------


def file_body_setup(
    worker: FastWorker, tmp_path: Any, size: int
) -> tuple[HttpProtocol, Transport, int, bytes, socket.socket, socket.socket]:
    """A protocol whose transport reports a real socket (one end of a pair) and holds
    nothing, and an open file of ``size`` bytes."""
    content = os.urandom(size)
    path = tmp_path / "body.bin"
    path.write_bytes(content)
    fd = os.open(path, os.O_RDONLY)
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    protocol, transport = connect(worker)
    transport._extra["socket"] = ours  # type: ignore[attr-defined]
    transport.get_write_buffer_size = lambda: 0  # type: ignore[method-assign]
    return protocol, transport, fd, content, ours, theirs


def test_a_file_body_goes_through_sendfile_when_the_socket_takes_it(
    worker: FastWorker, tmp_path: Any
) -> None:
    protocol, transport, fd, content, ours, theirs = file_body_setup(worker, tmp_path, 100_000)
    try:
        sent, ended = asyncio.run(protocol._send_file_body(transport, fd, 1000, 50_000))
        assert (sent, ended) == (50_000, False)
        assert transport.writes == []  # nothing copied
        theirs.settimeout(5)
        got = b""
        while len(got) < sent:
            got += theirs.recv(65536)
        assert got == content[1000:51000]
    finally:
        os.close(fd)
        ours.close()
        theirs.close()


def test_no_sendfile_copies_the_file_through_the_transport(
    worker: FastWorker, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*args: Any) -> int:
        raise AssertionError("os.sendfile called with --no-sendfile")

    monkeypatch.setattr(fast.os, "sendfile", refuse)
    worker.use_sendfile = False  # what prepare_http sets for --no-sendfile
    size = 3 * fast.FILE_BLOCK + 5
    protocol, transport, fd, content, ours, theirs = file_body_setup(worker, tmp_path, size)
    try:
        assert asyncio.run(protocol._send_file_body(transport, fd, 0, size)) == (size, False)
        assert b"".join(transport.writes) == content
        assert len(transport.writes) == 4  # in FILE_BLOCK pieces
    finally:
        os.close(fd)
        ours.close()
        theirs.close()


def test_no_sendfile_setting_reaches_the_worker() -> None:
    from forkhorn.workers.session import prepare_http

    for argv, expected in ((["--no-sendfile"], False), ([], True)):
        cfg = load_config([*argv, "examples.hello:app"], {})
        listener = socket.socket()
        try:
            listener.bind(("127.0.0.1", 0))
            worker = FastWorker(
                1, os.getppid(), [Listener(listener)], "examples.hello:app", 30, cfg,
                Logger(cfg), Scoreboard(1).allocate(),
            )  # fmt: skip
            prepare_http(worker, multithread=False)
            assert worker.use_sendfile is expected
        finally:
            listener.close()


@pytest.mark.parametrize(
    ("error", "copied"),
    [(BrokenPipeError(errno.EPIPE, "gone"), False), (OSError(errno.ENOSYS, "no"), True)],
    ids=["client-gone", "no-sendfile-here"],
)
def test_a_sendfile_error_stops_or_falls_back_to_copying(
    worker: FastWorker,
    tmp_path: Any,
    monkeypatch: pytest.MonkeyPatch,
    error: OSError,
    copied: bool,
) -> None:
    """A failed connection ends the body (nothing read in vain); a file or socket that
    sendfile does not support is copied instead."""

    def fail(*args: Any) -> int:
        raise error

    monkeypatch.setattr(fast.os, "sendfile", fail)
    size = 2 * fast.FILE_BLOCK
    protocol, transport, fd, content, ours, theirs = file_body_setup(worker, tmp_path, size)
    try:
        sent, ended = asyncio.run(protocol._send_file_body(transport, fd, 0, size))
        assert not ended
        assert (sent, b"".join(transport.writes)) == ((size, content) if copied else (0, b""))
    finally:
        os.close(fd)
        ours.close()
        theirs.close()
