"""The Date header cache: one format per second, and the monotonic shortcut the fast
worker uses (``expires``/``refresh``) agrees with the wall clock."""

from __future__ import annotations

import pytest

from forkhorn.wsgi import cycle


def test_refresh_tracks_the_wall_clock_second(monkeypatch: pytest.MonkeyPatch) -> None:
    wall = [1_000_000_000.25]
    monkeypatch.setattr(cycle.time, "time", lambda: wall[0])
    dates = cycle.DateCache()
    assert dates.expires == 0.0  # nothing cached: the first request refreshes

    value = dates.refresh(50.0)  # monotonic 50.0 is wall ...000.25
    assert value == b"Sun, 09 Sep 2001 01:46:40 GMT" == dates.value
    # Current until the next wall-clock second, 0.75 s later on the monotonic clock.
    assert dates.expires == pytest.approx(50.75)

    wall[0] += 0.75  # the next second
    assert dates.refresh(50.75) == b"Sun, 09 Sep 2001 01:46:41 GMT"
    assert dates.expires == pytest.approx(51.75)


def test_get_formats_once_per_second(monkeypatch: pytest.MonkeyPatch) -> None:
    wall = [1_000_000_000.0]
    monkeypatch.setattr(cycle.time, "time", lambda: wall[0])
    monkeypatch.setattr(cycle.time, "monotonic", lambda: wall[0] - 999_999_000.0)
    calls = []
    real = cycle.formatdate
    monkeypatch.setattr(cycle, "formatdate", lambda *a, **k: calls.append(a) or real(*a, **k))
    dates = cycle.DateCache()
    first = dates.get()
    wall[0] += 0.5
    assert dates.get() is first
    wall[0] += 0.5
    assert dates.get() != first
    assert len(calls) == 2
