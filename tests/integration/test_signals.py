"""Issue 3: the master's signals and worker liveness, on a real master.

Waits are for log lines or process-table states, each bounded; never a fixed sleep, and no
assertion on how long anything took.
"""

from __future__ import annotations

import http.client
import importlib.util
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from .conftest import ServerFactory
from .server import (
    InFlight,
    RawConnection,
    Response,
    ServerError,
    ServerProcess,
    connect,
    get,
    is_alive,
    process_identity,
    read_until_fin,
)


@pytest.mark.timeout(60)
def test_term_is_graceful(server_factory: ServerFactory) -> None:
    server = server_factory("slow:app", "--workers", "1", "--graceful-timeout", "20")
    mark = server.mark()
    request = InFlight(server.port, "/sleep?s=2")
    server.wait_for_log(r"slow app: sleeping 2s", since=mark)
    server.signal(signal.SIGTERM)
    server.wait_for_log(r"Handling signal: term", since=mark)
    resp = request.result()
    assert (resp.status, resp.body) == (200, b"slept 2")
    assert server.wait_exit() == 0
    assert "Shutting down: Master" in server.logs
    assert re.search(r"Worker exiting \(pid: \d+\)", server.logs)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("worker_class", ["sync", "gthread", "fast"])
def test_a_request_cut_at_graceful_timeout_is_named(
    server_factory: ServerFactory, worker_class: str
) -> None:
    """The SIGKILL that ends a stop's grace names the request it cut, so an operator can
    find which one outlived graceful_timeout."""
    server = server_factory(
        "slow:app", "-k", worker_class, "--workers", "1", "--graceful-timeout", "1"
    )
    mark = server.mark()
    request = InFlight(server.port, "/sleep?s=30")
    server.wait_for_log(r"slow app: sleeping 30s", since=mark)
    server.signal(signal.SIGTERM)
    server.wait_for_log(
        r"\[WARNING\] Worker \(pid:\d+\) was killed \(SIGKILL\) by the master while serving "
        r"'GET /sleep\?s=30 HTTP/1\.1' for \d+\.\ds: the stop's graceful_timeout \(1s\) ran out",
        since=mark,
    )
    assert server.wait_exit() == 0
    with pytest.raises(OSError):
        request.result()


@pytest.mark.timeout(60)
def test_a_reloads_kill_at_graceful_timeout_says_why(server_factory: ServerFactory) -> None:
    """A previous worker retired by a HUP and killed when graceful_timeout ran out: the
    line said only "was killed (SIGKILL) by the master" when no request was on its slot,
    and never why."""
    server = server_factory("slow:app", "--workers", "1", "--graceful-timeout", "1")
    (old,) = server.wait_for_workers(1)
    mark = server.mark()
    request = InFlight(server.port, "/sleep?s=30")
    server.wait_for_log(r"slow app: sleeping 30s", since=mark)
    server.signal(signal.SIGHUP)
    server.wait_for_log(
        rf"\[WARNING\] Worker \(pid:{old}\) was killed \(SIGKILL\) by the master while "
        r"serving 'GET /sleep\?s=30 HTTP/1\.1' for \d+\.\ds: graceful_timeout \(1s\) ran out "
        r"before it finished its requests",
        since=mark,
        timeout=20,
    )
    with pytest.raises(OSError):
        request.result()
    assert get(server.port).status == 200


@pytest.mark.timeout(60)
@pytest.mark.parametrize("worker_class", ["gevent", "eventlet"])
def test_a_green_request_cut_at_graceful_timeout_is_answered_and_logged(
    server_factory: ServerFactory, worker_class: str
) -> None:
    """A green worker ends the requests still running just before the master's kill at
    graceful_timeout: a 500, an access line and a clean exit. Its own deadline started
    after the master's, so the SIGKILL always came first: a bare close, no access line,
    no post_request or worker_exit hook."""
    server = server_factory(
        "slow:app", "-k", worker_class, "--workers", "1", "--graceful-timeout", "2",
        "--access-logfile", "-",
    )  # fmt: skip
    mark = server.mark()
    request = InFlight(server.port, "/sleep?s=30")
    server.wait_for_log(r"slow app: sleeping 30s", since=mark)
    server.signal(signal.SIGTERM)
    outcome = request.outcome()
    assert isinstance(outcome, Response) and outcome.status == 500, server.logs
    server.wait_for_log(r'"GET /sleep\?s=30 HTTP/1.1" 500', stream="stdout")
    assert server.wait_exit() == 0
    assert "killed (SIGKILL)" not in server.logs, server.logs


