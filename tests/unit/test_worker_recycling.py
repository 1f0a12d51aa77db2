"""A worker's request count against ``max_requests``, as the base class keeps it.

The worker is a real SyncWorker built as the arbiter builds it, without forking or
running it; retiring it only closes its (unbound) state and tells no master.
"""

from __future__ import annotations

import os
import sys

import pytest

from forkhorn.arbiter.scoreboard import HOLD_FAILING, Scoreboard, WorkerState
from forkhorn.config import load_config
from forkhorn.logs import Logger
from forkhorn.workers.base import HELD_RECYCLE_STEP
from forkhorn.workers.sync import SyncWorker


def _worker(
    monkeypatch: pytest.MonkeyPatch, *args: str, board: Scoreboard | None = None
) -> SyncWorker:
    cfg = load_config([*args, "examples.hello:app"], {})
    worker = SyncWorker(
        1, os.getppid(), [], "examples.hello:app", 30, cfg, Logger(cfg),
        (board or Scoreboard(1)).allocate(),
    )  # fmt: skip
    monkeypatch.setattr(worker, "tell_master", lambda: None)
    worker._apply_recycling_limits()
    return worker


def test_unlimited_is_sys_maxsize_as_under_gunicorn(monkeypatch: pytest.MonkeyPatch) -> None:
    # A custom worker ported from gunicorn compares its count with max_requests: with 0
    # for "unlimited" it would retire after its first request.
    worker = _worker(monkeypatch)
    assert worker.max_requests == sys.maxsize
    for _ in range(1000):
        worker.request_finished()
    assert worker.alive and worker.retire_reason == ""


def test_the_limit_retires_the_worker_at_its_count(monkeypatch: pytest.MonkeyPatch) -> None:
    worker = _worker(monkeypatch, "--max-requests", "3")
    assert worker.max_requests == 3
    worker.request_finished()
    worker.request_finished()
    assert worker.alive
    worker.request_finished()
    assert not worker.alive and worker.retire_reason == "max_requests"


def test_the_jitter_is_added_per_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    limits = {
        _worker(monkeypatch, "--max-requests", "10", "--max-requests-jitter", "5").max_requests
        for _ in range(60)
    }
    assert limits <= set(range(10, 16)) and len(limits) > 1


def test_held_recycling_keeps_the_worker_serving_until_released(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """While the master holds recycling (new workers fail to boot), a worker past
    max_requests serves on and looks again HELD_RECYCLE_STEP requests later; once the hold
    is released, it retires at that next look."""
    board = Scoreboard(2)
    worker = _worker(monkeypatch, "--max-requests", "3", board=board)
    board.hold_recycling(HOLD_FAILING)
    for _ in range(3):
        worker.request_finished()
    assert worker.alive and worker.max_requests == 3 + HELD_RECYCLE_STEP
    board.hold_recycling(0)
    for _ in range(HELD_RECYCLE_STEP - 1):
        worker.request_finished()
    assert worker.alive
    worker.request_finished()
    assert not worker.alive and worker.retire_reason == "max_requests"


def test_held_recycling_also_holds_the_lifetime_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    board = Scoreboard(2)
    worker = _worker(monkeypatch, "--max-worker-lifetime", "1", board=board)
    board.hold_recycling(HOLD_FAILING)
    worker.tick(now=worker._started_at + 5)
    assert worker.alive
    board.hold_recycling(0)
    worker.tick(now=worker._started_at + 6)
    assert not worker.alive and worker.retire_reason == "max_worker_lifetime"


@pytest.mark.parametrize("state", [WorkerState.BOOTING, WorkerState.EXITING])
def test_another_worker_booting_or_leaving_holds_recycling(
    monkeypatch: pytest.MonkeyPatch, state: WorkerState
) -> None:
    """While another worker boots (a replacement, a reload's) or leaves, one at its limit
    waits, seeing it in the scoreboard itself: with two workers, recycling goes one at a
    time (at most half of them at once)."""
    board = Scoreboard(2)
    worker = _worker(monkeypatch, "--max-requests", "2", board=board)
    said: list[str] = []
    monkeypatch.setattr(worker.log, "info", lambda msg, *args: said.append(msg % args))
    other = board.allocate()  # BOOTING
    other.set_pid(12345)
    other.set_state(state)
    worker.request_finished()
    worker.request_finished()
    assert worker.alive
    for _ in range(HELD_RECYCLE_STEP):
        worker.request_finished()  # looked again, still held: said once, not per look
    assert said == [
        "Not recycling this worker yet (max_requests reached): other workers are booting "
        "or leaving, and at most half of them recycle at once; it serves on meanwhile"
    ]
    board.free(other)  # ready and serving, or gone
    for _ in range(HELD_RECYCLE_STEP):
        worker.request_finished()
    assert not worker.alive
    assert len(said) == 2 and said[1].startswith("Autorestarting worker")


def test_a_worker_deciding_to_leave_holds_the_others_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The look at the others and the claim of leaving are one step under a lock the
    workers share: two workers at their limits in the same instant both saw the other
    serving and both left. A worker that finds another deciding serves on and looks again
    later. Here a forked process holds the lock, as a twin in the middle of its claim."""
    import fcntl

    board = Scoreboard(2)
    worker = _worker(monkeypatch, "--max-requests", "2", board=board)
    ready, hold = os.pipe()
    release, done = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            fcntl.lockf(board._claims.fd, fcntl.LOCK_EX)
            os.write(hold, b"x")
            os.read(release, 1)
        finally:
            os._exit(0)
    try:
        assert os.read(ready, 1) == b"x"
        worker.request_finished()
        worker.request_finished()
        assert worker.alive and worker.max_requests == 2 + HELD_RECYCLE_STEP
    finally:
        os.write(done, b"x")
        os.waitpid(pid, 0)
    for _ in range(HELD_RECYCLE_STEP):
        worker.request_finished()
    assert not worker.alive and worker.retire_reason == "max_requests"
    assert worker.slot.snapshot().state is WorkerState.EXITING
    for fd in (ready, hold, release, done):
        os.close(fd)
