"""The master's life cycle against a real server: reload that checks before it switches,
crash-loop backoff, timeouts with stack dumps, worker count signals, start-up halts.

The app under reload lives in ``tmp_path/release.py`` (the server runs with that directory
as its working directory), so a test can put a bad release on disk and send HUP.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from .server import ServerProcess, get, run_cli

ServerFactory = Callable[..., ServerProcess]

GOOD = """
import os

def app(environ, start_response):
    body = b"{version} %d" % os.getpid()
    start_response("200 OK", [("Content-Length", str(len(body)))])
    return [body]
"""
BAD = "raise RuntimeError('bad release on disk')\n"
SYNTAX_ERROR = "def app(environ, start_response:\n    return []\n"
HANGS_AT_IMPORT = "import time\nwhile True:\n    time.sleep(0.1)\n"
# Appended to a release: the sync worker exits (code 1) once it is in its serving loop
# (SyncWorker.run, entered after its slot says READY; matched by file, as a forked worker
# also has the master's Arbiter.run on its stack) and the file die-now exists in its
# working directory. Polled: never before both are true.
DIES_ONCE_SERVING = """
import os, sys, threading

def _die_once_serving():
    main = threading.main_thread().ident
    while True:
        frame = sys._current_frames().get(main)
        while frame is not None and not (
            frame.f_code.co_name == "run"
            and frame.f_code.co_filename.endswith(os.path.join("workers", "sync.py"))
        ):
            frame = frame.f_back
        if frame is not None and os.path.exists("die-now"):
            os._exit(1)
        threading.Event().wait(0.01)

