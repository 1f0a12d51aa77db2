"""Listening sockets from bind strings, fds and inherited environments (loopback only)."""

from __future__ import annotations

import errno
import os
import socket
import stat
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from forkhorn.arbiter.listeners import (
    FD_ENV,
    Address,
    Listener,
    bind_one,
    create_listeners,
    inherited_fds,
    parse_address,
    same_address_twice,
)
from forkhorn.errors import BindError, ConfigError


def _has_ipv6_loopback() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.parametrize(
    ("bind", "expected"),
    [
        ("127.0.0.1:8000", Address("tcp", host="127.0.0.1", port=8000)),
        ("127.0.0.1", Address("tcp", host="127.0.0.1", port=8000)),
        (":9000", Address("tcp", host="0.0.0.0", port=9000)),
        ("localhost:0", Address("tcp", host="localhost", port=0)),
        ("[::1]:8080", Address("tcp", host="::1", port=8080)),
        ("[::1]", Address("tcp", host="::1", port=8000)),
        ("tcp://127.0.0.1:81", Address("tcp", host="127.0.0.1", port=81)),
        ("unix:/tmp/x.sock", Address("unix", path="/tmp/x.sock")),
        ("fd://3", Address("fd", fd=3)),
    ],
)
def test_parse_address(bind: str, expected: Address) -> None:
    assert parse_address(bind) == expected


@pytest.mark.parametrize("bind", ["127.0.0.1:http", "127.0.0.1:70000", "[::1", "fd://x", "unix:"])
def test_parse_address_rejects(bind: str) -> None:
    with pytest.raises(BindError):
        parse_address(bind)


def _accepts(listener: Listener) -> None:
    with socket.create_connection(listener.sock.getsockname()[:2], timeout=5) as client:
        listener.sock.setblocking(True)
        conn, _ = listener.sock.accept()
        conn.sendall(b"hi")
        assert client.recv(2) == b"hi"
        conn.close()


def test_tcp_v4_port_zero_reports_the_real_port() -> None:
    [listener] = create_listeners(["127.0.0.1:0"], environ={})
    try:
        port = listener.sock.getsockname()[1]
        assert port != 0
        assert str(listener) == f"http://127.0.0.1:{port}"
        assert not listener.sock.getblocking()
        assert listener.sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR)
        _accepts(listener)
    finally:
        listener.close()


def test_tcp_listeners_and_their_connections_have_no_nagle_delay() -> None:
    made = bind_one(parse_address("127.0.0.1:0"), backlog=8)
    inherited = socket.socket()
    inherited.bind(("127.0.0.1", 0))
    inherited.listen()
    adopted = create_listeners([], environ={FD_ENV: str(inherited.detach())})[0]
    try:
        for listener in (made, adopted):
            assert listener.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
            with socket.create_connection(listener.sock.getsockname()[:2], timeout=5):
                listener.sock.setblocking(True)
                accepted, _ = listener.sock.accept()
                with accepted:
                    # What every worker class serves on.
                    assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    finally:
        made.close()
        adopted.close()


def test_reuse_port_sets_the_option() -> None:
    [listener] = create_listeners(["127.0.0.1:0"], reuse_port=True, environ={})
    try:
        assert listener.sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT)
    finally:
        listener.close()


@pytest.mark.skipif(not _has_ipv6_loopback(), reason="no IPv6 loopback on this host")
def test_tcp_v6() -> None:
    [listener] = create_listeners(["[::1]:0"], environ={})
    try:
        port = listener.sock.getsockname()[1]
        assert str(listener) == f"http://[::1]:{port}"
        _accepts(listener)
    finally:
        listener.close()


def test_unix_socket_with_umask_and_stale_file(tmp_path: Path) -> None:
    path = tmp_path / "app.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))  # bound, never listening, then closed: a stale file
    stale.close()
    [listener] = create_listeners([f"unix:{path}"], umask=0o077, environ={})
    try:
        assert str(listener) == f"unix:{path}"
        mode = stat.S_IMODE(os.stat(path).st_mode)
        assert mode & 0o077 == 0
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.connect(str(path))
    finally:
        listener.close(unlink=True)
    assert not path.exists()


