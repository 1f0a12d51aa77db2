"""``-k gevent``: a greenlet per connection, on gevent (``pip install 'forkhorn[gevent]'``).

When monkey-patching happens: in the worker process, first thing in ``init_process()``
(``GreenletWorker.init_process`` calls ``patch()`` before anything else), so after the
fork and before the app is loaded. The master imports this module only to find the class;
importing ``gevent`` patches nothing, and it makes a missing gevent a one-line error
(``workers/__init__.py``) before any worker is forked.

What must not be imported before the patch: the app and anything it imports that keeps a
reference to an unpatched ``socket``, ``ssl``, ``threading`` or ``time.sleep`` (database
drivers, HTTP clients). So do not combine this worker with ``--preload`` unless the app
patches first itself. forkhorn's own modules loaded in the master (config, logging, the
HTTP core) keep no such references: they look ``socket`` and ``threading`` up when called.

Why our own accept loop rather than ``gevent.server.StreamServer``: the listeners are
forkhorn's, shared with the master and the other workers, and closed by the base class on
TERM; the behaviour around them (503 beyond ``worker_connections``, killing the acceptor
before its listener closes, the same code as the eventlet worker) lives once in
``green.py``. What is left here is gevent's primitives, one line each.

Runs in: the worker process (the master only imports it).
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any

import gevent
import gevent.event
import gevent.pool
import gevent.socket

from .green import GreenletWorker, cooperative_sendfile

__all__ = ["GeventWorker"]

# How long stopping an acceptor may take: it is parked in gevent's poller, so one loop.
KILL_TIMEOUT = 1.0


class _GeventSocket(gevent.socket.socket):  # type: ignore[misc]
    """gevent's socket with a real ``sendfile`` (``green.cooperative_sendfile``): gevent's
    own reads the file and sends it, so file responses never used the system call."""

    def sendfile(self, file: Any, offset: int = 0, count: int | None = None) -> int:
        out_fd = self.fileno()
        timeout = self.gettimeout()
        return cooperative_sendfile(
            out_fd, file, offset, count, lambda: gevent.socket.wait_write(out_fd, timeout)
        )


class GeventWorker(GreenletWorker):
    """gevent's primitives for ``GreenletWorker``."""

    library = "gevent"
    patch_first_advice = (
        "Patch first (gevent.monkey.patch_all() at the top of the config file or of the "
        "app module) or drop --preload"
    )

    def patch(self) -> None:
        from gevent import monkey

        monkey.patch_all()

    @classmethod
    def stdlib_patched(cls) -> bool:
        from gevent import monkey

        return bool(monkey.is_module_patched("threading"))

    def make_pool(self, size: int) -> None:
        self._pool = gevent.pool.Pool(size)

    def pool_full(self) -> bool:
        return bool(self._pool.full())

    def pool_running(self) -> int:
        return len(self._pool)

    def spawn_in_pool(self, fn: Callable[..., Any], *args: Any) -> None:
        self._pool.spawn(fn, *args)

    def spawn(self, fn: Callable[..., Any], *args: Any) -> Any:
        return gevent.spawn(fn, *args)

    def kill(self, greenlet: Any, exc: type[BaseException], block: bool) -> None:
        greenlet.kill(exc, block=block, timeout=KILL_TIMEOUT if block else None)

    def current(self) -> Any:
        return gevent.getcurrent()

    def sleep(self, seconds: float) -> None:
        gevent.sleep(seconds)

    def wait_readable(self, fd: int) -> None:
        gevent.socket.wait_read(fd)

    def wrap_accepted(self, fd: int, listener: socket.socket) -> Any:
        return _GeventSocket(listener.family, listener.type, listener.proto, fileno=fd)

    def new_event(self) -> Any:
        return gevent.event.Event()

    def wait_event(self, event: Any, timeout: float) -> None:
        event.wait(timeout)

    def set_event(self, event: Any) -> None:
        event.set()
