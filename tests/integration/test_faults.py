"""Issue 6, proven under load: faults injected into a real master while clients keep asking.

Every test runs against each worker class in ``FAULT_CLASSES`` and counts failed requests
with ``load.Load`` (keep-alive ``http.client`` threads that never retry). What is asserted
is what the issue promises, as counts and log lines:

- HUP, USR2 + TERM of the old master, recycling (max_requests + jitter, lifetime): 0 failed.
- ``kill -9`` of a worker, three times a second apart: only requests on connections that
  worker held can fail (failures <= connections it held at the kill), and it is replaced.
- A bad release on disk then HUP: 0 failed, the old workers still serve, the error is
  logged with its traceback; then a crash with the bad release still there: the master
  stays up, retries with backoff (logged) and serves with the rest.
- TERM with a 5 s request in flight: 200, exit 0; new connections are refused, never
  accepted and reset.
- A request hung past ``timeout``: its stack is logged and the others are served meanwhile.
- Slowloris, a slow body, 200 idle connections and a 100 MB unread upload all at once:
  each dropped by its deadline while normal requests answer.
- ``--request-timeout``: 504 from gthread/gevent (their in-worker watchdog); sync and fast
  run the app on the worker's only thread, so the master aborts and replaces the worker at
  ``request_timeout`` (its heartbeat silent while busy).

Timing: the issue's "within 100 ms" and "under a second" are measured and reported (as
``FAULT-RESULT`` lines on stdout, and appended as JSON lines to ``$FORKHORN_FAULT_REPORT``
when set), never asserted; the only time bounds asserted are generous deadlines that a
defence must meet (``header_timeout`` plus slack) so that "never dropped" fails.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import resource
import shutil
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from .conftest import ServerFactory
from .load import ANNOUNCED, FAILED, Load, run_wrk_load
from .server import (
    ROOT,
    SRC,
    InFlight,
    RawConnection,
    Response,
    ServerProcess,
    children_of,
    connect,
    get,
    is_alive,
    process_identity,
    read_until_close,
    require_worker_class,
)

FAULT_CLASSES = ["sync", "gthread", "gevent", "fast"]

WORKER_ARGS: dict[str, list[str]] = {
    "sync": [],
    "gthread": ["--threads", "4"],
    "gevent": ["--worker-connections", "1000"],
    "eventlet": ["--worker-connections", "1000"],
    "fast": [],
}

# The app under test, written into each test's directory (the server's working directory,
# which ``python -m`` puts on sys.path). Every answer ends with the worker's pid, so the
# load generator knows which worker held each connection.
FAULT_APP = """
import os
import time
from urllib.parse import parse_qs

HOARD = []


def hang_forever_in_app():
    while True:
        time.sleep(0.1)


def app(environ, start_response):
    path = environ["PATH_INFO"]
    query = parse_qs(environ.get("QUERY_STRING", ""))
    errors = environ["wsgi.errors"]
    pid = os.getpid()
    if path == "/sleep":
        seconds = float(query["s"][0])
        errors.write("fault app: sleeping\\n")
        errors.flush()
        time.sleep(seconds)
        body = b"slept %d" % pid
    elif path == "/hang":
        errors.write("fault app: hanging\\n")
        errors.flush()
        hang_forever_in_app()
        body = b"unreachable"
    elif path == "/hang-mid":
        start_response("200 OK", [("Content-Type", "text/plain")])

        def first_then_hang():
            yield b"first %d\\n" % pid
            errors.write("fault app: hanging mid-stream\\n")
            errors.flush()
            hang_forever_in_app()

        return first_then_hang()
    elif path == "/alloc":
        HOARD.append(b"x" * (int(query["mb"][0]) * 1024 * 1024))  # resident: written
        body = b"hoarding %d" % pid
    elif path == "/gate":
        errors.write("fault app: at the gate\\n")
        errors.flush()
        deadline = time.monotonic() + 20
        while not os.path.exists(query["file"][0]) and time.monotonic() < deadline:
            time.sleep(0.01)
        body = b"through %d" % pid
    elif path == "/crash":
        os._exit(1)  # the worker dies in the middle of a request
    elif path == "/read":
        body = b"read %d %d" % (len(environ["wsgi.input"].read()), pid)
    elif path == "/upload":
        body = b"ignored %d" % pid  # the body is never read
    else:
        body = b"%d" % pid
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
"""

RELEASE = """
import os

def app(environ, start_response):
    body = b"{version} %d" % os.getpid()
    start_response("200 OK", [("Content-Length", str(len(body)))])
    return [body]
"""
SYNTAX_ERROR_RELEASE = "def app(environ, start_response:\n    return []\n"


def report(scenario: str, worker_class: str, **numbers: Any) -> None:
    """Record a measured result (never asserted): stdout, and $FORKHORN_FAULT_REPORT."""
    line = json.dumps({"scenario": scenario, "worker_class": worker_class, **numbers})
    print(f"FAULT-RESULT {line}")
    path = os.environ.get("FORKHORN_FAULT_REPORT")
    if path:
        with open(path, "a", encoding="utf-8") as file:
            file.write(line + "\n")


@pytest.fixture(params=FAULT_CLASSES)
def worker_class(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    require_worker_class(name)
    return name


StartServer = Callable[..., ServerProcess]


@pytest.fixture
def start(tmp_path: Path, server_factory: ServerFactory, worker_class: str) -> StartServer:
    """Start ``faultapp:app`` (or ``app``) from ``tmp_path`` with the class's flags."""
    (tmp_path / "faultapp.py").write_text(FAULT_APP)

    def starter(*args: str, app: str = "faultapp:app", workers: int = 2) -> ServerProcess:
        return server_factory(
            app,
            "-k",
            worker_class,
            *WORKER_ARGS[worker_class],
            "--workers",
            str(workers),
            *args,
            cwd=tmp_path,
        )

    return starter