def test_unix_socket_in_use_is_a_bind_error(tmp_path: Path) -> None:
    path = tmp_path / "busy.sock"
    [first] = create_listeners([f"unix:{path}"], environ={})
    try:
        with pytest.raises(BindError, match="Connection in use"):
            create_listeners([f"unix:{path}"], environ={}, attempts=1)
        assert path.exists()
    finally:
        first.close(unlink=True)


def test_an_address_not_on_this_machine_names_the_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    # The kernel's answer for an address no interface holds, without binding one (tests
    # stay on loopback).
    import forkhorn.arbiter.listeners as listeners

    def not_here(*args: object, **kwargs: object) -> socket.socket:
        raise OSError(errno.EADDRNOTAVAIL, os.strerror(errno.EADDRNOTAVAIL))

    monkeypatch.setattr(listeners, "_bind_tcp", not_here)
    with pytest.raises(BindError, match=r"Invalid address: .*Cannot assign requested address"):
        create_listeners(["127.0.0.1:0"], environ={})


def test_unix_path_that_is_a_regular_file_is_never_removed(tmp_path: Path) -> None:
    path = tmp_path / "notasocket"
    path.write_text("keep me")
    with pytest.raises(BindError, match="not a socket"):
        create_listeners([f"unix:{path}"], environ={})
    assert path.read_text() == "keep me"


def test_fd_bind(tmp_path: Path) -> None:
    raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    raw.bind(("127.0.0.1", 0))
    raw.listen(8)
    fd = os.dup(raw.fileno())
    raw.close()
    [listener] = create_listeners([f"fd://{fd}"], environ={})
    try:
        assert listener.fileno() == fd
        assert str(listener).startswith("http://127.0.0.1:")
        _accepts(listener)
    finally:
        listener.close()


def test_fd_that_is_not_listening_is_refused() -> None:
    raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        with pytest.raises(BindError, match="not a listening socket"):
            create_listeners([f"fd://{raw.fileno()}"], environ={})
    finally:
        raw.close()


def test_address_in_use_is_one_line_after_retries() -> None:
    holder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    holder.bind(("127.0.0.1", 0))
    holder.listen(1)
    port = holder.getsockname()[1]
    warnings: list[str] = []
    sleeps: list[float] = []
    try:
        with pytest.raises(BindError) as info:
            bind_one(
                parse_address(f"127.0.0.1:{port}"),
                attempts=3,
                retry_delay=0.25,
                warn=warnings.append,
                sleep=sleeps.append,
            )
    finally:
        holder.close()
    assert str(info.value) == f"Connection in use: ('127.0.0.1', {port})"
    assert info.value.exit_code == 1
    assert sleeps == [0.25, 0.25]
    assert warnings == [f"('127.0.0.1', {port}) is taken; trying again for up to 0.5 s"]


def test_an_address_freed_while_retrying_is_bound() -> None:
    """A restart that overlaps the old process's exit (gunicorn retries for 5 s too)."""
    holder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    holder.bind(("127.0.0.1", 0))
    holder.listen(1)
    port = holder.getsockname()[1]
    sleeps: list[float] = []

    def sleep(delay: float) -> None:
        sleeps.append(delay)
        holder.close()  # the old process lets go while we wait

    listener = bind_one(parse_address(f"127.0.0.1:{port}"), sleep=sleep)
    try:
        assert listener.sock.getsockname()[1] == port
        assert sleeps == [1.0]
    finally:
        listener.close()


def test_inherited_fds_from_a_reexec_and_from_systemd() -> None:
    assert inherited_fds({FD_ENV: "5,6"}) == [5, 6]
    assert inherited_fds({"LISTEN_PID": "42", "LISTEN_FDS": "2"}, pid=42) == [3, 4]
    assert inherited_fds({"LISTEN_PID": "41", "LISTEN_FDS": "2"}, pid=42) is None
    assert inherited_fds({}) is None
    with pytest.raises(BindError):
        inherited_fds({FD_ENV: "x"})


