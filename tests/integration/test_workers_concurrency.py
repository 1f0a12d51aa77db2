"""Issue 4/6, what only the concurrency workers (gthread, gevent, eventlet) promise.

The behaviour every worker class shares is in ``test_contract.py``; here:

- requests really run at the same time (proved by a rendezvous inside the app, not by
  wall-clock timing: each request waits until N of them are in flight at once);
- idle and half-sent connections never occupy a gthread thread;
- beyond ``worker_connections`` a connection gets 503 instead of waiting;
- a hung request is bounded by the in-worker watchdog: logged with its stack, answered 504
  with ``--request-timeout``, while other requests are served; a gthread thread stuck in C
  retires its worker, which the master replaces.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from .conftest import ServerFactory
from .server import InFlight, RawConnection, ServerProcess, connect, get, read_until_close

GREEN = ["gevent", "eventlet"]
CONCURRENT = ["gthread", *GREEN]

# The app under test, written next to each test's logs and imported from there (the
# master's working directory is on sys.path with ``python -m``).
RENDEZVOUS_APP = """
import os
import re
import time

arrived = 0


def app(environ, start_response):
    global arrived
    path = environ["PATH_INFO"]
    if path == "/meet":
        # Wait (cooperatively: time.sleep is patched under gevent/eventlet) until N
        # requests are in this process at once. Served one at a time, the first one
        # would give up after the bound and answer "alone".
        want = int(environ["QUERY_STRING"])
        arrived += 1
        deadline = time.monotonic() + 20
        while arrived < want and time.monotonic() < deadline:
            time.sleep(0.01)
        body = b"met" if arrived >= want else b"alone"
    elif path == "/cstuck":
        environ["wsgi.errors"].write("stuck app: sleeping in C\\n")
        environ["wsgi.errors"].flush()
        time.sleep(3600)  # one C call: an asynchronous exception waits for it to return
        body = b"unreachable"
    else:
        body = str(os.getpid()).encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