threading.Thread(target=_die_once_serving, daemon=True).start()
"""


def _release(directory: Path, text: str) -> None:
    (directory / "release.py").write_text(text)
    # A new file with the same size and mtime second could be served from a stale .pyc.
    for pyc in directory.glob("__pycache__/release*.pyc"):
        pyc.unlink()


def _version(server: ServerProcess) -> bytes:
    return get(server.port).body.split()[0]


def _hup_to_a_release_that_hangs(server: ServerProcess, directory: Path, booting: int) -> int:
    """Put a release that hangs at import on disk and HUP; returns the log mark, once the
    master says it is booting ``booting`` new workers."""
    _release(directory, HANGS_AT_IMPORT)
    mark = server.mark()
    server.signal(signal.SIGHUP)
    server.wait_for_log(rf"Reloading: booting {booting} new workers", since=mark)
    return mark


def _wait_all_serving(server: ServerProcess, count: int, deadline_s: float = 20.0) -> None:
    """Until ``count`` distinct workers have answered: each has loaded the release (the
    kernel picks who accepts, so this polls; the deadline only bounds a hang)."""
    deadline = time.monotonic() + deadline_s
    seen: set[bytes] = set()
    while len(seen) < count:
        assert time.monotonic() < deadline, f"only {seen} answered\n{server.logs}"
        seen.add(get(server.port).body.split()[1])


def test_kill_9_of_a_worker_is_replaced(server_factory: ServerFactory) -> None:
    server = server_factory("hello:app", "--workers", "2")
    before = server.wait_for_workers(2)
    mark = server.mark()
    os.kill(before[0], signal.SIGKILL)
    server.wait_for_log(rf"Worker \(pid:{before[0]}\) was sent SIGKILL! Perhaps out of memory\?")
    server.wait_for_log(r"Booting worker with pid", since=mark)
    server.wait_for_workers(2, exclude=[before[0]])
    assert get(server.port).status == 200


def test_ttin_and_ttou(server_factory: ServerFactory, tmp_path: Path) -> None:
    hooks = tmp_path / "hooks.conf.py"
    hooks.write_text(
        "def nworkers_changed(server, new_value, old_value):\n"
        "    server.log.info('nworkers_changed %r %r', new_value, old_value)\n"
    )
    server = server_factory("hello:app", "--workers", "2", "-c", str(hooks))
    server.wait_for_workers(2)
    server.wait_for_log(r"nworkers_changed 2 None")  # at start-up, as in gunicorn
    server.signal(signal.SIGTTIN)
    server.wait_for_workers(3)
    server.wait_for_log(r"nworkers_changed 3 2")
    mark = server.mark()
    server.signal(signal.SIGHUP)  # the config's count again (2): called all the same
    server.wait_for_log(r"nworkers_changed 2 3", since=mark)
    server.wait_for_workers(2)
    mark = server.mark()
    server.signal(signal.SIGHUP)  # no change: gunicorn calls it anyway
    server.wait_for_log(r"nworkers_changed 2 2", since=mark)
    server.wait_for_log(r"Reload complete", since=mark)
    server.wait_for_workers(2)  # the retired two gone too
    # One at a time: POSIX merges a signal sent again before the first was delivered.
    mark = server.mark()
    server.signal(signal.SIGTTOU)
    server.wait_for_log(r"nworkers_changed 1 2", since=mark)
    server.wait_for_workers(1)
    mark = server.mark()
    server.signal(signal.SIGTTOU)  # never below one
    server.wait_for_log(r"Handling signal: ttou", since=mark)
    assert get(server.port).status == 200
    server.wait_for_workers(1)


@pytest.mark.parametrize("worker_class", ["sync", "fast"])
def test_hung_request_dumps_its_stack_and_is_replaced(
    server_factory: ServerFactory, worker_class: str
) -> None:
    server = server_factory("slow:app", "-k", worker_class, "--workers", "2", "--timeout", "2")
    server.wait_for_workers(2)
    hung = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    try:
        hung.sendall(b"GET /hang HTTP/1.1\r\nHost: x\r\n\r\n")
        server.wait_for_log(r"WORKER TIMEOUT \(pid:\d+\)", timeout=20)
        server.wait_for_log(r"stuck on 'GET /hang HTTP/1.1'")
        server.wait_for_log(r"in hang_forever_in_app", timeout=10)
        assert get(server.port).status == 200
        # As from gunicorn's sync worker: the hung request's client is told, not dropped.
        answer = b""
        while chunk := hung.recv(65536):
            answer += chunk
        assert answer.startswith(b"HTTP/1.1 500 "), answer
    finally:
        hung.close()
    server.wait_for_workers(2)


def test_a_fast_worker_aborted_for_a_hang_shuts_its_idle_connections_first(
    server_factory: ServerFactory, tmp_path: Path
) -> None:
    """A proxy's pooled keep-alive connection to an aborted fast worker stayed open until
    the process was gone (its worker_abort hook, the stack dump): a request sent on it
    meanwhile was reset, a 502. Its FIN now goes out before the hung request's 500. The
    hook sleeps, so that without the fix the process is still there when the 500 arrives."""
    config = tmp_path / "abort_slowly.py"
    config.write_text("import time\ndef worker_abort(worker):\n    time.sleep(1.5)\n")
    server = server_factory(
        "slow:app", "-k", "fast", "--workers", "1", "--timeout", "2", "-c", str(config)
    )
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as idle:
        idle.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        reader = idle.makefile("rb")
        assert reader.readline().startswith(b"HTTP/1.1 200 ")
        while reader.readline() not in (b"\r\n", b""):
            pass
        reader.close()  # the socket stays open: makefile() holds a reference of its own
        with socket.create_connection(("127.0.0.1", server.port), timeout=30) as hung:
            hung.sendall(b"GET /hang HTTP/1.1\r\nHost: x\r\n\r\n")
            assert hung.recv(65536).startswith(b"HTTP/1.1 500 ")
            # The idle connection's end is already here (no waiting for the exit).
            idle.setblocking(False)
            rest = b""
            try:
                while chunk := idle.recv(65536):
                    rest += chunk
            except BlockingIOError:
                pytest.fail(f"the idle connection was still open when the 500 arrived: {rest!r}")


def test_two_workers_hung_at_once_have_their_stacks_logged_apart(
    server_factory: ServerFactory,
) -> None:
    """faulthandler writes a dump from C in many small pieces: written straight into the
    shared error log, two workers' dumps and the master's lines ran together on the same
    lines. Each dump now goes to a file of the master's, which logs it in one record."""
    server = server_factory("slow:app", "--workers", "2", "--timeout", "2")
    server.wait_for_workers(2)
    mark = server.mark()
    hung: list[socket.socket] = []
    try:
        # One at a time: a sync worker holds every connection it has accepted, so two
        # connections opened before either sent its request could both go to one worker,
        # and the second would wait behind the first's hang.
        for count in (1, 2):
            sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
            hung.append(sock)
            sock.sendall(b"GET /hang HTTP/1.1\r\nHost: x\r\n\r\n")
            seen = server.wait_for_count(r"slow app: hanging", count, since=mark)
            assert seen == count, server.logs
        assert server.wait_for_count(r"Stacks of worker", 2, since=mark, timeout=20) == 2
        # (A record's lines reach the harness one by one.)
        assert server.wait_for_count(r"in hang_forever_in_app", 2, since=mark) == 2
    finally:
        for sock in hung:
            sock.close()
    lines = server.logs.splitlines()
    stamp = re.compile(r"\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d [+-]\d{4}\] \[\d+\] \[")
    records: list[list[str]] = []
    for line in lines:
        if stamp.match(line):
            records.append([line])
        elif records:
            records[-1].append(line)
        assert not stamp.search(line, 1), f"a log line inside another: {line!r}"
    dumps = [r for r in records if "Stacks of worker" in r[0]]
    assert len(dumps) == 2, server.logs
    for record in dumps:
        text = "\n".join(record)
        assert "Fatal Python error: Aborted" in text, text
        assert "in hang_forever_in_app" in text, text


def test_a_worker_that_hangs_after_its_failed_boot_is_killed(tmp_path: Path) -> None:
    """An app whose import registers an atexit handler that hangs (a telemetry flush to a
    host that does not answer), then fails: the worker reported its failed boot and never
    exited, and the master waited for it for ever, serving nothing. It is now killed
    graceful_timeout later and judged as the boot failure it reported."""
    _release(
        tmp_path,
        "import atexit, time\n"
        "atexit.register(time.sleep, 3600)\n"
        "raise RuntimeError('bad release on disk')\n",
    )
    args = ["--bind", "127.0.0.1:0", "--graceful-timeout", "1", "release:app"]
    result = run_cli(args, cwd=tmp_path)
    assert result.returncode == 3, result.stderr
    assert "failed to boot and did not exit" in result.stderr
    assert "Worker failed to boot. Failed to import 'release'" in result.stderr