def test_create_listeners_uses_inherited_fds_instead_of_binding() -> None:
    raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    raw.bind(("127.0.0.1", 0))
    raw.listen(8)
    fd = os.dup(raw.fileno())
    port = raw.getsockname()[1]
    raw.close()
    # The bind names a port in use by nobody; the inherited socket wins.
    [listener] = create_listeners(["127.0.0.1:1"], environ={FD_ENV: str(fd)})
    try:
        assert listener.sock.getsockname()[1] == port
    finally:
        listener.close()


def test_a_failed_bind_closes_the_listeners_already_made(tmp_path: Path) -> None:
    path = tmp_path / "first.sock"
    with pytest.raises(BindError):
        create_listeners([f"unix:{path}", "127.0.0.1:99999"], environ={})
    assert not path.exists()


# -- refusing new connections on a stop (Linux) --------------------------------------------------

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux BPF filter")


def _connect_nowait(port: int, family: int = socket.AF_INET) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setblocking(False)
    sock.connect_ex(("127.0.0.1" if family == socket.AF_INET else "::1", port))
    return sock


@linux_only
def test_refuse_new_keeps_the_queue_and_drops_new_syns() -> None:
    listener = bind_one(parse_address("127.0.0.1:0"), backlog=16)
    port = int(listener.getsockname()[1])
    queued = socket.create_connection(("127.0.0.1", port), timeout=5)
    assert not listener.refusing()
    assert listener.refuse_new()
    assert listener.refusing()
    # A connection already queued is still handed out, and its bytes still arrive.
    conn, _ = listener.sock.accept()
    queued.sendall(b"still here")
    conn.setblocking(True)
    assert conn.recv(64) == b"still here"
    # A new one does not complete its handshake: its SYN was dropped.
    late = _connect_nowait(port)
    try:
        time.sleep(0.2)  # poll interval: long enough for a loopback handshake
        with pytest.raises(BlockingIOError):
            listener.sock.accept()
        assert late.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0  # still trying
    finally:
        for s in (late, conn, queued):
            s.close()
        listener.close()


@linux_only
def test_shut_if_refusing_makes_the_kernel_refuse_at_once() -> None:
    listener = bind_one(parse_address("127.0.0.1:0"), backlog=16)
    port = int(listener.getsockname()[1])
    twin = socket.socket(fileno=os.dup(listener.fileno()))  # another process's copy
    try:
        listener.shut_if_refusing()  # not refusing: nothing happens
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
        listener.sock.accept()[0].close()
        listener.refuse_new()
        listener.shut_if_refusing()
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=5)
        # The shutdown acted on the socket, so the other copy stopped listening too.
        twin.setblocking(False)
        with pytest.raises(OSError) as excinfo:
            twin.accept()
        assert excinfo.value.errno == errno.EINVAL
    finally:
        twin.close()
        listener.close()


@linux_only
@pytest.mark.skipif(not _has_ipv6_loopback(), reason="no IPv6 loopback")
def test_refuse_new_on_ipv6() -> None:
    listener = bind_one(parse_address("[::1]:0"), backlog=16)
    try:
        assert listener.refuse_new() and listener.refusing()
        listener.shut_if_refusing()
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("::1", int(listener.getsockname()[1])), timeout=5)
    finally:
        listener.close()


def test_fd_and_unix_sockets_are_never_refusing(tmp_path: Path) -> None:
    raw = socket.socket()
    raw.bind(("127.0.0.1", 0))
    raw.listen(4)
    unix = bind_one(parse_address(f"unix:{tmp_path / 's.sock'}"), backlog=4)
    by_fd = create_listeners([f"fd://{os.dup(raw.fileno())}"], environ={})[0]
    try:
        assert by_fd.address.kind == "fd"
        # A supervisor's socket: even with our filter on it, never shut by us.
        assert Listener(raw).refuse_new()
        assert not by_fd.refusing()
        assert not unix.refuse_new() and not unix.refusing()
    finally:
        by_fd.close()
        unix.close()
        raw.close()