@pytest.mark.timeout(60)
def test_term_refuses_new_connections(server_factory: ServerFactory) -> None:
    """After TERM a new connection is refused, or served in full; never accepted and reset."""
    server = server_factory("slow:app", "--workers", "1", "--graceful-timeout", "20")
    mark = server.mark()
    request = InFlight(server.port, "/sleep?s=3")
    server.wait_for_log(r"slow app: sleeping 3s", since=mark)
    server.signal(signal.SIGTERM)
    server.wait_for_log(r"Handling signal: term", since=mark)
    refused = False
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            sock = connect(server.port, timeout=10)
        except ConnectionRefusedError:
            refused = True
            break
        with sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            data = read_until_fin(sock)  # a connection accepted after TERM is not reset
            assert data.startswith(b"HTTP/1.1 200 "), f"accepted after TERM, then {data!r}"
    assert refused, "new connections were still accepted while stopping"
    assert request.result().status == 200
    assert server.wait_exit() == 0


@pytest.mark.timeout(60)
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGQUIT], ids=["INT", "QUIT"])
def test_int_and_quit_stop_fast(server_factory: ServerFactory, sig: signal.Signals) -> None:
    server = server_factory("slow:app", "--workers", "2", "--graceful-timeout", "60")
    workers = server.wait_for_workers(2)
    mark = server.mark()
    request = InFlight(server.port, "/sleep?s=120")
    server.wait_for_log(r"slow app: sleeping 120s", since=mark)
    server.signal(sig)
    # Well before the request or graceful_timeout could end.
    assert server.wait_exit(timeout=15) == 0
    outcome = request.outcome(15)
    assert not (isinstance(outcome, Response) and outcome.status == 200), outcome
    assert f"Handling signal: {sig.name[3:].lower()}" in server.logs
    assert "Shutting down: Master" in server.logs
    for pid in workers:
        assert not is_alive(pid), f"worker {pid} outlived a fast stop"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("worker_class", ["sync", "fast"])
def test_a_worker_int_hook_that_raises_is_logged(
    server_factory: ServerFactory, tmp_path: Path, worker_class: str
) -> None:
    """The worker's exit replaced the hook's exception, which left no trace; it is logged,
    as gunicorn logs it, and the worker still leaves."""
    config = tmp_path / "int_hook.py"
    config.write_text("def worker_int(worker):\n    raise RuntimeError('worker_int hook fails')\n")
    server = server_factory("hello:app", "-k", worker_class, "--workers", "1", "-c", str(config))
    server.wait_for_workers(1)
    server.signal(signal.SIGINT)
    assert server.wait_exit(timeout=15) == 0
    assert re.search(
        r"\[ERROR\] Exception in worker_int hook\n(.*\n)*RuntimeError: worker_int hook fails",
        server.logs,
    ), server.logs


@pytest.mark.timeout(60)
def test_hup_replaces_workers(server_factory: ServerFactory) -> None:
    server = server_factory("hello:app", "--workers", "2")
    old = server.wait_for_workers(2)
    identities = {pid: process_identity(pid) for pid in old}
    mark = server.mark()
    server.signal(signal.SIGHUP)
    server.wait_for_log(r"Handling signal: hup", since=mark)
    new = server.wait_for_workers(2, exclude=old)
    assert not set(new) & set(old)
    for pid in old:
        assert not is_alive(pid, identities[pid])
    for _ in range(5):
        assert get(server.port, "/").status == 200
    assert server.wait_for_log(r"Booting worker with pid: (\d+)", since=mark)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.mark.timeout(90)
