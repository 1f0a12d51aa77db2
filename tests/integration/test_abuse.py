"""Hostile clients against the running server, on raw sockets (issues 2 and 6).

The smuggling battery sends one malformed request per case to a real server (each worker
class) and asserts the status RFC 9112 and issue 2 give it, and that the server closes the
connection after answering (``raw_request`` reads until close and fails if it stays open).
Slow clients: a trickling head must not pin a worker, and a head that does not complete
within ``--header-timeout`` is answered 408 and closed.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import select
import shutil
import signal
import socket
import struct
import subprocess
import termios
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from .conftest import ServerFactory
from .server import (
    RawConnection,
    ServerProcess,
    connect,
    get,
    parse_responses,
    raw_request,
    read_until_close,
    read_until_fin,
    server_pool,
)
from .test_contract import keeps_alive, worker_args

H = b"Host: t\r\n"

# (id, request bytes, expected status). Each request is sent alone on a new connection.
SMUGGLING: list[tuple[str, bytes, int]] = [
    # RFC 9112 §6.1: CL with TE is a smuggling attempt; issue 2: 400 and close.
    (
        "cl-and-te",
        b"POST /echo HTTP/1.1\r\n" + H + b"Content-Length: 6\r\nTransfer-Encoding: chunked\r\n"
        b"\r\n0\r\n\r\nG",
        400,
    ),
    (
        "te-and-cl",
        b"POST /echo HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\nContent-Length: 3\r\n"
        b"\r\n0\r\n\r\n",
        400,
    ),
    # Transfer-Encoding obfuscations.
    (
        "te-space-before-colon",
        b"POST /echo HTTP/1.1\r\n" + H + b"Transfer-Encoding : chunked\r\n\r\n0\r\n\r\n",
        400,
    ),
    # RFC 9112 §6.3: chunked not the final coding of a request: 400 and close.
    (
        "te-xchunked",
        b"POST /echo HTTP/1.1\r\n" + H + b"Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n",
        400,
    ),
    # RFC 9112 §6.1 and issue 2: a coding the server does not implement, before chunked: 501.
    (
        "te-unknown-coding",
        b"POST /echo HTTP/1.1\r\n" + H + b"Transfer-Encoding: xgzip, chunked\r\n\r\n0\r\n\r\n",
        501,
    ),
    (
        "te-chunked-not-last",
        b"POST /echo HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n",
        400,
    ),
    (
        "te-chunked-twice",
        b"POST /echo HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        400,
    ),
    (
        "te-vertical-tab",
        b"POST /echo HTTP/1.1\r\n" + H + b"Transfer-Encoding:\x0bchunked\r\n\r\n0\r\n\r\n",
        400,
    ),
    (
        "te-in-http10",
        b"POST /echo HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        400,
    ),
    (
        "te-obs-fold",
        b"POST /echo HTTP/1.1\r\n" + H + b"Transfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n",
        400,
    ),
    # Content-Length must be 1*DIGIT; different duplicates are refused.
    ("cl-plus-sign", b"POST /echo HTTP/1.1\r\n" + H + b"Content-Length: +3\r\n\r\nabc", 400),
    ("cl-hex", b"POST /echo HTTP/1.1\r\n" + H + b"Content-Length: 0x3\r\n\r\nabc", 400),
    (
        "cl-two-values",
        b"POST /echo HTTP/1.1\r\n" + H + b"Content-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
        400,
    ),
    ("cl-list", b"POST /echo HTTP/1.1\r\n" + H + b"Content-Length: 3, 4\r\n\r\nabcd", 400),
    # Bad chunk sizes and chunk framing (found while the app reads: still 400 and close).
    (
        "chunk-size-negative",
        b"POST /echo HTTP/1.1\r\n"
        + H
        + b"Transfer-Encoding: chunked\r\n\r\n-1\r\nabc\r\n0\r\n\r\n",
        400,
    ),
    (
        "chunk-size-0x-prefix",
        b"POST /echo HTTP/1.1\r\n"
        + H
        + b"Transfer-Encoding: chunked\r\n\r\n0x3\r\nabc\r\n0\r\n\r\n",
        400,
    ),
    (
        "chunk-size-overflow",
        b"POST /echo HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n"
        b"fffffffffffffffffffffffffffff3\r\nabc\r\n0\r\n\r\n",
        400,
    ),
    (
        "chunk-size-missing",
        b"POST /echo HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n\r\nabc\r\n0\r\n\r\n",
        400,
    ),
    (
        "chunk-data-too-long",
        b"POST /echo HTTP/1.1\r\n"
        + H
        + b"Transfer-Encoding: chunked\r\n\r\n3\r\nabcdef\r\n0\r\n\r\n",
        400,
    ),
    (
        "chunk-bare-lf",
        b"POST /echo HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n3\nabc\n0\n\n",
        400,
    ),
    # Header injection and malformed fields.
    ("header-bare-cr", b"GET / HTTP/1.1\r\n" + H + b"X-A: a\rX-B: b\r\n\r\n", 400),
    ("header-nul", b"GET / HTTP/1.1\r\n" + H + b"X-A: a\x00b\r\n\r\n", 400),
    ("header-name-space", b"GET / HTTP/1.1\r\n" + H + b"X A: b\r\n\r\n", 400),
    ("header-empty-name", b"GET / HTTP/1.1\r\n" + H + b": b\r\n\r\n", 400),
    ("header-obs-fold", b"GET / HTTP/1.1\r\n" + H + b"X-A: a\r\n b\r\n\r\n", 400),
    ("header-no-colon", b"GET / HTTP/1.1\r\n" + H + b"X-A b\r\n\r\n", 400),
    ("host-missing", b"GET / HTTP/1.1\r\nX-A: b\r\n\r\n", 400),
    ("host-twice", b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
    # Bare LF line endings (issue 2: 400).
    ("bare-lf-head", b"GET / HTTP/1.1\nHost: t\n\n", 400),
    ("bare-lf-request-line", b"GET / HTTP/1.1\nHost: t\r\n\r\n", 400),
    # Request line.
    ("request-line-double-space", b"GET  / HTTP/1.1\r\n" + H + b"\r\n", 400),
    ("request-line-lowercase-version", b"GET / http/1.1\r\n" + H + b"\r\n", 400),
    ("method-not-token", b"G(T / HTTP/1.1\r\n" + H + b"\r\n", 400),
    ("asterisk-with-get", b"GET * HTTP/1.1\r\n" + H + b"\r\n", 400),
    ("request-line-too-long", b"GET /" + b"a" * 5000 + b" HTTP/1.1\r\n" + H + b"\r\n", 414),
    (
        "too-many-headers",
        b"GET / HTTP/1.1\r\n" + H + b"".join(b"X-H%d: v\r\n" % i for i in range(101)) + b"\r\n",
        431,
    ),
    ("header-too-large", b"GET / HTTP/1.1\r\n" + H + b"X-Big: " + b"v" * 9000 + b"\r\n\r\n", 431),
    ("http-2.0", b"GET / HTTP/2.0\r\n" + H + b"\r\n", 505),
    ("http-0.9-style", b"GET / HTTP/0.9\r\n" + H + b"\r\n", 505),
]


@pytest.fixture(scope="module")
def abuse_servers(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Callable[[str], ServerProcess]]:
    with server_pool(tmp_path_factory.mktemp("abuse-logs"), worker_args) as server_for:
        yield server_for


@pytest.fixture
def server(worker_class: str, abuse_servers: Callable[[str], ServerProcess]) -> ServerProcess:
    return abuse_servers(worker_class)


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    ("data", "status"),
    [(data, status) for _, data, status in SMUGGLING],
    ids=[name for name, _, _ in SMUGGLING],
)
def test_malformed_request_is_refused_and_closed(
    server: ServerProcess, worker_class: str, data: bytes, status: int
) -> None:
    answer = raw_request(server.port, data, timeout=10)  # raises if the server keeps it open
    responses = parse_responses(answer)
    assert [r.status for r in responses] == [status], answer[:300]
    assert responses[0].closes, responses[0].headers
    # The smuggled remainder (if any) was never answered as a second request, and the
    # server still serves.
    assert get(server.port, "/").status == 200


@pytest.mark.timeout(30)
def test_underscore_header_does_not_reach_environ(server: ServerProcess, worker_class: str) -> None:
    answer = raw_request(
        server.port,
        b"GET /echo HTTP/1.1\r\n" + H + b"X_Auth: forged\r\nX-Auth: real\r\n"
        b"Connection: close\r\n\r\n",
    )
    (resp,) = parse_responses(answer)
    assert resp.status == 200
    environ = json.loads(resp.body)["environ"]
    assert environ.get("HTTP_X_AUTH") == "real"
    assert not any("forged" in value for value in environ.values()), environ


@pytest.mark.timeout(30)
def test_a_refused_request_closes_cleanly_while_its_client_still_sends(
    server: ServerProcess, worker_class: str
) -> None:
    """The answer, then a FIN (RFC 9112 §9.6): a close with the client's bytes unread
    resets the connection, and a reset can destroy the answer before the client reads
    it. sync and fast reset it; the others closed cleanly."""
    with connect(server.port) as sock:
        with contextlib.suppress(OSError):
            sock.sendall(b"GET / HTTP/1.1\r\n" + H + b"Bad Header: x\r\n\r\n" + b"x" * 1_000_000)
        time.sleep(0.3)  # the answer and the rest of our bytes cross
        answer = read_until_fin(sock)
    assert answer.startswith(b"HTTP/1.1 400 "), answer[:200]
    assert get(server.port, "/").status == 200


@pytest.mark.timeout(30)
def test_megabyte_without_crlf_is_refused(server: ServerProcess, worker_class: str) -> None:
    with connect(server.port) as sock:
        sent = 0
        try:
            for _ in range(16):
                sock.sendall(b"GET /" + b"a" * 65536)
                sent += 65541
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused while we were still sending: what we want
        answer = read_until_close(sock, timeout=10)
    if answer:
        status = int(answer.split(b" ", 2)[1])
        assert status in (400, 414, 431), answer[:200]
    assert get(server.port, "/").status == 200


# -- slow clients ----------------------------------------------------------------------------------


class Trickler:
    """``count`` connections that send a request head one byte at a time, forever."""

    HEAD = b"GET / HTTP/1.1\r\nHost: t\r\n" + b"X-Slow: " + b"s" * 10000

    def __init__(self, port: int, count: int, interval: float = 0.2) -> None:
        self.socks = [connect(port) for _ in range(count)]
        self.interval = interval
        self.stop = threading.Event()
        self.failures: list[str] = []
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        index = 0
        while not self.stop.is_set() and index < len(self.HEAD):
            for sock in self.socks:
                try:
                    sock.sendall(self.HEAD[index : index + 1])
                except OSError as exc:
                    self.failures.append(repr(exc))
            index += 1
            self.stop.wait(self.interval)

    def __enter__(self) -> Trickler:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(5)
        for sock in self.socks:
            sock.close()


@pytest.mark.timeout(60)
def test_slowloris_does_not_pin_the_sync_worker(server_factory: ServerFactory) -> None:
    srv = server_factory("hello:app", "--workers", "1")
    with Trickler(srv.port, 20) as trickler:
        for _ in range(5):
            assert get(srv.port, "/", timeout=10).status == 200
        # The tricklers were not simply dropped to make room: they are all still sending.
        assert not trickler.failures


@pytest.mark.timeout(60)
def test_slowloris_does_not_pin_any_worker_class(
    server_factory: ServerFactory, worker_class: str
) -> None:
    srv = server_factory("hello:app", *worker_args(worker_class), "--workers", "1")
    with Trickler(srv.port, 50):
        for _ in range(5):
            assert get(srv.port, "/", timeout=10).status == 200


@pytest.mark.timeout(60)
def test_a_lone_empty_line_then_silence_is_an_idle_connection(
    server_factory: ServerFactory, worker_class: str
) -> None:
    """The one empty line a server skips before a request line (RFC 9112 §2.2) begins no
    request: silence after it is closed quietly at header_timeout, as a connection that
    sent nothing is (gevent and eventlet answered 408, the other classes closed)."""
    srv = server_factory("hello:app", *worker_args(worker_class), "--header-timeout", "1")
    with connect(srv.port, timeout=20) as sock:
        sock.sendall(b"\r\n")
        assert read_until_close(sock, timeout=15) == b""


@pytest.mark.timeout(60)
@pytest.mark.parametrize("trickle", [False, True], ids=["stalled", "trickling"])
def test_head_not_complete_within_header_timeout_gets_408(
    server_factory: ServerFactory, worker_class: str, trickle: bool
) -> None:
    srv = server_factory("hello:app", *worker_args(worker_class), "--header-timeout", "1")
    with connect(srv.port, timeout=20) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n")
        if trickle:
            # One byte every 0.2 s (the recv timeout paces it): the deadline is for the
            # whole head, never reset by a byte that arrives.
            sock.settimeout(0.2)
            answer = b""
            for byte in b"X-Slow: " + b"s" * 150:
                try:
                    sock.sendall(bytes([byte]))
                except (BrokenPipeError, ConnectionResetError):
                    break
                try:
                    answer = sock.recv(65536)
                except TimeoutError:
                    continue
                except ConnectionResetError:
                    pass
                break
            else:
                pytest.fail("a trickling head was neither answered nor closed")
            answer += read_until_close(sock, timeout=10)
        else:
            answer = read_until_close(sock, timeout=20)
    (resp,) = parse_responses(answer)
    assert resp.status == 408
    assert resp.closes


@pytest.mark.timeout(60)
def test_pipelining_client_that_never_reads_is_not_buffered_without_bound(
    server: ServerProcess, worker_class: str
) -> None:
    """A client pipelines requests for 2 KB responses and reads none of them. Once its
    responses back up, the server must stop reading from it (the kernel's buffers then
    stop the client), not go on building every response in memory: 8 MB of these
    requests would be 360 MB of responses."""
    request = b"GET /bulk?size=2000 HTTP/1.1\r\nHost: t\r\n\r\n"
    data = request * (8 * 1024 * 1024 // len(request))
    sock = socket.socket()
    # Fixed, small client buffers: what the kernel can hold for a stalled peer stays
    # far below 8 MB on both sides.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)
    sock.settimeout(10)
    sock.connect(("127.0.0.1", server.port))
    sock.setblocking(False)
    sent = 0
    try:
        while sent < len(data):
            # Two seconds without room to send: the server has stopped reading.
            if not select.select([], [sock], [], 2.0)[1]:
                break
            try:
                sent += sock.send(data[sent : sent + 65536])
            except BlockingIOError:
                continue
            except (BrokenPipeError, ConnectionResetError):
                break  # the sync worker answers one request and closes
        if keeps_alive(worker_class):
            # (sync answers one request and closes: what follows is read and dropped, for
            # LINGER_TIME at most, so that a reset does not cut the answer; nothing built.)
            assert sent < len(data), "the server read 8 MB of pipelined requests nobody reads"
        # The connection still works: the responses come, in order, as the client reads.
        sock.setblocking(True)
        with RawConnection(server.port, timeout=20, sock=sock) as conn:
            for _ in range(3 if keeps_alive(worker_class) else 1):
                resp = conn.read_response()
                assert (resp.status, len(resp.body)) == (200, 2000)
    finally:
        sock.close()


@pytest.mark.timeout(60)
def test_fast_keepalive_request_queued_while_the_loop_was_blocked_is_served(
    server_factory: ServerFactory,
) -> None:
    """A keep-alive client sends its next request in time, but the fast worker's loop is
    blocked by another request (an app that sleeps) past the keep-alive deadline. When the
    loop runs again, its sweep must not close that connection: closing with the request
    unread in the kernel buffer resets it, and the client sees an error for a request it
    sent in time (seen as wrk read errors under load on a busy host)."""
    srv = server_factory(
        "slow:app", "-k", "fast", "--workers", "1", "--keep-alive", "1", "--timeout", "30"
    )
    with RawConnection(srv.port, timeout=20) as idle:
        idle.send(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        assert idle.read_response().status == 200  # now idle, keep-alive deadline in 1 s
        with RawConnection(srv.port, timeout=20) as blocker:
            mark = srv.mark()
            blocker.send(b"GET /sleep?s=3 HTTP/1.1\r\nHost: t\r\n\r\n")
            srv.wait_for_log(r"slow app: sleeping 3s", since=mark, timeout=10)
            # The loop is blocked now; this request waits in the kernel's buffer, sent
            # well within the keep-alive window.
            idle.send(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
            assert blocker.read_response().body == b"slept 3"
            resp = idle.read_response()
            assert resp.status == 200 and resp.body == b"ok"


def worker_rss(pid: int) -> int:
    """Resident memory of a process, in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


