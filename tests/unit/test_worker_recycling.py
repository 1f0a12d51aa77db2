"""A worker's request count against ``max_requests``, as the base class keeps it.

The worker is a real SyncWorker built as the arbiter builds it, without forking or
running it; retiring it only closes its (unbound) state and tells no master.
"""

from __future__ import annotations

import os
import sys

import pytest

from forkhorn.arbiter.scoreboard import Scoreboard
from forkhorn.config import load_config
from forkhorn.logs import Logger
from forkhorn.workers.sync import SyncWorker


def _worker(monkeypatch: pytest.MonkeyPatch, *args: str) -> SyncWorker:
    cfg = load_config([*args, "examples.hello:app"], {})
    worker = SyncWorker(
        1, os.getppid(), [], "examples.hello:app", 30, cfg, Logger(cfg),
        Scoreboard(1).allocate(),
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