@pytest.mark.parametrize("worker_class", ["sync", "fast"])
def test_hup_applies_a_changed_bind(
    server_factory: ServerFactory, tmp_path: Path, worker_class: str
) -> None:
    """A bind that gains an address keeps the ones it still names (binding them again
    failed, and the master then died on its own read-only config); one that cannot be
    bound refuses the reload; one that drops an address closes it once the reload is
    complete."""
    first, second = _free_port(), _free_port()
    config = tmp_path / "bind.conf.py"
    # As written, not as bound: "localhost" is kept by a reload that still names it.
    config.write_text(f"bind = ['localhost:{first}']\n")
    server = server_factory(
        "hello:app", "-k", worker_class, "--workers", "1", "-c", str(config), bind=False
    )
    assert server.port == first

    def reload(binds: list[int], outcome: str) -> None:
        mark = server.mark()
        names = [f"localhost:{port}" if port == first else f"127.0.0.1:{port}" for port in binds]
        config.write_text(f"bind = {names!r}\n")
        server.signal(signal.SIGHUP)
        server.wait_for_log(outcome, since=mark, timeout=30)

    reload([first, second], r"Reload complete")
    for port in (first, second):
        assert get(port, "/").status == 200
    # The same address written differently is the listener already open (binding it
    # again failed "in use"); the next reload writes it as "localhost" once more.
    mark = server.mark()
    config.write_text(f"bind = ['127.0.0.1:{first}', '127.0.0.1:{second}']\n")
    server.signal(signal.SIGHUP)
    server.wait_for_log(r"Reload complete", since=mark, timeout=30)
    assert not [line for line in server.lines[mark:] if "Listening at" in line]
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        reload([first, busy], r"Reload failed; the current workers keep serving: .*in use")
    # Both spellings at once: one address listed twice (its second bind failed "in use"
    # on our own socket).
    mark = server.mark()
    config.write_text(f"bind = ['localhost:{first}', '127.0.0.1:{first}']\n")
    server.signal(signal.SIGHUP)
    server.wait_for_log(
        rf"Reload failed; the current workers keep serving: bind = '127\.0\.0\.1:{first}' is "
        rf"the same address as 'localhost:{first}': listed twice",
        since=mark,
        timeout=30,
    )
    for port in (first, second):
        assert get(port, "/").status == 200
    reload([second], r"No longer listening at: http://127\.0\.0\.1:" + str(first))
    assert get(second, "/").status == 200
    deadline = time.monotonic() + 20  # the old worker lets go of its copy as it leaves
    while True:
        try:
            get(first, "/", timeout=2)
        except ConnectionRefusedError:
            break  # refused: nobody holds it (the new workers inherited it and hung clients)
        except OSError:
            pass  # an old worker still leaving (fast's may take one and reset it)
        assert time.monotonic() < deadline, "the dropped address still answers or hangs"
        time.sleep(0.1)  # poll interval
    assert "Traceback" not in server.logs


@pytest.mark.timeout(60)
@pytest.mark.parametrize("worker_class", ["sync", "gthread", "gevent", "eventlet", "fast"])
def test_a_head_arriving_across_a_reload_is_served(
    server_factory: ServerFactory, worker_class: str
) -> None:
    """A request whose head was in part when a HUP retired its worker, and whose rest
    came after the stop's one-second window for idle connections: gthread answered it 408
    (the window was meant for connections that had sent nothing). A head already begun
    keeps its own deadline (header_timeout), on every class."""
    server = server_factory("slow:app", "-k", worker_class, "--workers", "1")
    (old,) = server.wait_for_workers(1)
    with connect(server.port, timeout=30) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n")
        assert get(server.port, "/").status == 200  # the worker is serving (and read it)
        mark = server.mark()
        server.signal(signal.SIGHUP)
        server.wait_for_log(r"Reload complete", since=mark, timeout=30)
        time.sleep(1.5)  # past the stop's window for idle connections (DRAIN_IDLE, 1 s)
        assert old in server.worker_pids() or worker_class == "sync", "the old worker left"
        sock.sendall(b"X-Late: 1\r\nConnection: close\r\n\r\n")
        data = read_until_fin(sock)
    assert data.startswith(b"HTTP/1.1 200 "), (data, server.logs)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("worker_class", ["gthread", "gevent", "eventlet"])