def test_a_worker_that_dies_right_after_booting_is_respawned_with_backoff(
    server_factory: ServerFactory, tmp_path: Path
) -> None:
    """A release whose workers boot, report READY and die before any request (a crash in
    a background thread it starts): each was replaced at once, some 70 forks a second.
    Such a death counts as a failed boot, and the respawn backs off. (The reload itself
    completed, its worker having reported READY: the crash came after.)"""
    _release(tmp_path, GOOD.format(version="v1"))
    server = server_factory("release:app", "--workers", "1", cwd=tmp_path)
    mark = server.mark()
    # Each v2 worker dies in its serving loop (its slot says READY), never earlier, and
    # only once the reload has completed (the file below): a timer from the import raced
    # both (a loaded machine reached neither within 0.2 s, and the reload was abandoned).
    _release(tmp_path, GOOD.format(version="v2") + DIES_ONCE_SERVING)
    server.signal(signal.SIGHUP)
    server.wait_for_log(r"Reload complete: 1 new workers serving", since=mark, timeout=20)
    (tmp_path / "die-now").touch()
    server.wait_for_log(
        r"failed to boot \(it died right after booting, before its first request "
        r"\(exit code 1\)\); retrying in 0\.2s \(failure 2\)",
        since=mark,
        timeout=20,
    )


def test_an_app_that_cannot_load_stops_the_master_with_code_4(tmp_path: Path) -> None:
    _release(tmp_path, BAD)
    result = run_cli(["--bind", "127.0.0.1:0", "--workers", "3", "release:app"], cwd=tmp_path)
    assert result.returncode == 4, result.stderr
    assert "App failed to load:" in result.stderr
    # At ERROR, as gunicorn logs a failing halt: alerts on ERROR lines see it.
    assert re.search(
        r"\[ERROR\] Shutting down: Master\n.*\[ERROR\] Reason: App failed to load\.", result.stderr
    )
    assert result.stderr.count("Booting worker with pid") <= 3  # never a fork loop


@pytest.mark.timeout(60)
def test_workers_that_die_booting_without_a_word_stop_the_master(tmp_path: Path) -> None:
    """No worker ever boots (the import ends the process: a crash in a C extension looks
    the same): the master gives up with exit 3 and says why, instead of retrying for ever
    while clients wait in the backlog."""
    _release(tmp_path, "import os\nos._exit(1)\n")
    result = run_cli(["--bind", "127.0.0.1:0", "--workers", "2", "release:app"], cwd=tmp_path)
    assert result.returncode == 3, result.stderr
    assert "no worker has booted yet" in result.stderr
    assert re.search(
        r"Worker failed to boot\. \d+ workers died while booting, the last with exit code 1",
        result.stderr,
    ), result.stderr
    assert "Traceback" not in result.stderr


def test_hup_switches_only_to_a_release_that_boots(
    server_factory: ServerFactory, tmp_path: Path
) -> None:
    _release(tmp_path, GOOD.format(version="v1"))
    server = server_factory("release:app", "--workers", "2", cwd=tmp_path)
    _wait_all_serving(server, 2)  # no worker may still be importing the first release

    _release(tmp_path, BAD)
    mark = server.mark()
    server.signal(signal.SIGHUP)
    server.wait_for_log(r"Reload abandoned", since=mark, timeout=20)
    for _ in range(10):
        assert _version(server) == b"v1"

    # A crash with the bad release still on disk: the rest keep serving, respawn backs off.
    victim = server.worker_pids()[0]
    mark = server.mark()
    os.kill(victim, signal.SIGKILL)
    server.wait_for_log(r"failed to boot .*retrying in", since=mark, timeout=20)
    assert _version(server) == b"v1"

    _release(tmp_path, GOOD.format(version="v2"))
    server.wait_for_log(r"boot backoff reset", since=mark, timeout=40)
    mark = server.mark()
    server.signal(signal.SIGHUP)
    server.wait_for_log(r"Reload complete", since=mark, timeout=20)
    server.wait_for_workers(2)
    assert {_version(server) for _ in range(10)} == {b"v2"}


@pytest.mark.timeout(60)
def test_a_new_worker_killed_while_booting_does_not_abandon_the_reload(
    server_factory: ServerFactory, tmp_path: Path
) -> None:
    """A SIGKILL from outside (the OOM killer, most likely while two generations run)
    to one new worker still importing the release abandoned the whole reload, the
    healthy new workers stopped and the new code never applied. It is replaced instead;
    a release killed every time is still abandoned, at the third."""
    _release(tmp_path, GOOD.format(version="v1"))
    server = server_factory("release:app", "--workers", "2", "--timeout", "30", cwd=tmp_path)
    _wait_all_serving(server, 2)
    slow = "import time\ntime.sleep(1.5)\n" + GOOD.format(version="v2")
    _release(tmp_path, slow)
    mark = server.mark()
    server.signal(signal.SIGHUP)
    booted = server.wait_for_log(r"Booting worker with pid: (\d+)", since=mark)
    os.kill(int(booted.group(1)), signal.SIGKILL)  # sleeping in the import
    server.wait_for_log(r"A new worker of the reload was killed while booting", since=mark)
    server.wait_for_log(r"Reload complete", since=mark, timeout=30)
    assert server.count_log(r"Reload abandoned", since=mark) == 0, server.logs
    server.wait_for_workers(2)
    _wait_all_serving(server, 2)
    assert {_version(server) for _ in range(10)} == {b"v2"}

    # Killed at each boot: abandoned at the third death, the previous release serving.
    _release(tmp_path, "import time\ntime.sleep(30)\n")
    mark = server.mark()
    server.signal(signal.SIGHUP)
    killed: set[int] = set()
    deadline = time.monotonic() + 30
    while server.count_log(r"Reload abandoned", since=mark) == 0:
        assert time.monotonic() < deadline, server.logs
        for match in re.finditer(r"Booting worker with pid: (\d+)", "\n".join(server.lines[mark:])):
            pid = int(match.group(1))
            if pid not in killed:
                killed.add(pid)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        time.sleep(0.05)
    server.wait_for_log(
        r"Reload abandoned: .*3 of them were killed \(SIGKILL\) while booting", since=mark
    )
    assert {_version(server) for _ in range(10)} == {b"v2"}