def wait_until(condition: Callable[[], object], what: str, timeout: float = 20.0) -> None:
    """Poll ``condition`` until true; the timeout only bounds a hang."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        time.sleep(0.02)  # poll interval


def pid_of(resp: Response) -> int:
    return int(resp.body.split()[-1])


# -- reload and upgrade ----------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_hup_under_load_loses_nothing(start: StartServer, worker_class: str) -> None:
    server = start()
    old = server.wait_for_workers(2)
    with Load(server.port, threads=4) as load:
        load.wait_for(200)
        mark = server.mark()
        server.signal(signal.SIGHUP)
        server.wait_for_log(r"Reload complete", since=mark, timeout=20)
        server.wait_for_workers(2, exclude=old, timeout=20)
        load.wait_for(200)
    assert not load.lost(), load.summary()
    assert load.pids() - set(old), "no new worker answered after the reload"
    report("hup", worker_class, failed=len(load.failures), total=load.total)


@pytest.mark.timeout(60)
def test_usr2_then_term_old_master_under_load(
    start: StartServer, worker_class: str, tmp_path: Path
) -> None:
    pidfile = tmp_path / "forkhorn.pid"
    unix = tmp_path / "u.sock"
    server = start("--pid", str(pidfile), "--bind", f"unix:{unix}")
    old_workers = server.wait_for_workers(2)
    mark = server.mark()
    with Load(server.port, threads=4) as load:
        load.wait_for(200)
        with _upgraded(server, pidfile) as new_master:
            # Both masters serve the same sockets; new connections reach the new workers
            # (the load's keep-alive connections may all stay with the old ones).
            wait_until(
                lambda: (
                    len(children_of(new_master)) == 2
                    and pid_of(get(server.port)) in children_of(new_master)
                ),
                "the new master's workers answer",
            )
            server.signal(signal.SIGTERM)
            assert server.proc is not None
            wait_until(lambda: server.proc.poll() is not None, "the old master exits")  # type: ignore[union-attr]
            server.wait_for_log(r"Master has been promoted\.", since=mark, timeout=10)
            load.wait_for(200)
            load.finish()
            assert server.proc.returncode == 0
            assert not load.lost(), load.summary()
            assert pidfile.read_text().strip() == str(new_master)
            assert not Path(f"{pidfile}.2").exists()
            assert not any(is_alive(pid) for pid in old_workers)
            report("usr2", worker_class, failed=len(load.failures), total=load.total)
            # The promoted master owns the sockets now: its stop removes the unix socket's
            # file, as the old master's would have.
            assert unix.exists()
            _stop_foreign_master(new_master, process_identity(new_master))
            assert not unix.exists()


@pytest.mark.timeout(60)
def test_usr2_reads_relative_paths_from_the_start_directory(
    server_factory: ServerFactory, tmp_path: Path
) -> None:
    """The new master re-reads the command line: a relative ``-c conf.py`` was looked
    for in the ``--chdir`` directory the old master had moved to, and the upgrade died
    with "config file conf.py not found"."""
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "usr2_app.py").write_text(
        "def app(environ, start_response):\n"
        "    start_response('200 OK', [('Content-Length', '2')])\n"
        "    return [b'ok']\n"
    )
    (tmp_path / "conf.py").write_text("workers = 1\n")
    pidfile = tmp_path / "forkhorn.pid"
    server = server_factory(
        "usr2_app:app", "-c", "conf.py", "--chdir", "app", "--pid", str(pidfile), cwd=tmp_path
    )
    with _upgraded(server, pidfile):
        assert "not found" not in server.logs


@pytest.mark.timeout(60)
def test_usr2_leaves_raw_env_to_the_new_config_and_survives_a_lost_pid_file(
    server_factory: ServerFactory, tmp_path: Path
) -> None:
    """The new master inherited the old one's environment, raw_env included: a key its
    config no longer sets lived on in every worker (a rotated secret). And a pid file
    whose directory vanished before the promotion took the new master down, with its
    workers, just after the old one was stopped."""
    (tmp_path / "env_app.py").write_text(
        "import os\n"
        "def app(environ, start_response):\n"
        "    body = repr(os.environ.get('FH_SECRET')).encode()\n"
        "    start_response('200 OK', [('Content-Length', str(len(body)))])\n"
        "    return [body]\n"
    )
    config = tmp_path / "conf.py"
    config.write_text("workers = 1\nraw_env = ['FH_SECRET=old']\n")
    run = tmp_path / "run"
    run.mkdir()
    pidfile = run / "forkhorn.pid"
    server = server_factory("env_app:app", "-c", str(config), "--pid", str(pidfile), cwd=tmp_path)
    assert get(server.port).body == b"'old'"
    config.write_text("workers = 1\n")
    mark = server.mark()
    with _upgraded(server, pidfile) as new_master:
        shutil.rmtree(run)
        server.signal(signal.SIGTERM)
        server.wait_for_log(r"Master has been promoted\.", since=mark, timeout=15)
        assert server.count_log(r"Promotion: Cannot write pid file", since=mark) == 1
        assert is_alive(new_master)
        assert get(server.port).body == b"None"


def _bound_by_config(
    server_factory: ServerFactory, tmp_path: Path, host: str
) -> tuple[ServerProcess, Path, Path, tuple[int, int]]:
    """A one-worker server bound by its config file to ``host`` on the first of two
    free ports, with a pid file: the server, the config, the pid file and the ports."""
    ports = []
    for _ in range(2):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            ports.append(probe.getsockname()[1])
    config = tmp_path / "bind.conf.py"
    config.write_text(f"bind = ['{host}:{ports[0]}']\nworkers = 1\n")
    pidfile = tmp_path / "forkhorn.pid"
    server = server_factory(
        "hello:app", "-c", str(config), "--pid", str(pidfile), bind=False, cwd=tmp_path
    )
    return server, config, pidfile, (ports[0], ports[1])


@pytest.mark.timeout(60)
def test_a_master_promoted_by_usr2_applies_a_changed_bind_on_hup(
    server_factory: ServerFactory, tmp_path: Path
) -> None:
    """After a USR2 upgrade the promoted master took its sockets for someone else's (as
    systemd's are) and ignored a bind that HUP changed, without a word."""
    server, config, pidfile, (first, second) = _bound_by_config(
        server_factory, tmp_path, "localhost"
    )
    mark = server.mark()
    with _upgraded(server, pidfile) as new_master:
        server.signal(signal.SIGTERM)
        server.wait_for_log(r"Master has been promoted\.", since=mark, timeout=15)
        config.write_text(f"bind = ['localhost:{first}', '127.0.0.1:{second}']\nworkers = 1\n")
        os.kill(new_master, signal.SIGHUP)
        server.wait_for_log(r"Reload complete", since=mark, timeout=30)
        assert get(first).status == 200
        assert get(second).status == 200


@pytest.mark.timeout(90)
def test_a_bind_changed_before_usr2_is_said_and_applied_by_hup(
    server_factory: ServerFactory, tmp_path: Path
) -> None:
    """The config's bind gained an address, then USR2: the new master serves only the
    sockets it inherited (as gunicorn's), and said nothing; a HUP with that same config
    changed nothing either, as it compared the config with itself. It is said at the
    promotion, and a HUP binds what the list adds."""
    server, config, pidfile, (first, second) = _bound_by_config(
        server_factory, tmp_path, "127.0.0.1"
    )
    config.write_text(f"bind = ['127.0.0.1:{first}', '127.0.0.1:{second}']\nworkers = 1\n")
    mark = server.mark()
    with _upgraded(server, pidfile) as new_master:
        server.wait_for_log(
            rf"not this config's bind list \(not bound: 127\.0\.0\.1:{second}\); send HUP",
            since=mark,
        )
        server.signal(signal.SIGTERM)
        server.wait_for_log(r"Master has been promoted\.", since=mark, timeout=15)
        os.kill(new_master, signal.SIGHUP)
        server.wait_for_log(
            rf"Listening at: http://127\.0\.0\.1:{second} \({new_master}\)", since=mark, timeout=30
        )
        server.wait_for_log(r"Reload complete", since=mark, timeout=30)
        assert get(first).status == 200
        assert get(second).status == 200


@contextlib.contextmanager
def _upgraded(server: ServerProcess, pidfile: Path) -> Iterator[int]:
    """USR2 to ``server``: the new master's pid once it listens; it is stopped (with its
    workers) at the end, whatever happened."""
    mark = server.mark()
    new_master = 0
    identity: int | None = None
    try:
        server.signal(signal.SIGUSR2)
        second = Path(f"{pidfile}.2")
        wait_until(lambda: second.exists() and second.read_text().strip(), "pidfile.2")
        new_master = int(second.read_text().strip())
        identity = process_identity(new_master)
        server.wait_for_log(rf"Listening at: .* \({new_master}\)", since=mark)
        yield new_master
    finally:
        _stop_foreign_master(new_master, identity)


def _stop_foreign_master(pid: int, identity: int | None) -> None:
    """TERM the re-executed master this test caused (not our child), then its workers."""
    if not pid or not is_alive(pid, identity):
        return
    workers = {w: process_identity(w) for w in children_of(pid)}
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 15
    while is_alive(pid, identity) and time.monotonic() < deadline:
        time.sleep(0.05)
    if is_alive(pid, identity):
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while any(is_alive(w, s) for w, s in workers.items()) and time.monotonic() < deadline:
        time.sleep(0.05)
    for w, s in workers.items():
        if is_alive(w, s):
            os.kill(w, signal.SIGKILL)


# -- crashes ---------------------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_kill_9_every_second_costs_only_what_the_worker_held(
    start: StartServer, worker_class: str
) -> None:
    server = start()
    delays: list[float] = []
    held = 0
    victims: set[int] = set()
    with Load(server.port, threads=4) as load:
        load.wait_for(100)
        previous = 0.0
        for _ in range(3):
            # Pace the faults a second apart (not a wait for the server).
            time.sleep(max(0.0, previous + 1.0 - time.monotonic()))
            workers = server.wait_for_workers(2)
            victim = workers[0]
            victims.add(victim)
            mark = server.mark()
            held += load.held_by(victim)
            previous = time.monotonic()
            os.kill(victim, signal.SIGKILL)
            server.wait_for_log(r"Booting worker with pid", since=mark)
            delays.append(time.monotonic() - previous)
            server.wait_for_workers(2, exclude=[victim])
            load.wait_for(50)
    foreign = [f for f in load.failures if f.pid is not None and f.pid not in victims]
    assert not foreign, f"requests failed on workers that were not killed: {load.summary()}"
    assert len(load.failures) <= held, f"held {held}; {load.summary()}"
    report(
        "kill-9",
        worker_class,
        failed=len(load.failures),
        total=load.total,
        held=held,
        replacement_ms=[round(d * 1000, 1) for d in delays],
    )