def unread_bytes(port: int) -> int:
    """Bytes sent to ``port`` over loopback that no server process has read yet: what the
    server's ends hold in their receive queues (/proc/net/tcp's rx_queue)."""
    total = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[1].split(":")[1], 16) == port and fields[3] != "0A":  # 0A: listening
            total += int(fields[4].split(":")[1], 16)
    return total


def unsent_bytes(sock: socket.socket) -> int:
    """What the kernel holds in this socket's send queue (TIOCOUTQ)."""
    queued: int = struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0" * 4))[0]
    return queued


def open_sockets(pid: int) -> int:
    count = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(FileNotFoundError):  # closed since the listing
            count += os.readlink(fd).startswith("socket:")
    return count


UPLOADS = 150


def start_upload(port: int, length: int, sent: int) -> socket.socket:
    """A connection that sends ``sent`` bytes of a body of ``length``, and waits."""
    sock = connect(port)
    head = b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n" % length
    sock.sendall(head + b"x" * sent)
    return sock


def wait_until_read(port: int, clients: list[socket.socket]) -> None:
    """Until the server has read all that these clients sent."""
    deadline = time.monotonic() + 30  # bounds a hang only
    while unread_bytes(port) or any(unsent_bytes(sock) for sock in clients):
        assert time.monotonic() < deadline, "the worker stopped reading the uploads"
        time.sleep(0.05)  # poll interval