def test_a_kept_alive_response_ending_after_a_reloads_window_serves_the_next(
    server_factory: ServerFactory, worker_class: str
) -> None:
    """A streamed response whose head went out kept alive before a HUP, and which ended
    after the stop's one-second window: gthread closed the connection as it came back,
    unannounced, and the client's next request met our FIN. It gets a window of its own
    (its next response says Connection: close)."""
    server = server_factory("stream:app", "-k", worker_class, "--workers", "1")
    with RawConnection(server.port, timeout=30) as conn:
        conn.send(b"GET /?chunks=5&size=10&sleep=0.5 HTTP/1.1\r\nHost: t\r\n\r\n")
        conn.sock.settimeout(10)
        conn.buffer = conn.sock.recv(1)  # the head is out (kept alive): then the HUP
        assert conn.buffer == b"H"
        mark = server.mark()
        server.signal(signal.SIGHUP)
        server.wait_for_log(r"Reload complete", since=mark, timeout=30)
        first = conn.read_response()
        assert first.status == 200 and not first.closes
        conn.send(b"GET /?chunks=1 HTTP/1.1\r\nHost: t\r\n\r\n")
        second = conn.read_response()
        assert (second.status, second.closes) == (200, True), server.logs


RELEASE_APP = """
import os

def app(environ, start_response):
    body = "{release} A=%s B=%s" % (os.environ.get("A"), os.environ.get("B"))
    start_response("200 OK", [("Content-Length", str(len(body)))])
    return [body.encode()]
"""


@pytest.mark.timeout(90)
def test_hup_applies_chdir_and_raw_env_and_refuses_a_broken_config(
    server_factory: ServerFactory, tmp_path: Path
) -> None:
    """A deploy that points chdir at a new release directory, and drops a raw_env key:
    the workers kept importing the old release, and the dropped key stayed set. A config
    that no longer loads (or whose log cannot be opened) restarted every worker with the
    old config and the new code, half a deploy; the reload is now refused."""
    for release in ("one", "two"):
        (tmp_path / release).mkdir()
        (tmp_path / release / "release_app.py").write_text(RELEASE_APP.format(release=release))
    config = tmp_path / "deploy.conf.py"
    config.write_text(f"chdir = {str(tmp_path / 'one')!r}\nraw_env = ['A=1', 'B=2']\n")
    server = server_factory("release_app:app", "--workers", "1", "-c", str(config))

    def reload(text: str, outcome: str) -> None:
        mark = server.mark()
        config.write_text(text)
        server.signal(signal.SIGHUP)
        server.wait_for_log(outcome, since=mark, timeout=30)

    assert get(server.port).body == b"one A=1 B=2"
    (first,) = server.wait_for_workers(1)
    mark = server.mark()
    reload(
        f"chdir = {str(tmp_path / 'two')!r}\nraw_env = ['A=3']\nproc_name = 'release-two'\n",
        r"Reload complete",
    )
    # The retired worker may still take a connection on its way out (as in gunicorn).
    server.wait_for_log(rf"Worker exiting \(pid: {first}\)", since=mark, timeout=30)
    assert get(server.port).body == b"two A=3 B=None"
    if importlib.util.find_spec("setproctitle") is not None:  # the master's title too
        title = Path(f"/proc/{server.pid}/cmdline").read_bytes()
        assert title.startswith(b"forkhorn: master [release-two]"), title
    (worker,) = server.wait_for_workers(1)
    reload("chdir = (\n", r"Reload failed; the current workers keep serving: config file")
    reload(
        f"chdir = {str(tmp_path / 'two')!r}\nerrorlog = {str(tmp_path / 'no' / 'e.log')!r}\n",
        r"Reload failed; the current workers keep serving: .*error log",
    )
    mark = server.mark()
    assert get(server.port).body == b"two A=3 B=None"
    assert server.worker_pids() == [worker]  # not restarted
    server.signal(signal.SIGTTIN)  # the logs still work after the failed set-up
    server.wait_for_log(r"Handling signal: ttin", since=mark)