def _write_release(directory: Path, text: str) -> None:
    (directory / "release.py").write_text(text)
    for pyc in directory.glob("__pycache__/release*.pyc"):
        pyc.unlink()  # the same size and mtime second could be served from a stale .pyc


@pytest.mark.timeout(90)
def test_bad_release_then_hup_then_crash(
    start: StartServer, worker_class: str, tmp_path: Path
) -> None:
    _write_release(tmp_path, RELEASE.format(version="v1"))
    server = start(app="release:app")
    old = server.wait_for_workers(2)
    with Load(server.port, threads=4) as load:
        # Every worker has loaded v1 (one still importing would load the bad release).
        seen: set[int] = set()
        wait_until(
            lambda: seen.add(pid_of(get(server.port))) or seen | load.pids() >= set(old),
            "both workers answer",
        )
        # 1. A release that cannot even compile, then HUP.
        _write_release(tmp_path, SYNTAX_ERROR_RELEASE)
        mark = server.mark()
        server.signal(signal.SIGHUP)
        server.wait_for_log(r"Reload abandoned", since=mark, timeout=20)
        server.wait_for_log(r"Traceback", since=mark)
        server.wait_for_log(r"SyntaxError", since=mark)
        before = len(load.failures)
        served_from = load.pids()
        load.wait_for(100)
        hup_failed = len(load.failures)
        assert not load.lost(), f"during the bad HUP: {load.summary()}"
        # The failed new workers may still be exiting; then exactly the old ones are left.
        assert server.wait_for_workers(2) == old, "the old workers must keep serving"
        # Both new workers failed the same way: the traceback is logged once, not per worker.
        tracebacks = server.count_log(r"\[ERROR\] Traceback of the failed load", since=mark)
        assert tracebacks == 1, server.logs
        assert server.count_log(r"Logging error", since=mark) == 0, server.logs
        for _ in range(5):
            resp = get(server.port)
            assert resp.body.startswith(b"v1 ") and pid_of(resp) in old
        assert served_from <= set(old)

        # 2. A worker crashes with the bad release still on disk.
        victim = old[0]
        held = load.held_by(victim)
        mark = server.mark()
        os.kill(victim, signal.SIGKILL)
        server.wait_for_log(r"failed to boot .*retrying in", since=mark, timeout=20)
        server.wait_for_log(r"failed to boot .*retrying in .*\(failure 2\)", since=mark)
        load.wait_for(100)
        assert server.proc is not None and server.proc.poll() is None, "the master must stay up"
        assert get(server.port).body.startswith(b"v1 ")
    crash_failures = load.failures[before:]
    assert all(f.pid in (victim, None) for f in crash_failures), load.summary()
    assert len(crash_failures) <= held, f"held {held}; {load.summary()}"
    assert load.pids() - {victim} <= set(old)
    report(
        "bad-release",
        worker_class,
        hup_failed=hup_failed,
        crash_failed=len(crash_failures),
        held=held,
        total=load.total,
        backoff_lines=server.count_log(r"failed to boot .*retrying in", since=mark),
    )


@pytest.mark.timeout(90)
def test_a_worker_that_served_unseen_means_the_server_has_served(
    start: StartServer, worker_class: str, tmp_path: Path
) -> None:
    """One worker, a small max_requests: it answers its requests and leaves before the
    master's loop has seen it serving, with a bad release on disk by then. The master
    judged its replacement's failed boot as at start-up ("no worker has ever served")
    and halted, exit 4. It has served: the master backs off and waits for a fix."""
    _write_release(tmp_path, RELEASE.format(version="v1"))
    server = start("--max-requests", "3", app="release:app", workers=1)
    while True:  # as soon as it answers: before the master's next look, most often
        with contextlib.suppress(OSError):
            if get(server.port, timeout=5).status == 200:
                break
        time.sleep(0.005)  # poll interval
    _write_release(tmp_path, SYNTAX_ERROR_RELEASE)
    mark = server.mark()
    for _ in range(3):  # up to its limit; once it left, nothing answers (one worker)
        try:
            assert get(server.port, timeout=2).status == 200
        except OSError:
            break
    server.wait_for_log(r"failed to boot .*retrying in", since=mark, timeout=20)
    assert server.proc is not None and server.proc.poll() is None, server.logs
    # (The failing worker logs its own "App failed to load"; the master's halt is this.)
    assert server.count_log(r"Shutting down: Master|Reason: ", since=mark) == 0, server.logs
    _write_release(tmp_path, RELEASE.format(version="v2"))

    def fixed() -> bool:
        try:
            return get(server.port, timeout=5).body.startswith(b"v2 ")
        except OSError:
            return False

    wait_until(fixed, "the fixed release serves", timeout=60)


SLOW_BAD_RELEASE = "import time\ntime.sleep(2)\nimport no_such_module_in_this_release\n"


def _release_v1_with_max_requests(
    start: StartServer, tmp_path: Path, max_requests: int
) -> tuple[ServerProcess, list[int]]:
    """Two workers serving release v1, both seen answering, under --max-requests."""
    _write_release(tmp_path, RELEASE.format(version="v1"))
    server = start("--max-requests", str(max_requests), app="release:app")
    old = server.wait_for_workers(2)
    seen: set[int] = set()
    wait_until(lambda: seen.add(pid_of(get(server.port))) or seen >= set(old), "both answer")
    return server, old


@pytest.mark.timeout(120)
def test_a_bad_release_slow_to_fail_does_not_let_max_requests_empty_the_server(
    start: StartServer, worker_class: str, tmp_path: Path
) -> None:
    """A bad release that takes a while to fail (an app's imports): recycling was held
    only once a boot had failed, and in those seconds the busy old workers reached
    max_requests and left, so no worker served for about 10 s. Now a worker at its limit
    waits while half of the others (one of two) boot or leave (a reload's, a replacement's)."""
    server, _ = _release_v1_with_max_requests(start, tmp_path, 10)
    _write_release(tmp_path, SLOW_BAD_RELEASE)
    mark = server.mark()
    server.signal(signal.SIGHUP)
    begun = time.monotonic()
    while time.monotonic() - begun < 6:  # the reload fails after 2 s: well inside this
        try:
            resp = get(server.port, timeout=5)
        except OSError as exc:
            pytest.fail(f"{exc!r} at {time.monotonic() - begun:.1f}s\n{server.logs}")
        assert resp.status == 200 and resp.body.startswith(b"v1 "), resp
    server.wait_for_log(r"Reload abandoned", since=mark, timeout=20)
    for _ in range(40):
        assert get(server.port, timeout=5).status == 200


@pytest.mark.timeout(120)
def test_a_refused_release_does_not_let_max_requests_empty_the_server(
    start: StartServer, worker_class: str, tmp_path: Path
) -> None:
    """After a bad release is refused, the old workers keep serving, as the log says, even
    past ``max_requests``: each replacement would load the bad release and fail, so the
    master holds recycling until a worker boots (every request waited in the queue once
    the old workers had retired). When the fixed release is in, recycling resumes."""
    server, old = _release_v1_with_max_requests(start, tmp_path, 20)
    _write_release(tmp_path, SYNTAX_ERROR_RELEASE)
    mark = server.mark()
    server.signal(signal.SIGHUP)
    server.wait_for_log(r"Reload abandoned", since=mark, timeout=20)
    server.wait_for_log(r"Holding worker recycling \(max_requests\)", since=mark)
    # Three times max_requests each: every request answered, by the old code, in time.
    for _ in range(120):
        resp = get(server.port, timeout=10)
        assert resp.status == 200 and resp.body.startswith(b"v1 "), resp
    server.wait_for_log(r"Not recycling this worker yet \(max_requests reached\)", since=mark)
    assert server.count_log(r"Autorestarting worker", since=mark) == 0, server.logs
    assert set(server.wait_for_workers(2)) == set(old)
    # The fix: the reload completes, and the new workers recycle again.
    _write_release(tmp_path, RELEASE.format(version="v2"))
    mark = server.mark()
    server.signal(signal.SIGHUP)
    server.wait_for_log(r"worker recycling resumes", since=mark, timeout=20)
    wait_until(lambda: get(server.port).body.startswith(b"v2 "), "the fixed release serves")
    # Recycling goes one worker at a time (a worker at its limit waits while another boots
    # or leaves, and looks again 10 requests later): a few rounds of max_requests.
    for _ in range(200):
        assert get(server.port, timeout=10).status == 200
        if server.count_log(r"Autorestarting worker", since=mark):
            break
    server.wait_for_log(r"Autorestarting worker", since=mark)