@pytest.mark.timeout(60)
def test_hup_to_a_release_that_hangs_at_import_is_abandoned_for_what_it_is(
    server_factory: ServerFactory, tmp_path: Path
) -> None:
    """A release whose import never ends: the new workers are killed at the timeout and
    the old ones keep serving. The reason said "Failed to import ...: WorkerExit: 1", the
    stack dump's own exit taken for the app's import error, then only "exit code 1"; and
    the aborted worker was replaced at once by another of the release, which hung as
    well."""
    _release(tmp_path, GOOD.format(version="v1"))
    server = server_factory(
        "release:app", "--workers", "1", "--timeout", "3", "--graceful-timeout", "2", cwd=tmp_path
    )
    _wait_all_serving(server, 1)
    _release(tmp_path, HANGS_AT_IMPORT)
    mark = server.mark()
    server.signal(signal.SIGHUP)
    server.wait_for_log(
        r"Reload abandoned: the new workers failed to boot \(still booting after [\d.]+s, "
        r"the timeout\)",
        since=mark,
        timeout=30,
    )
    assert _version(server) == b"v1"
    assert server.count_log(r"WorkerExit", since=mark) == 0, server.logs
    # One worker of the release, not a second forked when the first was aborted (which
    # hung the same way, for one more timeout).
    assert server.count_log(r"Booting worker", since=mark) == 1, server.logs


@pytest.mark.timeout(60)
def test_ttou_during_a_reload_to_one_worker_counts_if_it_is_abandoned(
    server_factory: ServerFactory, tmp_path: Path
) -> None:
    """Three workers; HUP to a config of one, with a release that hangs at import; TTOU.
    The reload's count could not go below one, so the TTOU was dropped, and the abandoned
    reload put back three where the operator had asked for one fewer."""
    _release(tmp_path, GOOD.format(version="v1"))
    conf = tmp_path / "forkhorn.conf.py"
    conf.write_text("workers = 3\ntimeout = 3\ngraceful_timeout = 2\n")
    server = server_factory("release:app", "-c", str(conf), cwd=tmp_path)
    _wait_all_serving(server, 3)
    conf.write_text("workers = 1\ntimeout = 3\ngraceful_timeout = 2\n")
    mark = _hup_to_a_release_that_hangs(server, tmp_path, booting=1)
    server.signal(signal.SIGTTOU)
    server.wait_for_log(r"TTOU: the reload's workers are 1, the least; kept", since=mark)
    server.wait_for_log(r"Reload abandoned", since=mark, timeout=30)
    server.wait_for_log(r"Keeping the TTIN/TTOU received during the reload: 2 workers, not 3")
    server.wait_for_workers(2)
    assert _version(server) == b"v1"


@pytest.mark.timeout(60)
def test_ttin_after_a_queued_hup_is_kept(server_factory: ServerFactory, tmp_path: Path) -> None:
    """HUP, HUP again while the first reload runs (queued), then TTIN: the queued reload set
    the configured count when it ran, undoing the TTIN sent after its HUP."""
    _release(tmp_path, "import time\ntime.sleep(1)\n" + GOOD.format(version="v1"))
    server = server_factory("release:app", "--workers", "2", cwd=tmp_path)
    _wait_all_serving(server, 2)
    mark = server.mark()
    server.signal(signal.SIGHUP)
    server.wait_for_log(r"Reloading: booting 2 new workers", since=mark)
    server.signal(signal.SIGHUP)
    server.wait_for_log(r"HUP queued", since=mark)
    server.signal(signal.SIGTTIN)
    server.wait_for_log(r"Handling signal: ttin", since=mark)
    server.wait_for_log(r"Keeping the TTIN/TTOU received after the queued HUP: 3 workers")
    server.wait_for_log(r"Reloading: booting 3 new workers", since=mark, timeout=20)
    assert server.wait_for_count(r"Reload complete", 2, since=mark, timeout=30) == 2
    server.wait_for_workers(3)


@pytest.mark.timeout(60)
def test_a_hup_while_no_worker_serves_completes(
    server_factory: ServerFactory, tmp_path: Path
) -> None:
    """The release on disk broke and the only worker crash-loops; the fix is deployed and
    HUP sent. The new worker serves, but with no previous worker to retire the reload never
    completed: later HUPs were only queued, and the next boot failure of any worker
    "abandoned" it, stopping the healthy workers and putting the old settings back."""
    _release(tmp_path, GOOD.format(version="v1"))
    server = server_factory("release:app", "--workers", "1", cwd=tmp_path)
    (first,) = server.wait_for_workers(1)
    _release(tmp_path, BAD)
    mark = server.mark()
    os.kill(first, signal.SIGKILL)
    server.wait_for_log(r"failed to boot .*retrying in .*\(failure 2\)", since=mark, timeout=20)
    _release(tmp_path, GOOD.format(version="v2"))
    mark = server.mark()
    server.signal(signal.SIGHUP)
    server.wait_for_log(r"Reloading: booting 1 new workers; no worker is serving meanwhile")
    server.wait_for_log(r"Reload complete: 1 new workers serving", since=mark, timeout=20)
    assert _version(server) == b"v2"
    mark = server.mark()
    server.signal(signal.SIGHUP)  # the next deploy's HUP runs, not queued for ever
    server.wait_for_log(r"Reload complete", since=mark, timeout=20)
    assert server.count_log(r"Reload already in progress", since=mark) == 0, server.logs


