"""The master's signal queue (arbiter/signals.py): bounded per kind, in arrival order."""

from __future__ import annotations

import signal

from forkhorn.arbiter.signals import MAX_QUEUED, SignalQueue


def drain(queue: SignalQueue) -> list[int]:
    out = []
    while (signum := queue.pop()) is not None:
        out.append(signum)
    return out


def test_a_stop_behind_a_burst_of_another_kind_is_kept() -> None:
    """Five USR1 filled a bound on all kinds together, and a TERM behind them was
    dropped: the master went on serving."""
    queue = SignalQueue()
    for _ in range(MAX_QUEUED):
        queue.push(signal.SIGUSR1)
    queue.push(signal.SIGTERM)
    assert drain(queue) == [signal.SIGUSR1] * MAX_QUEUED + [signal.SIGTERM]


def test_each_kind_is_bounded_and_order_is_kept() -> None:
    queue = SignalQueue()
    for _ in range(MAX_QUEUED + 3):
        queue.push(signal.SIGTTIN)
    queue.push(signal.SIGHUP)
    queue.push(signal.SIGTTIN)  # still over its bound: dropped
    assert drain(queue) == [signal.SIGTTIN] * MAX_QUEUED + [signal.SIGHUP]
