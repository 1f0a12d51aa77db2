"""sd_notify over a real datagram socket, and the watchdog interval."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from forkhorn.arbiter import systemd


def _receiver(path: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(5)
    return sock


def test_notify_sends_to_a_path_socket(tmp_path: Path) -> None:
    path = str(tmp_path / "notify.sock")
    with _receiver(path) as rx:
        env = {"NOTIFY_SOCKET": path}
        assert systemd.ready("2 workers", environ=env)
        assert rx.recv(1024) == b"READY=1\nSTATUS=2 workers"
        assert systemd.stopping(environ=env)
        assert rx.recv(1024) == b"STOPPING=1"
        assert systemd.reloading(environ=env)
        assert rx.recv(1024).startswith(b"RELOADING=1\nMONOTONIC_USEC=")
        assert systemd.watchdog(environ=env)
        assert rx.recv(1024) == b"WATCHDOG=1"


def test_notify_to_an_abstract_socket() -> None:
    name = f"forkhorn-test-{os.getpid()}"
    with _receiver("\0" + name) as rx:
        assert systemd.notify("READY=1", {"NOTIFY_SOCKET": "@" + name})
        assert rx.recv(1024) == b"READY=1"


def test_notify_never_raises() -> None:
    assert not systemd.notify("READY=1", {})
    assert not systemd.notify("READY=1", {"NOTIFY_SOCKET": "/nonexistent/notify.sock"})
    assert not systemd.notify("READY=1", {"NOTIFY_SOCKET": "relative"})


def test_watchdog_interval() -> None:
    assert systemd.watchdog_interval({}) is None
    assert systemd.watchdog_interval({"WATCHDOG_USEC": "10000000"}) == 5.0
    other = {"WATCHDOG_USEC": "10000000", "WATCHDOG_PID": str(os.getpid() + 1)}
    assert systemd.watchdog_interval(other) is None
    assert systemd.watchdog_interval({"WATCHDOG_USEC": "x"}) is None