@pytest.mark.timeout(60)
def test_ttin_during_an_abandoned_reload_is_kept(
    server_factory: ServerFactory, tmp_path: Path
) -> None:
    """TTIN sent while a reload's workers boot: the log said "Handling signal: ttin" and a
    worker was added, then the abandoned reload put back the count from before the HUP."""
    _release(tmp_path, GOOD.format(version="v1"))
    server = server_factory(
        "release:app", "--workers", "2", "--timeout", "3", "--graceful-timeout", "2", cwd=tmp_path
    )
    _wait_all_serving(server, 2)
    mark = _hup_to_a_release_that_hangs(server, tmp_path, booting=2)
    server.signal(signal.SIGTTIN)
    server.wait_for_log(r"Handling signal: ttin", since=mark)
    server.wait_for_log(r"Reload abandoned", since=mark, timeout=30)
    server.wait_for_log(r"Keeping the TTIN/TTOU received during the reload: 3 workers, not 2")
    server.wait_for_workers(3)
    assert _version(server) == b"v1"


def test_hup_with_preload_says_the_code_is_not_reloaded(
    server_factory: ServerFactory, tmp_path: Path
) -> None:
    """The master cannot import the app a second time: a HUP boots new workers with the
    code it loaded at start-up (as gunicorn does), and the log must say so, since a deploy
    by HUP would otherwise serve the old code without a word."""
    _release(tmp_path, GOOD.format(version="v1"))
    server = server_factory("release:app", "--preload", "--workers", "2", cwd=tmp_path)
    _release(tmp_path, GOOD.format(version="v2"))
    mark = server.mark()
    server.signal(signal.SIGHUP)
    server.wait_for_log(r"app was loaded in the master \(--preload\).*send USR2", since=mark)
    server.wait_for_log(r"Reload complete", since=mark, timeout=20)
    server.wait_for_workers(2)
    assert {_version(server) for _ in range(6)} == {b"v1"}


# A preloaded app holding many small containers the garbage collector tracks (400,000
# one-item lists, 25 MB): the kind of heap a large Django or Flask app builds at import.
HEAVY = """
DATA = [[i] for i in range(400_000)]

def app(environ, start_response):
    body = b"%d" % len(DATA)
    start_response("200 OK", [("Content-Length", str(len(body)))])
    return [body]
"""


def _private_dirty_kib(pid: int) -> int:
    """Memory the process has written since fork: pages it no longer shares."""
    with open(f"/proc/{pid}/smaps_rollup") as rollup:
        for line in rollup:
            if line.startswith("Private_Dirty:"):
                return int(line.split()[1])
    raise AssertionError(f"no Private_Dirty in /proc/{pid}/smaps_rollup")


@pytest.mark.parametrize("worker_class", ["sync", "fast"])
def test_preloaded_app_stays_shared_with_the_workers(
    server_factory: ServerFactory, tmp_path: Path, worker_class: str
) -> None:
    """The workers' garbage collections must not write to the master's objects: each
    write copies the page the object sits on, and a worker that walked the preloaded heap
    once would hold its own copy of all of it."""
    (tmp_path / "heavy.py").write_text(HEAVY)
    server = server_factory(
        "heavy:app", "--preload", "--workers", "2", "-k", worker_class, cwd=tmp_path
    )
    pids = server.wait_for_workers(2)
    for _ in range(4):
        assert get(server.port).body == b"400000"
    data_kib = 400_000 * 64 // 1024  # sys.getsizeof() of each list alone
    for pid in pids:
        private = _private_dirty_kib(pid)
        assert private < data_kib // 2, (
            f"worker {pid} wrote to {private} KiB since fork; the preloaded data is "
            f"about {data_kib} KiB\n{server.logs}"
        )


YOUNG_GARBAGE_HOOKS = """
import gc
import weakref


class Cycle:
    pass


left = []


def pre_fork(server, worker):
    if left:
        gc.collect(1)  # the young generations only: what the master's own GC does most
        server.log.info("the last fork's garbage freed young: %s", left[-1]() is None)
    cycle = Cycle()
    cycle.me = cycle  # garbage only the cyclic collector frees
    left.append(weakref.ref(cycle))
"""


def test_the_master_collects_its_garbage_across_forks(
    server_factory: ServerFactory, tmp_path: Path
) -> None:
    """Garbage the master makes just before a fork (a reload's old settings) must stay
    where its young collections free it. Freezing the heap in the master around each fork
    put everything, garbage included, straight into the oldest generation, which the
    master's few allocations almost never get collected: its memory grew by about 70 kB
    with every HUP (17 MB over 250 reloads)."""
    hooks = tmp_path / "hooks.conf.py"
    hooks.write_text(YOUNG_GARBAGE_HOOKS)
    server = server_factory("hello:app", "--workers", "2", "-c", str(hooks))
    server.wait_for_workers(2)
    mark = server.mark()
    server.signal(signal.SIGHUP)
    server.wait_for_log(r"Reload complete", since=mark)
    verdicts = re.findall(r"the last fork's garbage freed young: (\w+)", server.logs)
    # One verdict per fork after the first, at start-up and again after the reload (which
    # runs the config file anew).
    assert len(verdicts) == 2 and set(verdicts) == {"True"}, server.logs