@pytest.mark.timeout(120)
def test_fast_uploads_cut_short_give_their_memory_back(server_factory: ServerFactory) -> None:
    """The fast worker buffers bodies before the app runs: many large uploads at once take
    that much memory while they last. Once they are cut short, the worker must be back
    near its size before them, while another upload is still in progress. Freed into
    malloc's heap, that memory stayed with the worker until the sweep began to trim the
    heap: the pieces of the upload in progress, read last, sat above it, and the heap
    shrinks from its top only (120 to 420 MB more, for as long as uploads kept coming)."""
    srv = server_factory("echo:app", "-k", "fast", "--workers", "1")
    (worker,) = srv.worker_pids()
    assert get(srv.port, "/echo").status == 200  # the worker has served once
    before = worker_rss(worker)
    for _ in range(2):
        # About 1 MB each: most within the in-memory bound (1 MiB), one in five past it.
        uploads = []
        try:
            for i in range(UPLOADS):
                length, sent = (3_000_000, 1_500_000) if i % 5 == 0 else (1_000_000, 900_000)
                uploads.append(start_upload(srv.port, length, sent))
            wait_until_read(srv.port, uploads)
            with start_upload(srv.port, 1_000_000, 900_000) as in_progress:
                wait_until_read(srv.port, [in_progress])
                sockets = open_sockets(worker)
                for sock in uploads:  # cut short: a reset
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    sock.close()
                deadline = time.monotonic() + 30  # bounds a hang only
                while open_sockets(worker) > sockets - UPLOADS:
                    assert time.monotonic() < deadline, "the worker kept the reset connections"
                    time.sleep(0.05)  # poll interval
                # One more request answered: the loop has run every connection_lost.
                assert get(srv.port, "/echo").status == 200
                # Some 135 MB was buffered: a worker that keeps it grows by about that. The
                # worker gives it back at its next sweep (once a second).
                deadline = time.monotonic() + 20  # bounds a hang only
                while (grown := worker_rss(worker) - before) >= 16 * 1024 * 1024:
                    assert time.monotonic() < deadline, (
                        f"the worker grew by {grown / 2**20:.0f} MiB and kept it"
                    )
                    time.sleep(0.1)  # poll interval
        finally:
            for sock in uploads:
                sock.close()