@pytest.mark.timeout(90)
@pytest.mark.parametrize("chdir", [False, True], ids=["no-chdir", "relative-chdir"])
def test_hup_follows_a_current_symlink_with_relative_paths(
    server_factory: ServerFactory, tmp_path: Path, chdir: bool
) -> None:
    """A deploy that puts each release in its own directory, points ``current`` at the
    new one and sends HUP, to a server started in ``current`` with a relative
    ``-c conf.py``. Without ``--chdir`` the new workers imported the old release, where
    gunicorn's follow the link; a relative ``--chdir app`` (or the relative ``-c`` after
    any ``--chdir``) made every HUP fail, read from where chdir had moved the master."""
    releases = tmp_path / "releases"
    for release in ("one", "two"):
        code = releases / release / "app" if chdir else releases / release
        code.mkdir(parents=True)
        (code / "release_app.py").write_text(RELEASE_APP.format(release=release))
        (releases / release / "conf.py").write_text(f"raw_env = ['A={release}']\n")
    current = tmp_path / "current"
    current.symlink_to(releases / "one")
    args = ["--workers", "1", "-c", "conf.py", *(["--chdir", "app"] if chdir else [])]
    # PWD as a shell that ran `cd current` leaves it: the path, not where it leads.
    server = server_factory("release_app:app", *args, cwd=current, env={"PWD": str(current)})
    assert get(server.port).body == b"one A=one B=None"
    (old,) = server.wait_for_workers(1)
    current.unlink()
    current.symlink_to(releases / "two")
    mark = server.mark()
    server.signal(signal.SIGHUP)
    server.wait_for_log(r"Reload complete", since=mark, timeout=30)
    # The retired worker may still take a connection on its way out (as in gunicorn).
    server.wait_for_log(rf"Worker exiting \(pid: {old}\)", since=mark, timeout=30)
    assert get(server.port).body == b"two A=two B=None"


@pytest.mark.timeout(90)
def test_hup_after_the_old_release_was_deleted_and_an_abandoned_one_goes_back(
    server_factory: ServerFactory, tmp_path: Path
) -> None:
    """The release the master runs in is deleted before the HUP that moves to the next
    one: the reload crashed the master (``os.getcwd()``), and every worker with it. Then
    a broken release: its reload is abandoned, and the master stayed in the broken
    directory, so an old worker that died was replaced by one that could not boot."""
    releases = tmp_path / "releases"
    for release in ("one", "two", "three"):
        (releases / release).mkdir(parents=True)
        text = RELEASE_APP.format(release=release)
        if release == "three":
            text = "raise ImportError('a broken release')\n"
        (releases / release / "release_app.py").write_text(text)
    current = tmp_path / "current"
    current.symlink_to(releases / "one")
    server = server_factory(
        "release_app:app", "--workers", "1", cwd=current, env={"PWD": str(current)}
    )
    assert get(server.port).body == b"one A=None B=None"

    def move_to(release: str, outcome: str) -> None:
        current.unlink()
        current.symlink_to(releases / release)
        mark = server.mark()
        server.signal(signal.SIGHUP)
        server.wait_for_log(outcome, since=mark, timeout=30)

    (first,) = server.wait_for_workers(1)
    shutil.rmtree(releases / "one")
    move_to("two", r"Reload complete")
    server.wait_for_workers(1, exclude=[first], timeout=30)
    assert get(server.port).body == b"two A=None B=None"
    (serving,) = server.wait_for_workers(1)
    move_to("three", r"Reload abandoned")
    mark = server.mark()
    os.kill(serving, signal.SIGKILL)  # its replacement must come from release two
    server.wait_for_workers(1, exclude=[serving], timeout=30)
    assert get(server.port).body == b"two A=None B=None"
    assert server.count_log(r"failed to boot", since=mark) == 0