@pytest.mark.timeout(60)
@pytest.mark.parametrize("worker_class", ["sync", "gthread", "gevent", "eventlet", "fast"])
def test_reload_restarts_the_worker_when_its_code_or_an_extra_file_changes(
    server_factory: ServerFactory, tmp_path: Path, worker_class: str
) -> None:
    _release(tmp_path, GOOD.format(version="v1"))
    extra = tmp_path / "extra.txt"
    extra.write_text("one")
    server = server_factory(
        "release:app", "-k", worker_class, "--reload", "--reload-extra-file", str(extra),
        cwd=tmp_path,
    )  # fmt: skip
    assert _version(server) == b"v1"

    def changed(path: Path, text: str) -> None:
        path.write_text(text)
        later = time.time() + 2  # a new mtime even on a file system with coarse times
        os.utime(path, (later, later))

    mark = server.mark()
    changed(tmp_path / "release.py", GOOD.format(version="v2"))
    server.wait_for_log(r"Worker reloading: .*release\.py modified", since=mark)
    deadline = time.monotonic() + 20  # bounds a hang only
    while _version(server) != b"v2":
        assert time.monotonic() < deadline, server.logs
        time.sleep(0.05)  # poll interval
    (before,) = server.wait_for_workers(1)
    mark = server.mark()
    changed(extra, "two")
    server.wait_for_log(r"Worker reloading: .*extra\.txt modified", since=mark)
    server.wait_for_log(rf"Worker exiting \(pid: {before}\)", since=mark)


@pytest.mark.timeout(60)
def test_reload_serves_the_fix_of_a_broken_edit_within_seconds(
    server_factory: ServerFactory, tmp_path: Path
) -> None:
    """With --reload, an edit that fails at import makes each new worker fail to boot; the
    respawn backoff grew to 30 s, so the fix could take half a minute to show. With
    --reload it stops at 2 s."""
    _release(tmp_path, GOOD.format(version="v1"))
    server = server_factory("release:app", "--reload", cwd=tmp_path)
    assert _version(server) == b"v1"
    mark = server.mark()
    _release(tmp_path, BAD)
    later = time.time() + 2  # a new mtime even on a file system with coarse times
    os.utime(tmp_path / "release.py", (later, later))
    line = server.wait_for_log(
        r"failed to boot .*retrying in ([\d.]+)s \(failure 6\)", since=mark, timeout=30
    )
    assert float(line.group(1)) == 2.0, server.logs
    # Its only worker is the one that fails: nobody serves meanwhile, and the line says so.
    assert "(failure 6); no worker is serving meanwhile" in line.string, line.string
    _release(tmp_path, GOOD.format(version="v2"))
    server.wait_for_log(r"boot backoff reset", since=mark, timeout=20)
    assert _version(server) == b"v2"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("worker_class", ["sync", "fast"])
def test_reload_answers_a_syntax_error_until_it_is_fixed(
    server_factory: ServerFactory, tmp_path: Path, worker_class: str
) -> None:
    """As gunicorn's --reload: a syntax error in the code is answered (a 500 that shows
    it) by a worker that watches the broken file, instead of requests waiting unanswered
    while workers fail to boot; the fix is served once saved."""
    _release(tmp_path, GOOD.format(version="v1"))
    server = server_factory("release:app", "-k", worker_class, "--reload", cwd=tmp_path)
    assert _version(server) == b"v1"
    mark = server.mark()
    _release(tmp_path, SYNTAX_ERROR)
    later = time.time() + 2  # a new mtime even on a file system with coarse times
    os.utime(tmp_path / "release.py", (later, later))
    server.wait_for_log(r"App failed to load: .*SyntaxError.*serving the error", since=mark)
    resp = get(server.port)
    assert resp.status == 500, resp
    assert b"SyntaxError" in resp.body and b"release.py" in resp.body, resp.body
    assert server.count_log(r"failed to boot", since=mark) == 0, server.logs
    _release(tmp_path, GOOD.format(version="v3"))
    later += 2
    os.utime(tmp_path / "release.py", (later, later))
    deadline = time.monotonic() + 20  # bounds a hang only
    while get(server.port).status != 200:
        assert time.monotonic() < deadline, server.logs
        time.sleep(0.05)  # poll interval
    assert _version(server) == b"v3"


# Registers an atexit handler at import (in each worker: no --preload) that leaves a file
# named for the worker's pid, and a second one that raises.
ATEXIT_APP = """
import atexit
import os

def _fails():
    raise RuntimeError("an atexit handler that fails")

def _leave_mark():
    with open(os.path.join(os.path.dirname(__file__), "atexit.%d" % os.getpid()), "w") as f:
        f.write("ran")

atexit.register(_leave_mark)
atexit.register(_fails)  # runs first (atexit is last in, first out); must not stop the other

def app(environ, start_response):
    start_response("200 OK", [("Content-Length", "2")])
    return [b"ok"]
"""


@pytest.mark.timeout(60)
@pytest.mark.parametrize("worker_class", ["sync", "gthread", "gevent", "eventlet", "fast"])
def test_a_stopping_worker_runs_the_apps_atexit_handlers(
    server_factory: ServerFactory, tmp_path: Path, worker_class: str
) -> None:
    """As at a normal interpreter exit and in gunicorn's workers: the last flush of a
    tracer or an error reporter is registered with atexit, and must not be skipped."""
    (tmp_path / "leaver.py").write_text(ATEXIT_APP)
    server = server_factory("leaver:app", "-k", worker_class, cwd=tmp_path)
    (pid,) = server.wait_for_workers(1)
    assert get(server.port).body == b"ok"  # the worker has imported the app
    server.signal(signal.SIGTERM)
    assert server.wait_exit() == 0
    marks = [path.name for path in tmp_path.glob("atexit.*")]
    assert marks == [f"atexit.{pid}"], server.logs
    assert "an atexit handler that fails" in server.logs


