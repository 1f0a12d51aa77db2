"""A stop signal that arrives while eventlet patches the process must still end the
booting worker: ``eventlet.monkey_patch()`` swallows every exception, SystemExit
included, so the worker holds stop signals until it returns."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator

import pytest

from forkhorn.arbiter.signals import _stop_while_booting
from forkhorn.workers import eventlet as eventlet_worker


@pytest.fixture
def booting_handler() -> Iterator[None]:
    previous = signal.signal(signal.SIGTERM, _stop_while_booting)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_term_during_monkey_patch_ends_the_boot(
    monkeypatch: pytest.MonkeyPatch, booting_handler: None
) -> None:
    swallowed: list[BaseException] = []

    def monkey_patch_like_eventlet() -> None:
        try:
            os.kill(os.getpid(), signal.SIGTERM)  # the master's TERM, mid-patch
            time.sleep(0.05)  # where the handler would run if the signal were not held
        except BaseException as exc:  # what eventlet's patcher does
            swallowed.append(exc)

    monkeypatch.setattr(eventlet_worker.eventlet, "monkey_patch", monkey_patch_like_eventlet)
    with pytest.raises(SystemExit):
        eventlet_worker.EventletWorker.patch(None)  # type: ignore[arg-type]
    assert swallowed == []
