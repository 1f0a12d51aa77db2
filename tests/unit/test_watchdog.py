"""The request watchdog (``forkhorn.workers.watchdog``): pure decisions with a fake clock,
the enforcer with fakes, and the thread interruption on a real thread."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace
from typing import Any

import pytest

from forkhorn.http import ServerConnection
from forkhorn.workers.watchdog import (
    InFlight,
    RequestHungError,
    RequestTimeoutEnforcer,
    RequestWatchdog,
    grace_period,
    interrupt_thread,
    request_limit,
    thread_stack,
    timeout_response,
)


@pytest.mark.parametrize(
    ("timeout", "request_timeout", "expected"),
    [
        (30, 0.0, 30.0),
        (30, 5.0, 5.0),
        (5, 30.0, 5.0),
        (0, 7.5, 7.5),
        (0, 0.0, 0.0),
    ],
)
def test_limit_is_the_smaller_of_the_set_timeouts(
    timeout: int, request_timeout: float, expected: float
) -> None:
    cfg = SimpleNamespace(timeout=timeout, request_timeout=request_timeout)
    assert request_limit(cfg) == expected


@pytest.mark.parametrize(("limit", "grace"), [(0.5, 1.0), (3.0, 3.0), (30.0, 5.0)])
def test_grace_is_bounded(limit: float, grace: float) -> None:
    assert grace_period(limit) == grace


def test_nothing_is_due_before_the_limit() -> None:
    wd: RequestWatchdog[str] = RequestWatchdog(limit=10.0, grace=2.0)
    wd.started("t1", b"GET / HTTP/1.1", now=100.0)
    verdict = wd.check(109.9)
    assert verdict.overdue == [] and verdict.stuck == []
    assert wd.next_check() == 110.0


def test_a_client_taking_the_response_is_progress_even_without_a_completed_send() -> None:
    """Rule 2 with a probe: at the limit, the count of bytes the client acknowledged is
    read; the first reading buys half a limit (PROBE_WINDOW, 1 s, at least: a slow
    reader's acknowledgements come in steps) to compare with, a change since the last
    reading restarts the limit, no change is overdue."""
    acked = {"sock": 1000}
    wd: RequestWatchdog[str] = RequestWatchdog(
        limit=10.0, grace=2.0, probe=lambda sock: acked[sock]
    )
    entry = wd.started("t1", b"GET /download HTTP/1.1", now=100.0)
    entry.sock = "sock"
    assert wd.check(110.0).overdue == []  # the first look
    assert wd.next_check() == 115.0
    acked["sock"] = 5000  # the client took some
    assert wd.check(115.0).overdue == []
    assert wd.next_check() == 125.0
    assert wd.check(125.0).overdue == [entry]  # and then nothing more
    short: RequestWatchdog[str] = RequestWatchdog(limit=1.0, grace=2.0, probe=lambda s: 1)
    entry = short.started("t2", b"GET /download HTTP/1.1", now=100.0)
    entry.sock = "sock"
    assert short.check(101.0).overdue == []
    assert short.next_check() == 102.0  # PROBE_WINDOW, not half a second


def test_no_probe_reading_means_no_progress() -> None:
    wd: RequestWatchdog[str] = RequestWatchdog(limit=10.0, grace=2.0, probe=lambda sock: None)
    entry = wd.started("t1", b"GET / HTTP/1.1", now=100.0)
    entry.sock = object()  # a unix socket: no TCP counters
    assert wd.check(110.0).overdue == [entry]


def test_overdue_once_then_stuck_once_after_grace() -> None:
    wd: RequestWatchdog[str] = RequestWatchdog(limit=10.0, grace=2.0)
    entry = wd.started("t1", b"GET /slow HTTP/1.1", now=100.0)
    assert wd.check(110.0).overdue == [entry]
    assert entry.interrupted_at == 110.0
    # Reported and interrupted once, not at every check.
    assert wd.check(111.0).overdue == []
    assert wd.next_check() == 112.0
    assert wd.check(111.9).stuck == []
    assert wd.check(112.0).stuck == [entry]
    assert wd.check(200.0).stuck == []
    assert wd.next_check() is None


def test_progress_moves_the_deadline() -> None:
    """The limit bounds the time without progress (rule 2): a response its client keeps
    taking is never overdue; one that stalls is, a limit after its last progress."""
    wd: RequestWatchdog[str] = RequestWatchdog(limit=10.0, grace=2.0)
    entry = wd.started("t1", b"GET /stream HTTP/1.1", now=100.0)
    for now in (108.0, 116.0, 124.0):
        entry.progress_at = now  # what each completed send records
        assert not wd.check(now + 9.0).overdue
    assert wd.next_check() == 134.0
    assert wd.check(134.0).overdue == [entry]
    assert entry.elapsed(134.0) == 34.0  # the log still says how long it ran


def test_a_finished_request_is_forgotten() -> None:
    wd: RequestWatchdog[str] = RequestWatchdog(limit=10.0, grace=2.0)
    fast = wd.started("t1", b"GET /fast HTTP/1.1", now=100.0)
    slow = wd.started("t2", b"GET /slow HTTP/1.1", now=101.0)
    wd.finished(fast)
    assert wd.check(120.0).overdue == [slow]
    wd.finished(slow)
    assert wd.check(130.0).stuck == []
    assert len(wd) == 0


def test_a_websocket_handshake_is_let_go_at_its_limit_only_once_taken_over() -> None:
    """``taken_over`` is asked at the limit: a request whose app took the connection is
    let go (no longer tracked, never interrupted); one whose app did not is overdue."""
    wd: RequestWatchdog[str] = RequestWatchdog(limit=10.0, grace=2.0)
    taken = wd.started("t1", b"GET /ws HTTP/1.1", now=100.0)
    taken.taken_over = lambda: True
    plain = wd.started("t2", b"GET /slow HTTP/1.1", now=100.0)
    plain.taken_over = lambda: False
    assert wd.check(109.0).overdue == []  # not asked before the limit
    assert wd.check(110.0).overdue == [plain]
    assert len(wd) == 1
    assert wd.check(200.0).stuck == [plain]
    wd.finished(taken)  # its end later is harmless
    assert len(wd) == 1


def test_disabled_watchdog_tracks_nothing() -> None:
    wd: RequestWatchdog[str] = RequestWatchdog(limit=0.0, grace=1.0)
    wd.started("t1", b"GET / HTTP/1.1", now=0.0)
    assert not wd.enabled
    assert len(wd) == 0
    assert wd.check(1e9).overdue == []
    assert wd.next_check() is None


def test_no_interruption_after_the_request_finished() -> None:
    wd: RequestWatchdog[str] = RequestWatchdog(limit=1.0, grace=1.0)
    entry = wd.started("t1", b"GET / HTTP/1.1", now=0.0)
    calls: list[InFlight[str]] = []
    assert wd.while_running(entry, calls.append)
    wd.finished(entry)
    assert not wd.while_running(entry, calls.append)
    assert calls == [entry]


class FakeLog:
    def __init__(self) -> None:
        self.errors: list[str] = []

    def error(self, msg: str, *args: Any) -> None:
        self.errors.append(msg % args)

    def exception(self, msg: str, *args: Any) -> None:
        self.errors.append(msg % args)


def test_enforcer_logs_stack_interrupts_and_retires() -> None:
    wd: RequestWatchdog[str] = RequestWatchdog(limit=5.0, grace=1.0)
    log = FakeLog()
    interrupted: list[str] = []
    retired: list[str] = []
    enforcer = RequestTimeoutEnforcer(
        wd,
        log,
        1234,
        lambda handle: f'  File "app.py", line 1, in {handle}\n',
        lambda entry: interrupted.append(entry.handle),
        retired.append,
    )
    wd.started("hung_view", b"GET /hang HTTP/1.1", now=0.0)
    enforcer.run_once(5.5)
    assert interrupted == ["hung_view"]
    assert retired == []
    assert log.errors[0].startswith("Request timeout (pid:1234): GET /hang HTTP/1.1 running 5.5s")
    assert "in hung_view" in log.errors[0]
    enforcer.run_once(6.0)
    assert interrupted == ["hung_view"] and retired == []
    enforcer.run_once(6.5)
    assert retired == ["request timeout"]
    assert "still running" in log.errors[-1]


def test_interrupt_thread_raises_in_a_thread_running_python() -> None:
    started = threading.Event()
    outcome: list[str] = []

    def spin(deadline: float) -> None:  # the app's code: a callee, as in a real request
        while time.monotonic() < deadline:
            pass

    def busy() -> None:
        started.set()
        deadline = time.monotonic() + 30
        try:
            spin(deadline)
            outcome.append("ran to the end")
        except RequestHungError:
            outcome.append("interrupted")

    thread = threading.Thread(target=busy, daemon=True)
    thread.start()
    assert started.wait(10)
    assert thread.ident is not None
    assert "in busy" in thread_stack(thread.ident)
    assert interrupt_thread(thread.ident)
    thread.join(10)
    assert outcome == ["interrupted"]


@pytest.mark.parametrize(
    ("request_timeout", "status_line"),
    # Past ``timeout`` (no request_timeout) the client gets what sync and fast give it.
    [
        (True, b"HTTP/1.1 504 Gateway Timeout\r\n"),
        (False, b"HTTP/1.1 500 Internal Server Error\r\n"),
    ],
)
def test_timeout_response_only_before_the_head(request_timeout: bool, status_line: bytes) -> None:
    conn = ServerConnection()
    conn.receive_data(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    conn.next_event()
    response = timeout_response(conn, request_timeout=request_timeout)
    assert response.startswith(status_line)
    assert b"Connection: close" in response
    for either in (True, False):  # a head was sent now: nothing more, whatever the limit
        assert timeout_response(conn, request_timeout=either) == b""