# A release whose import waits until the file ``gate`` exists next to it (bounded): its
# reload stays in progress for as long as the test needs.
GATED = """
import os
import time

_here = os.path.dirname(os.path.abspath(__file__))
_gate = os.path.join(_here, "gate")
with open(os.path.join(_here, "entered"), "w"):
    pass
_deadline = time.monotonic() + 30  # bounds a hang only
while not os.path.exists(_gate) and time.monotonic() < _deadline:
    time.sleep(0.02)  # poll interval

def app(environ, start_response):
    body = b"v2 %d" % os.getpid()
    start_response("200 OK", [("Content-Length", str(len(body)))])
    return [body]
"""


@pytest.mark.timeout(90)
def test_a_hup_during_a_reload_is_queued_not_dropped(
    server_factory: ServerFactory, tmp_path: Path
) -> None:
    """A deploy that sends HUP after each step must end on its last step's code."""
    _release(tmp_path, GOOD.format(version="v1"))
    server = server_factory("release:app", "--workers", "1", cwd=tmp_path)
    assert _version(server) == b"v1"
    _release(tmp_path, GATED)
    server.signal(signal.SIGHUP)
    deadline = time.monotonic() + 20  # bounds a hang only
    while not (tmp_path / "entered").exists():  # the v2 worker is held inside its import
        assert time.monotonic() < deadline, server.logs
        time.sleep(0.02)  # poll interval
    mark = server.mark()
    _release(tmp_path, GOOD.format(version="v3"))
    server.signal(signal.SIGHUP)
    server.wait_for_log(r"Reload already in progress; another reload will follow", since=mark)
    assert _version(server) == b"v1"  # the old generation serves meanwhile
    (tmp_path / "gate").write_text("open")
    server.wait_for_log(r"Running the reload queued by a HUP", since=mark)
    deadline = time.monotonic() + 30  # bounds a hang only
    while _version(server) != b"v3":
        assert time.monotonic() < deadline, server.logs
        time.sleep(0.05)  # poll interval
    server.wait_for_workers(1)


SLOW_BOOT = """
import os, sys, time

sys.stderr.write(f"slow boot: importing in {os.getpid()}\\n")
sys.stderr.flush()
time.sleep(2)


def app(environ, start_response):
    start_response("200 OK", [("Content-Length", "2")])
    return [b"ok"]
"""


@pytest.mark.timeout(60)
@pytest.mark.parametrize("worker_class", ["sync", "gthread", "gevent", "eventlet", "fast"])
def test_term_to_a_worker_still_importing_the_app_is_a_clean_exit(
    server_factory: ServerFactory, tmp_path: Path, worker_class: str
) -> None:
    """docs/lifecycle.md: a worker told to stop while it boots leaves cleanly and is
    replaced. The fast worker's TERM handler read an attribute set only once its loop ran:
    the AttributeError surfaced in the app's import, as "App failed to load", and halted
    the master."""
    _release(tmp_path, SLOW_BOOT)
    server = server_factory(
        "release:app", "-k", worker_class, "--workers", "1", cwd=tmp_path, wait_ready=False
    )
    pid = int(server.wait_for_log(r"slow boot: importing in (\d+)").group(1))
    mark = server.mark()
    os.kill(pid, signal.SIGTERM)
    server.wait_for_log(rf"Worker exiting \(pid: {pid}\)", since=mark)
    server.wait_for_log(rf"slow boot: importing in (?!{pid}\b)\d+", since=mark)
    deadline = time.monotonic() + 20
    while True:
        try:
            if get(server.port, timeout=5).status == 200:
                break
        except OSError:
            pass
        assert time.monotonic() < deadline, server.logs
        time.sleep(0.2)
    assert "App failed to load" not in server.logs


SAYS_WHEN_SERVING = """
import threading, time


def post_worker_init(worker):
    # Its slot says READY once this hook has returned: say so from a thread, which the
    # test waits for (no sleep to guess when the worker is in its serving loop).
    def watch():
        while not worker.slot.snapshot().state.is_serving:
            time.sleep(0.01)
        worker.log.info("serving now")

    threading.Thread(target=watch, daemon=True).start()
"""


@pytest.mark.timeout(60)
def test_a_fresh_worker_killed_from_outside_is_not_a_failed_boot(
    server_factory: ServerFactory, tmp_path: Path
) -> None:
    """SIGKILL from outside (the OOM killer, an operator) to a worker that had just booted
    and served nothing was judged a crash right after booting: "failed to boot", a
    backoff, and recycling held as if the release were bad. It says nothing of the
    release: the worker is replaced at once."""
    config = tmp_path / "ready.conf.py"
    config.write_text(SAYS_WHEN_SERVING)
    server = server_factory(
        "hello:app", "--workers", "1", "--max-requests", "1000", "-c", str(config)
    )
    (first,) = server.wait_for_workers(1)
    mark = server.mark()
    server.signal(signal.SIGTTIN)
    fresh = server.wait_for_workers(2)
    (new,) = set(fresh) - {first}
    server.wait_for_log(rf"\[{new}\] \[INFO\] serving now", since=mark)
    os.kill(new, signal.SIGKILL)
    server.wait_for_log(rf"Worker \(pid:{new}\) was sent SIGKILL", since=mark)
    # Replaced after the backoff's first step: something that kills every new worker
    # (a memory limit too low for the app) must not make a fork loop.
    server.wait_for_log(
        rf"Worker \(pid:{new}\) was killed \(SIGKILL\) from outside right after booting, "
        r"before its first request; retrying in 0\.1s \(failure 1\)",
        since=mark,
    )
    replaced = server.wait_for_workers(2, exclude=[new])
    assert first in replaced
    assert server.count_log(r"failed to boot|Holding worker recycling", since=mark) == 0, (
        server.logs
    )