@pytest.mark.timeout(60)
def test_ttin_and_ttou_change_the_worker_count(server_factory: ServerFactory) -> None:
    server = server_factory("hello:app", "--workers", "2")
    server.wait_for_workers(2)
    server.signal(signal.SIGTTIN)
    server.wait_for_workers(3)
    server.signal(signal.SIGTTIN)
    server.wait_for_workers(4)
    server.signal(signal.SIGTTOU)
    server.wait_for_workers(3)
    server.signal(signal.SIGTTOU)
    server.wait_for_workers(2)
    server.signal(signal.SIGTTOU)
    server.wait_for_workers(1)
    assert get(server.port, "/").status == 200
    assert "Handling signal: ttin" in server.logs
    assert "Handling signal: ttou" in server.logs


@pytest.mark.timeout(60)
def test_usr1_reopens_the_access_log(server_factory: ServerFactory, tmp_path: Path) -> None:
    access = tmp_path / "access.log"
    rotated = tmp_path / "access.log.1"
    server = server_factory(
        "hello:app",
        "--workers",
        "2",
        "--access-logfile",
        str(access),
        "--access-logformat",
        "%(p)s %(U)s",  # the worker's pid, then the path
    )
    workers = server.wait_for_workers(2)
    assert get(server.port, "/before").status == 200
    poll_until(lambda: "/before" in read(access), "the access log gets /before")
    os.rename(access, rotated)
    mark = server.mark()
    server.signal(signal.SIGUSR1)
    server.wait_for_log(r"Handling signal: usr1", since=mark)
    # Keep sending requests until both workers have written to a new access.log: each
    # reopens when it gets the signal the master passes on.
    counter = iter(range(10**6))

    def both_workers_reopened() -> bool:
        assert get(server.port, f"/after-{next(counter)}").status == 200
        pids = {line.split(" ")[0].strip("<>") for line in read(access).splitlines()}
        return {str(pid) for pid in workers} <= pids

    poll_until(both_workers_reopened, "both workers write to the new access.log")
    # From now on nothing goes to the rotated file.
    rotated_before = read(rotated)
    for i in range(10):
        assert get(server.port, f"/late-{i}").status == 200
    poll_until(lambda: read(access).count("/late-") == 10, "the late requests are logged")
    assert read(rotated) == rotated_before
    assert "/before" in rotated_before and "/before" not in read(access)
    assert "Traceback" not in server.logs


def read(path: Path) -> str:
    try:
        return path.read_text()
    except FileNotFoundError:
        return ""


