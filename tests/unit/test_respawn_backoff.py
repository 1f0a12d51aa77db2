"""The master's respawn backoff as the settings choose it (the Backoff itself is policy)."""

from __future__ import annotations

import logging

import pytest

from forkhorn.arbiter.arbiter import Arbiter
from forkhorn.config import load_config


@pytest.mark.parametrize(("flags", "longest"), [([], 30.0), (["--reload"], 2.0)])
def test_the_respawn_backoff_is_short_under_reload(flags: list[str], longest: float) -> None:
    """A broken edit under --reload is retried at most 2 s apart, so its fix shows at once;
    otherwise a bad release on disk backs off to 30 s."""
    arbiter = Arbiter(load_config([*flags, "x:app"], {}), logging.getLogger("test"), environ={})
    backoff = arbiter.backoff
    for _ in range(12):
        backoff = backoff.failed(0.0)
    assert backoff.delay_after(backoff.failures) == longest
