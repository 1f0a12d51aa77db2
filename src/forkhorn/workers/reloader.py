"""``--reload``: restart a worker when a file of its code changes (development only).

A daemon thread polls, once a second, the modification time of every file the worker has
imported a module from, and of ``reload_extra_files``. On a change it logs the file with
gunicorn's line ("Worker reloading: PATH modified") and stops the worker as a TERM does;
the master sees it leave and starts a replacement at once, which imports the new code.
Polling whatever ``reload_engine`` says: it needs no extra package, and a second's delay
is nothing in development. Under gevent or eventlet the thread is a patched one.

Runs in: the worker process, in its own thread.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator

#: Seconds between two scans.
POLL_INTERVAL = 1.0


class Reloader(threading.Thread):
    """Calls ``changed(path)`` once, for the first watched file whose mtime moves."""

    def __init__(
        self,
        extra_files: Iterable[str],
        changed: Callable[[str], None],
        interval: float = POLL_INTERVAL,
    ) -> None:
        super().__init__(name="forkhorn-reloader", daemon=True)
        self.extra_files = [os.path.abspath(path) for path in extra_files]
        self.changed = changed
        self.interval = interval
        # The first scan, here in the caller's thread, before the worker serves: a change
        # made after its first response is then always a change, however late the
        # thread gets to run.
        self.seen: dict[str, float] = {}
        self.scan()

    def scan(self) -> str | None:
        """Note each file's mtime; return the first that moved since the last scan."""
        seen = self.seen
        for path in self.files():
            try:
                mtime = os.stat(path).st_mtime
            except OSError:
                continue  # not there (yet): an extra file may appear later
            if seen.setdefault(path, mtime) != mtime:
                return path
        return None

    def files(self) -> Iterator[str]:
        for module in list(sys.modules.values()):
            path = getattr(module, "__file__", None)
            if isinstance(path, str):
                yield path
        yield from self.extra_files

    def run(self) -> None:
        while True:
            time.sleep(self.interval)
            path = self.scan()
            if path is not None:
                self.changed(path)
                return
