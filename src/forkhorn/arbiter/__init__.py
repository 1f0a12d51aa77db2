"""The master process (the arbiter): binds, forks, supervises and reloads the workers.

Modules: ``arbiter.py`` (the main loop: thin code that acts), ``policy.py`` (pure
decisions), ``signals.py`` (handlers that only queue), ``scoreboard.py`` (shared-memory
worker slots), ``listeners.py`` (tcp/unix/fd/systemd/inherited sockets), ``pidfile.py``,
``systemd.py`` (sd_notify).

``Arbiter`` is exported lazily: ``forkhorn.workers.base`` imports ``arbiter.scoreboard``,
and ``arbiter.arbiter`` imports ``forkhorn.workers``; importing it eagerly here would make
that a cycle.  This package never imports ``forkhorn.http``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from forkhorn.arbiter.arbiter import Arbiter

__all__ = ["Arbiter"]


def __getattr__(name: str) -> Any:
    if name == "Arbiter":
        from forkhorn.arbiter.arbiter import Arbiter

        return Arbiter
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
