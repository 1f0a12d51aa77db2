"""``-k eventlet``: a greenthread per connection, on eventlet (``forkhorn[eventlet]``).

When monkey-patching happens: in the worker process, first thing in ``init_process()``
(``GreenletWorker.init_process`` calls ``patch()`` before anything else), so after the
fork and before the app is loaded. The master imports this module only to find the class;
importing ``eventlet`` patches nothing, and it makes a missing eventlet a one-line error
(``workers/__init__.py``) before any worker is forked.

What must not be imported before the patch: the app and anything it imports that keeps a
reference to an unpatched ``socket``, ``ssl``, ``threading``, ``select`` or ``time.sleep``;
so no ``--preload`` with this worker unless the app patches first itself. Locks created
before the patch (the ``logging`` module's) stay real locks; eventlet says so on stderr
("N RLock(s) were not greened"); they are never held across a switch, so that is harmless.

eventlet is in maintenance mode upstream (gunicorn 26 dropped its worker); this one is kept
for apps that depend on it, and its deprecation warning at import is silenced here because
choosing ``-k eventlet`` is the user's informed decision. The behaviour is ``green.py``'s,
shared with the gevent worker; only eventlet's primitives are here.

Runs in: the worker process (the master only imports it).
"""

from __future__ import annotations

import signal
import socket
import warnings
from collections.abc import Callable
from typing import Any

from .green import GreenletWorker, cooperative_sendfile

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message=r"(?s).*Eventlet is deprecated")
    import eventlet
    import eventlet.event
    import eventlet.greenio
    import eventlet.greenpool
    import eventlet.greenthread
    import eventlet.hubs
    import eventlet.patcher

__all__ = ["EventletWorker"]


class _GreenSocket(eventlet.greenio.GreenSocket):  # type: ignore[misc]
    """eventlet's socket with a cooperative ``sendfile`` (``green.cooperative_sendfile``):
    eventlet passes ``sendfile`` through to the real socket, which refuses to work when
    non-blocking (as eventlet keeps it), so every file response would fail."""

    def sendfile(self, file: Any, offset: int = 0, count: int | None = None) -> int:
        out_fd = self.fileno()
        timeout = self.gettimeout()
        return cooperative_sendfile(
            out_fd,
            file,
            offset,
            count,
            lambda: eventlet.hubs.trampoline(
                out_fd, write=True, timeout=timeout, timeout_exc=socket.timeout
            ),
        )


# The signals that stop a booting worker (arbiter.signals.STOP_SIGNALS).
_STOP_SIGNALS = (signal.SIGHUP, signal.SIGQUIT, signal.SIGINT, signal.SIGTERM)


class EventletWorker(GreenletWorker):
    """eventlet's primitives for ``GreenletWorker``."""

    library = "eventlet"
    patch_first_advice = (
        "Patch first (eventlet.monkey_patch() at the top of the config file or of the "
        "app module) or drop --preload"
    )

    def patch(self) -> None:
        # monkey_patch() catches every exception, SystemExit included, and goes on: a stop
        # signal, which ends a booting worker with SystemExit, would be swallowed there
        # and the worker would boot and serve until the master killed it at
        # graceful_timeout. So stop signals wait until it returns (one that came
        # meanwhile is delivered right after, and the worker leaves as it should).
        held = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
        try:
            # A master patched by the config file runs its own hub (its sleeps and
            # selects are green), whose epoll descriptor and registrations the fork
            # copied: on that shared epoll the master and this worker took each other's
            # events, and after a HUP the new workers never saw a connection. This
            # worker starts a hub of its own.
            eventlet.hubs.use_hub()
            eventlet.monkey_patch()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, held)

    @classmethod
    def stdlib_patched(cls) -> bool:
        return bool(eventlet.patcher.is_monkey_patched("thread"))

    def make_pool(self, size: int) -> None:
        self._pool = eventlet.greenpool.GreenPool(size)

    def pool_full(self) -> bool:
        return bool(self._pool.free() <= 0)

    def pool_running(self) -> int:
        return int(self._pool.running())

    def spawn_in_pool(self, fn: Callable[..., Any], *args: Any) -> None:
        self._pool.spawn(fn, *args)

    def spawn(self, fn: Callable[..., Any], *args: Any) -> Any:
        return eventlet.spawn(fn, *args)

    def kill(self, greenlet: Any, exc: type[BaseException], block: bool) -> None:
        # eventlet's kill switches to the target at once (it runs until its next yield),
        # so ``block`` needs nothing more. The full exc_info triple: kill() needs it for
        # a greenthread that has not started yet.
        eventlet.greenthread.kill(greenlet, exc, exc(), None)

    def current(self) -> Any:
        return eventlet.getcurrent()

    def sleep(self, seconds: float) -> None:
        eventlet.sleep(seconds)

    def wait_readable(self, fd: int) -> None:
        eventlet.hubs.trampoline(fd, read=True)

    def wrap_accepted(self, fd: int, listener: socket.socket) -> Any:
        return _GreenSocket(listener.family, listener.type, listener.proto, fd)

    def new_event(self) -> Any:
        return eventlet.event.Event()

    def wait_event(self, event: Any, timeout: float) -> None:
        if not event.ready():
            event.wait(timeout)

    def set_event(self, event: Any) -> None:
        if not event.ready():
            event.send(True)
