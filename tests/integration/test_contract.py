"""Issue 4: ONE contract suite, run against every worker class.

Each test takes ``worker_class`` (parametrized over ``WORKER_CLASSES``); a worker class whose
module does not exist yet FAILS here (``require_worker_class``), it is never skipped. The
sync worker's documented difference (``Connection: close`` after every response, so no
keep-alive and no pipelining) is asserted where it applies.

Tests that do not change the server's state share one running server per worker class
(``routes:app``, two workers); the ones that stop the server start their own.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import http.client
import json
import os
import random
import re
import shutil
import signal
import socket
import struct
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import quote

import pytest

from .conftest import ServerFactory
from .server import (
    APPS,
    ROOT,
    SRC,
    InFlight,
    RawConnection,
    ServerProcess,
    connect,
    get,
    parse_responses,
    raw_request,
    read_until_close,
    read_until_fin,
    server_pool,
    stream_body,
)

# What each worker class needs on the command line besides its name.
WORKER_ARGS: dict[str, list[str]] = {
    "sync": [],
    "gthread": ["--threads", "4"],
    "gevent": ["--worker-connections", "200"],
    "eventlet": ["--worker-connections", "200"],
    "fast": [],
}


def worker_args(worker_class: str) -> list[str]:
    return ["-k", worker_class, *WORKER_ARGS[worker_class]]


@pytest.fixture(scope="module")
def shared_servers(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Callable[[str], ServerProcess]]:
    with server_pool(tmp_path_factory.mktemp("contract-logs"), worker_args) as server_for:
        yield server_for


@pytest.fixture
def server(worker_class: str, shared_servers: Callable[[str], ServerProcess]) -> ServerProcess:
    return shared_servers(worker_class)


def keeps_alive(worker_class: str) -> bool:
    return worker_class != "sync"


# -- the Flask example -----------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_flask_todo_crud(
    server_factory: ServerFactory, worker_class: str, todo_db: dict[str, str]
) -> None:
    srv = server_factory("examples.todo:app", *worker_args(worker_class), env=todo_db)
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10)

    def call(method: str, path: str, payload: object = None) -> tuple[int, bytes]:
        body = None if payload is None else json.dumps(payload).encode()
        headers = {"Content-Type": "application/json"} if body is not None else {}
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read()

    try:
        ids = []
        for title in ("one", "two", "three"):
            status, body = call("POST", "/todos", {"title": title})
            assert status == 201, body
            ids.append(json.loads(body)["id"])
        status, body = call("GET", "/todos")
        assert status == 200
        assert [t["title"] for t in json.loads(body)] == ["one", "two", "three"]
        status, body = call("POST", "/todos", {"title": ""})
        assert status == 400
        status, _ = call("DELETE", f"/todos/{ids[1]}")
        assert status == 204
        status, _ = call("GET", f"/todos/{ids[1]}")
        assert status == 404
        status, body = call("GET", f"/todos/{ids[2]}")
        assert (status, json.loads(body)["title"]) == (200, "three")
        status, body = call("GET", "/")
        assert status == 200 and b"<li>one" in body and b"two" not in body
    finally:
        conn.close()


# -- connection handling ---------------------------------------------------------------------------


@pytest.mark.timeout(30)
def test_keep_alive(server: ServerProcess, worker_class: str) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        conn.request("GET", "/")
        first = conn.getresponse()
        assert (first.status, first.read()) == (200, b"Hello, World!")
        sock = conn.sock
        if not keeps_alive(worker_class):
            assert first.getheader("Connection") == "close"
            assert first.will_close
            return
        assert not first.will_close, first.getheaders()
        assert sock is not None
        conn.request("GET", "/echo/second")
        second = conn.getresponse()
        assert second.status == 200
        assert json.loads(second.read())["path"] == "/echo/second"
        assert conn.sock is sock, "http.client had to reconnect: the connection was not kept"
    finally:
        conn.close()


@pytest.mark.timeout(30)
def test_pipelining(server: ServerProcess, worker_class: str) -> None:
    requests = (
        b"GET /echo/a HTTP/1.1\r\nHost: t\r\n\r\n"
        b"GET /echo/b HTTP/1.1\r\nHost: t\r\n\r\n"
        b"GET /echo/c HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    )
    responses = parse_responses(raw_request(server.port, requests))
    paths = [json.loads(r.body)["path"] for r in responses]
    if not keeps_alive(worker_class):
        # The sync worker answers the first request and closes.
        assert paths == ["/echo/a"]
        assert responses[0].closes
        return
    assert paths == ["/echo/a", "/echo/b", "/echo/c"]
    assert [r.status for r in responses] == [200, 200, 200]
    assert [r.closes for r in responses] == [False, False, True]


@pytest.mark.timeout(30)
def test_response_is_not_held_behind_the_next_pipelined_request(
    server: ServerProcess, worker_class: str, tmp_path: Path
) -> None:
    """The fast worker writes the responses of one turn of its loop together, but a
    response made more than a moment ago goes out before the next app call: here the
    second request's app waits until the client has the first response."""
    marker = tmp_path / "first-received"
    with RawConnection(server.port, timeout=20) as conn:
        conn.send(
            b"GET /slow/sleep?s=0.05 HTTP/1.1\r\nHost: t\r\n\r\n"
            + f"GET /gate/wait?file={quote(str(marker))} HTTP/1.1\r\nHost: t\r\n\r\n".encode()
        )
        first = conn.read_response()
        assert (first.status, first.body) == (200, b"slept 0.05")
        if not keeps_alive(worker_class):
            assert first.closes
            return
        marker.touch()
        second = conn.read_response()
    assert (second.status, second.body) == (200, b"seen")


@pytest.mark.timeout(30)
def test_stream_head_and_first_chunk_are_not_held_for_the_next_chunk(
    server: ServerProcess, worker_class: str, tmp_path: Path
) -> None:
    """Only complete responses wait for the end of the fast worker's turn: the start of a
    stream goes out while the app is still producing the rest."""
    marker = tmp_path / "first-chunk-received"
    with RawConnection(server.port, timeout=20) as conn:
        conn.send(
            f"GET /gate/stream?file={quote(str(marker))} HTTP/1.1\r\nHost: t\r\n\r\n".encode()
        )
        conn.read_until(b"first")
        marker.touch()
        resp = conn.read_response()
    assert resp.status == 200
    assert resp.body == b"firstseen"


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    "mode", ["all", "sized", "lines", "readlines", "iter", "sizedkw", "lineskw", "readlineskw"]
)
def test_chunked_upload_is_echoed(server: ServerProcess, worker_class: str, mode: str) -> None:
    parts = [b"line one\n", b"line two\nand a half", b"", b"x" * 70000, b"\nlast"]
    # Lower- and upper-case hex sizes, one chunk with an extension.
    sizes = [f"{len(parts[0]):x}", f"{len(parts[1]):x};ext=1", f"{len(parts[3]):X}", "5"]
    data = [p for p in parts if p]
    body = b"".join(
        f"{size}\r\n".encode() + p + b"\r\n" for size, p in zip(sizes, data, strict=True)
    )
    body += b"0\r\nX-Trailer: ignored\r\n\r\n"
    with RawConnection(server.port) as conn:
        conn.send(
            f"POST /echo?read={mode} HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n"
            "Content-Type: text/plain\r\n\r\n".encode()
        )
        # The body in several sends, split inside a chunk-size line and inside data.
        for start in range(0, len(body), 9973):
            conn.send(body[start : start + 9973])
        resp = conn.read_response()
    assert resp.status == 200, resp.body[:500]
    echoed = json.loads(resp.body)
    assert echoed["body"].encode("latin-1") == b"".join(parts)
    assert "HTTP_X_TRAILER" not in echoed["environ"]  # trailers never reach the environ


@pytest.mark.timeout(60)
@pytest.mark.parametrize("size", [65536, 65537, 1024 * 1024, 1024 * 1024 + 1, 2_500_000])
def test_upload_around_the_buffering_bounds_is_echoed(
    server: ServerProcess, worker_class: str, size: int
) -> None:
    """Sizes on each side of the fast worker's bounds (kept as pieces up to 64 KiB, in a
    memory map up to 1 MiB, in a file past it), with a Content-Length and chunked."""
    body = random.Random(size).randbytes(size)
    chunked = b"".join(
        b"%x\r\n" % len(body[i : i + 50000]) + body[i : i + 50000] + b"\r\n"
        for i in range(0, size, 50000)
    )
    # read(7), and read(size=7) (the fast worker's spilled file takes it by position only).
    for framing, data, mode in [
        (f"Content-Length: {size}", body, "sized"),
        ("Transfer-Encoding: chunked", chunked + b"0\r\n\r\n", "sizedkw"),
    ]:
        with RawConnection(server.port, timeout=20) as conn:
            conn.send(f"POST /echo?read={mode} HTTP/1.1\r\nHost: t\r\n{framing}\r\n\r\n".encode())
            for start in range(0, len(data), 300_000):  # several reads on the server's side
                conn.send(data[start : start + 300_000])
            resp = conn.read_response()
        assert resp.status == 200, (framing, resp.body[:500])
        assert json.loads(resp.body)["body"].encode("latin-1") == body, framing