class _WildcardSocket:
    """What a listener needs of a socket bound to a wildcard (not bound here: tests stay
    on loopback)."""

    def __init__(self, family: socket.AddressFamily, host: str, port: int) -> None:
        self.family = family
        self._name = (host, port) if family == socket.AF_INET else (host, port, 0, 0)

    def getsockname(self) -> tuple[Any, ...]:
        return self._name

    def fileno(self) -> int:
        return 1000


def test_the_v4_and_v6_wildcards_are_two_sockets_to_a_reload() -> None:
    """A HUP from ``0.0.0.0:P`` to ``[::]:P`` kept the IPv4 socket (every wildcard
    matched every other), so the server never listened on IPv6 and said "Reload
    complete"; v6 sockets are v6-only, so the two are different sockets."""
    from forkhorn.arbiter.listeners import Listener, parse_address

    v4 = Listener(_WildcardSocket(socket.AF_INET, "0.0.0.0", 8000))  # type: ignore[arg-type]
    v6 = Listener(_WildcardSocket(socket.AF_INET6, "::", 8000))  # type: ignore[arg-type]
    assert v4.serves(parse_address("0.0.0.0:8000")) and v4.serves(parse_address(":8000"))
    assert not v4.serves(parse_address("[::]:8000"))
    assert v6.serves(parse_address("[::]:8000"))
    assert not v6.serves(parse_address("0.0.0.0:8000")) and not v6.serves(parse_address(":8000"))
    assert not v4.serves(parse_address("0.0.0.0:8001"))


def test_an_inherited_listener_is_matched_to_its_bind_entry_by_address() -> None:
    """After a USR2 the listeners come in the old master's order: each bind entry takes
    the one bound to its address. fd://N was not matched at all, and a HUP that changed
    the bind list wrapped the descriptor twice, crash-looping the new workers."""
    from forkhorn.arbiter.listeners import Listener, parse_address

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        listener = Listener(sock)
        port = sock.getsockname()[1]
        assert listener.serves(parse_address(f"127.0.0.1:{port}"))
        assert listener.serves(parse_address(f"localhost:{port}"))
        assert listener.serves(parse_address(f"fd://{sock.fileno()}"))
        assert not listener.serves(parse_address(f"fd://{sock.fileno() + 100}"))
        assert not listener.serves(parse_address(f"127.0.0.1:{port + 1}"))
        assert not listener.serves(parse_address(f"0.0.0.0:{port}"))


def test_one_address_spelt_two_ways_is_listed_twice() -> None:
    """``localhost:P`` beside ``127.0.0.1:P`` (where localhost resolves there first) is
    one address: the second bind retried for seconds, then blamed "Connection in use" on
    forkhorn itself."""
    if socket.getaddrinfo("localhost", None, socket.AF_UNSPEC, socket.SOCK_STREAM)[0][4][0] != (
        "127.0.0.1"
    ):
        pytest.skip("localhost does not resolve to 127.0.0.1 first here")
    first = create_listeners(["127.0.0.1:0"])
    port = first[0].getsockname()[1]
    for listener in first:
        listener.close()
    waits: list[str] = []
    with pytest.raises(ConfigError, match=r"^bind = 'localhost:\d+' is the same address as"):
        create_listeners([f"127.0.0.1:{port}", f"localhost:{port}"], warn=waits.append)
    assert waits == []  # at once, without the retries for an address in use
    # And the first one was closed: the port is free again.
    for listener in create_listeners([f"127.0.0.1:{port}"]):
        listener.close()


def test_same_address_twice_compares_unix_paths_and_fds_as_bound(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    sock = str(tmp_path / "u.sock")
    assert same_address_twice([f"unix:{sock}", "unix:u.sock"]) == (f"unix:{sock}", "unix:u.sock")
    assert same_address_twice(["fd://3", "fd://3"]) == ("fd://3", "fd://3")
    assert same_address_twice(["127.0.0.1:0", "127.0.0.1:0", "unix:a.sock", "fd://4"]) is None