def poll_until(condition: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    """Call ``condition`` until it is true, at most ``timeout`` seconds (a bound only)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.025)  # poll interval
    raise ServerError(f"timed out waiting until {what}")


@pytest.mark.timeout(60)
def test_killed_worker_is_replaced(server_factory: ServerFactory) -> None:
    server = server_factory("hello:app", "--workers", "2")
    workers = server.wait_for_workers(2)
    victim = workers[0]
    os.kill(victim, signal.SIGKILL)  # a child of the master this test started
    after = server.wait_for_workers(2, exclude=[victim])
    assert workers[1] in after
    for _ in range(4):
        assert get(server.port, "/").status == 200
    assert re.search(rf"Worker \(pid:{victim}\).*SIGKILL", server.logs), server.logs


@pytest.mark.timeout(90)
def test_hung_request_is_dumped_and_its_worker_replaced(server_factory: ServerFactory) -> None:
    server = server_factory("slow:app", "--workers", "2", "--timeout", "2")
    server.wait_for_workers(2)
    mark = server.mark()
    hung = InFlight(server.port, "/hang", timeout=60)
    server.wait_for_log(r"slow app: hanging", since=mark)
    timeout_line = server.wait_for_log(r"WORKER TIMEOUT \(pid:(\d+)\)", timeout=30, since=mark)
    stuck = int(timeout_line.group(1))
    # The Python stack of the hung worker, with the app's own function in it.
    server.wait_for_log(r"slow\.py.*hang_forever_in_app", timeout=30, since=mark)
    server.wait_for_workers(2, exclude=[stuck], timeout=30)
    outcome = hung.outcome(30)
    # The client is not left waiting: its connection ends (closed, or an error status).
    assert not (isinstance(outcome, Response) and outcome.status == 200), outcome
    if isinstance(outcome, BaseException):
        assert isinstance(outcome, (OSError, http.client.HTTPException)), outcome
    for _ in range(4):
        assert get(server.port, "/").status == 200


@pytest.mark.timeout(60)
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR1], ids=["TERM", "USR1"])
def test_a_worker_signalled_while_booting(
    server_factory: ServerFactory, tmp_path: Path, sig: signal.Signals
) -> None:
    """A signal to a worker before its handlers exist (here: during a slow post_fork hook,
    as gevent's monkey-patching is): TERM makes it leave cleanly (its own "Worker
    exiting" line, exit 0) instead of dying of the signal; USR1 (reopen logs) does not
    kill it."""
    config = tmp_path / "slowfork.py"
    config.write_text(
        "import sys, time\n"
        "def post_fork(server, worker):\n"
        "    print('post_fork: sleeping', file=sys.stderr, flush=True)\n"
        "    time.sleep(2)\n"
    )
    server = server_factory(
        "hello:app", "--workers", "1", "--config", str(config), wait_ready=False
    )
    booting = server.wait_for_log(r"Booting worker with pid: (\d+)")
    worker = int(booting.group(1))
    server.wait_for_log(r"post_fork: sleeping")
    mark = server.mark()
    if sig == signal.SIGTERM:
        server.signal(signal.SIGTERM)
        assert server.wait_exit() == 0
        server.wait_for_log(rf"Worker exiting \(pid: {worker}\)", since=mark)
        assert not server.count_log(r"was sent|exited with code", since=mark)
    else:
        os.kill(worker, signal.SIGUSR1)
        server.wait_ready()
        assert get(server.port).status == 200
        assert is_alive(worker)


@pytest.mark.timeout(60)
def test_workers_leave_when_the_master_is_killed(
    server_factory: ServerFactory, worker_class: str
) -> None:
    """kill -9 of the master: no worker may live on as an orphan, serving from a socket no
    one supervises. Each notices its new parent, stops taking connections and exits."""
    server = server_factory("hello:app", "-k", worker_class, "--workers", "2")
    workers = server.wait_for_workers(2)
    identities = {pid: process_identity(pid) for pid in workers}
    assert get(server.port).status == 200
    wrk = shutil.which("wrk")
    if wrk is None:
        pytest.skip("wrk is not installed (.ci/run installs it)")
    # Clients that never pause: an orphan that only left once idle stayed as long as they
    # did (fast: the whole run).
    load = subprocess.Popen(
        [wrk, "-t1", "-c20", "-d40s", f"http://127.0.0.1:{server.port}/"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(0.5)  # let the load reach the workers (no assertion depends on it)
        assert server.proc is not None
        server.proc.kill()  # the master this test started
        server.proc.wait(timeout=10)
        poll_until(
            lambda: not any(is_alive(pid, identities[pid]) for pid in workers),
            "the orphaned workers exited while clients kept sending",
            timeout=20,  # bounds a hang only; wrk runs for 40 s
        )
    finally:
        load.kill()  # the wrk this test started
        load.wait(10)
    for pid in workers:  # the lines reach the harness's reader thread a little later
        poll_until(
            lambda pid=pid: bool(
                re.search(rf"\[{pid}\] \[INFO\] Parent changed, shutting down", server.logs)
            ),
            f"worker {pid} logged its reason",
            timeout=10,
        )
    with pytest.raises(ConnectionRefusedError):
        connect(server.port, timeout=5)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("worker_class", ["sync", "fast"])
def test_a_worker_held_by_a_hung_request_leaves_when_the_master_is_killed(
    server_factory: ServerFactory, worker_class: str
) -> None:
    """The parent check runs between requests, which a hung app never ends: the orphan
    kept the listening socket for ever, and a new master could not bind it. The kernel
    now tells the worker at once (PR_SET_PDEATHSIG), and with no master left to kill it
    at graceful_timeout, it quits then by itself."""
    server = server_factory(
        "slow:app", "-k", worker_class, "--workers", "1", "--graceful-timeout", "2"
    )
    worker, identity, request, _ = _hang_then_kill_the_master(server)
    poll_until(
        lambda: not is_alive(worker, identity),
        "the orphan held by the hung request exited",
        timeout=20,  # bounds a hang only; graceful_timeout is 2 s
    )
    request.outcome()  # ended one way or another (a 500 or a cut), not left hanging
    with socket.socket() as sock:  # the address is free for a new master
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", server.port))


@pytest.mark.timeout(60)
def test_an_orphans_stack_dump_goes_to_the_error_log(server_factory: ServerFactory) -> None:
    """A worker's fatal-signal dump goes to a file its master logs after reaping it; an
    orphan has no master to read it, so it writes the dump to the error log instead."""
    server = server_factory("slow:app", "--workers", "1", "--graceful-timeout", "20")
    mark = server.mark()
    worker, identity, request, master = _hang_then_kill_the_master(server)
    poll_until(
        lambda: _parent_of(worker) not in (master, None),
        "the worker was re-parented",
        timeout=20,
    )
    # The kernel's TERM (PR_SET_PDEATHSIG) made the orphan let go of the master's file.
    poll_until(lambda: not _holds_stack_file(worker), "the orphan dropped its stack file")
    os.kill(worker, signal.SIGABRT)  # as the master's timeout would
    server.wait_for_log(r"in hang_forever_in_app", since=mark, timeout=20)
    poll_until(lambda: not is_alive(worker, identity), "the orphan exited", timeout=20)
    request.outcome()


def _hang_then_kill_the_master(server: ServerProcess) -> tuple[int, int | None, InFlight, int]:
    """The one worker held by a hung request, then its master killed with SIGKILL: the
    worker, its identity, the request and the dead master's pid."""
    (worker,) = server.wait_for_workers(1)
    identity = process_identity(worker)
    mark = server.mark()
    request = InFlight(server.port, "/hang")
    server.wait_for_log(r"slow app: hanging", since=mark)
    assert server.proc is not None
    master = server.proc.pid
    server.proc.kill()  # the master this test started
    server.proc.wait(timeout=10)
    return worker, identity, request, master


def _holds_stack_file(pid: int) -> bool:
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            if "forkhorn-stacks" in os.readlink(fd):
                return True
        except OSError:
            continue  # closed since the listing
    return False


def _parent_of(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[1])


@pytest.mark.timeout(60)
@pytest.mark.parametrize("sig", [signal.SIGQUIT, signal.SIGINT])
def test_fast_quit_interrupts_a_request_the_app_holds(
    server_factory: ServerFactory, sig: signal.Signals
) -> None:
    """QUIT and INT stop a worker at once, as on the other classes. fast scheduled its exit
    on the loop, which the app held: a hung request kept the worker until the master's
    timeout killed it, with no "Worker exiting"."""
    server = server_factory("slow:app", "-k", "fast", "--workers", "1", "--timeout", "30")
    (worker,) = server.wait_for_workers(1)
    mark = server.mark()
    request = InFlight(server.port, "/hang")
    server.wait_for_log(r"slow app: hanging", since=mark)
    os.kill(worker, sig)
    server.wait_for_log(rf"Worker exiting \(pid: {worker}\)", since=mark, timeout=10)
    request.outcome()  # cut, not left hanging
    assert "WORKER TIMEOUT" not in server.logs
    assert "Fatal error on transport" not in server.logs