# -- stopping --------------------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_term_finishes_a_5s_request_and_refuses_new_connections(
    start: StartServer, worker_class: str
) -> None:
    server = start("--graceful-timeout", "20")
    mark = server.mark()
    in_flight = InFlight(server.port, "/sleep?s=5", timeout=30)
    server.wait_for_log(r"fault app: sleeping", since=mark)
    server.signal(signal.SIGTERM)
    term_at = time.monotonic()
    server.wait_for_log(r"Handling signal: term", since=mark)
    outcomes: list[str] = []
    deadline = time.monotonic() + 10
    refused_after = None
    while time.monotonic() < deadline:
        try:
            sock = connect(server.port, timeout=10)
        except ConnectionRefusedError:
            refused_after = time.monotonic() - term_at
            break
        with sock:
            # Accepted in the instant before every process closed its listener: it must
            # be served in full, never reset.
            sock.sendall(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            try:
                data = read_until_close(sock, timeout=10)
                outcomes.append("served" if data.startswith(b"HTTP/1.1 200 ") else repr(data))
            except (ConnectionResetError, TimeoutError) as exc:
                outcomes.append(repr(exc))
    resp = in_flight.result(timeout=30)
    assert (resp.status, resp.body.split()[0]) == (200, b"slept")
    assert refused_after is not None, "new connections were still accepted while stopping"
    assert all(o == "served" for o in outcomes), outcomes
    assert server.wait_exit() == 0
    report(
        "term",
        worker_class,
        in_flight_status=resp.status,
        refused_after_ms=round(refused_after * 1000, 1),
        accepted_before_refusal=len(outcomes),
    )


# -- hung requests ---------------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_request_hung_past_timeout_is_dumped_while_others_are_served(
    start: StartServer, worker_class: str
) -> None:
    server = start("--timeout", "2", "--graceful-timeout", "3")
    mark = server.mark()
    hung = InFlight(server.port, "/hang", timeout=30)
    server.wait_for_log(r"fault app: hanging", since=mark)
    latencies = []
    for _ in range(10):
        begun = time.monotonic()
        assert get(server.port, timeout=10).status == 200
        latencies.append(time.monotonic() - begun)
    server.wait_for_log(r"hang_forever_in_app", since=mark, timeout=20)
    for _ in range(5):
        assert get(server.port, timeout=10).status == 200
    outcome = hung.outcome(timeout=30)
    # Every class answers the hung request 500 while nothing of its response was sent:
    # sync and fast as the master aborts them, the others from their watchdog (which
    # closed the connection silently before unless --request-timeout asked for a 504).
    assert isinstance(outcome, Response) and outcome.status == 500, outcome
    report(
        "hung",
        worker_class,
        hung_outcome=outcome.status if isinstance(outcome, Response) else type(outcome).__name__,
        others_max_ms=round(max(latencies) * 1000, 1),
        replaced=server.count_log(r"Booting worker with pid", since=mark),
    )