@pytest.mark.timeout(30)
def test_chunked_request_environ(server: ServerProcess, worker_class: str) -> None:
    data = raw_request(
        server.port,
        b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n"
        b"Connection: close\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    )
    (resp,) = parse_responses(data)
    environ = json.loads(resp.body)["environ"]
    assert json.loads(resp.body)["body"] == "abc"
    if worker_class == "fast":
        # fast has the whole body before the app runs and says its size (as waitress
        # does), so that Django and Falcon's bounded_stream, which read CONTENT_LENGTH
        # bytes and no more, see it; the others stream it (wsgi.input_terminated).
        # The body the app reads is no longer chunked, so the Transfer-Encoding goes (as
        # in waitress): an app that rebuilds headers from the environ (a proxy) must not
        # see both framings.
        assert environ["CONTENT_LENGTH"] == "3"
        assert "HTTP_TRANSFER_ENCODING" not in environ
    else:
        assert "CONTENT_LENGTH" not in environ or environ["CONTENT_LENGTH"] == ""
        # The header as the client sent it, once (PEP 3333 HTTP_ variables).
        assert environ.get("HTTP_TRANSFER_ENCODING") == "chunked"


@pytest.mark.timeout(30)
def test_expect_100_continue(server: ServerProcess, worker_class: str) -> None:
    with RawConnection(server.port) as conn:
        conn.send(
            b"POST /echo?read=all HTTP/1.1\r\nHost: t\r\nContent-Length: 11\r\n"
            b"Expect: 100-continue\r\n\r\n"
        )
        interim = conn.read_head_line()
        assert interim.startswith(b"HTTP/1.1 100 Continue\r\n"), interim
        conn.send(b"hello world")
        resp = conn.read_response()
    assert resp.status == 200
    assert json.loads(resp.body)["body"] == "hello world"


@pytest.mark.timeout(30)
def test_streaming_response_arrives_chunked(server: ServerProcess, worker_class: str) -> None:
    with RawConnection(server.port) as conn:
        conn.send(b"GET /stream?chunks=8&size=3000&sleep=0.02 HTTP/1.1\r\nHost: t\r\n\r\n")
        resp = conn.read_response()
        assert resp.status == 200
        assert resp.header("transfer-encoding") == "chunked"
        assert resp.body == stream_body(8, 3000)
        if keeps_alive(worker_class):
            # The connection is still usable after a chunked response.
            conn.send(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
            assert conn.read_response().body == b"Hello, World!"


@pytest.mark.timeout(30)
def test_sized_iterable_of_one_chunk_keeps_the_connection(
    server: ServerProcess, worker_class: str
) -> None:
    """What Flask and Django return: an iterable (not a list) of one chunk, with a
    Content-Length."""
    with RawConnection(server.port) as conn:
        for _ in range(3):
            conn.send(b"GET /stream?chunks=1&size=10&length=10 HTTP/1.1\r\nHost: t\r\n\r\n")
            resp = conn.read_response()
            assert resp.status == 200
            assert resp.header("content-length") == "10"
            assert resp.body == b"0" * 10
            if not keeps_alive(worker_class):
                break


@pytest.mark.timeout(30)
def test_chunks_past_the_content_length_are_cut_there(
    server: ServerProcess, worker_class: str
) -> None:
    """An app that yields more than it declared: the client gets exactly the declared
    bytes, and then the next response, not the rest of the app's (the framing held, so
    the connection goes on, as in gunicorn)."""
    with RawConnection(server.port) as conn:
        conn.send(b"GET /stream?chunks=3&size=10&length=10 HTTP/1.1\r\nHost: t\r\n\r\n")
        resp = conn.read_response()
        assert resp.status == 200 and resp.body == b"0" * 10
        if keeps_alive(worker_class):
            conn.send(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            follow = conn.read_response()
            assert (follow.status, follow.body) == (200, b"Hello, World!")
        assert conn.read_until_close() == b""


@pytest.mark.timeout(30)
@pytest.mark.parametrize("path", ["/", "/stream?chunks=3&size=100"])
def test_head(server: ServerProcess, worker_class: str, path: str) -> None:
    with RawConnection(server.port) as conn:
        conn.send(f"HEAD {path} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
        resp = conn.read_response("HEAD")
        assert resp.status == 200 and resp.body == b""
        if keeps_alive(worker_class):
            # Had the server sent a body, the next response would not parse as one.
            conn.send(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            follow = conn.read_response()
            assert (follow.status, follow.body) == (200, b"Hello, World!")
        assert conn.read_until_close() == b""


ENDLESS = "/stream?chunks=1000000000000&size=100"


@pytest.mark.timeout(30)
def test_head_to_an_endless_stream_stops_iterating(
    server: ServerProcess, worker_class: str
) -> None:
    """PEP 3333: the server stops iterating once the response is complete. A HEAD has no
    body to send, so an endless generator was iterated for ever, its pieces dropped: the
    worker (fast's loop, sync's process, a thread or greenlet) served nothing else until
    it was killed as hung, or never."""
    with RawConnection(server.port) as conn:
        conn.send(f"HEAD {ENDLESS} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
        resp = conn.read_response("HEAD")
        assert resp.status == 200 and resp.body == b""
        if keeps_alive(worker_class):
            conn.send(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
            assert conn.read_response().body == b"Hello, World!"
    for _ in range(3):  # every worker (the fixture runs two) is free for the next client
        assert get(server.port, "/").status == 200


@pytest.mark.timeout(30)
def test_an_endless_stream_stops_at_its_content_length(
    server: ServerProcess, worker_class: str
) -> None:
    """Past the app's Content-Length nothing can be sent: one more piece is taken (it
    marks the response as overlong, so the connection closes) and no more."""
    with RawConnection(server.port) as conn:
        conn.send(f"GET {ENDLESS}&length=250 HTTP/1.1\r\nHost: t\r\n\r\n".encode())
        resp = conn.read_response()
        assert resp.status == 200 and resp.body == b"0" * 100 + b"1" * 100 + b"2" * 50
        assert conn.read_until_close() == b""
    for _ in range(3):
        assert get(server.port, "/").status == 200


@pytest.mark.timeout(60)
def test_a_generator_that_ends_soon_after_its_response_runs_to_its_end(
    server_factory: ServerFactory, worker_class: str
) -> None:
    """Stopping at once when the response is complete skipped the app's code after its
    last yield (a commit, a log line), which gunicorn runs: a few more pieces are taken."""
    server = server_factory("tail:app", *worker_args(worker_class))
    for method in ("GET", "HEAD"):
        mark = server.mark()
        data = raw_request(
            server.port, f"{method} / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".encode()
        )
        (resp,) = parse_responses(data, [method])
        assert resp.status == 200 and resp.body == (b"hello" if method == "GET" else b"")
        server.wait_for_log(rf"tail ran for {method}", since=mark)


@pytest.mark.timeout(60)
def test_head_to_an_endless_file_wrapper_stops_reading(
    server_factory: ServerFactory, worker_class: str
) -> None:
    """The same for ``wsgi.file_wrapper`` over a file that is not a regular one (no
    sendfile: it is read and sent piece by piece), here /dev/zero: a HEAD, and a GET whose
    Content-Length (0, the device's size) is reached at once, read no further."""
    server = server_factory(
        "files:app", *worker_args(worker_class), env={"FORKHORN_TEST_FILE": "/dev/zero"}
    )
    with RawConnection(server.port) as conn:
        conn.send(b"HEAD /nolength HTTP/1.1\r\nHost: t\r\n\r\n")
        resp = conn.read_response("HEAD")
        assert resp.status == 200 and resp.body == b""
    data = raw_request(server.port, b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
    (resp,) = parse_responses(data)
    assert (resp.status, resp.header("content-length"), resp.body) == (200, "0", b"")
    assert "WORKER TIMEOUT" not in server.logs


def _scheme(port: int, host: str = "t", **headers: str) -> tuple[int, str, str]:
    """Status, wsgi.url_scheme and SERVER_PORT the app saw for a GET /echo."""
    resp = get(port, "/echo", Host=host, **headers)
    if resp.status != 200:
        return resp.status, "", ""
    environ = json.loads(resp.body)["environ"]
    return resp.status, environ["wsgi.url_scheme"], environ["SERVER_PORT"]


@pytest.mark.timeout(30)
def test_a_trusted_front_end_sets_the_scheme(server: ServerProcess, worker_class: str) -> None:
    """gunicorn's defaults: a peer in forwarded_allow_ips (127.0.0.1 by default) that sends
    one of secure_scheme_headers sets wsgi.url_scheme, and with it the default port; two
    such headers that disagree are a 400. An app behind a TLS-ending proxy on this host
    saw http (Django's SECURE_SSL_REDIRECT then redirects for ever)."""
    port = server.port
    assert _scheme(port) == (200, "http", "80")
    assert _scheme(port, **{"X-Forwarded-Proto": "https"}) == (200, "https", "443")
    assert _scheme(port, **{"X-Forwarded-Proto": "http"}) == (200, "http", "80")
    assert _scheme(port, **{"X-Forwarded-Ssl": "on"}) == (200, "https", "443")
    assert _scheme(port, "t:8443", **{"X-Forwarded-Protocol": "ssl"}) == (200, "https", "8443")
    both = {"X-Forwarded-Proto": "https", "X-Forwarded-Ssl": "on"}
    assert _scheme(port, **both) == (200, "https", "443")
    contradictory = {"X-Forwarded-Proto": "https", "X-Forwarded-Ssl": "off"}
    assert _scheme(port, **contradictory) == (400, "", "")


@pytest.mark.timeout(60)
def test_an_untrusted_peer_cannot_set_the_scheme(
    server_factory: ServerFactory, worker_class: str, tmp_path: Path
) -> None:
    """Only the listed front ends are believed; a config can name its own headers."""
    server = server_factory(
        "routes:app", *worker_args(worker_class), "--forwarded-allow-ips", "10.0.0.0/8"
    )
    assert _scheme(server.port, **{"X-Forwarded-Proto": "https"}) == (200, "http", "80")
    conf = tmp_path / "proxy.conf.py"
    conf.write_text(
        "forwarded_allow_ips = '127.0.0.0/8'\nsecure_scheme_headers = {'X-Scheme': 'https'}\n"
    )
    server = server_factory("routes:app", *worker_args(worker_class), "-c", str(conf))
    assert _scheme(server.port, **{"X-Scheme": "https"}) == (200, "https", "443")
    assert _scheme(server.port, **{"X-Forwarded-Proto": "https"}) == (200, "http", "80")
    assert "secure_scheme_headers" not in server.logs  # no "has no effect" warning now


@pytest.mark.timeout(60)
def test_a_unix_socket_peer_is_a_trusted_front_end(
    server_factory: ServerFactory, worker_class: str
) -> None:
    """A peer on a Unix socket is on this host (gunicorn trusts it too): its scheme
    header counts, while the same request over TCP from an address not listed does not."""
    work = Path(tempfile.mkdtemp(prefix="fh-", dir="/tmp"))
    try:
        path = work / "s.sock"
        server = server_factory(
            "routes:app",
            *worker_args(worker_class),
            "--bind",
            f"unix:{path}",
            "--forwarded-allow-ips",
            "10.0.0.1",
        )
        assert _scheme(server.port, **{"X-Forwarded-Proto": "https"}) == (200, "http", "80")
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(10)
            sock.connect(str(path))
            sock.sendall(
                b"GET /echo HTTP/1.1\r\nHost: t\r\nX-Forwarded-Proto: https\r\n"
                b"Connection: close\r\n\r\n"
            )
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        (resp,) = parse_responses(data)
        assert json.loads(resp.body)["environ"]["wsgi.url_scheme"] == "https"
    finally:
        shutil.rmtree(work, ignore_errors=True)


@pytest.mark.timeout(60)
def test_a_request_without_host_gets_the_address_of_the_listener_it_came_in_on(
    server_factory: ServerFactory, worker_class: str
) -> None:
    """PEP 3333's SERVER_NAME and SERVER_PORT, for a request with no Host to take them
    from, are those of the socket it came in on, as in gunicorn. Every request got the
    first listener's: the second port's number, or a TCP address on a Unix socket."""
    work = Path(tempfile.mkdtemp(prefix="fh-", dir="/tmp"))
    try:
        path = work / "s.sock"
        server = server_factory(
            "routes:app",
            *worker_args(worker_class),
            "--bind",
            f"unix:{path}",
            "--bind",
            "127.0.0.1:0",  # a second port of its own
        )
        ports = {
            int(p) for p in re.findall(r"Listening at: http://127\.0\.0\.1:(\d+)", server.logs)
        }
        (other,) = ports - {server.port}
        request = b"GET /echo HTTP/1.0\r\n\r\n"  # HTTP/1.0 needs no Host

        def seen(data: bytes) -> tuple[str, str]:
            environ = json.loads(parse_responses(data)[0].body)["environ"]
            return environ["SERVER_NAME"], environ["SERVER_PORT"]

        assert seen(raw_request(server.port, request)) == ("127.0.0.1", str(server.port))
        assert seen(raw_request(other, request)) == ("127.0.0.1", str(other))
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(10)
            sock.connect(str(path))
            sock.sendall(request)
            # No port on a unix socket: the scheme's, as gunicorn gives (PEP 3333: never
            # empty; it was "").
            assert seen(read_until_close(sock, 10)) == (str(path), "80")
    finally:
        shutil.rmtree(work, ignore_errors=True)


@pytest.mark.timeout(60)
def test_a_context_variable_lives_through_the_whole_body(
    server_factory: ServerFactory, worker_class: str
) -> None:
    """A ContextVar the app call sets is seen by every piece of its body and reset by its
    close() with the call's token (Flask's stream_with_context, OpenTelemetry). fast went
    on with a long stream, or one its client read slowly, in later loop callbacks, each in
    a context of its own: the reset raised, and the stream lost its last chunk."""
    server = server_factory("ctxvars:app", *worker_args(worker_class))
    for pieces, slow in ((3, False), (600, False), (2000, True)):
        mark = server.mark()
        target = f"/?pieces={pieces}&size=4096&id=req{pieces}{int(slow)}"
        # 8 MB, parsed by the harness as it comes: a bound for a loaded machine (the
        # default 10 s was passed there), well inside the test's own 60 s.
        with RawConnection(server.port, timeout=40) as conn:
            conn.send(f"GET {target} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
            if slow:  # 8 MB unread fill the socket: the body goes on from resume_writing
                time.sleep(0.5)
            resp = conn.read_response()
        assert resp.status == 200 and resp.complete, (pieces, slow)
        assert resp.body.count(b"WRONG") == 0, (pieces, slow)
        assert len(resp.body) == pieces * 4096
        # The reset happens after the response; a failure there is logged.
        assert get(server.port, "/?pieces=1").status == 200
        assert server.count_log(r"Traceback|different Context|\[ERROR\]", since=mark) == 0, (
            server.logs
        )


@pytest.mark.timeout(30)
def test_content_length_zero_reaches_the_environ(server: ServerProcess, worker_class: str) -> None:
    """As gunicorn: a request that says ``Content-Length: 0`` has CONTENT_LENGTH "0"
    (Werkzeug's and Falcon's content_length were None, which APIs answer with 411); one
    without the header has none."""
    cases = [
        (b"POST /echo HTTP/1.1\r\nContent-Length: 0\r\n", "0"),
        (b"POST /echo HTTP/1.1\r\nContent-Length: 0, 0\r\n", "0"),  # plain digits
        (b"POST /echo HTTP/1.1\r\nContent-Length: 00\r\n", "0"),
        (b"POST /echo HTTP/1.1\r\nContent-Length: 3\r\n", "3"),
        (b"GET /echo HTTP/1.1\r\n", None),
    ]
    for head, expected in cases:
        body = b"abc" if expected == "3" else b""
        request = head + b"Host: t\r\nConnection: close\r\n\r\n" + body
        (resp,) = parse_responses(raw_request(server.port, request))
        assert resp.status == 200
        assert json.loads(resp.body)["environ"].get("CONTENT_LENGTH") == expected, request


@pytest.mark.timeout(30)
def test_app_exception_gives_500(server: ServerProcess, worker_class: str) -> None:
    mark = server.mark()
    data = raw_request(server.port, b"GET /raise/before HTTP/1.1\r\nHost: t\r\n\r\n")
    (resp,) = parse_responses(data)
    assert resp.status == 500
    server.wait_for_log(r"RuntimeError: boom-before-start-response", since=mark)
    assert get(server.port, "/").status == 200


@pytest.mark.timeout(30)
@pytest.mark.parametrize("what", ["header", "status", "interim"])
@pytest.mark.parametrize("shape", ["list", "stream"])
def test_refused_response_head_gives_500(
    server: ServerProcess, worker_class: str, what: str, shape: str
) -> None:
    """A head the core refuses (CRLF in a value, a bad status, a 1xx) is the app's error:
    nothing of it was sent, so the client gets a 500, whatever the body's shape. A
    one-item list used to close the connection with no answer at all."""
    mark = server.mark()
    query = "?stream" if shape == "stream" else ""
    data = raw_request(
        server.port, f"GET /raise/refused/{what}{query} HTTP/1.1\r\nHost: t\r\n\r\n".encode()
    )
    (resp,) = parse_responses(data)
    assert resp.status == 500
    assert b"never sent" not in data and b"Injected" not in data
    server.wait_for_log(r"InvalidResponseError", since=mark)
    assert get(server.port, "/").status == 200


@pytest.mark.timeout(30)
def test_hop_by_hop_fields_from_the_app_are_dropped(
    server: ServerProcess, worker_class: str
) -> None:
    """PEP 3333: hop-by-hop fields are the server's. Passing the app's Upgrade on without
    its Connection: upgrade (which the server owns) contradicted the server's own head."""
    with RawConnection(server.port) as conn:
        conn.send(b"GET /raise/hop HTTP/1.1\r\nHost: t\r\n\r\n")
        resp = conn.read_response()
        assert (resp.status, resp.body) == (200, b"hop")
        for name in ("upgrade", "keep-alive", "te", "trailer", "proxy-connection"):
            assert resp.header_count(name) == 0, name
        assert resp.header("transfer-encoding") is None
        assert resp.header("connection") in (None, "close")
        if keeps_alive(worker_class):
            # The app's "Connection: Upgrade" did not end or change the connection.
            conn.send(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
            assert conn.read_response().status == 200


@pytest.mark.timeout(30)
def test_connect_answered_2xx_is_refused(server: ServerProcess, worker_class: str) -> None:
    """RFC 9110 §9.3.6: a 2xx to CONNECT opens a tunnel and carries no framing, which a
    WSGI response cannot do. Any client can send CONNECT to an app that answers every
    method alike, so the app's 200 becomes a 501 with one warning line, not an ERROR and
    a traceback per request (a 4xx goes out as written)."""
    mark = server.mark()
    for _ in range(2):
        data = raw_request(
            server.port, b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n"
        )
        (resp,) = parse_responses(data)
        assert resp.status == 501
        assert resp.header("content-length") == str(len(resp.body))
        assert resp.header("connection") == "close"
    server.wait_for_log(
        r"\[WARNING\] Refused request CONNECT example.com:443: a 2xx answer to CONNECT would "
        r"open a tunnel; sent 501",
        since=mark,
    )
    assert get(server.port, "/").status == 200
    assert server.wait_for_count(r"Refused request CONNECT", 2, since=mark) == 2
    assert server.count_log(r"Traceback|\[ERROR\]", since=mark) == 0, server.logs


@pytest.mark.timeout(60)
def test_base_exceptions_from_the_app_are_its_errors(
    server_factory: ServerFactory, worker_class: str
) -> None:
    """``sys.exit()``, ``KeyboardInterrupt`` or ``GeneratorExit`` out of a view, and a view
    that returns None, are the app's errors: a 500 and the traceback, and the worker
    (one, with one thread) serves on. They used to kill a gthread pool thread for good
    (the worker then answered nothing, its heartbeat intact), end sync, gevent and
    eventlet workers (cutting other clients' responses), and get no answer at all."""
    server = server_factory("routes:app", *worker_args(worker_class), "--threads", "1")
    (pid,) = server.wait_for_workers(1)
    for path in ("/exit", "/interrupt", "/generator-exit", "/none"):
        for query in ("", "?stream"):
            mark = server.mark()
            data = raw_request(
                server.port, f"GET /raise{path}{query} HTTP/1.1\r\nHost: t\r\n\r\n".encode()
            )
            (resp,) = parse_responses(data)
            assert resp.status == 500, (path, query)
            server.wait_for_log(rf"Error handling request GET /raise{path}", since=mark)
            word = f"boom{path.replace('/', '-')}"
            if path == "/none":
                word = "(app returned None|'NoneType' object is not iterable)"
            server.wait_for_log(rf"^\w+: .*{word}", since=mark)
    assert get(server.port, "/").status == 200
    assert server.worker_pids() == [pid]


@pytest.mark.timeout(30)
def test_an_empty_input_keeps_nothing_between_requests(
    server: ServerProcess, worker_class: str
) -> None:
    """What one request does to its bodiless ``wsgi.input`` (write, seek, close) reaches
    no other: the fast worker shared one BytesIO between them."""
    for _ in range(3):
        resp = get(server.port, "/raise/input")
        assert (resp.status, resp.body) == (200, b"read b''")


@pytest.mark.timeout(30)
def test_app_exception_mid_stream_closes(server: ServerProcess, worker_class: str) -> None:
    data = raw_request(server.port, b"GET /raise/mid-chunked HTTP/1.1\r\nHost: t\r\n\r\n")
    (resp,) = parse_responses(data)
    assert resp.status == 200 and not resp.complete
    assert resp.body == b"x" * 1000


@pytest.mark.timeout(30)
def test_an_oserror_of_the_apps_own_mid_stream_is_logged(
    server: ServerProcess, worker_class: str
) -> None:
    """The blocking classes took any OSError met while sending for the client leaving,
    and closed quietly: a stream whose file failed was cut with no line in the log."""
    mark = server.mark()
    data = raw_request(server.port, b"GET /raise/mid-oserror HTTP/1.1\r\nHost: t\r\n\r\n")
    (resp,) = parse_responses(data)
    assert resp.status == 200 and not resp.complete
    server.wait_for_log(r"\[ERROR\] Error handling request GET /raise/mid-oserror", since=mark)
    server.wait_for_log(r"OSError: \[Errno 5\] boom-mid-oserror", since=mark)


@pytest.mark.timeout(30)
def test_write_then_a_file_wrapper_sends_both(server: ServerProcess, worker_class: str) -> None:
    """PEP 3333 lets an app write() and then return any iterable, a file_wrapper too: the
    file follows the written prefix under the framing already sent. It used to start a
    second head, fail, and cut the response after the prefix."""
    data = raw_request(server.port, b"GET /raise/write-file HTTP/1.1\r\nHost: t\r\n\r\n")
    (resp,) = parse_responses(data)
    assert resp.status == 200 and resp.complete
    assert resp.body == b"PREFIX\n" + (APPS / "raising.py").read_bytes()


@pytest.mark.timeout(30)
def test_a_str_written_before_the_head_is_a_500(server: ServerProcess, worker_class: str) -> None:
    """The head was marked sent before the str failed to encode: the client got nothing at
    all and the access log a 200. Now it is the app's error with nothing sent, a 500."""
    mark = server.mark()
    data = raw_request(server.port, b"GET /raise/write-str HTTP/1.1\r\nHost: t\r\n\r\n")
    (resp,) = parse_responses(data)
    assert resp.status == 500 and b"never sent" not in data
    server.wait_for_log(r"InvalidResponseError: app wrote str, not bytes", since=mark)
    # A bytearray or memoryview is written, as it always was.
    data = raw_request(server.port, b"GET /raise/write-buffers HTTP/1.1\r\nHost: t\r\n\r\n")
    (resp,) = parse_responses(data)
    assert (resp.status, resp.body) == (200, b"array;view;ABC;")  # (array "H": little-endian)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("where", ["first", "midway"])
def test_a_none_from_the_iterable_is_the_apps_error(
    server: ServerProcess, worker_class: str, where: str
) -> None:
    """None is not bytes: a 500 when nothing was sent, else the response is cut (no last
    chunk), and logged either way. fast took a None for the end of the body: a truncated
    response that looked complete, and nothing logged."""
    mark = server.mark()
    target = b"/raise/first-none" if where == "first" else b"/raise/yield-none"
    data = raw_request(server.port, b"GET " + target + b" HTTP/1.1\r\nHost: t\r\n\r\n")
    (resp,) = parse_responses(data)
    if where == "first":
        assert resp.status == 500 and b"after" not in data
    else:
        assert resp.status == 200 and not resp.complete
        assert resp.body == b"part1;"
    server.wait_for_log(r"yielded NoneType, not bytes", since=mark)


# -- Django --------------------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_django_app(server_factory: ServerFactory, worker_class: str) -> None:
    """A Django project: its database layer, a form, an upload. Under ``-k fast`` every
    query failed once (SynchronousOnlyOperation: the loop was running in the thread)."""
    server = server_factory("djangoapp:application", *worker_args(worker_class))
    resp = get(server.port, "/db")
    assert (resp.status, resp.body) == (200, b"42"), server.logs
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        conn.request(
            "POST",
            "/form",
            body="name=d%C3%A9j%C3%A0",
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        reply = conn.getresponse()
        assert json.loads(reply.read()) == {"method": "POST", "name": "d\u00e9j\u00e0"}
        data = os.urandom(300_000)
        conn.request("POST", "/upload", body=data, headers={"Content-Type": "x/y"})
        reply = conn.getresponse()
        expected = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        assert json.loads(reply.read()) == expected
        if worker_class == "fast":
            # Chunked: fast gives it a CONTENT_LENGTH (the body is buffered), so Django,
            # which reads CONTENT_LENGTH bytes and no more, sees it.
            conn.request("POST", "/upload", body=iter([data[:1000], data[1000:]]))
            reply = conn.getresponse()
            assert json.loads(reply.read()) == expected
    finally:
        conn.close()
    assert "Traceback" not in server.logs, server.logs


@pytest.mark.timeout(60)
def test_app_takes_the_connection_over(server_factory: ServerFactory, worker_class: str) -> None:
    """``environ["gunicorn.socket"]`` and ``StopIteration``, as under gunicorn: WebSocket
    libraries (simple-websocket, so Flask-Sock) answer 101 on the raw socket themselves
    and end the app call with StopIteration; the server then writes nothing and closes,
    and the socket has no timeout (a WebSocket may idle longer than ``--timeout``). Not
    on fast: its connections belong to the event loop, and the app gets no socket."""
    # --request-timeout 1 must not bound a request that asked for an upgrade, on any class
    # (sync's own is the master's: it once took the WebSocket for a request 1 s old and
    # killed the worker). sync stays bounded by --timeout, as gunicorn's.
    server = server_factory(
        "takeover:app",
        *worker_args(worker_class),
        "--timeout",
        "5",
        "--request-timeout",
        "1",
        "--access-logfile",
        "-",
    )
    if worker_class == "fast":
        assert get(server.port, "/echo").body == b"no socket\n"
        return
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(
            b"GET /echo HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
        )
        reader = sock.makefile("rb")
        assert reader.readline().startswith(b"HTTP/1.1 101 ")
        while reader.readline() not in (b"\r\n", b""):
            pass
        assert reader.readline() == b"timeout=None\n"
        time.sleep(1.5)  # idle past --request-timeout
        sock.sendall(b"hello\n")
        assert reader.readline() == b"hello\n"
        sock.sendall(b"bye\n")
        assert reader.read() == b""  # closed, and nothing of the server's after the app's bytes
    assert get(server.port, "/").body == b"plain\n"  # the worker serves on
    server.wait_for_log(r'"GET / HTTP/1.1" 200', stream="stdout")
    assert "Traceback" not in server.logs, server.logs
    assert '"GET /echo HTTP/1.1"' not in server.stdout, server.stdout  # as gunicorn: no line


@pytest.mark.timeout(60)
@pytest.mark.parametrize("worker_class", ["sync", "gthread", "gevent", "eventlet"])
def test_upgrade_header_does_not_unbound_a_plain_response(
    server_factory: ServerFactory, worker_class: str
) -> None:
    """A WebSocket handshake's socket loses its timeout (test above), but a response the
    worker writes itself gets it back: a client that adds ``Upgrade: websocket`` to a
    request for a large body and never reads must not hold a thread forever."""
    server = server_factory("takeover:app", *worker_args(worker_class), "--timeout", "2")
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        sock.sendall(
            b"GET /big HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
        )
        time.sleep(5)  # not reading, for more than --timeout
        received = len(read_until_close(sock))
    assert received < 32 * 1024 * 1024, received  # the worker gave up on the send
    assert get(server.port, "/").body == b"plain\n"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("worker_class", ["gthread", "gevent", "eventlet"])
def test_an_upgrade_header_alone_does_not_lift_the_request_limit(
    server_factory: ServerFactory, worker_class: str
) -> None:
    """Any client can say ``Upgrade: websocket``: the watchdog lets a request go only once
    its app has written on the socket itself (a WebSocket it took, test above). One whose
    app just runs long is cut at ``--request-timeout`` like any other: 504."""
    server = server_factory(
        "takeover:app", *worker_args(worker_class), "--workers", "1",
        "--timeout", "30", "--request-timeout", "1",
    )  # fmt: skip
    with connect(server.port, timeout=20) as sock:
        sock.sendall(
            b"GET /sleep?6 HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
        )
        (resp,) = parse_responses(read_until_close(sock, 20))
    assert resp.status == 504, (resp, server.logs)
    server.wait_for_log(r"Request timeout|request_timeout|504")


# -- the app's thread ------------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_the_app_sees_no_running_event_loop(
    server_factory: ServerFactory, worker_class: str
) -> None:
    """As in a plain thread, under every class, fast's loop included: Django raises
    SynchronousOnlyOperation on every ORM call when a loop is running in the thread, and
    asyncio.run() (or asgiref's async_to_sync, behind Flask's async views) refuses to
    start."""
    server = server_factory("loopcheck:app", *worker_args(worker_class), "--workers", "1")
    assert get(server.port, "/call").body == b"no loop"
    assert get(server.port, "/run").body == b"asyncio.run worked"
    # 400 chunks of 64 KiB: more than the sockets hold, so the fast worker pulls
    # the later ones from its resume_writing callback.
    with connect(server.port) as sock:
        sock.sendall(b"GET /stream?n=400 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        time.sleep(0.5)  # let the buffers fill and the server wait for us
        data = read_until_close(sock, 20)
    assert (data.count(b" no loop\n"), data.count(b" a running loop\n")) == (400, 0)
    assert get(server.port, "/closed").body == b"no loop"
    assert get(server.port, "/run").body == b"asyncio.run worked"  # and the worker goes on


# -- refused requests leave a trace ----------------------------------------------------------------


@pytest.mark.timeout(60)
def test_refused_requests_are_logged(server_factory: ServerFactory, worker_class: str) -> None:
    """Every request the core refuses is in the error log, in gunicorn's words (log
    scrapers and fail2ban rules match them), and in the access log when its head was read:
    a smuggling probe or a cut-short upload must not pass unseen."""
    server = server_factory(
        "echo:app",
        *worker_args(worker_class),
        "--access-logfile",
        "-",
        "--limit-request-body",
        "100",
        "--header-timeout",
        "1",
    )
    # A head the parser refuses: no request line to log, so the error log only. The
    # answer names the server like every other answer.
    refused = raw_request(server.port, b"GARBAGE\r\n\r\n")
    assert refused.startswith(b"HTTP/1.1 400 ")
    assert b"\r\nServer: forkhorn\r\n" in refused.partition(b"\r\n\r\n")[0]
    server.wait_for_log(r"\[WARNING\] Invalid request from ip=127\.0\.0\.1: .+ \(400\)")
    # Both framings at once, the classic smuggling probe.
    probe = (
        b"POST /smuggle HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    )
    mark = server.mark()
    assert raw_request(server.port, probe).startswith(b"HTTP/1.1 400 ")
    server.wait_for_log(r"\[WARNING\] Invalid request from ip=127\.0\.0\.1: .+ \(400\)", since=mark)
    # Its head was read whole, so it has its access-log line, as in gunicorn.
    server.wait_for_log(r'"POST /smuggle HTTP/1\.1" 400 ', stream="stdout")
    # A body over the limit, found while reading it (chunked: no length up front).
    chunk = b"c8\r\n" + b"x" * 200 + b"\r\n0\r\n\r\n"
    big = b"POST /big?read=all HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
    assert raw_request(server.port, big + chunk).startswith(b"HTTP/1.1 413 ")
    server.wait_for_log(r"\[WARNING\] Invalid request from ip=127\.0\.0\.1: .+ \(413\)")
    server.wait_for_log(r'"POST /big\?read=all HTTP/1\.1" 413 ', stream="stdout")
    # An upload the client abandons half-way: routine, so INFO, and a 400 in the access log.
    with connect(server.port) as sock:
        sock.sendall(b"POST /cut?read=all HTTP/1.1\r\nHost: t\r\nContent-Length: 50\r\n\r\n")
        sock.sendall(b"x" * 10)
        time.sleep(0.3)
    server.wait_for_log(r"\[INFO\] Incomplete request from ip=127\.0\.0\.1: ")
    server.wait_for_log(r'"POST /cut\?read=all HTTP/1\.1" 400 ', stream="stdout")
    # A head that never completes: 408, also INFO.
    with connect(server.port) as sock:
        sock.sendall(b"GET /late HTTP/1.1\r\nHost: t\r\n")
        assert read_until_close(sock, 20).startswith(b"HTTP/1.1 408 ")
    server.wait_for_log(r"\[INFO\] Request timeout from ip=127\.0\.0\.1: .+ \(408\)")
    # A client that hangs up mid-head (or a health check): its doing, INFO; any client
    # could otherwise fill the log with warnings.
    mark = server.mark()
    with connect(server.port) as sock:
        sock.sendall(b"GET /gone HTTP/1.1\r\nHo")
    server.wait_for_log(
        r"\[INFO\] Incomplete request from ip=127\.0\.0\.1: connection closed before the "
        r"request head was complete",
        since=mark,
    )
    assert server.count_log(r"\[WARNING\]", since=mark) == 0
    assert get(server.port, "/?read=none").status == 200  # and it serves on


@pytest.mark.timeout(60)
def test_access_log_counts_only_the_body_bytes_sent(
    server_factory: ServerFactory, worker_class: str
) -> None:
    """``%(b)s`` is what went on the wire as body, as gunicorn counts it: nothing for HEAD,
    204 and 304 whatever the app returned, and no more than the app's Content-Length."""
    server = server_factory("stream:app", *worker_args(worker_class), "--access-logfile", "-")
    cases = [
        ("HEAD", "/head?chunks=2&size=5", 200, 0),
        ("HEAD", "/headwhole?chunks=2&size=5&whole=1", 200, 0),
        ("GET", "/nc?chunks=1&size=5&status=204+No+Content", 204, 0),
        ("GET", "/nm?chunks=1&size=5&status=304+Not+Modified&whole=1", 304, 0),
        ("GET", "/cut?chunks=2&size=10&length=5", 200, 5),
        ("GET", "/cutwhole?chunks=2&size=10&length=5&whole=1", 200, 5),
        ("GET", "/all?chunks=2&size=10", 200, 20),
    ]
    for method, target, status, size in cases:
        client = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        try:
            client.request(method, target)
            resp = client.getresponse()
            assert (resp.status, len(resp.read())) == (status, size)
        finally:
            client.close()
        line = server.wait_for_log(rf'"{method} {re.escape(target)} HTTP/1\.1" ', stream="stdout")
        assert f'HTTP/1.1" {status} {size} ' in line.string, line.string


@pytest.mark.timeout(60)
@pytest.mark.parametrize("sendfile", ["default", "--no-sendfile"])
def test_a_file_download_the_client_leaves_logs_what_went_out(
    server_factory: ServerFactory, worker_class: str, tmp_path: Path, sendfile: str
) -> None:
    """A ``wsgi.file_wrapper`` download the client leaves after 1 MB: its access line
    said 0 bytes on the blocking classes (sendfile, then, after that was fixed, the
    ``--no-sendfile`` copy); it now says what went out (at least what the client read),
    as a streamed body's line does."""
    payload = tmp_path / "big.bin"
    with payload.open("wb") as out:
        out.truncate(64 * 1024 * 1024)
    server = server_factory(
        "files:app", *worker_args(worker_class), "--access-logfile", "-",
        *([sendfile] if sendfile != "default" else []),
        env={"FORKHORN_TEST_FILE": str(payload)},
    )  # fmt: skip
    with connect(server.port, timeout=20) as sock:
        sock.sendall(b"GET /left HTTP/1.1\r\nHost: t\r\n\r\n")
        got = 0
        while got < 1024 * 1024:
            chunk = sock.recv(65536)
            assert chunk, "closed early"
            got += len(chunk)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    line = server.wait_for_log(r'"GET /left HTTP/1\.1" 200 (\d+) ', stream="stdout", timeout=30)
    assert 1024 * 1024 - 65536 <= int(line.group(1)) < 64 * 1024 * 1024, line.string


@pytest.mark.timeout(30)
def test_a_stop_iteration_on_a_plain_request_is_a_500(
    server: ServerProcess, worker_class: str
) -> None:
    """gunicorn's takeover signal only where a takeover means something: on a plain
    request a leaked StopIteration (next() on an exhausted iterator) was taken for one,
    and the client got an empty reply with nothing logged."""
    mark = server.mark()
    data = raw_request(server.port, b"GET /raise/stop HTTP/1.1\r\nHost: t\r\n\r\n")
    (resp,) = parse_responses(data)
    assert resp.status == 500
    server.wait_for_log(r"Error handling request GET /raise/stop$", since=mark)
    server.wait_for_log(r"^StopIteration", since=mark)


@pytest.mark.timeout(30)
def test_the_response_that_reaches_max_requests_says_close(
    server_factory: ServerFactory, worker_class: str
) -> None:
    """The last response before a worker retires announces Connection: close, on one
    keep-alive connection too. fast announced it one response late and served
    max_requests + 1."""
    if worker_class == "sync":
        pytest.skip("sync closes every connection after its response")
    # Four requests: the start-up handshake's, then three on one connection.
    server = server_factory("hello:app", *worker_args(worker_class), "--max-requests", "4")
    with RawConnection(server.port) as conn:
        for n in (2, 3, 4):
            conn.send(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
            resp = conn.read_response()
            assert resp.status == 200
            assert (resp.header("Connection") == "close") == (n == 4), (n, resp.headers)
        assert conn.read_until_close(timeout=10) == b""
    # max_requests 1: every worker's first response is its last.
    server = server_factory("hello:app", *worker_args(worker_class), "--max-requests", "1")
    with RawConnection(server.port) as conn:
        conn.send(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        resp = conn.read_response()
        assert (resp.status, resp.header("Connection")) == (200, "close"), resp.headers


@pytest.mark.timeout(30)
def test_access_log_counts_the_servers_own_500(
    server_factory: ServerFactory, worker_class: str
) -> None:
    """The 500 body the server sends for a failed app is body bytes like any other (its
    400s were counted; the 500 said 0)."""
    server = server_factory("routes:app", *worker_args(worker_class), "--access-logfile", "-")
    data = raw_request(server.port, b"GET /raise/before HTTP/1.1\r\nHost: t\r\n\r\n")
    (resp,) = parse_responses(data)
    assert resp.status == 500
    line = server.wait_for_log(r'"GET /raise/before HTTP/1\.1" ', stream="stdout")
    assert f'HTTP/1.1" 500 {len(resp.body)} ' in line.string, line.string


@pytest.mark.timeout(90)
@pytest.mark.parametrize("by", ["app", "limit", "expect"])
def test_an_upload_answered_unread_reaches_the_client(
    server_factory: ServerFactory, worker_class: str, by: str
) -> None:
    """An app that answers a 4 MB upload without reading it (an early 401, a redirect),
    or the server's own 413 past ``limit_request_body``: the connection was closed with
    the rest arriving, and the kernel's reset reached http.client (which sends the whole
    body, then reads) before the response, 6 to 15 times in 20 on sync, some on gthread,
    gevent and eventlet (the 413 on gthread, gevent and eventlet). The response is now
    followed by our FIN and what still arrives is read and dropped (a lingering close).
    ``expect``: the client asked for ``100 Continue`` and sent the body without waiting
    (RFC 9110 allows it; curl does after a second), which the lingering close skipped."""
    limit = ["--limit-request-body", "1000"] if by == "limit" else []
    headers = {"Expect": "100-continue"} if by == "expect" else {}
    server = server_factory("echo:app", *worker_args(worker_class), *limit)
    statuses = []
    for _ in range(12):
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        try:
            conn.request("POST", "/?read=none", body=b"x" * 4_000_000, headers=headers)
            resp = conn.getresponse()
            resp.read()
            statuses.append(resp.status)
        except OSError as exc:
            statuses.append(repr(exc))
        finally:
            conn.close()
    assert statuses == [413 if by == "limit" else 200] * 12, (statuses, server.logs)


def upload_unread(port: int, path: str, size: int) -> tuple[bytes, str]:
    """POST ``size`` bytes to ``path`` from a thread while reading the response until the
    server closes: what arrived, and the error that ended the reading ("" for a FIN)."""
    sock = connect(port, 30)
    head = b"POST %s HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n" % (path.encode(), size)

    def send() -> None:
        with contextlib.suppress(OSError):
            sock.sendall(head)
            piece = b"u" * 65536
            for _ in range(size // len(piece)):
                sock.sendall(piece)

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    data = bytearray()
    error = ""
    with sock:
        try:
            while chunk := sock.recv(65536):
                data += chunk
        except OSError as exc:
            error = repr(exc)
    sender.join(10)
    return bytes(data), error


@pytest.mark.timeout(30)
def test_an_access_formatter_set_in_post_fork_gets_the_atoms(
    server_factory: ServerFactory, worker_class: str, tmp_path: Path
) -> None:
    """gunicorn's JSON access-log recipe done in a hook: the formatter is set on the
    access handler in post_fork, after logging was set up. Whether records carry the
    atoms was decided then, so the formatter got () and wrote nothing."""
    conf = tmp_path / "json_access.conf.py"
    conf.write_text(
        "import json, logging\n"
        "class Json(logging.Formatter):\n"
        "    def format(self, record):\n"
        "        return json.dumps({'path': record.args['U'], 'status': record.args['s']})\n"
        "def post_fork(server, worker):\n"
        "    for handler in logging.getLogger('gunicorn.access').handlers:\n"
        "        handler.setFormatter(Json())\n"
    )
    server = server_factory(
        "hello:app", *worker_args(worker_class), "--workers", "1", "-c", str(conf),
        "--access-logfile", "-",
    )  # fmt: skip
    assert get(server.port, "/json-please").status == 200
    line = server.wait_for_log(r'"path": "/json-please"', stream="stdout")
    assert json.loads(line.string) == {"path": "/json-please", "status": "200"}


@pytest.mark.timeout(30)
def test_a_websocket_handshake_on_fast_says_why_it_fails(server_factory: ServerFactory) -> None:
    """fast has no socket to hand over: a WebSocket app fails with a KeyError, and the
    log said nothing of the cause. It says it once, naming the classes that can."""
    server = server_factory("takeover:app", "-k", "fast", "--workers", "1")
    handshake = (
        b"GET /strict HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    for _ in range(2):
        (resp,) = parse_responses(raw_request(server.port, handshake))
        assert resp.status == 500
    server.wait_for_log(r"the fast worker cannot hand a connection over")
    assert server.count_log(r"cannot hand a connection over") == 1  # once per worker


@pytest.mark.timeout(60)
@pytest.mark.parametrize("sleep", ["0", "2"])
def test_an_upload_that_stops_midway_gets_408_not_the_hang_treatment(
    server_factory: ServerFactory, worker_class: str, sleep: str
) -> None:
    """A client that sends part of a body and goes silent (a phone losing its network),
    with timeout and header_timeout in the defaults' ratio: the body's deadline never
    came before ``timeout``, so gthread and eventlet answered 500 with an ERROR and a
    stack, gevent logged one, and sync's worker was killed by the master. Now 408 and one
    INFO line, on every class; also when the app works a while before it reads (each
    wait ended a little under ``timeout`` from its own start, past the watchdog's limit)."""
    server = server_factory(
        "echo:app", *worker_args(worker_class), "--timeout", "3", "--header-timeout", "3"
    )
    mark = server.mark()
    with connect(server.port, 20) as sock:
        sock.sendall(
            f"POST /?read=all&sleep={sleep} HTTP/1.1\r\nHost: t\r\n"
            "Content-Length: 100000\r\n\r\n".encode()
        )
        sock.sendall(b"x" * 1000)  # then nothing more, connection kept open
        (resp,) = parse_responses(read_until_close(sock, 20))
    assert resp.status == 408
    server.wait_for_log(r"\[INFO\] Request timeout from ip=127\.0\.0\.1: ", since=mark)
    time.sleep(1.5)  # what a watchdog or the master would have done by now
    assert server.count_log(r"WORKER TIMEOUT|\[ERROR\]|\[CRITICAL\]", since=mark) == 0, server.logs


@pytest.mark.timeout(60)
def test_a_body_sent_after_100_continue_late_in_the_limit_is_read(
    server_factory: ServerFactory, worker_class: str
) -> None:
    """``Expect: 100-continue``, and the app works most of ``timeout`` before it reads:
    the client sends its body only once the ``100 Continue`` came, one round trip later.
    The wait for that body was bounded from the request's last progress, the app's own
    work included, and the answer was a 408 right behind the 100 that asked for the body
    (gthread, gevent, eventlet). The first read now starts the client's clock."""
    if worker_class in ("sync", "fast"):
        pytest.skip("sync bounds the request by timeout; fast reads bodies before the app")
    server = server_factory("echo:app", *worker_args(worker_class), "--timeout", "4")
    with connect(server.port, 20) as sock:
        sock.sendall(
            b"POST /?read=all&sleep=3.6 HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n"
            b"Expect: 100-continue\r\n\r\n"
        )
        interim = b""
        while b"\r\n\r\n" not in interim:
            piece = sock.recv(100)
            assert piece, interim
            interim += piece
        assert interim.startswith(b"HTTP/1.1 100 Continue\r\n"), interim
        time.sleep(0.3)  # the client's round trip (not a measurement)
        sock.sendall(b"hello")
        (resp,) = parse_responses(interim.partition(b"\r\n\r\n")[2] + read_until_close(sock, 20))
    assert resp.status == 200, resp
    assert json.loads(resp.body)["body"] == "hello"


@pytest.mark.timeout(60)
def test_the_last_answer_before_a_worker_retires_survives_an_unread_upload(
    server_factory: ServerFactory, worker_class: str
) -> None:
    """The lingering close after an unread upload was dropped when the worker then
    exited (its last request before max_requests, or a reload or stop meanwhile): the
    exit closed the socket with the upload still arriving, the reset threw away what the
    send queue held, and a 4 MB answer arrived cut (0.7-2.5 MB). A stopping worker now
    waits for a lingering close whose answer is still going out."""
    size = 4 * 1024 * 1024
    # Two requests: the start-up handshake's, then the upload; the worker then retires.
    server = server_factory(
        "stream:app", *worker_args(worker_class), "--workers", "1", "--max-requests", "2"
    )
    path = f"/?chunks=64&size=65536&length={size}&whole=1"
    data, error = upload_unread(server.port, path, 20 * 1024 * 1024)
    (resp,) = parse_responses(data)
    assert (resp.status, len(resp.body), error) == (200, size, ""), server.logs[-2000:]
    assert resp.complete


@pytest.mark.timeout(30)
def test_a_body_that_misses_its_content_length_is_logged(
    server_factory: ServerFactory, worker_class: str
) -> None:
    """The framing already cut a long body and closed after a short one; now the operator
    hears of it too, the usual cause of a client's "transfer closed with outstanding read
    data remaining"."""
    server = server_factory("stream:app", *worker_args(worker_class))
    cases = {
        "/short?chunks=1&size=5&length=10": "the app sent 5 of the 10 bytes its Content-Length"
        " announced",
        "/shortwhole?chunks=1&size=5&length=10&whole=1": "the app sent 5 of the 10 bytes",
        "/long?chunks=2&size=10&length=15": "went past its Content-Length, 15, and was cut",
        "/longwhole?chunks=2&size=10&length=15&whole=1": "body of 20 bytes was cut at its "
        "Content-Length, 15",
    }
    for target, words in cases.items():
        mark = server.mark()
        raw_request(server.port, f"GET {target} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
        line = server.wait_for_log(
            rf"\[WARNING\] Response to GET {re.escape(target)}: ", since=mark
        )
        assert words in line.string
        # A short body can only end with the connection; a long one cut at its length
        # leaves the framing intact, and the connection goes on (as in gunicorn).
        closes = target.startswith("/short")
        assert line.string.endswith("; the connection is closed") == closes, line.string
    # A body that matches says nothing.
    mark = server.mark()
    raw_request(server.port, b"GET /ok?chunks=2&size=5&length=10 HTTP/1.1\r\nHost: t\r\n\r\n")
    assert get(server.port, "/").status == 200
    assert server.count_log(r"Response to GET /ok", since=mark) == 0


@pytest.mark.timeout(30)
def test_a_body_cut_at_its_content_length_keeps_the_connection(
    server_factory: ServerFactory, worker_class: str
) -> None:
    """The app sent more than its Content-Length: exactly the announced bytes go out, so
    the next request on the connection is served. The connection was closed without a
    ``Connection: close``, and a client's next request on it failed."""
    if worker_class == "sync":
        pytest.skip("sync closes every connection after its response")
    server = server_factory("stream:app", *worker_args(worker_class))
    targets = ["/longwhole?chunks=2&size=10&length=15&whole=1", "/long?chunks=2&size=10&length=15"]
    request = b"".join(f"GET {t} HTTP/1.1\r\nHost: t\r\n\r\n".encode() for t in targets)
    data = raw_request(
        server.port, request + b"GET /ok HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    )
    responses = parse_responses(data)
    assert [(r.status, len(r.body)) for r in responses[:2]] == [(200, 15), (200, 15)], data
    assert len(responses) == 3 and responses[2].status == 200, data


@pytest.mark.timeout(90)
@pytest.mark.parametrize("what", ["one-piece", "file"])
def test_a_slow_but_steady_reader_is_not_cut(
    server_factory: ServerFactory, worker_class: str, tmp_path: Path, what: str
) -> None:
    """A client that keeps reading a large response, slowly (about 5 KB/s here), makes
    progress: it must not be cut at ``timeout``. Progress was recorded per 1 MiB of a
    one-piece body and per 8 MiB of a file (so such a client was cut on gthread, gevent and
    eventlet), and on fast only when the transport's own buffer moved. Then the socket's
    timeout bounded each 64 KiB piece as a whole (``sendall``), and a send could wait for
    a third of the kernel's buffer to drain, so a slower reader was cut, unlogged. The
    rest is read at full speed at the end: a cut was hidden by what the kernel buffered."""
    if worker_class == "sync":
        pytest.skip("sync bounds the whole request by timeout, as gunicorn's")
    payload = tmp_path / "payload.bin"
    payload.write_bytes(os.urandom(4_000_000))
    if what == "file":
        server = server_factory(
            "files:app",
            *worker_args(worker_class),
            "--timeout",
            "2",
            env={"FORKHORN_TEST_FILE": str(payload)},
        )
        target = b"/"
    else:
        server = server_factory("bulk:app", *worker_args(worker_class), "--timeout", "2")
        target = b"/?size=4000000"
    with socket.socket() as sock:
        # A small receive buffer, set before the connection opens: the client's window
        # reopens (and the server sees it read) every few KB it takes. With a large one
        # a reader this slow shows nothing for longer than the timeout: Linux reopens a
        # full window only once half of the buffer was read (docs/lifecycle.md).
        # The smallest buffer Linux allows (it raises 2048 to 4608): an acknowledgement
        # every 2 KB, about 0.4 s apart at this pace. With 4096 they came every 6 KB, 1.2
        # to 1.4 s apart, longer than the watchdog's second look waits (half of timeout,
        # 1 s): the reader was cut whenever that window fell between two of them.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)
        sock.settimeout(10)
        sock.connect(("127.0.0.1", server.port))
        sock.sendall(b"GET " + target + b" HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        data = b""
        stop = time.monotonic() + 6  # three timeouts
        while time.monotonic() < stop:
            piece = sock.recv(512)
            assert piece, f"cut after {len(data)} bytes\n{server.logs}"
            data += piece
            time.sleep(0.1)  # reads about 5 KB a second
        # Then the rest at full speed: a server that gave up meanwhile cut it short (what
        # the kernel had buffered on both sides hid that from the slow reads).
        data += read_until_close(sock, 20)
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ")
    assert len(body) == 4_000_000, f"cut after {len(body)} bytes\n{server.logs}"
    assert "without progress" not in server.logs and "Dropped a client" not in server.logs


@pytest.mark.timeout(90)
def test_the_previous_responses_tail_is_not_progress(
    server_factory: ServerFactory, worker_class: str
) -> None:
    """On a keep-alive connection, the client still taking the previous response's tail
    (buffered by the kernel) is not progress of the next request: a hung one is cut at its
    limit. The watchdog's kernel probe first counted it, and the hung request ran on."""
    if worker_class in ("sync", "fast"):
        pytest.skip("no in-worker watchdog: the master's timeout bounds these")
    server = server_factory("routes:app", *worker_args(worker_class), "--request-timeout", "2")
    done = threading.Event()

    def read_slowly(sock: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while not done.is_set() and sock.recv(4096):
                time.sleep(0.1)  # about 40 KB a second

    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)
        mark = server.mark()
        sock.sendall(
            b"GET /bulk?size=1500000 HTTP/1.1\r\nHost: t\r\n\r\n"
            b"GET /slow/hang HTTP/1.1\r\nHost: t\r\n\r\n"
        )
        reader = threading.Thread(target=read_slowly, args=(sock,), daemon=True)
        reader.start()
        try:
            # The first response is all in the kernel's buffers (the client takes it for
            # half a minute more) when the second request starts, and hangs.
            server.wait_for_log(r"slow app: hanging", since=mark, timeout=40)
            server.wait_for_log(
                r"Request timeout \(pid:\d+\): GET /slow/hang", since=mark, timeout=6
            )
        finally:
            done.set()
            reader.join(10)


@pytest.mark.timeout(60)
def test_a_steady_upload_is_progress(server_factory: ServerFactory, worker_class: str) -> None:
    """A client that keeps sending its body (here 100 KB at about 25 KB/s, twice the
    timeout) is not cut: gthread, gevent and eventlet counted only sends as progress, so
    any upload longer than ``timeout`` got a 500, where gunicorn's gthread completes it."""
    if worker_class == "sync":
        pytest.skip("sync bounds the whole request by timeout, as gunicorn's")
    server = server_factory("echo:app", *worker_args(worker_class), "--timeout", "2")
    with connect(server.port) as sock:
        sock.sendall(
            b"POST /up?read=all HTTP/1.1\r\nHost: t\r\nContent-Length: 100000\r\n"
            b"Connection: close\r\n\r\n"
        )
        for _ in range(40):
            sock.sendall(b"u" * 2500)
            time.sleep(0.1)
        answer = read_until_close(sock, 20)
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:200]


@pytest.mark.timeout(60)
def test_an_overloaded_worker_refuses_with_a_readable_503(
    server_factory: ServerFactory, worker_class: str
) -> None:
    """Past ``worker_connections`` the answer is 503, then a clean close: sync and fast
    closed with the request unread, and the reset destroyed the 503 (19 or 20 of 20)."""
    server = server_factory(
        "hello:app", *worker_args(worker_class)[:2], "--workers", "1", "--worker-connections", "1"
    )
    with connect(server.port) as held:
        held.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n")  # an unfinished head holds the slot
        time.sleep(0.3)
        for _ in range(10):
            with connect(server.port) as sock:
                sock.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
                answer = read_until_fin(sock)
            assert answer.startswith(b"HTTP/1.1 503 "), answer[:100]


# -- clients that leave or stop reading ------------------------------------------------------------

# 2000 pieces of 64 KiB: far more than loopback sockets buffer.
BIG_STREAM = b"GET /?chunks=2000&size=65536 HTTP/1.1\r\nHost: t\r\n\r\n"


@pytest.mark.timeout(60)
def test_a_client_that_leaves_mid_stream_is_still_logged(
    server_factory: ServerFactory, worker_class: str
) -> None:
    server = server_factory("stream:app", *worker_args(worker_class), "--access-logfile", "-")
    with connect(server.port) as sock:
        sock.sendall(BIG_STREAM.replace(b"/?", b"/left?"))
        assert sock.recv(65536).startswith(b"HTTP/1.1 200 OK")
        time.sleep(1)  # reads no more: the server's buffers fill and it waits for us
    # The request ended when the client left; it is in the access log all the same.
    server.wait_for_log(r'"GET /left\?chunks=2000&size=65536 HTTP/1\.1" 200', stream="stdout")
    assert get(server.port, "/?chunks=2&size=3").status == 200  # and the worker serves on


@pytest.mark.timeout(90)
def test_an_endless_stream_stops_when_its_client_resets(
    server_factory: ServerFactory, worker_class: str
) -> None:
    """A client that resets mid-stream ends the stream: the iterable is closed and the
    worker (one) serves the next client. The fast worker kept pulling an endless
    iterable into a transport that dropped every write (no buffer filled, so no
    backpressure) and answered nobody until the master killed it."""
    server = server_factory(
        "stream:app", *worker_args(worker_class), "--access-logfile", "-", "--workers", "1"
    )
    endless = b"GET /gone?chunks=1000000000&size=65536 HTTP/1.1\r\nHost: t\r\n\r\n"
    for _ in range(4):
        mark = len(server.stdout.splitlines())
        with connect(server.port) as sock:
            sock.sendall(endless)
            received = 0
            while received < 1 << 20:
                chunk = sock.recv(65536)
                assert chunk, "the stream ended early"
                received += len(chunk)
            # An RST, not a FIN: the server's next send fails at once.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        assert get(server.port, "/?chunks=2&size=3").status == 200
        server.wait_for_log(r'"GET /gone\?chunks=1000000000', stream="stdout", since=mark)


@pytest.mark.timeout(60)
def test_a_client_that_stops_reading_is_dropped_after_the_timeout(
    server_factory: ServerFactory, worker_class: str
) -> None:
    """It must not hold its connection, buffers and the app's iterable forever: after
    ``timeout`` without taking any of the response, the server lets it go."""
    server = server_factory("stream:app", *worker_args(worker_class), "--timeout", "2")
    with connect(server.port) as sock:
        sock.sendall(BIG_STREAM)
        first = sock.recv(65536)
        assert first.startswith(b"HTTP/1.1 200 OK")
        # Reads nothing for three and a half timeouts: a send that times out is given a
        # second timeout to show the client read nothing (the kernel shows progress in
        # steps), and the sweep or watchdog acts a second later at most.
        time.sleep(7)
        try:
            rest = read_until_close(sock, 20)  # what the kernel buffered, then the end
        except TimeoutError:
            pytest.fail(f"the connection is still open\n{server.logs}")
    assert len(first) + len(rest) < 2000 * 65536  # cut short: the server dropped it
    # And said so (on gthread, gevent and eventlet a send's timeout dropped it silently).
    said = "WORKER TIMEOUT" if worker_class == "sync" else "Dropped a client|without progress"
    server.wait_for_log(said)
    assert get(server.port, "/?chunks=2&size=3").status == 200


def open_deleted_files(pids: list[int]) -> list[str]:
    """What these processes hold open that was unlinked (a leaked spill file)."""
    held = []
    for pid in pids:
        fd_dir = Path(f"/proc/{pid}/fd")
        for fd in fd_dir.iterdir() if fd_dir.exists() else ():
            with contextlib.suppress(OSError):
                target = os.readlink(fd)
                # (Not the stack dump file each worker holds for the master, nor the
                # scoreboard's claims lock, both in memory.)
                if target.endswith("(deleted)") and not any(
                    name in target for name in ("forkhorn-stacks", "forkhorn-claims")
                ):
                    held.append(target)
    return held


@pytest.mark.timeout(60)
def test_an_upload_cut_short_leaves_no_file_or_memory_behind(
    server_factory: ServerFactory, worker_class: str
) -> None:
    """A client that leaves half-way through a large body: whatever the server buffered
    (in memory, or spilled to an unlinked temporary file) is released."""
    server = server_factory("echo:app", *worker_args(worker_class))
    for _ in range(3):
        with connect(server.port) as sock:
            sock.sendall(
                b"POST /?read=all HTTP/1.1\r\nHost: t\r\nContent-Length: 8000000\r\n\r\n"
                + b"x" * 3_000_000
            )
    deadline = time.monotonic() + 10  # bounds a hang only
    while open_deleted_files(server.worker_pids()):
        assert time.monotonic() < deadline, open_deleted_files(server.worker_pids())
        time.sleep(0.05)  # poll interval
    assert get(server.port, "/echo").status == 200


@pytest.mark.timeout(60)
def test_pipelined_requests_wait_for_a_client_that_reads_late(
    server_factory: ServerFactory, worker_class: str
) -> None:
    """A client pipelining many requests may stop reading for longer than the keep-alive
    timeout (it is not idle: its answers are waiting) and still get every answer."""
    if not keeps_alive(worker_class):
        pytest.skip("sync answers one request per connection")
    server = server_factory("echo:app", *worker_args(worker_class), "--keep-alive", "1")
    count = 10_000
    requests = b"GET /p HTTP/1.1\r\nHost: t\r\n\r\n" * (count - 1)
    requests += b"GET /p HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    with connect(server.port, timeout=30) as sock:
        sock.sendall(requests)
        time.sleep(3)  # longer than the keep-alive timeout, shorter than the send timeout
        data = read_until_close(sock, 30)
    assert data.count(b"HTTP/1.1 200 OK\r\n") == count


@pytest.mark.timeout(30)
def test_header_timeout_of_zero_means_no_deadline(
    server_factory: ServerFactory, worker_class: str
) -> None:
    server = server_factory(
        "hello:app", *worker_args(worker_class), "--header-timeout", "0", "--keep-alive", "10"
    )
    with connect(server.port) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\n")
        time.sleep(2.5)  # two sweeps of the fast worker (idle limits are 10 s here)
        sock.sendall(b"Host: t\r\nConnection: close\r\n\r\n")
        (resp,) = parse_responses(read_until_close(sock))
    assert resp.status == 200


@pytest.mark.timeout(30)
def test_a_new_connections_head_is_due_header_timeout_after_it_opened(
    server_factory: ServerFactory, worker_class: str
) -> None:
    """The head must arrive within header_timeout of the connection (docs/settings.md).
    gthread, gevent and eventlet gave a new connection the whole timeout to send its first
    byte and then the whole timeout again for the rest: a client silent for just under the
    limit, then trickling, held its connection twice as long. Here the limit is 4 s, the
    client is silent 3.5 s and then sends a byte every 0.25 s: cut at 4 s, it has sent two
    bytes (fast, which sweeps once a second, up to six); cut at 7.5 s it would have sent
    sixteen. (Wide margins: the bound is the server's own deadline, not this client's
    clock.)"""
    server = server_factory(
        "hello:app", *worker_args(worker_class), "--header-timeout", "4", "--keep-alive", "10"
    )
    head = b"GET / HTTP/1.1\r\nHost: t\r\nX-Slow: " + b"a" * 100
    with connect(server.port) as sock:
        time.sleep(3.5)  # the client's silence (its behaviour, not a wait for the server)
        sent = 0
        answer = b""
        sock.settimeout(0.25)
        while sent < len(head):
            try:
                sock.sendall(head[sent : sent + 1])
            except OSError:
                break  # closed after the 408
            sent += 1
            try:
                answer = sock.recv(65536)
            except TimeoutError:
                continue  # the client's pace: one byte per 0.25 s
            except OSError:
                break
            break  # the server answered (or closed)
    assert answer.startswith(b"HTTP/1.1 408 "), (answer, sent)
    assert sent < 12, f"cut after {sent} bytes, about {3.5 + sent * 0.25:.2f}s after connect"


# -- absolute-form targets -------------------------------------------------------------------------


@pytest.mark.timeout(30)
def test_absolute_form_target_overrides_host(server: ServerProcess, worker_class: str) -> None:
    """RFC 9112 §3.2.2: the target's authority wins over Host; one that is not a valid
    host, or that carries userinfo (RFC 9110 §4.2.4), is 400."""
    data = raw_request(
        server.port,
        b"GET http://target.example:8080/echo/abs?q=1 HTTP/1.1\r\n"
        b"Host: other.example\r\nConnection: close\r\n\r\n",
    )
    (resp,) = parse_responses(data)
    assert resp.status == 200
    echoed = json.loads(resp.body)
    assert echoed["headers"]["HTTP_HOST"] == "target.example:8080"
    environ = echoed["environ"]
    assert (environ["SERVER_NAME"], environ["SERVER_PORT"]) == ("target.example", "8080")
    assert (echoed["path"], echoed["query"]) == ("/echo/abs", "q=1")
    bad = raw_request(server.port, b"GET http://a^b/echo HTTP/1.1\r\nHost: t\r\n\r\n")
    assert parse_responses(bad)[0].status == 400
    phish = b"GET http://user@target.example/echo HTTP/1.1\r\nHost: t\r\n\r\n"
    assert parse_responses(raw_request(server.port, phish))[0].status == 400
    nameless = b"GET http://:80/echo HTTP/1.1\r\nHost: t\r\n\r\n"  # no host: RFC 9110 §4.2.1
    assert parse_responses(raw_request(server.port, nameless))[0].status == 400
    # A Host without a name (empty is legal) leaves SERVER_NAME and SERVER_PORT to the
    # listener: PEP 3333 forbids them empty.
    for host in (b"", b":81"):
        data = raw_request(
            server.port, b"GET /echo HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n" % host
        )
        environ = json.loads(parse_responses(data)[0].body)["environ"]
        assert (environ["SERVER_NAME"], environ["SERVER_PORT"]) == ("127.0.0.1", str(server.port))


# -- server hooks ----------------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_hooks_get_gunicorns_req_and_a_raising_pre_request_gets_a_500(
    server_factory: ServerFactory, worker_class: str, tmp_path: Path
) -> None:
    """As in gunicorn: answered 500 and logged like an app error; the worker lives on.
    The hooks get gunicorn's ``req`` (str method and path, upper-case header names)."""
    config = tmp_path / "hooks.conf.py"
    config.write_text(
        "def pre_request(worker, req):\n"
        "    worker.log.info('pre %s %s', req.method, req.path)  # gunicorn's own example\n"
        "    if req.path == '/hookboom':\n"
        "        raise RuntimeError('pre_request hook failed')\n"
        "\n"
        "def post_request(worker, req, environ, resp):\n"
        "    worker.log.info('post %r %r %r %r %r', req.method, req.uri, req.query,\n"
        "                    req.version, req.headers[0])\n"
        "    worker.log.info('resp %r %r %r %r %r %r %r', resp.status, resp.status_code,\n"
        "                    resp.response_length, resp.sent, resp.chunked,\n"
        "                    resp.should_close(), resp.headers_sent)\n"
    )
    server = server_factory("hello:app", *worker_args(worker_class), "-c", str(config))
    (before,) = server.wait_for_workers(1)
    resp = get(server.port, "/hookboom")
    assert resp.status == 500
    server.wait_for_log(r"RuntimeError: pre_request hook failed")
    assert get(server.port, "/a%20b?x=1").status == 200
    server.wait_for_log(r"pre GET /a%20b")
    server.wait_for_log(r"post 'GET' '/a%20b\?x=1' 'x=1' \(1, 1\) \('HOST', '127\.0\.0\.1:\d+'\)")
    closes = worker_class == "sync"  # it closes after every response; the others keep alive
    server.wait_for_log(rf"resp '200 OK' 200 13 13 False {closes} True")
    assert server.worker_pids() == [before]  # the same worker: it did not die


# -- limits set to 0 ------------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_limits_of_zero_mean_their_maximum_or_default(
    server_factory: ServerFactory, worker_class: str
) -> None:
    """0 is documented as the maximum (request line 8190, 32768 fields) or the default
    (field size 8190), not as "refuse every request"."""
    server = server_factory(
        "hello:app",
        *worker_args(worker_class),
        "--limit-request-line", "0",
        "--limit-request-fields", "0",
        "--limit-request-field-size", "0",
    )  # fmt: skip
    many = "".join(f"X-F{i}: v\r\n" for i in range(200))  # past the default of 100
    ok = raw_request(
        server.port,
        f"GET /{'a' * 5000} HTTP/1.1\r\nHost: t\r\n{many}Connection: close\r\n\r\n".encode(),
    )
    assert parse_responses(ok)[0].status == 200
    too_long = raw_request(
        server.port, f"GET / HTTP/1.1\r\nHost: t\r\nX-Big: {'b' * 8200}\r\n\r\n".encode()
    )
    assert parse_responses(too_long)[0].status == 431


# -- wsgi.file_wrapper -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def payload(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 MiB and 7 bytes of seeded random data: more than loopback sockets buffer, so a
    client that stops reading makes the server's socket full; no block of it repeats, so
    a block sent twice or out of place shows."""
    path = tmp_path_factory.mktemp("files") / "payload.bin"
    path.write_bytes(random.Random(5).randbytes(12 * 1024 * 1024 + 7))
    return path


def file_server(
    server_factory: ServerFactory,
    worker_class: str,
    payload: Path,
    sendfile: str = "default",
    **env: str,
) -> ServerProcess:
    """``files:app`` serving ``payload``; ``sendfile`` is "default" or "--no-sendfile"."""
    return server_factory(
        "files:app",
        *worker_args(worker_class),
        *([sendfile] if sendfile != "default" else []),
        env={"FORKHORN_TEST_FILE": str(payload), **env},
    )


@pytest.mark.timeout(60)
@pytest.mark.parametrize("sendfile", ["default", "--no-sendfile"])
def test_file_wrapper_sends_what_read_gives(
    server_factory: ServerFactory, worker_class: str, tmp_path: Path, sendfile: str
) -> None:
    """A file object whose descriptor does not hold its bytes went out as the
    descriptor's: gzip.open's compressed bytes under the plain length (the connection
    then cut), /proc/self/status as an empty 200."""
    payload = tmp_path / "plain.txt"
    payload.write_bytes(b"PLAIN TEXT " * 20_000)
    (tmp_path / "plain.txt.gz").write_bytes(gzip.compress(payload.read_bytes()))
    server = file_server(server_factory, worker_class, payload, sendfile)
    (resp,) = parse_responses(raw_request(server.port, b"GET /gzip HTTP/1.1\r\nHost: t\r\n"
                                          b"Connection: close\r\n\r\n", 30))  # fmt: skip
    assert (resp.status, resp.complete) == (200, True)
    assert resp.body == payload.read_bytes()
    (resp,) = parse_responses(raw_request(server.port, b"GET /proc HTTP/1.1\r\nHost: t\r\n"
                                          b"Connection: close\r\n\r\n", 30))  # fmt: skip
    assert (resp.status, resp.complete) == (200, True)
    assert resp.body.startswith(b"Name:\t")


@pytest.mark.timeout(60)
@pytest.mark.parametrize("sendfile", ["default", "--no-sendfile"])
def test_a_file_that_shrinks_while_sent_is_cut_and_said_in_the_log(
    server_factory: ServerFactory, worker_class: str, tmp_path: Path, sendfile: str
) -> None:
    """A file cut short after its length went out: the response ends where the file
    does, the connection closes (the client sees the short body), and the error log says
    why, as it does for an app's body short of its Content-Length. It said nothing."""
    payload = tmp_path / "rotating.log"
    payload.write_bytes(b"x" * 200_000)
    server = file_server(server_factory, worker_class, payload, sendfile)
    data = raw_request(server.port, b"GET /shrinking HTTP/1.1\r\nHost: t\r\n\r\n", 30)
    (resp,) = parse_responses(data)
    assert resp.status == 200 and resp.header("content-length") == "200000"
    assert resp.body == b"x" * 1000 and not resp.complete
    server.wait_for_log("the file ended after 1000 of the 200000 bytes announced")
    assert "Traceback" not in server.logs


def check_file_responses(server: ServerProcess, payload: Path, keep_alive: bool) -> None:
    """``/`` declares the size, ``/nolength`` does not, ``HEAD /`` must carry no body:
    on one connection (pipelined) where the class keeps connections, else one each."""
    expected = payload.read_bytes()
    requests = [
        ("GET", b"GET / HTTP/1.1\r\nHost: t\r\n\r\n"),
        ("GET", b"GET /nolength HTTP/1.1\r\nHost: t\r\n\r\n"),
        ("HEAD", b"HEAD / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"),
    ]
    if keep_alive:
        data = raw_request(server.port, b"".join(raw for _, raw in requests), 30)
        responses = parse_responses(data, [method for method, _ in requests])
    else:
        responses = [
            parse_responses(raw_request(server.port, raw, 30), [method])[0]
            for method, raw in requests
        ]
    full, unsized, head = responses
    for resp in (full, unsized):
        assert (resp.status, resp.complete) == (200, True)
        assert len(resp.body) == len(expected)
        assert resp.body == expected
    assert full.header("content-length") == str(len(expected))
    assert head.status == 200 and head.body == b""
    assert head.header("content-length") == str(len(expected))
    assert "Traceback" not in server.logs


@pytest.mark.timeout(90)
@pytest.mark.parametrize("sendfile", ["default", "--no-sendfile"])
def test_file_wrapper_sends_the_file_exactly(
    server_factory: ServerFactory, worker_class: str, payload: Path, sendfile: str
) -> None:
    server = file_server(server_factory, worker_class, payload, sendfile)
    check_file_responses(server, payload, keeps_alive(worker_class))


def read_slowly_then_fully(port: int, requests: bytes) -> bytes:
    """A client with a small receive buffer that reads a little for a while, then
    everything until the server closes: the server's socket fills up meanwhile."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    with sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
        sock.settimeout(30)
        sock.connect(("127.0.0.1", port))
        sock.sendall(requests)
        chunks = []
        for _ in range(10):
            chunks.append(sock.recv(4096))
            time.sleep(0.05)
        chunks.append(read_until_close(sock, 30))
        return b"".join(chunks)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("limit", ["--timeout", "--request-timeout"])
def test_a_stream_its_client_keeps_reading_outlives_the_request_limit(
    server_factory: ServerFactory, worker_class: str, limit: str
) -> None:
    """gthread, gevent and eventlet bound a request's time without progress, not its
    length: a stream (SSE, a download) that its client keeps taking goes on past the
    limit, as under gunicorn, instead of being cut at ``timeout`` (30 s by default)."""
    if worker_class in ("sync", "fast"):
        pytest.skip("the app's sleeps between chunks block sync's and fast's only thread")
    server = server_factory(
        "routes:app", *worker_args(worker_class), "--workers", "1", limit, "2",
        *(["--timeout", "40"] if limit == "--request-timeout" else []),
    )  # fmt: skip
    mark = server.mark()
    chunks, size = 10, 100
    data = raw_request(
        server.port,
        f"GET /stream?chunks={chunks}&size={size}&sleep=0.5 HTTP/1.1\r\nHost: t\r\n"
        "Connection: close\r\n\r\n".encode(),
        timeout=30,
    )
    (resp,) = parse_responses(data)
    assert (resp.status, resp.complete) == (200, True), server.logs
    assert resp.body == stream_body(chunks, size)  # 4.5 s: past the 2 s limit
    assert server.count_log(r"Request timeout", since=mark) == 0


@pytest.mark.timeout(60)
def test_a_large_body_in_one_piece_read_steadily_outlives_the_limit(
    server_factory: ServerFactory, worker_class: str
) -> None:
    """A 32 MiB body given as one chunk, read at a few MB/s for longer than ``timeout``:
    its progress is recorded piece by piece as it goes out, so it is not cut."""
    if worker_class in ("sync", "fast"):
        pytest.skip("sync bounds a request by timeout (gunicorn's); fast by its loop's beat")
    server = server_factory(
        "takeover:app", *worker_args(worker_class), "--workers", "1", "--timeout", "2"
    )
    mark = server.mark()
    with connect(server.port, timeout=30) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        sock.sendall(b"GET /big HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        received = []
        while chunk := sock.recv(65536):
            received.append(chunk)
            time.sleep(0.006)  # about 4 s for the whole body: past the 2 s limit
    (resp,) = parse_responses(b"".join(received))
    assert (resp.status, resp.complete, len(resp.body)) == (200, True, 32 * 1024 * 1024)
    assert server.count_log(r"Request timeout", since=mark) == 0


@pytest.mark.timeout(90)
@pytest.mark.parametrize("follow", ["request", "stray-byte", "pipelined"])
def test_a_response_the_server_closes_on_is_not_cut_by_what_the_client_sends_next(
    server_factory: ServerFactory, worker_class: str, follow: str
) -> None:
    """RFC 9112 §9.6: a close with client bytes unread, or arriving after it, resets the
    connection, and the reset throws away what of the response the kernel still holds.
    Here the response (300 kB, more than the client's buffer) is the last on its
    connection (``Connection: close`` from the client, or ``--keep-alive 0``) and the
    client sends more before it reads: a next request 50 ms later, a stray byte, or a
    request pipelined right behind. It got 113-160 kB and a reset, on every class."""
    size = 300_000
    server = server_factory(
        "bulk:app", *worker_args(worker_class), "--workers", "1", "--keep-alive", "0"
    )
    head = f"GET /?size={size} HTTP/1.1\r\nHost: t\r\n".encode()
    for attempt in range(3):
        with connect(server.port, timeout=20) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
            if follow == "pipelined":
                sock.sendall(head + b"\r\n" + head + b"\r\n")
            else:
                sock.sendall(head + b"Connection: close\r\n\r\n")
                time.sleep(0.05)
                sock.sendall(head + b"\r\n" if follow == "request" else b"x")
            time.sleep(0.3)  # the response waits in the kernel's buffers meanwhile
            received = read_until_fin(sock, 20)  # a reset fails here
        responses = parse_responses(received)
        assert responses, (attempt, len(received))
        assert responses[0].status == 200, responses[0]
        assert (responses[0].complete, len(responses[0].body)) == (True, size), (
            attempt,
            len(received),
        )


@pytest.mark.timeout(60)
@pytest.mark.parametrize("mode", ["all", "lines"])
def test_a_64_mib_body_read_whole_is_answered_before_the_timeout(
    server_factory: ServerFactory, worker_class: str, mode: str
) -> None:
    """Django's ``request.body`` reads ``CONTENT_LENGTH`` bytes at once. The blocking
    classes' ``wsgi.input`` copied its whole buffer for every piece received: 32 MiB took
    13-19 s, and 64 MiB was killed by the 30 s worker timeout. Now it takes well under a
    second, far inside this test's 10 s ``timeout``; a line longer than the body is
    searched once, not once per piece."""
    server = server_factory(
        "echo:app", *worker_args(worker_class), "--workers", "1", "--timeout", "10"
    )
    size = 64 * 1024 * 1024
    block = bytes(range(256)) * 4096  # 1 MiB, no newline
    with connect(server.port, timeout=60) as sock:
        sock.sendall(
            f"POST /?read={mode}&digest=1 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n"
            f"Content-Length: {size}\r\n\r\n".encode()
        )
        for _ in range(64):
            sock.sendall(block)
        (resp,) = parse_responses(read_until_close(sock))
    assert resp.status == 200, server.logs
    payload = json.loads(resp.body)
    assert payload["body_length"] == size
    assert payload["body_sha256"] == hashlib.sha256(block * 64).hexdigest()
    assert "WORKER TIMEOUT" not in server.logs


@pytest.mark.timeout(60)
def test_a_websocket_cut_at_a_retirements_deadline_gets_no_500(
    server_factory: ServerFactory, worker_class: str
) -> None:
    """A worker that retires (max_requests) ends an open WebSocket at graceful_timeout;
    nothing of the server's may land in it: the green workers wrote a 500 response into
    the WebSocket's stream, the app having answered the handshake itself."""
    if worker_class in ("sync", "fast"):
        pytest.skip("sync bounds the handshake by timeout; fast has no takeover")
    server = server_factory(
        "takeover:app", *worker_args(worker_class), "--workers", "1",
        "--max-requests", "2", "--graceful-timeout", "2", "--access-logfile", "-",
    )  # fmt: skip
    with connect(server.port, timeout=30) as sock:
        sock.sendall(b"GET /echo HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\n\r\n")
        for _ in range(2):  # the worker's last requests: it retires
            assert get(server.port, timeout=10).status == 200
        received = read_until_close(sock, 30)
    assert received.startswith(b"HTTP/1.1 101 Switching Protocols\r\n")
    assert b"HTTP/1.1 5" not in received, received
    # As at a WebSocket's normal end, no access line (the green classes wrote "000 0").
    # The retired worker is gone, having logged all (gthread's thread blocked in recv
    # cannot be interrupted: the master ends it at the deadline).
    server.wait_for_log(r"Worker exiting|was killed", timeout=20)
    assert '"GET /echo' not in server.stdout, server.stdout


@pytest.mark.timeout(60)
def test_fast_request_timeout_spares_a_stream_to_a_slow_reader(
    server_factory: ServerFactory,
) -> None:
    """The master bounds fast's requests by the loop's heartbeat (``request_timeout``): a
    response held back for 3 s by a client that reads slowly is not a hung app, and the
    loop keeps beating while it waits, so the worker is not aborted."""
    server = server_factory(
        "routes:app", *worker_args("fast"), "--workers", "1",
        "--request-timeout", "1", "--timeout", "40",
    )  # fmt: skip
    mark = server.mark()
    chunks, size = 128, 65536
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    with sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
        sock.settimeout(30)
        sock.connect(("127.0.0.1", server.port))
        sock.sendall(
            f"GET /stream?chunks={chunks}&size={size} HTTP/1.1\r\n"
            "Host: t\r\nConnection: close\r\n\r\n".encode()
        )
        received = []
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline:
            received.append(sock.recv(4096))
            time.sleep(0.05)
        received.append(read_until_close(sock, 30))
    (resp,) = parse_responses(b"".join(received))
    assert (resp.status, resp.complete) == (200, True)
    assert resp.body == stream_body(chunks, size)
    assert server.count_log(r"WORKER TIMEOUT", since=mark) == 0


def check_slow_reader(server: ServerProcess, payload: Path, keep_alive: bool) -> None:
    if keep_alive:
        # The second request waits behind the file: the connection must go on after it.
        requests = (
            b"GET / HTTP/1.1\r\nHost: t\r\n\r\n"
            b"HEAD / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
        )
        full, head = parse_responses(read_slowly_then_fully(server.port, requests), ["GET", "HEAD"])
        assert head.status == 200 and head.body == b""
    else:
        data = read_slowly_then_fully(server.port, b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        (full,) = parse_responses(data)
    assert (full.status, full.complete) == (200, True)
    assert full.body == payload.read_bytes()
    assert "Traceback" not in server.logs


@pytest.mark.timeout(90)
def test_file_wrapper_to_a_client_that_reads_slowly(
    server_factory: ServerFactory, worker_class: str, payload: Path
) -> None:
    server = file_server(server_factory, worker_class, payload)
    check_slow_reader(server, payload, keeps_alive(worker_class))


@pytest.mark.timeout(90)
@pytest.mark.parametrize("sendfile", ["default", "--no-sendfile"])
def test_fast_file_wrapper_on_the_standard_asyncio_loop(
    server_factory: ServerFactory, tmp_path: Path, payload: Path, sendfile: str
) -> None:
    """Without uvloop the fast worker runs asyncio's own loop: files must go out the same."""
    hidden = tmp_path / "no-uvloop"
    hidden.mkdir()
    (hidden / "uvloop.py").write_text("raise ImportError('hidden by the test')\n")
    path = os.pathsep.join(str(p) for p in (hidden, APPS, SRC, ROOT))
    server = file_server(server_factory, "fast", payload, sendfile, PYTHONPATH=path)
    server.wait_for_log(r"uvloop is not installed: using the standard asyncio loop")
    check_file_responses(server, payload, keep_alive=True)
    check_slow_reader(server, payload, keep_alive=True)


# -- shutdown --------------------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_graceful_stop_finishes_request_in_flight(
    server_factory: ServerFactory, worker_class: str
) -> None:
    srv = server_factory(
        "routes:app", *worker_args(worker_class), "--workers", "1", "--graceful-timeout", "30"
    )
    mark = srv.mark()
    plain = InFlight(srv.port, "/slow/sleep?s=2")
    srv.wait_for_log(r"slow app: sleeping 2s", since=mark)
    kept_alive = None
    if keeps_alive(worker_class):
        # A keep-alive request in flight too: its response must end the connection.
        kept_alive = RawConnection(srv.port, timeout=30)
        kept_alive.send(b"GET /slow/sleep?s=2.5 HTTP/1.1\r\nHost: t\r\n\r\n")
        srv.wait_for_log(r"slow app: sleeping 2.5s", since=mark)
    srv.signal(signal.SIGTERM)
    resp = plain.result()
    assert (resp.status, resp.body) == (200, b"slept 2")
    if kept_alive is not None:
        with kept_alive:
            kept = kept_alive.read_response()
            assert (kept.status, kept.body) == (200, b"slept 2.5")
            assert kept.closes, kept.headers
            assert kept_alive.read_until_close() == b""
    assert srv.wait_exit(30) == 0
    assert "Shutting down: Master" in srv.logs


@pytest.mark.timeout(60)
def test_idle_connections_are_closed_cleanly_at_shutdown(
    server_factory: ServerFactory, worker_class: str
) -> None:
    srv = server_factory(
        "hello:app", *worker_args(worker_class), "--workers", "1", "--graceful-timeout", "30"
    )
    used = connect(srv.port)
    silent = connect(srv.port)
    try:
        used.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        conn = RawConnection(srv.port, sock=used)
        assert conn.read_response().status == 200
        assert conn.buffer == b""
        srv.signal(signal.SIGTERM)
        # Both are closed with a FIN well before graceful_timeout: recv() gives b"", not a
        # reset, and nothing else arrives first.
        for name, sock in (("after a request", used), ("never used", silent)):
            sock.settimeout(15)
            try:
                data = sock.recv(65536)
            except ConnectionResetError:
                pytest.fail(f"idle connection ({name}) was reset at shutdown\n{srv.logs}")
            except TimeoutError:
                pytest.fail(f"idle connection ({name}) still open 15 s after TERM\n{srv.logs}")
            assert data == b"", f"idle connection ({name}) got {data!r}"
    finally:
        used.close()
        silent.close()
    assert srv.wait_exit(30) == 0