"""


@pytest.fixture
def rendezvous(tmp_path: Path, server_factory: ServerFactory) -> Callable[..., ServerProcess]:
    (tmp_path / "rendezvous.py").write_text(RENDEZVOUS_APP)

    def start(*args: str) -> ServerProcess:
        return server_factory("rendezvous:app", "--workers", "1", *args, cwd=tmp_path)

    return start


@pytest.mark.timeout(60)
@pytest.mark.parametrize("worker_class", GREEN)
def test_fifty_slow_requests_run_at_once(
    rendezvous: Callable[..., ServerProcess], worker_class: str
) -> None:
    srv = rendezvous("-k", worker_class, "--worker-connections", "100")
    requests = [InFlight(srv.port, "/meet?50", timeout=40) for _ in range(50)]
    bodies = [r.result(timeout=40).body for r in requests]
    assert bodies == [b"met"] * 50


@pytest.mark.timeout(60)
def test_gthread_threads_run_at_once(rendezvous: Callable[..., ServerProcess]) -> None:
    srv = rendezvous("-k", "gthread", "--threads", "4")
    requests = [InFlight(srv.port, "/meet?4", timeout=40) for _ in range(4)]
    assert [r.result(timeout=40).body for r in requests] == [b"met"] * 4


@pytest.mark.timeout(60)
def test_idle_and_slow_clients_do_not_hold_gthread_threads(
    server_factory: ServerFactory,
) -> None:
    threads = 2
    srv = server_factory("hello:app", "-k", "gthread", "--threads", str(threads), "--workers", "1")
    held = []
    try:
        # threads + 5 idle keep-alive connections (one request each, then silence) and as
        # many that sent only half a head: none of them may occupy a thread.
        for _ in range(threads + 5):
            conn = RawConnection(srv.port, timeout=10)
            conn.send(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
            assert conn.read_response().status == 200
            held.append(conn)
            half = connect(srv.port)
            half.sendall(b"GET / HTTP/1.1\r\nHost: t\r\nX-Slow: ")
            held.append(half)  # type: ignore[arg-type]
        resp = get(srv.port, "/", timeout=10)
        assert (resp.status, resp.body) == (200, b"Hello, World!")
    finally:
        for item in held:
            item.close()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("worker_class", CONCURRENT)
def test_connections_beyond_the_cap_get_503(
    server_factory: ServerFactory, worker_class: str
) -> None:
    cap = 4
    srv = server_factory(
        "hello:app",
        "-k",
        worker_class,
        "--workers",
        "1",
        "--threads",
        "2",
        "--worker-connections",
        str(cap),
    )
    held = []
    try:
        for _ in range(cap):
            conn = RawConnection(srv.port, timeout=10)
            conn.send(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
            assert conn.read_response().status == 200  # accepted and now idle
            held.append(conn)
        with RawConnection(srv.port, timeout=10) as extra:
            extra.send(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
            refused = extra.read_response()
            assert refused.status == 503
            assert refused.closes
            assert refused.header("Server") == "forkhorn"
    finally:
        for conn in held:
            conn.close()
    # Once the worker has seen them close, new connections are served again (polled: the
    # closes reach it a moment after ours).
    deadline = time.monotonic() + 10
    status = 0
    while time.monotonic() < deadline:
        status = get(srv.port, "/", timeout=10).status
        if status == 200:
            break
    assert status == 200


@pytest.mark.timeout(60)
@pytest.mark.parametrize("worker_class", ["sync", "gthread", *GREEN, "fast"])
def test_connections_refused_for_the_cap_are_logged(
    server_factory: ServerFactory, worker_class: str
) -> None:
    """Overload must show in the log: the first 503 at once, a burst as one line with its
    count (not one line per client), and what is still counted when the worker stops (it
    was lost: a burst just before a stop showed as its first refusal alone)."""
    cap = 2
    refused = [0]  # 503s the clients saw
    srv = server_factory(
        "hello:app", "-k", worker_class, "--workers", "1", "--worker-connections", str(cap)
    )

    def hold() -> socket.socket:
        """A connection with half a head: it counts against the cap in every class (sync
        counts only these: it closes after each response)."""
        for _ in range(50):
            sock = connect(srv.port)
            sock.sendall(b"GET / HTTP/1.1\r\n")
            sock.settimeout(0.2)
            try:
                answer = sock.recv(100)
            except TimeoutError:
                sock.settimeout(10)
                return sock  # held, waiting for the rest of its head
            refused[0] += answer.startswith(b"HTTP/1.1 503 ")
            sock.close()  # refused: the start-up check's connection was still counted
        raise AssertionError(f"no connection was held\n{srv.logs}")

    held: list[socket.socket] = []
    try:
        for _ in range(cap):
            held.append(hold())
        for i in range(3):
            with RawConnection(srv.port, timeout=10) as extra:
                extra.send(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
                assert extra.read_response().status == 503, (i, srv.logs)
                refused[0] += 1
        srv.wait_for_log(
            r"\[WARNING\] Refused 1 connection\(s\) with 503: all 2 worker_connections"
        )
        # The next two fall within the same ten seconds: counted, not logged one by one.
        assert srv.count_log(r"Refused \d+ connection") == 1
    finally:
        for sock in held:
            sock.close()
    srv.signal(signal.SIGTERM)
    assert srv.wait_exit() == 0
    logged = sum(int(n) for n in re.findall(r"Refused (\d+) connection", srv.logs))
    assert logged == refused[0], (logged, refused[0], srv.logs)


# The advice: patch in the config file first (or drop --preload).
PATCH_FIRST = {
    "gevent": "from gevent import monkey\nmonkey.patch_all()\n",
    "eventlet": "import eventlet\neventlet.monkey_patch()\n",
}


@pytest.mark.timeout(90)
@pytest.mark.parametrize("worker_class", GREEN)
def test_preload_before_patching_is_warned(
    server_factory: ServerFactory, worker_class: str, tmp_path: Path
) -> None:
    """--preload imports the app before the worker patches the standard library (under
    gunicorn too), which breaks Django's database layer: one warning says so and what to
    do. A config file that patches first gets none, and its patched master still obeys
    HUP and TERM (an eventlet-patched master once waited forever in a green os.read)."""
    warning = rf"\[WARNING\] --preload with the {worker_class} worker: the app was imported"
    srv = server_factory("hello:app", "-k", worker_class, "--preload")
    srv.wait_for_log(warning)
    assert get(srv.port, "/").status == 200
    config = tmp_path / "patch_first.py"
    config.write_text(PATCH_FIRST[worker_class])
    patched = server_factory(
        "hello:app", "-k", worker_class, "--preload", "-c", str(config), "--workers", "2"
    )
    assert get(patched.port, "/").status == 200
    assert patched.count_log(r"--preload with the") == 0, patched.logs
    first = patched.wait_for_workers(2)
    mark = patched.mark()
    os.kill(first[0], signal.SIGKILL)  # the master reaps and replaces it
    patched.wait_for_log(r"Booting worker with pid", since=mark)
    patched.signal(signal.SIGHUP)
    patched.wait_for_log(r"Reload complete", since=mark)
    # Every new worker serves, on new connections: the eventlet ones shared the patched
    # master's hub (its epoll) through the fork and, after a HUP, never saw one.
    for _ in range(10):
        assert get(patched.port, "/", timeout=5).status == 200
    patched.signal(signal.SIGTERM)
    assert patched.wait_exit(timeout=30) == 0, patched.logs
    patched.wait_for_log(r"Shutting down: Master", since=mark)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("worker_class", CONCURRENT)
def test_hung_request_is_logged_with_its_stack_and_answered_504(
    server_factory: ServerFactory, worker_class: str
) -> None:
    srv = server_factory(
        "slow:app",
        "-k",
        worker_class,
        "--workers",
        "1",
        "--threads",
        "4",
        "--request-timeout",
        "1",
    )
    mark = srv.mark()
    hung = InFlight(srv.port, "/hang", timeout=30)
    srv.wait_for_log(r"slow app: hanging", since=mark)
    # Served meanwhile, by the same worker.
    assert get(srv.port, "/", timeout=10).status == 200
    resp = hung.result(timeout=30)
    assert resp.status == 504
    srv.wait_for_log(
        r"\[ERROR\] Request timeout \(pid:\d+\): GET /hang HTTP/1.1 running", since=mark
    )
    srv.wait_for_log(r"in hang_forever_in_app", since=mark)
    assert get(srv.port, "/", timeout=10).status == 200
    assert srv.count_log(r"Booting worker with pid", since=mark) == 0  # not replaced


@pytest.mark.timeout(90)
def test_gthread_with_every_thread_busy_leaves_new_connections_to_others(
    tmp_path: Path, server_factory: ServerFactory
) -> None:
    """A gthread worker whose threads all have a request stops accepting, so a new
    connection goes to a worker with a free thread instead of waiting behind the slow
    request (gunicorn's gthread takes it and makes it wait). Before, about every other
    connection here landed on the busy worker and waited for /cstuck."""
    (tmp_path / "rendezvous.py").write_text(RENDEZVOUS_APP)
    srv = server_factory(
        "rendezvous:app",
        "-k",
        "gthread",
        "--workers",
        "2",
        "--threads",
        "1",
        "--graceful-timeout",
        "2",
        cwd=tmp_path,
    )
    workers = srv.wait_for_workers(2)
    mark = srv.mark()
    busy = InFlight(srv.port, "/cstuck", timeout=60)
    srv.wait_for_log(r"stuck app: sleeping in C", since=mark)
    served_by = {int(get(srv.port, "/", timeout=20).body) for _ in range(10)}
    assert len(served_by) == 1 and served_by < set(workers), served_by
    assert busy.response is None and busy.error is None  # still in its C call


@pytest.mark.timeout(60)
@pytest.mark.parametrize("worker_class", CONCURRENT)
@pytest.mark.parametrize("kind", ["unread", "refused"])
def test_a_lingering_close_holds_no_connection_slot(
    server_factory: ServerFactory, worker_class: str, kind: str
) -> None:
    """Two uploads answered while still arriving (unread by the app, or refused 413) are
    closed lingering: what the client still sends is read and dropped for up to 2 s. That
    held a slot of ``worker_connections`` (2 here), and a plain request got 503."""
    limit = ["--limit-request-body", "100000"] if kind == "refused" else []
    srv = server_factory(
        "echo:app", "-k", worker_class, "--workers", "1", "--worker-connections", "2",
        *(["--threads", "2"] if worker_class == "gthread" else []), *limit,
    )  # fmt: skip
    stop = threading.Event()
    answered: list[bytes] = []

    def upload() -> None:
        with connect(srv.port, timeout=10) as sock:
            sock.sendall(
                b"POST /?read=none HTTP/1.1\r\nHost: t\r\nContent-Length: 50000000\r\n\r\n"
                + b"x" * 1000
            )
            answered.append(sock.recv(12))
            with contextlib.suppress(OSError):
                while not stop.is_set():  # an uploader that goes on (curl, requests)
                    sock.sendall(b"x" * 1000)
                    stop.wait(0.02)

    uploads = [threading.Thread(target=upload, daemon=True) for _ in range(2)]
    for thread in uploads:
        thread.start()
    try:
        deadline = time.monotonic() + 20
        while len(answered) < 2:
            assert time.monotonic() < deadline, answered
            time.sleep(0.01)  # poll interval
        expected = b"HTTP/1.1 200" if kind == "unread" else b"HTTP/1.1 413"
        assert answered == [expected] * 2
        assert get(srv.port, "/", timeout=10).status == 200
    finally:
        stop.set()
        for thread in uploads:
            thread.join(10)


HOLD_APP = """
import os
import time


def app(environ, start_response):
    if environ["PATH_INFO"] == "/hold":  # a long-poll (time.sleep is patched)
        environ["wsgi.errors"].write(f"hold by {os.getpid()}\\n")
        environ["wsgi.errors"].flush()
        time.sleep(30)
    body = str(os.getpid()).encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
"""


@pytest.mark.timeout(90)
@pytest.mark.parametrize("worker_class", GREEN)
def test_a_full_green_worker_leaves_new_connections_to_one_with_room(
    tmp_path: Path, server_factory: ServerFactory, worker_class: str
) -> None:
    """A green worker whose ``worker_connections`` are all taken (long-polls) took new
    connections anyway and answered them 503 while its sibling had room: 2 to 6 of 10
    here. It now waits a moment (FULL_DEFER), so that a worker with room takes them."""
    (tmp_path / "holdapp.py").write_text(HOLD_APP)
    srv = server_factory(
        "holdapp:app", "-k", worker_class, "--workers", "2", "--worker-connections", "3",
        "--graceful-timeout", "1", cwd=tmp_path,
    )  # fmt: skip
    workers = srv.wait_for_workers(2)
    deadline = time.monotonic() + 30
    answered: set[int] = set()
    while answered != set(workers):  # both serving (a booting one takes no connection)
        assert time.monotonic() < deadline, (answered, srv.logs)
        answered.add(int(get(srv.port, "/", timeout=20).body))
    mark = srv.mark()
    held: list[RawConnection] = []
    try:
        holds: dict[int, int] = {}
        while not holds or max(holds.values()) < 3:
            conn = RawConnection(srv.port, timeout=20)
            held.append(conn)
            conn.send(b"GET /hold HTTP/1.1\r\nHost: t\r\n\r\n")
            srv.wait_for_count(r"hold by \d+", len(held), since=mark)
            pids = [int(m) for m in re.findall(r"hold by (\d+)", "\n".join(srv.lines[mark:]))]
            holds = {pid: pids.count(pid) for pid in set(pids)}
        (full,) = [pid for pid, count in holds.items() if count == 3]
        statuses = [get(srv.port, "/", timeout=20) for _ in range(10)]
        assert [r.status for r in statuses] == [200] * 10, srv.logs
        assert {int(r.body) for r in statuses} == set(workers) - {full}
    finally:
        for conn in held:
            conn.close()


@pytest.mark.timeout(60)
def test_gthread_thread_stuck_in_c_retires_its_worker(
    rendezvous: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    hooks = tmp_path / "hooks.py"
    hooks.write_text(
        "import sys\n"
        "def post_request(worker, req, environ, resp):\n"
        "    sys.stderr.write(f'post_request {req.path} {resp.status}\\n')\n"
    )
    srv = rendezvous(
        "-k",
        "gthread",
        "--threads",
        "2",
        "--request-timeout",
        "1",
        "--graceful-timeout",
        "2",
        "--access-logfile",
        "-",
        "-c",
        str(hooks),
    )
    (first,) = srv.wait_for_workers(1)
    mark = srv.mark()
    stuck = InFlight(srv.port, "/cstuck", timeout=40)
    srv.wait_for_log(r"stuck app: sleeping in C", since=mark)
    srv.wait_for_log(r"Request timeout \(pid:\d+\): GET /cstuck", since=mark)
    srv.wait_for_log(r"Request still running .* after it was interrupted", since=mark)
    srv.wait_for_log(r"Retiring worker .*request timeout", since=mark)
    (second,) = srv.wait_for_workers(1, timeout=30, exclude=[first])
    resp = get(srv.port, "/", timeout=10)
    assert (resp.status, resp.body) == (200, str(second).encode())
    # The watchdog answers the stuck request itself and shuts its connection: the client
    # is not left waiting (with nothing) until the retired worker exits.
    assert stuck.result(timeout=30).status == 504
    # ...and logs it (its thread may never come back to): access line and post_request.
    srv.wait_for_log(r'"GET /cstuck HTTP/1\.1" 504 ', stream="stdout")
    srv.wait_for_log(r"post_request /cstuck 504 Gateway Timeout", since=mark)
    srv.wait_for_log(rf"Worker exiting \(pid: {first}\)", since=mark, timeout=30)
    assert srv.count_log(r"Graceful timeout with \d+ request\(s\) in flight", since=mark) == 0


@pytest.mark.timeout(60)
def test_gthread_answers_a_request_stuck_in_c_at_its_limit(
    rendezvous: Callable[..., ServerProcess],
) -> None:
    """A thread blocked in C cannot take the interruption: its client used to wait the
    grace period too (as long again as a short limit) before the watchdog answered it,
    as it retired the worker. It is now answered once its thread has had a short window,
    before the grace period ends; and answered once."""
    # The access log on stderr: one stream, where the order of lines is that of events.
    srv = rendezvous(
        "-k", "gthread", "--threads", "2", "--request-timeout", "4",
        "--access-logfile", "/dev/stderr",
    )  # fmt: skip
    mark = srv.mark()
    with connect(srv.port) as sock:
        sock.sendall(b"GET /cstuck HTTP/1.1\r\nHost: x\r\n\r\n")
        data = read_until_close(sock, timeout=30)
    assert data.startswith(b"HTTP/1.1 504 "), data[:80]
    assert data.count(b"HTTP/1.1 ") == 1, data
    srv.wait_for_log(r"Retiring worker .*request timeout", since=mark)
    lines = srv.logs.splitlines()[mark:]
    answered = next(i for i, line in enumerate(lines) if '"GET /cstuck HTTP/1.1" 504' in line)
    stuck = next(i for i, line in enumerate(lines) if "Request still running" in line)
    assert answered < stuck, lines


SWALLOW_APP = """
import time


def app(environ, start_response):
    if environ["PATH_INFO"] == "/swallow":
        try:
            for _ in range(10000):
                time.sleep(0.01)
        except BaseException:  # the interruption, caught: the app answers itself
            time.sleep(0.1)
        start_response("200 OK", [("Content-Length", "9")])
        return [b"swallowed"]

    def partial():
        yield b"first piece"
        for _ in range(10000):
            time.sleep(0.01)  # interruptible: no progress, then the interruption
        yield b"never"

    start_response("200 OK", [])
    return partial()
"""


@pytest.mark.timeout(60)
def test_gthread_ends_an_interrupted_request_once(
    server_factory: ServerFactory, tmp_path: Path
) -> None:
    """A request interrupted at its limit whose thread runs Python (the app caught the
    interruption and answers itself, or its head was already sent) and then takes a while
    to end (a post_request hook that flushes metrics for a second): the main loop ended
    it too, half a second after the interruption, for two access lines and two
    post_request calls. Its thread ends it, once."""
    (tmp_path / "swallow_app.py").write_text(SWALLOW_APP)
    hooks = tmp_path / "hooks.py"
    hooks.write_text(
        "import sys, time\n"
        "def post_request(worker, req, environ, resp):\n"
        "    time.sleep(1)\n"
        "    sys.stderr.write(f'post_request {req.path} {resp.status}\\n')\n"
    )
    srv = server_factory(
        "swallow_app:app", "-k", "gthread", "--threads", "4", "--workers", "1",
        "--request-timeout", "1", "-c", str(hooks), "--access-logfile", "/dev/stderr",
        cwd=tmp_path,
    )  # fmt: skip
    mark = srv.mark()
    resp = get(srv.port, "/swallow", timeout=20)
    assert (resp.status, resp.body) == (200, b"swallowed")
    with connect(srv.port) as sock:
        sock.sendall(b"GET /partial HTTP/1.1\r\nHost: x\r\n\r\n")
        read_until_close(sock, timeout=20)
    srv.wait_for_log(r"post_request /partial ", since=mark, timeout=20)
    time.sleep(1.5)  # a second ending, if there were one, would come by now
    for path in ("/swallow", "/partial"):
        assert srv.count_log(rf'"GET {path} HTTP/1\.1"', since=mark) == 1, srv.logs
        assert srv.count_log(rf"post_request {path} ", since=mark) == 1, srv.logs