@pytest.mark.timeout(60)
def test_fast_answers_503_to_requests_that_waited_behind_a_hung_one(
    start: StartServer, worker_class: str
) -> None:
    """A fast worker's app holds its loop until the master aborts the worker: requests
    sent meanwhile on its other keep-alive connections were never run. They were reset
    by the exit, unlogged (a proxy does not send a POST again after that); they get a
    503 now (never run: safe to send again), and a line says how many."""
    if worker_class != "fast":
        pytest.skip("the other classes serve other connections while one request hangs")
    server = start("--timeout", "2", "--graceful-timeout", "3", workers=1)
    mark = server.mark()
    with RawConnection(server.port, timeout=20) as other:
        other.send(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        assert other.read_response().status == 200  # a keep-alive connection of that worker
        hung = InFlight(server.port, "/hang", timeout=30)
        server.wait_for_log(r"fault app: hanging", since=mark)
        other.send(b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\nhi")
        resp = other.read_response()
    assert resp.status == 503, resp
    assert isinstance(hung.outcome(timeout=30), Response)
    server.wait_for_log(r"Answered 1 request\(s\) that waited behind the hung one", since=mark)


@pytest.mark.timeout(60)
def test_a_reload_that_lowers_graceful_timeout_lets_running_requests_finish(
    start: StartServer, worker_class: str, tmp_path: Path
) -> None:
    """The old workers keep the graceful_timeout they were started with, as in gunicorn:
    the new, lower one cut a 3 s request of the old generation at 1 s."""
    config = tmp_path / "grace.conf.py"
    config.write_text("graceful_timeout = 20\n")
    server = start("-c", str(config), workers=1)
    mark = server.mark()
    slow = InFlight(server.port, "/sleep?s=3", timeout=30)
    server.wait_for_log(r"fault app: sleeping", since=mark)
    config.write_text("graceful_timeout = 1\n")
    server.signal(signal.SIGHUP)
    server.wait_for_log(r"Reload complete", since=mark, timeout=30)
    response = slow.result(timeout=30)
    assert response.status == 200 and response.body.startswith(b"slept"), response


@pytest.mark.timeout(60)
@pytest.mark.parametrize("where", ["/hang", "/hang-mid"])
def test_a_hung_request_gets_its_access_line_and_hooks(
    start: StartServer, worker_class: str, tmp_path: Path, where: str
) -> None:
    """The hung request's 500 (or, hung mid-body, the app's 200 and what went out) is
    logged and passed to post_request on every class, and a worker killed for it runs
    worker_exit; fast ended its process before any of them."""
    hooks = tmp_path / "hooks.conf.py"
    hooks.write_text(
        "import sys\n"
        "def post_request(worker, req, environ, resp):\n"
        "    print(f'hook post_request {req.path} {resp.status_code}', file=sys.stderr)\n"
        "def worker_exit(server, worker):\n"
        "    print(f'hook worker_exit {worker.pid}', file=sys.stderr)\n"
    )
    server = start("--timeout", "2", "-c", str(hooks), "--access-logfile", "-", workers=1)
    (worker,) = server.wait_for_workers(1)
    mark = server.mark()
    hung = InFlight(server.port, where, timeout=30)
    server.wait_for_log(r"fault app: hanging", since=mark)
    outcome = hung.outcome(timeout=30)
    status = 500 if where == "/hang" else 200
    if where == "/hang":
        assert isinstance(outcome, Response) and outcome.status == 500, outcome
    server.wait_for_log(rf'"GET {where} HTTP/1\.1" {status} ', stream="stdout", since=0)
    server.wait_for_log(rf"hook post_request {where} {status}", since=mark)
    if worker_class in ("sync", "fast"):  # aborted by the master, so replaced
        server.wait_for_log(rf"Worker exiting \(pid: {worker}\)", since=mark)
        server.wait_for_log(rf"hook worker_exit {worker}", since=mark)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("worker_class", ["sync"])  # the others serve what they hold at once
def test_a_crash_costs_only_its_own_request(
    start: StartServer, worker_class: str, tmp_path: Path
) -> None:
    """A worker that dies in the middle of a request (os._exit, a segfault, the OOM
    killer) may take the connections it holds, but not the ones the kernel still queues:
    those go to the replacement. The sync worker used to accept the next connection while
    it read the crashing request's head, so each crash cost about two requests where
    gunicorn's cost one."""
    server = start(workers=1)
    mark = server.mark()
    gate = tmp_path / "open"
    with contextlib.ExitStack() as stack:

        def send(target: bytes) -> RawConnection:
            conn = stack.enter_context(RawConnection(server.port, timeout=30))
            conn.send(b"GET %s HTTP/1.1\r\nHost: t\r\n\r\n" % target)
            return conn

        busy = send(b"/gate?file=%s" % str(gate).encode())
        server.wait_for_log(r"fault app: at the gate", since=mark)
        # Queued behind the busy worker, in this order: the crash, then innocent requests.
        crash = send(b"/crash")
        innocent = [send(b"/") for _ in range(4)]
        gate.touch()
        assert busy.read_response().status == 200
        with pytest.raises(ConnectionError):
            crash.read_response()
        statuses: list[int | str] = []
        for conn in innocent:
            try:
                statuses.append(conn.read_response().status)
            except ConnectionError as exc:
                statuses.append(str(exc))
        assert statuses == [200] * 4, (statuses, server.logs)


@pytest.mark.timeout(60)
def test_request_timeout(start: StartServer, worker_class: str) -> None:
    """gthread/gevent answer 504 from their watchdog and keep the worker; sync and fast run
    the app on the worker's one thread, so the master aborts the silent busy worker at
    ``request_timeout`` (stack dump) and replaces it, and the client sees its connection
    closed. ``timeout`` is far off: each class must keep to ``request_timeout`` (the master
    applied only ``timeout`` to sync and fast before)."""
    server = start(
        "--request-timeout", "1", "--timeout", "40", "--graceful-timeout", "3",
        "--access-logfile", "-",
    )  # fmt: skip
    workers = server.wait_for_workers(2)
    mark = server.mark()
    hung = InFlight(server.port, "/hang", timeout=30)
    server.wait_for_log(r"fault app: hanging", since=mark)
    assert get(server.port, timeout=10).status == 200
    outcome = hung.outcome(timeout=30)
    status = outcome.status if isinstance(outcome, Response) else type(outcome).__name__
    if worker_class in ("gthread", "gevent", "eventlet"):
        assert status == 504, outcome
        server.wait_for_log(r"Request timeout \(pid:\d+\): GET /hang", since=mark)
        assert server.count_log(r"Booting worker with pid", since=mark) == 0
        # The access log has what the client got (it said 000 0 before).
        assert isinstance(outcome, Response)
        server.wait_for_log(rf'"GET /hang HTTP/1.1" 504 {len(outcome.body)} ', stream="stdout")
    else:
        assert status != 200, outcome
        server.wait_for_log(r"WORKER TIMEOUT \(pid:\d+\)", since=mark, timeout=20)
        server.wait_for_log(r"stuck on 'GET /hang HTTP/1.1'", since=mark, timeout=5)
        server.wait_for_log(r"hang_forever_in_app", since=mark, timeout=10)
        server.wait_for_log(r"Booting worker with pid", since=mark, timeout=20)
    server.wait_for_log(r"hang_forever_in_app", since=mark, timeout=10)
    assert get(server.port, timeout=10).status == 200
    report(
        "request-timeout",
        worker_class,
        outcome=status,
        replaced=sorted(set(workers) - set(server.worker_pids())) != [],
    )


# -- abuse -----------------------------------------------------------------------------------------


class Abuser:
    """One hostile client on its own thread; records when and how it was dropped."""

    def __init__(self, name: str, action: Callable[[Abuser], None]) -> None:
        self.name = name
        self.began = time.monotonic()
        self.dropped_after: float | None = None
        self.answer = b""
        self.error = ""
        self.sent = 0
        self._action = action
        self.thread = threading.Thread(target=self._run, daemon=True, name=name)

    def _run(self) -> None:
        try:
            self._action(self)
        except Exception as exc:  # recorded for the assertion message
            self.error = repr(exc)
        finally:
            if self.dropped_after is None and not self.error:
                self.error = "not dropped"

    def dropped(self) -> None:
        self.dropped_after = time.monotonic() - self.began

    def status(self) -> str:
        return self.answer.split(b"\r\n", 1)[0].decode("latin-1") if self.answer else "closed"

    def __repr__(self) -> str:
        after = "-" if self.dropped_after is None else f"{self.dropped_after:.2f}s"
        return f"<{self.name}: {self.status()} after {after}, sent {self.sent} {self.error}>"


def _trickle(sock: socket.socket, data: bytes, interval: float, abuser: Abuser) -> None:
    """Send ``data`` a byte every ``interval`` s until the server answers or closes."""
    sock.settimeout(interval)
    for byte in data:
        try:
            sock.sendall(bytes([byte]))
            abuser.sent += 1
        except OSError:
            break
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            continue
        except OSError:
            break
        abuser.answer += chunk
        break
    with contextlib.suppress(OSError):
        abuser.answer += read_until_close(sock, timeout=10)
    abuser.dropped()


def slowloris(port: int) -> Callable[[Abuser], None]:
    def act(abuser: Abuser) -> None:
        with connect(port, timeout=30) as sock:
            _trickle(sock, b"GET / HTTP/1.1\r\nHost: t\r\nX-Slow: " + b"s" * 100, 1.0, abuser)

    return act


def slow_body(port: int) -> Callable[[Abuser], None]:
    def act(abuser: Abuser) -> None:
        with connect(port, timeout=30) as sock:
            sock.sendall(b"POST /read HTTP/1.1\r\nHost: t\r\nContent-Length: 100000\r\n\r\n")
            _trickle(sock, b"b" * 1000, 0.1, abuser)  # 10 B/s, far below --body-min-rate

    return act


def unread_upload(port: int, size: int) -> Callable[[Abuser], None]:
    def act(abuser: Abuser) -> None:
        with connect(port, timeout=30) as sock:
            sock.sendall(b"POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n" % size)
            piece = b"u" * 65536
            reader = threading.Thread(target=_read_answer, args=(sock, abuser), daemon=True)
            reader.start()
            try:
                while abuser.sent < size:
                    abuser.sent += sock.send(piece[: size - abuser.sent])
            except OSError:
                pass
            reader.join(15)
            abuser.dropped()

    return act


def _read_answer(sock: socket.socket, abuser: Abuser) -> None:
    with contextlib.suppress(OSError):
        abuser.answer = read_until_close(sock, timeout=15)


def idle_connections(port: int, count: int) -> Callable[[Abuser], None]:
    def act(abuser: Abuser) -> None:
        socks = [connect(port, timeout=30) for _ in range(count)]
        abuser.sent = count
        try:
            for sock in socks:
                with contextlib.suppress(OSError):
                    read_until_close(sock, timeout=15)
            abuser.dropped()  # when the last of them was closed
        finally:
            for sock in socks:
                sock.close()

    return act


HEADER_TIMEOUT = 2.0
# What "dropped within its deadline" allows on top of the deadline: a sweep interval, a
# loaded machine. Generous on purpose: it only catches a defence that does not act.
SLACK = 4.0


@pytest.mark.timeout(90)
def test_abusive_clients_are_dropped_while_normal_requests_answer(
    start: StartServer, worker_class: str
) -> None:
    # sync serves one request per process: the slow body holds its worker while the app
    # reads, so sync gets a second worker (that is the sync model; see docs/lifecycle.md).
    server = start(
        "--header-timeout",
        str(HEADER_TIMEOUT),
        "--body-min-rate",
        "1000",
        workers=2 if worker_class == "sync" else 1,
    )
    port = server.port
    abusers = [
        Abuser("slowloris", slowloris(port)),
        Abuser("slow-body", slow_body(port)),
        Abuser("idle-200", idle_connections(port, 200)),
        Abuser("upload-100MB", unread_upload(port, 100 * 1024 * 1024)),
    ]
    for abuser in abusers:
        abuser.thread.start()
    latencies = []
    failures = []
    deadline = time.monotonic() + HEADER_TIMEOUT + SLACK
    while time.monotonic() < deadline and any(a.thread.is_alive() for a in abusers):
        begun = time.monotonic()
        try:
            resp = get(port, timeout=10)
            if resp.status != 200:
                failures.append(resp.status)
        except (OSError, http.client.HTTPException) as exc:
            failures.append(repr(exc))
        latencies.append(time.monotonic() - begun)
        time.sleep(0.1)  # a request every 100 ms while the abuse goes on (pacing)
    for abuser in abusers:
        abuser.thread.join(20)
    assert not failures, f"normal requests failed during the abuse: {failures}"
    for abuser in abusers:
        assert abuser.dropped_after is not None and not abuser.error, abusers
    # The fast worker buffers every body before the app runs (its design: wsgi.input must
    # never block the loop), so it takes the whole upload, spooled to a temporary file,
    # and answers after it; --limit-request-body is how to refuse such uploads there. The
    # blocking workers answer at once, then read and drop what still arrives for 2 s at
    # most (a lingering close: closed with it arriving, the reset would destroy the
    # answer), so on loopback all of it may go through.
    buffers_bodies = worker_class == "fast"
    bound = {
        "slowloris": HEADER_TIMEOUT + SLACK,
        "slow-body": HEADER_TIMEOUT + SLACK,
        "idle-200": HEADER_TIMEOUT + SLACK,
        "upload-100MB": HEADER_TIMEOUT + SLACK if buffers_bodies else SLACK,
    }
    late = [a for a in abusers if a.dropped_after > bound[a.name]]  # type: ignore[operator]
    assert not late, f"not dropped within the deadline: {late}"
    # The unread upload was answered (the app does not read it), then the rest refused.
    upload = abusers[3]
    assert upload.answer.startswith(b"HTTP/1.1 200 "), abusers
    if buffers_bodies:
        assert upload.sent == 100 * 1024 * 1024, abusers
    report(
        "abuse",
        worker_class,
        normal_requests=len(latencies),
        normal_max_ms=round(max(latencies) * 1000, 1),
        dropped_after_s={a.name: round(a.dropped_after or -1, 2) for a in abusers},
        answers={a.name: a.status() for a in abusers},
        upload_sent_mb=round(upload.sent / 1024 / 1024, 1),
    )


@pytest.mark.timeout(30)
def test_body_over_limit_request_body_gets_413(start: StartServer, worker_class: str) -> None:
    server = start("--limit-request-body", "1000000", workers=1)
    with connect(server.port, timeout=10) as sock:
        sock.sendall(b"POST /read HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n" % (100 << 20))
        answer = read_until_close(sock, timeout=10)
    assert answer.startswith(b"HTTP/1.1 413 "), answer[:200]
    assert get(server.port).status == 200


@pytest.mark.timeout(60)
def test_fast_body_that_cannot_be_spilled_gets_500(
    server_factory: ServerFactory, tmp_path: Path
) -> None:
    """The fast worker keeps a body past 1 MiB in a temporary file. When that cannot be
    written (a full disk: here a file-size limit, EFBIG) or made (the directory gone),
    the request gets a 500 and one ERROR line; the client was reset and the access log
    said 400, blaming it."""
    require_worker_class("fast")
    (tmp_path / "faultapp.py").write_text(FAULT_APP)
    spill_dir = tmp_path / "spill"
    spill_dir.mkdir()
    hooks = tmp_path / "fsize.conf.py"
    hooks.write_text(
        "import resource, signal, tempfile\n"
        "def post_worker_init(worker):\n"
        "    tempfile.gettempdir()  # picked now, while the directory exists\n"
        "    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a failed write, not a death\n"
        "    resource.setrlimit(resource.RLIMIT_FSIZE, (1536 * 1024, 1536 * 1024))\n"
    )
    server = server_factory(
        "faultapp:app",
        *("-k", "fast", "--workers", "1", "-c", str(hooks), "--access-logfile", "-"),
        cwd=tmp_path,
        env={"TMPDIR": str(spill_dir)},
    )
    (worker,) = server.wait_for_workers(1)

    def upload(size: int) -> bytes:
        with connect(server.port, timeout=10) as sock:
            sock.sendall(b"POST /read HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n" % size)
            with contextlib.suppress(OSError):  # the server may stop reading: its answer
                sock.sendall(b"x" * size)
            return read_until_close(sock, timeout=10)

    # Spilled, and under the limit: served.
    assert upload(1_200_000).startswith(b"HTTP/1.1 200 "), server.logs[-2000:]
    # The file grows past the limit.
    answer = upload(2_000_000)
    assert answer.startswith(b"HTTP/1.1 500 "), answer[:300]
    assert b"Connection: close\r\n" in answer
    server.wait_for_log(r"\[ERROR\] Request body from ip=127\.0\.0\.1 not stored: .*File too large")
    server.wait_for_log(r'"POST /read HTTP/1\.1" 500 ', stream="stdout")
    # The directory is gone: the file cannot be made.
    spill_dir.rmdir()
    answer = upload(1_200_000)
    assert answer.startswith(b"HTTP/1.1 500 "), answer[:300]
    server.wait_for_log(r"not stored: .*No such file or directory")
    assert "connection lost before the request body" not in server.logs
    assert "Traceback" not in server.logs
    assert get(server.port).status == 200
    assert server.worker_pids() == [worker]


# -- recycling -------------------------------------------------------------------------------------

LOG_PID = re.compile(r"\] \[(\d+)\] \[")


def _retired_pids(server: ServerProcess, pattern: str, since: int) -> set[int]:
    pids = set()
    for line in server.lines[since:]:
        if re.search(pattern, line):
            match = LOG_PID.search(line)
            if match:
                pids.add(int(match.group(1)))
    return pids


def _check_announced_closes(load: Load, retired: set[int], worker_class: str) -> None:
    """Every keep-alive connection a retired worker held ended on a response that said
    ``Connection: close`` (none ended in a failure)."""
    for record in load.connections:
        if record.pids and record.pids[-1] in retired and record.ended:
            assert record.ended != FAILED, f"{record} ended in a failure: {load.summary()}"
    announced = sum(
        1 for r in load.connections if r.pids and r.pids[-1] in retired and r.ended == ANNOUNCED
    )
    assert announced >= len(retired) or worker_class == "sync", load.summary()


@pytest.mark.timeout(90)
@pytest.mark.parametrize("how", ["max_requests", "hup"])
@pytest.mark.parametrize("worker_class", ["sync", "gthread"])
def test_a_stopping_worker_leaves_the_queue_to_its_replacement(
    server_factory: ServerFactory, worker_class: str, how: str
) -> None:
    """Six one-second requests at once on one worker (one thread), which then stops for
    a recycle or a reload: it took every connection queued on the shared socket as it
    stopped (needed only when the server stops, as the last close resets the queue),
    and dropped those it could not serve within ``graceful_timeout`` (2 s) while its
    replacement stood idle: 3 or 4 of the 6 failed. They are left to the replacement."""
    args = ["--graceful-timeout", "2", "--workers", "1"]
    if worker_class == "gthread":
        args += ["--threads", "1"]
    if how == "max_requests":
        args += ["--max-requests", "1"]
    server = server_factory("slow:app", "-k", worker_class, *args)
    mark = server.mark()
    # The first one in the app before the others connect: a sync worker holds every
    # connection it accepted whose head had not arrived yet (its defence against slow
    # heads), and one it holds is not left to the replacement.
    requests = [InFlight(server.port, "/sleep?s=1", timeout=60)]
    server.wait_for_log(r"slow app: sleeping", since=mark)
    for _ in range(5):
        requests.append(InFlight(server.port, "/sleep?s=1", timeout=60))
    if how == "hup":
        server.signal(signal.SIGHUP)
    outcomes = [request.outcome(timeout=60) for request in requests]
    failed = [str(each) for each in outcomes if not isinstance(each, Response)]
    assert not failed, (failed, server.logs)
    assert all(each.status == 200 for each in outcomes if isinstance(each, Response))


@pytest.mark.timeout(60)
def test_max_requests_with_jitter_under_load(start: StartServer, worker_class: str) -> None:
    server = start("--max-requests", "60", "--max-requests-jitter", "20")
    mark = server.mark()
    # (Bounded by time, not by a count: with two workers, recycling goes one at a time,
    # and a short burst ended before the second's turn.)
    with Load(server.port, threads=4, max_requests=20_000) as load:
        wait_until(
            lambda: server.count_log(r"Autorestarting worker", since=mark) >= 3,
            "three workers recycled",
        )
        load.wait_for(100)
    assert not load.lost(), load.summary()
    retired = _retired_pids(server, r"Autorestarting worker", mark)
    _check_announced_closes(load, retired, worker_class)
    report("max-requests", worker_class, failed=len(load.failures), total=load.total,
           recycled=len(retired))  # fmt: skip


@pytest.mark.timeout(60)
def test_a_retiring_worker_is_replaced_before_it_exits(
    start: StartServer, worker_class: str
) -> None:
    """A worker that retires itself stops counting at once: its replacement boots while it
    still holds an idle keep-alive connection (for DRAIN_IDLE), so capacity never drops.
    Before, the master replaced it only when it exited, and -k fast took a second more."""
    if worker_class == "sync":
        pytest.skip("sync closes every connection after its response: nothing to wait for")
    if worker_class == "gthread":
        # It counts requests in flight when it announces its last response, so whether
        # the idle connection here is told to close depends on thread timing.
        pytest.skip("gthread may close the idle connection ahead: no stable scenario")
    # Three requests: the start-up handshake's, then two here.
    server = start("--max-requests", "3", workers=1)
    (old,) = server.wait_for_workers(1)
    with RawConnection(server.port) as idle:
        idle.send(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        assert idle.read_response().status == 200  # the connection stays open, idle
        assert get(server.port).status == 200  # the third: the worker retires
        both = False
        deadline = time.monotonic() + 10  # bounds a hang only
        while time.monotonic() < deadline:
            # (/proc's children lists can miss one while another forks: ask each pid.)
            replacements = [pid for pid in children_of(server.pid) if pid != old]
            if not is_alive(old):
                break  # it exited first: too late
            if replacements:
                both = True
                break
            time.sleep(0.005)  # poll interval
        assert both, f"no replacement while worker {old} drained\n{server.logs}"


def _kernel_queue(port: int, peer_port: int | None = None) -> int:
    """What the kernel holds for 127.0.0.1:``port`` (/proc/net/tcp's rx_queue): for the
    listener (``peer_port`` None) the connections not yet accepted, for the accepted side
    of the connection from ``peer_port`` the bytes not yet read; -1 when not found."""
    local = f"0100007F:{port:04X}"
    state, remote = ("0A", "00000000:0000") if peer_port is None else ("01", None)
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1] != local or fields[3] != state:
            continue
        if fields[2] != (remote or f"0100007F:{peer_port:04X}"):
            continue
        return int(fields[4].split(":")[1], 16)
    return -1


# The app of the test below: ``/?NAME`` waits (logged) until the file NAME exists in its
# directory; while the file ``hold`` exists, a worker that starts waits before it serves.
GATED_APP = """
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def wait_for(name, present=True):
    deadline = time.monotonic() + 20  # bounds a hang only
    while os.path.exists(os.path.join(HERE, name)) != present:
        if time.monotonic() > deadline:
            break
        time.sleep(0.01)


wait_for("hold", present=False)


def app(environ, start_response):
    name = environ.get("QUERY_STRING", "")
    if name:
        sys.stderr.write("gated app: waiting for %s\\n" % name)
        sys.stderr.flush()
        wait_for(name)
    body = b"%d" % os.getpid()
    start_response("200 OK", [("Content-Length", str(len(body)))])
    return [body]
"""


@pytest.mark.timeout(60)
@pytest.mark.parametrize("loop", ["uvloop", "standard"])
def test_fast_retirement_answers_a_connection_accepted_right_after_it(
    server_factory: ServerFactory, tmp_path: Path, loop: str
) -> None:
    """A connection the fast worker's loop accepts in the turn that retires it, after the
    retiring request, is answered, not reset.

    asyncio's own loop sets each accepted connection up in a task that starts at the next
    turn, and the servers were closed before those tasks ran: the task failed (an
    assertion in ``Server._attach``, silent outside debug mode) and dropped the socket with
    its request unread, a reset (wrk counted read errors while recycling, about one per
    hundred recycles). The turn is arranged with the loop held by the app, so that one
    poll reports A's request (the one that retires the worker), then C's, then the
    listener (D queued): A's retirement leaves D in the queue, C's app runs, and B, which
    connects meanwhile, is accepted with D after it in the same turn. The replacement
    worker is held at its start meanwhile, so that it cannot take them first.
    """
    (tmp_path / "gatedapp.py").write_text(GATED_APP)
    env = {}
    if loop == "standard":
        hidden = tmp_path / "no-uvloop"
        hidden.mkdir()
        (hidden / "uvloop.py").write_text("raise ImportError('hidden by the test')\n")
        env["PYTHONPATH"] = os.pathsep.join(str(p) for p in (hidden, SRC, ROOT))
    # The start-up handshake's request, A's and C's first, S's, then A's second: the fifth.
    server = server_factory(
        "gatedapp:app", "-k", "fast", "--workers", "1", "--max-requests", "5",
        cwd=tmp_path, env=env,
    )  # fmt: skip
    if loop == "standard":
        server.wait_for_log(r"uvloop is not installed: using the standard asyncio loop")
    port = server.port
    hello = b"GET / HTTP/1.1\r\nHost: t\r\n\r\n"
    hold = tmp_path / "hold"
    hold.touch()
    with contextlib.ExitStack() as stack:
        stack.callback(hold.unlink, missing_ok=True)

        def open_connection() -> RawConnection:
            return stack.enter_context(RawConnection(port, timeout=20))

        def queued(conn: RawConnection, data: bytes) -> None:
            """Send, and wait until the request is in the worker's kernel buffer."""
            conn.send(data)
            peer = conn.sock.getsockname()[1]
            wait_until(lambda: _kernel_queue(port, peer) > 0, "the request queued")

        a, c, s = open_connection(), open_connection(), open_connection()
        for conn in (a, c):
            conn.send(hello)
            assert conn.read_response().status == 200
        mark = server.mark()
        s.send(b"GET /?s-go HTTP/1.1\r\nHost: t\r\n\r\n")
        server.wait_for_log(r"gated app: waiting for s-go", since=mark)  # the loop is held
        queued(a, hello)
        queued(c, b"GET /?c-go HTTP/1.1\r\nHost: t\r\n\r\n")
        d = open_connection()
        d.send(hello)
        wait_until(lambda: _kernel_queue(port) == 1, "D queued")
        (tmp_path / "s-go").touch()
        # C's app: A's request has retired the worker, and its retirement took D.
        server.wait_for_log(r"gated app: waiting for c-go", since=mark)
        assert server.count_log(r"Autorestarting worker", since=mark) == 1
        # A retirement leaves the queue to the master's other workers (drain_queued).
        assert _kernel_queue(port) == 1, "D was taken"
        b = open_connection()
        b.send(hello)
        wait_until(lambda: _kernel_queue(port) == 2, "B queued")
        (tmp_path / "c-go").touch()
        # D and B are taken in C's turn by the retiring worker (asyncio's loop), or stay
        # queued (uvloop closes its servers first): then the replacement serves them.
        hold.unlink()
        answers = {}
        for name, conn in (("S", s), ("A", a), ("C", c), ("D", d), ("B", b)):
            try:
                answers[name] = resp = conn.read_response()
            except ConnectionError as exc:
                raise AssertionError(f"{name}'s request was not answered: {exc}") from None
            assert resp.status == 200, name
        # S, A and C from the retiring worker; from A's, the one that reaches max_requests,
        # on, all its responses say close.
        retiring = answers["S"].body
        assert answers["A"].body == answers["C"].body == retiring, answers
        assert [
            name for name, resp in answers.items() if resp.closes and resp.body == retiring
        ] == [name for name in ("A", "C", "D", "B") if answers[name].body == retiring]


@pytest.mark.timeout(60)
def test_max_worker_lifetime_under_load(start: StartServer, worker_class: str) -> None:
    server = start("--max-worker-lifetime", "1.5", "--max-worker-lifetime-jitter", "0.5")
    mark = server.mark()
    with Load(server.port, threads=4) as load:
        wait_until(
            lambda: server.count_log(r"Retiring worker .*max_worker_lifetime", since=mark) >= 3,
            "three workers retired for their lifetime",
        )
        load.wait_for(100)
    assert not load.lost(), load.summary()
    retired = _retired_pids(server, r"Retiring worker .*max_worker_lifetime", mark)
    _check_announced_closes(load, retired, worker_class)
    report("max-lifetime", worker_class, failed=len(load.failures), total=load.total,
           recycled=len(retired))  # fmt: skip


@pytest.mark.timeout(60)
def test_max_worker_memory_retires_the_worker(start: StartServer, worker_class: str) -> None:
    server = start("--max-worker-memory", "120", workers=1)
    (first,) = server.wait_for_workers(1)
    mark = server.mark()
    with Load(server.port, threads=2) as load:
        load.wait_for(50)
        resp = get(server.port, "/alloc?mb=160", timeout=20)
        assert resp.status == 200 and pid_of(resp) == first
        server.wait_for_log(
            rf"Retiring worker \(pid: {first}\): max_worker_memory reached", since=mark
        )
        (second,) = server.wait_for_workers(1, exclude=[first])
        wait_until(lambda: second in load.pids(), "the replacement answers")
        load.wait_for(50)
    assert not load.lost(), load.summary()
    report("max-memory", worker_class, failed=len(load.failures), total=load.total)


# -- an independent client ------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_hup_under_wrk(start: StartServer, worker_class: str) -> None:
    """The HUP test again with wrk (skipped where wrk is not installed)."""
    if shutil.which("wrk") is None:
        pytest.skip("wrk is not installed")
    server = start()
    result: list[Any] = []
    runner = threading.Thread(
        target=lambda: result.append(run_wrk_load(server.url("/"), seconds=3)), daemon=True
    )
    runner.start()
    time.sleep(1.0)  # let wrk's connections open before the fault (pacing, not a wait)
    mark = server.mark()
    server.signal(signal.SIGHUP)
    server.wait_for_log(r"Reload complete", since=mark, timeout=20)
    runner.join(40)
    assert result and result[0] is not None, "wrk did not finish"
    run = result[0]
    # The server's log since the HUP goes with a failure: which processes stopped when.
    since_hup = "\n".join(server.lines[mark:])
    assert run.failed == 0, f"{run.output}\nserver log since the HUP:\n{since_hup}"
    report("hup-wrk", worker_class, failed=run.failed, total=run.requests)


@pytest.mark.timeout(90)
@pytest.mark.parametrize("cls", ["sync", "gthread", "gevent", "eventlet", "fast"])
def test_out_of_file_descriptors_the_worker_pauses_accepting(
    server_factory: ServerFactory, tmp_path: Path, cls: str
) -> None:
    """A worker with 64 descriptors and 150 clients: accept() fails with EMFILE while they
    stay. gthread spun on the still-readable listener, a core at 100% and one log line
    per turn (240,000 in 3 s); sync raised and died, resetting every connection it held.
    Now each pauses accepting, logs once in a while, and serves again once they leave."""
    require_worker_class(cls)
    hooks = tmp_path / "nofile.conf.py"
    hooks.write_text(
        "import resource\n"
        "def post_worker_init(worker):\n"
        "    resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))\n"
    )
    server = server_factory(
        "hello:app",
        "-k",
        cls,
        *WORKER_ARGS[cls],
        "--workers",
        "1",
        "--keep-alive",
        "30",
        "--worker-connections",
        "1000",
        "-c",
        str(hooks),
    )
    (worker,) = server.wait_for_workers(1)
    mark = server.mark()
    socks = [connect(server.port) for _ in range(150)]
    try:
        if cls != "fast":  # uvloop pauses the server by itself, and says nothing
            server.wait_for_log(r"accept\(\) failed 1 time\(s\), pausing", since=mark)
        time.sleep(2)  # what a spinning worker would fill with lines (not a timing check)
        assert server.count_log(r"accept\(\) failed", since=mark) <= 1, server.logs[-3000:]
        assert server.worker_pids() == [worker]
    finally:
        for sock in socks:
            sock.close()

    def serves() -> bool:
        try:
            return get(server.port, timeout=5).status == 200
        except OSError:  # a connection the kernel queued while accept() was failing
            return False

    wait_until(serves, "it serves again")
    assert server.worker_pids() == [worker], server.logs[-3000:]


@pytest.mark.timeout(60)
def test_the_master_survives_running_out_of_file_descriptors(
    server_factory: ServerFactory, tmp_path: Path
) -> None:
    """The master opened a pipe when its first worker became ready; out of descriptors
    then, the error ended the master and the whole server. Now it says so and serves."""
    (tmp_path / "slowboot.py").write_text(
        "import time\n"
        "time.sleep(2)\n"
        "def app(environ, start_response):\n"
        "    start_response('200 OK', [('Content-Length', '2')])\n"
        "    return [b'ok']\n"
    )
    server = server_factory("slowboot:app", "--workers", "1", cwd=tmp_path, wait_ready=False)
    server.wait_for_log(r"Booting worker")
    held = len(os.listdir(f"/proc/{server.pid}/fd"))
    hard = resource.prlimit(server.pid, resource.RLIMIT_NOFILE)[1]
    resource.prlimit(server.pid, resource.RLIMIT_NOFILE, (held, hard))
    server.wait_for_log(r"Could not make the traceback token pipe", timeout=20)
    assert get(server.port).status == 200
    assert is_alive(server.pid)


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@pytest.mark.timeout(60)
def test_gthread_with_every_thread_busy_does_not_spin(server_factory: ServerFactory) -> None:
    """With every thread busy the listeners leave the poller, and a connection waits in the
    queue. A wait computed from the EMFILE pause (unset, so in the past) made the main
    loop poll with no timeout: a core at 100% (a spin, not a speed: the bound is loose)."""
    server = server_factory("slow:app", "-k", "gthread", "--threads", "2", "--workers", "1")
    (worker,) = server.wait_for_workers(1)
    mark = server.mark()
    requests = [InFlight(server.port, "/sleep?s=4") for _ in range(2)]
    wait_until(
        lambda: server.count_log(r"slow app: sleeping 4s", since=mark) == 2,
        "both threads are in the app",
    )
    with connect(server.port) as waiting:
        waiting.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        before = _cpu_seconds(worker)
        time.sleep(2)
        spent = _cpu_seconds(worker) - before
    for request in requests:
        assert request.result().status == 200
    assert spent < 1.0, f"the worker used {spent:.2f} s of CPU in 2 s, all threads sleeping"


FORK_FAILS_CONFIG = """
import errno, os

_fork = os.fork


def _failing_fork():
    # A container's pids limit reached: what fork() then raises.
    if os.path.exists({flag!r}):
        raise BlockingIOError(errno.EAGAIN, "Resource temporarily unavailable")
    return _fork()


os.fork = _failing_fork
"""


@pytest.mark.timeout(60)
def test_a_fork_that_fails_costs_only_the_worker_it_was_for(
    server_factory: ServerFactory, tmp_path: Path
) -> None:
    """fork() failing (EAGAIN at a pids limit, ENOMEM) escaped the master's loop: it
    killed every worker and exited, with nothing in the error log. A respawn, a TTIN or
    a USR2 that cannot fork is now logged and retried or refused, and the workers there
    keep serving."""
    flag = tmp_path / "no-more-pids"
    config = tmp_path / "fork.conf.py"
    config.write_text(FORK_FAILS_CONFIG.format(flag=str(flag)))
    server = server_factory("hello:app", "--workers", "2", "-c", str(config))
    victim, survivor = server.wait_for_workers(2)
    mark = server.mark()
    flag.write_text("")
    os.kill(victim, signal.SIGKILL)
    server.wait_for_log(
        r"Cannot start a worker: Resource temporarily unavailable; retrying", since=mark
    )
    server.signal(signal.SIGTTIN)
    server.signal(signal.SIGUSR2)
    server.wait_for_log(r"USR2 failed: cannot start the new master", since=mark)
    assert get(server.port).status == 200
    assert server.worker_pids() == [survivor]
    flag.unlink()
    server.wait_for_workers(3, timeout=30)  # the respawn and the TTIN, once fork works
    assert get(server.port).status == 200