@pytest.mark.timeout(60)
def test_fast_upload_in_tiny_chunks_stays_within_its_memory_bound(
    server_factory: ServerFactory,
) -> None:
    """A chunked upload of a million one-byte chunks is 1 MB of body under the in-memory
    bound (1 MiB): held as one object per chunk it took some 40 MB of the worker."""
    srv = server_factory("echo:app", "-k", "fast", "--workers", "1")
    (worker,) = srv.worker_pids()
    assert get(srv.port, "/echo").status == 200
    before = worker_rss(worker)
    with connect(srv.port) as sock:
        sock.sendall(
            b"POST /echo?read=all HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        piece = b"1\r\nx\r\n" * 10_000
        for _ in range(100):
            sock.sendall(piece)
        wait_until_read(srv.port, [sock])
        grown = worker_rss(worker) - before
        sock.sendall(b"0\r\n\r\n")
        answer = sock.recv(65536)
        assert answer.startswith(b"HTTP/1.1 200 "), answer[:100]
    assert grown < 12 * 1024 * 1024, f"the worker grew by {grown / 2**20:.0f} MiB"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("worker_class", ["fast", "gthread", "gevent", "eventlet"])
def test_a_stream_to_a_fast_reader_leaves_the_worker_to_others(
    server_factory: ServerFactory, worker_class: str
) -> None:
    """A stream of small pieces that its client takes as fast as they come never pauses
    fast's transport, and never blocks a green worker's send (so never switches
    greenlets): the worker went on pulling it and served nobody else, and its heartbeat
    stopped, so the master killed it as hung (cutting the stream)."""
    threads = ["--threads", "2"] if worker_class == "gthread" else []
    srv = server_factory(
        "stream:app", "-k", worker_class, *threads, "--workers", "1", "--timeout", "2"
    )
    received = [0]
    ended: list[str] = []

    def read_stream() -> None:
        with connect(srv.port) as sock:
            sock.sendall(b"GET /endless?chunks=1000000000&size=100 HTTP/1.1\r\nHost: t\r\n\r\n")
            stop = time.monotonic() + 6
            while time.monotonic() < stop:
                data = sock.recv(1 << 20)
                if not data:
                    ended.append("the stream was cut")
                    return
                received[0] += len(data)

    reader = threading.Thread(target=read_stream, daemon=True)
    reader.start()
    deadline = time.monotonic() + 20  # bounds a hang only
    while received[0] < 1 << 20:
        assert time.monotonic() < deadline and not ended, ended
        time.sleep(0.05)  # poll interval
    # Another client is answered while the stream goes on...
    assert get(srv.port, "/?chunks=1&size=2", timeout=20).body == b"00"
    reader.join(20)
    # ...and the stream ran past the timeout without the worker being taken for hung.
    assert not ended, (ended, srv.logs)
    assert "WORKER TIMEOUT" not in srv.logs


@pytest.mark.timeout(60)
def test_fast_slow_but_steady_reader_is_not_dropped(server_factory: ServerFactory) -> None:
    """The send timeout bounds a client that takes nothing; one that keeps taking a long
    response, slowly, was dropped when the timeout ran out after its first pause."""
    srv = server_factory("stream:app", "-k", "fast", "--workers", "1", "--timeout", "2")
    with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)
        sock.sendall(b"GET /slow?chunks=2000&size=65536 HTTP/1.1\r\nHost: t\r\n\r\n")
        stop = time.monotonic() + 6  # three timeouts
        while time.monotonic() < stop:
            data = sock.recv(4096)
            assert data, f"dropped while reading\n{srv.logs}"
            time.sleep(0.1)  # reads about 40 KB a second
    assert "Dropped a client" not in srv.logs