@pytest.mark.timeout(60)
def test_workers_missing_after_an_abandoned_reload_start_one_at_a_time(
    server_factory: ServerFactory, tmp_path: Path
) -> None:
    """TTIN during a reload whose release cannot boot: once the reload is abandoned, the
    previous generation is two workers short, and both were forked at once onto the same
    bad release (a burst of failing imports per missing worker). They start as after any
    failed boot: one probe at a time, with the backoff."""
    _release(tmp_path, GOOD.format(version="v1"))
    server = server_factory("release:app", "--workers", "2", cwd=tmp_path)
    _wait_all_serving(server, 2)  # both loaded v1 (one still importing would load the bad one)
    _release(tmp_path, "import time\ntime.sleep(1)\n" + BAD)
    mark = server.mark()
    server.signal(signal.SIGHUP)
    server.wait_for_log(r"Reloading: booting 2 new workers", since=mark)
    server.signal(signal.SIGTTIN)
    server.wait_for_log(r"Handling signal: ttin", since=mark)
    server.signal(signal.SIGTTIN)
    server.wait_for_count(r"Handling signal: ttin", 2, since=mark)
    abandoned = server.wait_for_log(r"Reload abandoned", since=mark, timeout=20)
    assert "the previous workers keep serving" in abandoned.string
    after = server.lines.index(abandoned.string, mark)
    server.wait_for_log(r"failed to boot .*retrying in .*\(failure 3\)", since=after, timeout=20)
    lines = server.lines[after:]
    first_failure = next(
        i for i, line in enumerate(lines) if re.search(r"Worker \(pid:\d+\) failed to boot", line)
    )
    booted = [line for line in lines[:first_failure] if "Booting worker with pid" in line]
    assert len(booted) == 1, "\n".join(lines)
    assert _version(server) == b"v1"


@pytest.mark.timeout(60)
def test_ttou_while_a_replacement_boots_a_bad_release_keeps_the_serving_worker(
    server_factory: ServerFactory, tmp_path: Path
) -> None:
    """A worker dies with a bad release on disk; while its replacement boots it, TTOU.
    The oldest worker, the one serving, was retired (gunicorn's order), the replacement
    failed, and nothing served until the release was fixed. The booting one goes."""
    _release(tmp_path, GOOD.format(version="v1"))
    config = tmp_path / "ready.conf.py"
    config.write_text(SAYS_WHEN_SERVING)
    server = server_factory("release:app", "--workers", "2", "-c", str(config), cwd=tmp_path)
    victim, survivor = server.wait_for_workers(2)
    server.wait_for_count(r"\[INFO\] serving now", 2)  # both loaded v1
    _release(tmp_path, "import time\ntime.sleep(2)\n" + BAD)
    mark = server.mark()
    os.kill(victim, signal.SIGKILL)
    replacement = server.wait_for_log(r"\[(\d+)\] \[INFO\] Booting worker", since=mark)
    server.signal(signal.SIGTTOU)
    server.wait_for_log(r"Handling signal: ttou", since=mark)
    wait = server.wait_for_workers(1, exclude=[victim, int(replacement.group(1))], timeout=30)
    assert wait == [survivor], server.logs
    for _ in range(5):
        assert _version(server) == b"v1"


@pytest.mark.timeout(60)
def test_a_refused_reload_leaves_the_old_release_importable(
    server_factory: ServerFactory, tmp_path: Path
) -> None:
    """A deploy moves ``current`` to a new release whose config is refused ("Reload
    failed; the current workers keep serving"). Reading that config had put the new
    release's directory first on sys.path, and stayed: the next worker forked (a crash
    here; a recycle or TTIN likewise) ran the refused release's code."""
    for version in ("v1", "v2"):
        (tmp_path / version).mkdir()
        _release(tmp_path / version, GOOD.format(version=version))
        (tmp_path / version / "conf.py").write_text("workers = 1\n")
    (tmp_path / "v2" / "conf.py").write_text("workers = 1\nworker_class = 'synk'\n")
    current = tmp_path / "current"
    current.symlink_to(tmp_path / "v1")
    # PWD: started "in current" as a shell does, so a reload reads current's release.
    server = server_factory("release:app", "-c", "conf.py", cwd=current, env={"PWD": str(current)})
    (old,) = server.wait_for_workers(1)
    assert _version(server) == b"v1"
    nxt = tmp_path / "current.new"
    nxt.symlink_to(tmp_path / "v2")
    nxt.replace(current)
    mark = server.mark()
    server.signal(signal.SIGHUP)
    server.wait_for_log(
        r"Reload failed; the current workers keep serving: worker_class", since=mark
    )
    os.kill(old, signal.SIGKILL)
    server.wait_for_workers(1, exclude=[old])
    assert _version(server) == b"v1"
