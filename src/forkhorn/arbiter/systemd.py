"""systemd integration without a dependency: ``sd_notify`` and the watchdog interval.

Holds ``notify(state)``, which sends one datagram such as ``READY=1`` to the socket named by
``$NOTIFY_SOCKET`` (sd_notify(3)); ``watchdog_interval()``, which reads ``WATCHDOG_USEC``
(honouring ``WATCHDOG_PID``) and returns how often to send ``WATCHDOG=1``.  Socket
activation (``LISTEN_FDS``) is read in ``listeners.py``.

Rules it keeps: never raise (a missing or broken notify socket must not stop a server);
no-op when ``$NOTIFY_SOCKET`` is unset; an abstract socket is written ``@name`` in the
variable and ``\\0name`` on the wire.  The master sends READY=1 once its first workers
serve, RELOADING=1 (with MONOTONIC_USEC, systemd 253+) on HUP and READY=1 again when the
reload is done, STOPPING=1 when it begins to stop, WATCHDOG=1 from its main loop.

Runs in: master, main loop only.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping

__all__ = ["notify", "ready", "reloading", "stopping", "watchdog", "watchdog_interval"]


def notify(state: str, environ: Mapping[str, str] | None = None) -> bool:
    """Send ``state`` (newline-separated ``KEY=VALUE`` lines); True when it was sent."""
    env = os.environ if environ is None else environ
    address = env.get("NOTIFY_SOCKET", "")
    if not address or address[0] not in "@/":
        return False
    if address[0] == "@":
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(state.encode("utf-8"))
    except OSError:
        return False
    return True


def ready(status: str = "", environ: Mapping[str, str] | None = None) -> bool:
    text = "READY=1" + (f"\nSTATUS={status}" if status else "")
    return notify(text, environ)


def reloading(environ: Mapping[str, str] | None = None) -> bool:
    # systemd 253+ needs MONOTONIC_USEC with RELOADING=1 for Type=notify-reload.
    usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    return notify(f"RELOADING=1\nMONOTONIC_USEC={usec}", environ)


def stopping(environ: Mapping[str, str] | None = None) -> bool:
    return notify("STOPPING=1", environ)


def watchdog(environ: Mapping[str, str] | None = None) -> bool:
    return notify("WATCHDOG=1", environ)


def watchdog_interval(environ: Mapping[str, str] | None = None) -> float | None:
    """Seconds between WATCHDOG=1 pings (half the configured period, as sd_watchdog_enabled(3)
    advises), or None when the watchdog is off or meant for another process."""
    env = os.environ if environ is None else environ
    try:
        usec = int(env.get("WATCHDOG_USEC", "0"))
    except ValueError:
        return None
    if usec <= 0:
        return None
    pid_text = env.get("WATCHDOG_PID", "")
    if pid_text:
        try:
            if int(pid_text) != os.getpid():
                return None
        except ValueError:
            return None
    return usec / 1_000_000 / 2