@pytest.mark.timeout(90)
def test_fast_quit_under_load_runs_the_exit_path(
    server_factory: ServerFactory, tmp_path: Path
) -> None:
    """QUIT raises the worker's exit from its signal handler, which under load runs
    inside a connection's callback: uvloop reported it as a transport error and went on,
    and the master killed the worker later, with no worker_exit and no "Worker exiting"."""
    hooks = tmp_path / "hooks.py"
    hooks.write_text(
        "import sys\n"
        "def worker_exit(server, worker):\n"
        "    sys.stderr.write(f'hook worker_exit {worker.pid}\\n')\n"
    )
    wrk = shutil.which("wrk")
    assert wrk, "wrk is not installed (.ci/run installs it)"
    for _ in range(3):
        srv = server_factory("hello:app", "-k", "fast", "--workers", "1", "-c", str(hooks))
        (worker,) = srv.worker_pids()
        load = subprocess.Popen(
            [wrk, "-t2", "-c20", "-d10s", srv.url("/")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            time.sleep(1)  # under load
            os.kill(worker, signal.SIGQUIT)
            srv.wait_for_log(rf"Worker exiting \(pid: {worker}\)", timeout=20)
            srv.wait_for_log(rf"hook worker_exit {worker}")
        finally:
            load.kill()
            load.wait(10)
        assert "WorkerExit" not in srv.logs  # no "Fatal error on transport"
        assert "SIGKILL" not in srv.logs
        srv.stop()


@pytest.mark.timeout(60)
def test_a_client_sending_while_its_stream_plays_is_not_read_without_bound(
    server: ServerProcess, worker_class: str
) -> None:
    """A client reads a long stream as fast as it comes, so the response never backs up,
    and sends all the while. The fast worker read all of it into memory (300 MB sent,
    300 MB more in the worker): while it answers, the server must stop reading, as the
    blocking classes do, and let TCP hold the client back."""
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    sock.sendall(b"GET /stream?chunks=1000000&size=4096 HTTP/1.1\r\n" + H + b"\r\n")
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set():
            try:
                if not sock.recv(1 << 20):
                    return
            except OSError:
                return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    junk = b"Z" * 65536
    limit = 64 * 1024 * 1024
    sent = 0
    try:
        while sent < limit:
            # Two seconds without room to send: the server has stopped reading.
            if not select.select([], [sock], [], 2.0)[1]:
                break
            try:
                sent += sock.send(junk)
            except BlockingIOError:
                continue
            except OSError:
                break  # answered (400 for the junk after the stream) and closed
        assert sent < limit, "the server read 64 MB sent behind a request it was answering"
    finally:
        stop.set()
        sock.close()
        reader.join(5)


@pytest.mark.timeout(60)
def test_fast_a_closing_connection_counts_until_its_response_is_out(
    server_factory: ServerFactory,
) -> None:
    """A response that ends its connection (Connection: close) to a client that does not
    read it: the connection left the count as the close began, so worker_connections let
    any number of them in, each holding its response, and the send timeout never looked
    at it again. It now counts until its response is out, and is dropped when its client
    takes none of it for --timeout."""
    srv = server_factory(
        "routes:app", "-k", "fast", "--workers", "1", "--worker-connections", "2",
        "--timeout", "2", "--access-logfile", "/dev/stderr",
    )  # fmt: skip
    request = (
        b"GET /stream?chunks=80&size=65536&whole=1 HTTP/1.1\r\n" + H + b"Connection: close\r\n\r\n"
    )
    stalled = []
    try:
        for _ in range(2):
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)
            sock.settimeout(10)
            sock.connect(("127.0.0.1", srv.port))
            sock.sendall(request)
            stalled.append(sock)
        assert srv.wait_for_count(r'"GET /stream\?chunks=80', 2) == 2  # both answered
        with connect(srv.port) as third:
            third.sendall(b"GET /echo HTTP/1.1\r\n" + H + b"\r\n")
            assert read_until_close(third).startswith(b"HTTP/1.1 503 ")
        dropped = r"Dropped a client that read nothing more .*GET /stream"
        assert srv.wait_for_count(dropped, 2, timeout=20) == 2
        assert get(srv.port, "/echo").status == 200
    finally:
        for sock in stalled:
            sock.close()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("worker_class", ["fast", "gthread", "gevent"])
def test_a_graceful_stop_delivers_a_response_still_on_its_way(
    server_factory: ServerFactory, worker_class: str
) -> None:
    """TERM while a complete response waits for a slow client: the fast worker closed the
    connection as idle and exited, and the client got 7 of 20 MB; the stop must wait for
    it (up to graceful_timeout), as gthread does."""
    srv = server_factory("routes:app", *worker_args(worker_class), "--workers", "1")
    size = 128 * 65536
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    sock.settimeout(20)
    sock.connect(("127.0.0.1", srv.port))
    try:
        sock.sendall(b"GET /stream?chunks=128&size=65536&whole=1 HTTP/1.1\r\n" + H + b"\r\n")
        first = sock.recv(65536)
        assert first.startswith(b"HTTP/1.1 200 ")
        mark = srv.mark()
        srv.signal(signal.SIGTERM)
        srv.wait_for_log(r"Handling signal: term", since=mark)
        time.sleep(2)  # the client is slow: it reads nothing for a while
        data = first + read_until_close(sock, timeout=20)
    finally:
        sock.close()
    (resp,) = parse_responses(data)
    assert len(resp.body) == size, f"{len(resp.body)} of {size} bytes"
    assert srv.wait_exit() == 0


@pytest.mark.timeout(60)
def test_requests_pipelined_behind_a_stream_are_answered_after_a_half_close(
    server: ServerProcess, worker_class: str
) -> None:
    """A client sends a request for a stream and two more behind it, then shuts its
    sending side (as ``nc -N`` does). The fast worker answered the stream, closed, and
    dropped the other two, unlogged; every request sent before the FIN is answered."""
    if not keeps_alive(worker_class):
        pytest.skip("sync answers one request per connection")
    with connect(server.port) as sock:
        sock.sendall(
            b"GET /stream?chunks=64&size=65536 HTTP/1.1\r\n" + H + b"\r\n"
            b"GET /echo/a HTTP/1.1\r\n" + H + b"\r\n"
            b"GET /echo/b HTTP/1.1\r\n" + H + b"\r\n"
        )
        sock.shutdown(socket.SHUT_WR)
        data = read_until_close(sock, timeout=20)
    responses = parse_responses(data)
    assert [r.status for r in responses] == [200, 200, 200]
    assert len(responses[0].body) == 64 * 65536
    assert [json.loads(r.body)["path"] for r in responses[1:]] == ["/echo/a", "/echo/b"]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("worker_class", ["fast", "gthread"])
def test_without_a_minimum_rate_a_steady_upload_outlasts_header_timeout(
    server_factory: ServerFactory, worker_class: str
) -> None:
    """``--body-min-rate 0`` turns the rate check off: the fast worker then cut any body
    that took longer than header_timeout with a 408, however steadily it came."""
    srv = server_factory(
        "routes:app", *worker_args(worker_class), "--workers", "1",
        "--body-min-rate", "0", "--header-timeout", "1",
    )  # fmt: skip
    with RawConnection(srv.port, timeout=20) as conn:
        conn.send(b"POST /echo HTTP/1.1\r\n" + H + b"Content-Length: 4000\r\n\r\n")
        for _ in range(4):
            time.sleep(0.5)  # 2 s in all, twice header_timeout, never idle for long
            conn.send(b"x" * 1000)
        resp = conn.read_response()
    assert resp.status == 200
    assert json.loads(resp.body)["body"] == "x" * 4000
