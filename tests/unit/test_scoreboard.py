"""The shared-memory scoreboard: a forked child writes its slot, the parent reads it."""

from __future__ import annotations

import os

import pytest

from forkhorn.arbiter.scoreboard import (
    MAX_REQUEST_LINE_BYTES,
    Scoreboard,
    WorkerState,
)


def _wait(pid: int) -> int:
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def test_a_child_writes_its_slot_and_the_parent_reads_it() -> None:
    board = Scoreboard(4)
    slot = board.allocate(generation=7, now=5.0)
    assert slot.snapshot().state is WorkerState.BOOTING
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            slot.set_pid(os.getpid())
            slot.set_state(WorkerState.READY)
            slot.request_started(b"GET /slow?x=1 HTTP/1.1", now=10.0)
            slot.request_finished(now=11.0)
            slot.request_started(b"POST /upload HTTP/1.1", now=12.0)
        finally:
            os._exit(0)
    assert _wait(pid) == 0
    snap = slot.snapshot()
    assert snap.pid == pid
    assert snap.generation == 7
    assert snap.spawned_at == 5.0
    assert snap.state is WorkerState.BUSY
    assert snap.requests == 1
    assert snap.heartbeat == 12.0
    assert snap.request_start == 12.0
    assert snap.request_line == b"POST /upload HTTP/1.1"
    assert snap.request_age(now=14.5) == 2.5
    board.close()


def test_request_finished_counts_and_clears_the_request() -> None:
    board = Scoreboard(1)
    slot = board.allocate(now=0.0)
    slot.request_started(b"GET / HTTP/1.1", now=1.0)
    assert slot.request_finished(now=2.0) == 1
    assert slot.request_finished(now=3.0) == 2
    snap = slot.snapshot()
    assert snap.state is WorkerState.IDLE
    assert snap.request_age(now=10.0) is None
    assert snap.heartbeat == 3.0
    board.close()


def test_a_leaving_worker_stays_exiting_through_the_requests_it_still_serves() -> None:
    # A sync worker that retired (max_requests) still serves the connections it had
    # accepted: each request marked the slot BUSY again, so the master could miss that
    # it was leaving, start no replacement and apply no graceful_timeout.
    board = Scoreboard(1)
    slot = board.allocate(now=0.0)
    slot.request_started(b"GET /a HTTP/1.1", now=1.0)
    slot.set_state(WorkerState.EXITING)
    slot.request_finished(now=2.0)
    assert slot.snapshot().state is WorkerState.EXITING
    slot.request_started(b"GET /b HTTP/1.1", now=3.0)
    snap = slot.snapshot()
    assert (snap.state, snap.request_line, snap.request_start) == (
        WorkerState.EXITING,
        b"GET /b HTTP/1.1",
        3.0,
    )
    slot.set_state(WorkerState.IDLE)  # a WebSocket handed to the app, say
    assert slot.snapshot().state is WorkerState.EXITING
    slot.reset(generation=2, now=4.0)  # the master hands the slot out again
    slot.request_started(b"GET / HTTP/1.1", now=5.0)
    assert slot.snapshot().state is WorkerState.BUSY
    board.close()


def test_a_long_request_line_is_truncated() -> None:
    board = Scoreboard(1)
    slot = board.allocate()
    slot.request_started(b"GET /" + b"a" * 1000 + b" HTTP/1.1")
    assert len(slot.snapshot().request_line) == MAX_REQUEST_LINE_BYTES
    board.close()


def test_boot_failure_reason_reaches_the_master() -> None:
    board = Scoreboard(1)
    slot = board.allocate()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        slot.boot_failed("No module named 'nothere'")
        os._exit(4)
    assert _wait(pid) == 4
    snap = slot.snapshot()
    assert snap.state is WorkerState.BOOT_FAILED
    assert snap.request_line == b"No module named 'nothere'"
    board.close()


def test_slots_are_reused_after_free_and_the_board_grows() -> None:
    board = Scoreboard(2)
    a = board.allocate()
    b = board.allocate()
    assert (a.index, b.index) == (0, 1)
    c = board.allocate()  # a new segment
    assert c.index == 2 and board.capacity == 4
    board.free(a)
    assert a.snapshot().state is WorkerState.FREE
    d = board.allocate(generation=3)
    assert d.index == 0 and d.snapshot().generation == 3
    assert [s.index for s in board.snapshots()] == [0, 1, 2]
    board.close()


def test_a_segment_added_before_fork_is_shared() -> None:
    board = Scoreboard(1)
    board.allocate()
    late = board.allocate()  # second segment
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        late.set_state(WorkerState.READY)
        os._exit(0)
    assert _wait(pid) == 0
    assert late.snapshot().state is WorkerState.READY
    board.close()


@pytest.mark.parametrize("state", list(WorkerState))
def test_is_serving(state: WorkerState) -> None:
    expected = state in (WorkerState.READY, WorkerState.BUSY, WorkerState.IDLE)
    assert state.is_serving is expected


def test_a_read_during_the_owners_store_never_sees_a_zeroed_heartbeat() -> None:
    # struct.pack_into zeroes its range before writing the fields; a master that read a
    # busy worker's heartbeat as 0.0 aborted it for a timeout (a HUP test under wrk caught
    # it). Bounded by counts, not time: the child stores until told to stop, the parent
    # reads a fixed number of times.
    board = Scoreboard(4)
    slot = board.allocate(generation=1, now=1.0)
    stop = board.allocate(generation=1, now=1.0)  # the parent's "stop" flag, a second slot
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            slot.set_pid(os.getpid())
            slot.set_state(WorkerState.READY)
            now = 100.0
            for _ in range(5_000_000):
                now += 0.001
                slot.request_started(b"GET / HTTP/1.1", now=now)
                slot.request_finished(now=now)
                if stop.snapshot().state is WorkerState.READY:
                    break
        finally:
            os._exit(0)
    try:
        while slot.snapshot().heartbeat < 100.0:  # the child has started storing
            pass
        torn = 0
        for _ in range(200_000):
            snap = slot.snapshot()
            if snap.heartbeat < 100.0 or snap.state is WorkerState.FREE:
                torn += 1
    finally:
        stop.set_state(WorkerState.READY)
        assert _wait(pid) == 0
    assert torn == 0
    board.close()
