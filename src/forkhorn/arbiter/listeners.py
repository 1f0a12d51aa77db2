"""Listening sockets: made by the master before it forks, inherited by every worker.

Holds ``Listener`` (a listening socket plus how to name it in logs) and the functions that
make them from ``cfg.bind`` entries:

- ``HOST:PORT``, ``[V6]:PORT``, ``HOST`` (port 8000) -> TCP, ``SO_REUSEADDR`` always
  (a restart must not wait out TIME_WAIT), ``SO_REUSEPORT`` when ``reuse_port``;
  ``IPV6_V6ONLY`` on v6 sockets so ``[::]`` and ``0.0.0.0`` can both be bound.
- ``unix:PATH`` -> a Unix stream socket; a stale socket file (nobody accepts on it) is
  removed first, a live one is "in use", anything that is not a socket is never touched.
  The file mode comes from ``umask`` applied around ``bind()`` (as gunicorn does).
- ``fd://N`` -> an already-open listening socket, e.g. from a supervisor.
- Inherited sockets: systemd socket activation (``LISTEN_PID`` == our pid, ``LISTEN_FDS``
  sockets from fd 3) and a re-executed master (``FORKHORN_FD=3,4``, set by USR2).  When
  either is present the sockets come from there and ``bind`` is not re-bound.

Rules it keeps: every socket is non-blocking (workers multiplex or time out; a blocking
accept would hold a worker in the kernel past TERM) and inheritable across ``fork``; only
``export_fds`` makes them inheritable across ``exec`` (USR2).  An address in use is
retried for a few seconds, as gunicorn does (a restart may overlap the old process's
exit), then is a ``BindError`` whose text is one line: ``Connection in use:
('127.0.0.1', 8000)``.  Port 0 works: ``str(listener)`` carries the port the kernel
picked.

Runs in: master (creation, closing), workers (using ``.sock``).
"""

from __future__ import annotations

import ctypes
import errno
import os
import socket
import stat
import struct
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from forkhorn.errors import BindError, ConfigError

__all__ = [
    "FD_ENV",
    "Address",
    "Listener",
    "create_listeners",
    "export_fds",
    "inherited_fds",
    "parse_address",
]

FD_ENV = "FORKHORN_FD"  # fds a re-executed master inherits (USR2); gunicorn: GUNICORN_FD
# Linux SO_ATTACH_FILTER (asm-generic/socket.h; Python has no constant for it) and a
# classic BPF program for a listening TCP socket that drops every SYN and lets the rest
# through, so handshakes already under way still complete. A TCP socket filter sees the
# packet from its TCP header on, where byte 13 holds the flags.
SO_ATTACH_FILTER = 26
_REFUSE_SYN = b"".join(
    struct.pack("HBBI", code, jt, jf, k)
    for code, jt, jf, k in (
        (0x30, 0, 0, 13),  # ldb [13]            (BPF_LD | BPF_B | BPF_ABS)
        (0x45, 0, 1, 0x02),  # jset #SYN, 0, 1   (BPF_JMP | BPF_JSET | BPF_K)
        (0x06, 0, 0, 0),  # ret #0: drop          (BPF_RET | BPF_K)
        (0x06, 0, 0, 0xFFFFFFFF),  # ret #-1: keep the whole packet
    )
)
_REFUSE_SYN_LEN = len(_REFUSE_SYN) // 8  # instructions
SD_LISTEN_FDS_START = 3  # sd_listen_fds(3): the first passed fd is always 3
DEFAULT_PORT = 8000  # gunicorn's, when a bind has no port


@dataclass(frozen=True, slots=True)
class Address:
    """A parsed bind: ``kind`` is "tcp", "unix" or "fd"."""

    kind: str
    host: str = ""
    port: int = 0
    path: str = ""
    fd: int = -1

    def sockaddr(self) -> tuple[str, int] | str:
        return self.path if self.kind == "unix" else (self.host, self.port)


def parse_address(bind: str) -> Address:
    """Parse one ``--bind`` value.  Raises ``BindError`` for one that cannot be a socket."""
    raw = bind.strip()
    if raw.startswith("unix:"):
        path = raw[len("unix:") :]
        if not path:
            raise BindError(f"Invalid bind address: {bind!r}")
        return Address("unix", path=path)
    if raw.startswith("fd://"):
        try:
            fd = int(raw[len("fd://") :])
        except ValueError:
            raise BindError(f"Invalid bind address: {bind!r} (fd://N needs a number)") from None
        if fd < 0:
            raise BindError(f"Invalid bind address: {bind!r}")
        return Address("fd", fd=fd)
    if raw.startswith("tcp://"):
        raw = raw[len("tcp://") :]
    if raw.startswith("["):  # [v6]:port or [v6]
        end = raw.find("]")
        if end < 0:
            raise BindError(f"Invalid bind address: {bind!r} (missing ']')")
        host, rest = raw[1:end], raw[end + 1 :]
        if rest and not rest.startswith(":"):
            raise BindError(f"Invalid bind address: {bind!r}")
        port_text = rest[1:] if rest else ""
    elif raw.count(":") == 1:
        host, port_text = raw.split(":")
    elif ":" in raw:  # a bare v6 address without brackets
        host, port_text = raw, ""
    else:
        host, port_text = raw, ""
    if port_text:
        try:
            port = int(port_text)
        except ValueError:
            raise BindError(f"Invalid bind address: {bind!r} (port is not a number)") from None
        if not 0 <= port <= 65535:
            raise BindError(f"Invalid bind address: {bind!r} (port out of range)")
    else:
        port = DEFAULT_PORT
    return Address("tcp", host=host or "0.0.0.0", port=port)


class Listener:
    """A listening socket and its display name.  ``str()`` is what "Listening at:" logs."""

    __slots__ = ("_name", "address", "sock")

    def __init__(self, sock: socket.socket, address: Address | None = None) -> None:
        self.sock = sock
        self.address = address or _address_of(sock)
        self._name = self._read_name()

    @property
    def family(self) -> int:
        return int(self.sock.family)

    @property
    def is_unix(self) -> bool:
        return self.sock.family == socket.AF_UNIX

    def fileno(self) -> int:
        return self.sock.fileno()

    def _read_name(self) -> tuple[str, int] | str:
        name = self.sock.getsockname()
        if self.is_unix:
            return name if isinstance(name, str) else name.decode("utf-8", "replace")
        return (str(name[0]), int(name[1]))

    def getsockname(self) -> tuple[str, int] | str:
        """The bound address, read once at creation: still valid after ``close()``, which a
        worker does in its TERM handler while other code may still want the name."""
        return self._name

    def __str__(self) -> str:
        name = self._name
        if isinstance(name, str):
            return f"unix:{name}"
        host, port = name
        if self.sock.family == socket.AF_INET6:
            return f"http://[{host}]:{port}"
        return f"http://{host}:{port}"

    def __repr__(self) -> str:
        return f"<Listener {self}>"

    def serves(self, address: Address) -> bool:
        """Is this listener bound to the parsed bind ``address``? (Sockets a re-exec
        inherited come in the old master's order, not the bind list's.) A TCP address
        matches when binding it now would give this socket: the same family and host as
        its first resolution (``localhost:P`` is ``127.0.0.1:P`` where that comes first),
        so ``0.0.0.0:P`` and ``[::]:P``, two sockets (v6 ones are v6-only), never stand
        for each other; ``fd://N`` is the listener on descriptor N (a re-exec keeps it)."""
        if address.kind == "fd":
            return self.sock.fileno() == address.fd
        name = self._name
        if address.kind == "unix":
            return isinstance(name, str) and os.path.abspath(name) == os.path.abspath(address.path)
        if address.kind != "tcp" or isinstance(name, str) or name[1] != address.port:
            return False
        try:
            family, sockaddr = _resolve_bind(address)
        except OSError:
            return False
        return family == self.sock.family and sockaddr[0] == name[0]

    def refuse_new(self) -> bool:
        """Stop the kernel queueing new connections on this socket, in every process that
        holds it, while leaving the ones already queued to be accepted.

        Why: the kernel completes handshakes on a listening socket until its last copy is
        closed, and the process that closes it last resets whatever is still queued. The
        workers each drain the queue before they close their copies, but a connection can
        land between one's drain and its close (or a worker still booting, killed by TERM,
        can be the last to close). Dropping every incoming SYN at the socket (a BPF
        filter) closes that window: a SYN that arrives from here on is dropped, the
        client retransmits it about a second later, and by then the socket is shut or
        gone and the kernel refuses it (a worker shuts it once it has drained the
        queue, see ``shut_if_refusing``, so usually at once). Only for a socket this
        server alone owns (never one systemd, a supervisor or another master still
        serves from). Linux TCP only
        (a Unix socket's file is unlinked instead); returns False where it cannot.
        """
        if not sys.platform.startswith("linux") or self.is_unix or self.sock.fileno() < 0:
            return False
        program = ctypes.create_string_buffer(_REFUSE_SYN, len(_REFUSE_SYN))
        # struct sock_fprog { unsigned short len; struct sock_filter *filter; }; the
        # kernel copies the program during the call, so the buffer need only outlive it.
        fprog = struct.pack("HP", _REFUSE_SYN_LEN, ctypes.addressof(program))
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)
        except OSError:
            return False
        return True

    def refusing(self) -> bool:
        """True once ``refuse_new()`` was called on this socket, in any process: the master
        is stopping and the socket is its alone. (Read back from the kernel: a filter of
        our program's length. ``fd://`` sockets, which a supervisor shares, never count.)"""
        if self.address.kind == "fd" or self.is_unix or self.sock.fileno() < 0:
            return False
        try:
            # SO_GET_FILTER (same number): the kernel answers with the program's length
            # in instructions, which Python returns as that many bytes.
            program = self.sock.getsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, 64)
        except OSError:
            return False
        return len(program) == _REFUSE_SYN_LEN

    def shut_if_refusing(self) -> None:
        """Once this worker has drained the queue: when the master is stopping and the
        socket is ours alone, shut it down. That acts on the socket, so every process's
        copy stops listening at once, and the kernel refuses new connections right away
        instead of dropping them until the slowest worker closes its copy. Nothing is
        lost: the master's filter kept the queue from growing since the drain began."""
        if self.refusing():
            try:
                self.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def going_away(self) -> bool:
        """True when no one will accept from this socket once this process's workers
        close it: the master refuses new connections on it (``refuse_new``) or removed
        its file, because it is stopping or a reload dropped it. A worker that stops then
        takes what is queued (``Worker.drain_queued``), as the last close resets it. A
        socket that the master keeps serving (a reload, a recycle) is left to the others:
        a stopping worker that took its queue would hold requests the others could serve
        at once. ``fd://`` sockets belong to a supervisor, which keeps them."""
        if self.address.kind == "fd":
            return False
        if self.is_unix:
            path = self._name if isinstance(self._name, str) else ""
            return bool(path) and not path.startswith("\0") and not os.path.lexists(path)
        return self.refusing()

    def unlink(self) -> None:
        """Remove a Unix socket's file (master only: at its exit, or when a reload drops
        it; never while a re-executed master uses it). The socket itself stays open."""
        name = self._name
        if not self.is_unix or not isinstance(name, str) or not name or name.startswith("\0"):
            return
        try:
            if stat.S_ISSOCK(os.lstat(name).st_mode):
                os.unlink(name)
        except OSError:
            pass

    def close(self, unlink: bool = False) -> None:
        """Close this process's copy.  ``unlink`` also removes a Unix socket's file
        (see ``unlink``)."""
        still_open = self.sock.fileno() >= 0
        try:
            self.sock.close()
        except OSError:
            pass
        if unlink and still_open:
            self.unlink()


def _address_of(sock: socket.socket) -> Address:
    if sock.family == socket.AF_UNIX:
        name = sock.getsockname()
        return Address("unix", path=name if isinstance(name, str) else "")
    host, port = sock.getsockname()[:2]
    return Address("tcp", host=str(host), port=int(port))


def _prepare(sock: socket.socket) -> socket.socket:
    sock.setblocking(False)
    sock.set_inheritable(False)  # inherited by fork regardless; exec only via export_fds
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        # No Nagle delay: a response written in pieces (a head, then chunks) must not
        # wait for the client's delayed ACK, about 40 ms per response on keep-alive
        # connections. Set on the listener, it is inherited by every accepted socket,
        # whatever the worker class (as gunicorn does).
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _socket_from_fd(fd: int) -> socket.socket:
    try:
        sock = socket.socket(fileno=fd)
    except OSError as exc:
        raise BindError(f"fd://{fd} is not a usable socket: {exc.strerror or exc}") from None
    problem = ""
    if sock.type != socket.SOCK_STREAM:
        problem = "is not a stream socket"
    else:
        try:
            listening = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
        except OSError:
            listening = 1
        if not listening:
            problem = "is not a listening socket"
    if problem:
        sock.detach()  # the fd is not ours to close
        raise BindError(f"fd://{fd} {problem}")
    return _prepare(sock)


def _resolve_bind(addr: Address) -> tuple[int, Any]:
    """The family and socket address a TCP bind entry is bound to: its host's first
    resolution (``Listener.serves`` asks the same, to know a socket already bound)."""
    infos = socket.getaddrinfo(
        addr.host or None, addr.port, socket.AF_UNSPEC, socket.SOCK_STREAM, 0, socket.AI_PASSIVE
    )
    family, _, _, _, sockaddr = infos[0]
    return family, sockaddr


def _bind_tcp(addr: Address, backlog: int, reuse_port: bool) -> socket.socket:
    family, sockaddr = _resolve_bind(addr)
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port and hasattr(socket, "SO_REUSEPORT"):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(sockaddr)
        sock.listen(backlog)
    except BaseException:
        sock.close()
        raise
    return _prepare(sock)


def _unix_path_in_use(path: str) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1.0)
        probe.connect(path)
    except OSError:
        return False
    else:
        return True
    finally:
        probe.close()


def _bind_unix(
    addr: Address, backlog: int, umask: int | None, owner: tuple[int | None, int | None]
) -> socket.socket:
    path = addr.path
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        pass
    else:
        if not stat.S_ISSOCK(st.st_mode):
            raise BindError(f"{path!r} exists and is not a socket; refusing to remove it")
        if _unix_path_in_use(path):
            raise OSError(errno.EADDRINUSE, "Address already in use")
        os.unlink(path)  # stale: left by a master that died without cleaning up
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(umask) if umask is not None else None
    try:
        sock.bind(path)
        sock.listen(backlog)
        uid, gid = owner
        if uid is not None or gid is not None:
            # The workers' user and group own it, as under gunicorn: with --umask 007 and
            # --group www-data, a proxy in that group can connect, root-owned it cannot.
            os.chown(path, -1 if uid is None else uid, -1 if gid is None else gid)
    except BaseException:
        sock.close()
        raise
    finally:
        if old_umask is not None:
            os.umask(old_umask)
    return _prepare(sock)


def _describe(addr: Address) -> str:
    # gunicorn prints the tuple for TCP and the path for unix; users grep for it.
    return repr(addr.sockaddr()) if addr.kind == "tcp" else addr.path


def bind_one(
    addr: Address,
    *,
    backlog: int = 2048,
    reuse_port: bool = False,
    umask: int | None = None,
    owner: tuple[int | None, int | None] = (None, None),
    attempts: int = 5,
    retry_delay: float = 1.0,
    warn: Callable[[str], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> Listener:
    """Create one listener, retrying an address in use ``attempts`` times in all; ``warn``
    hears once that it waits (the failure itself is the ``BindError``'s one line).

    Runs in: master, before any worker is forked (the retry sleeps block, which is fine
    then and only then).
    """
    if addr.kind == "fd":
        # The address stays "fd": another process (a supervisor) owns this socket too.
        return Listener(_socket_from_fd(addr.fd), addr)
    for attempt in range(1, max(1, attempts) + 1):
        try:
            if addr.kind == "unix":
                return Listener(_bind_unix(addr, backlog, umask, owner), addr)
            return Listener(_bind_tcp(addr, backlog, reuse_port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                if attempt >= attempts:
                    raise BindError(f"Connection in use: {_describe(addr)}") from None
                if warn is not None and attempt == 1:
                    wait = retry_delay * (attempts - 1)
                    warn(f"{_describe(addr)} is taken; trying again for up to {wait:g} s")
                sleep(retry_delay)
                continue
            if exc.errno == errno.EADDRNOTAVAIL:
                # gunicorn's words, and the reason, which they leave the operator to guess.
                raise BindError(
                    f"Invalid address: {_describe(addr)} ({exc.strerror}: "
                    "no interface of this machine has that address)"
                ) from None
            if isinstance(exc, socket.gaierror):
                raise BindError(f"Invalid address: {_describe(addr)} ({exc.strerror})") from None
            reason = exc.strerror or str(exc)
            raise BindError(f"Can't connect to {_describe(addr)}: {reason}") from None
    raise BindError(f"Can't connect to {_describe(addr)}")  # pragma: no cover


def inherited_fds(environ: Mapping[str, str], pid: int | None = None) -> list[int] | None:
    """File descriptors of listening sockets handed to this process, or None.

    ``FORKHORN_FD`` (a re-executed master) wins over systemd's ``LISTEN_FDS``, which counts
    only when ``LISTEN_PID`` names this process (sd_listen_fds(3)).
    """
    raw = environ.get(FD_ENV, "").strip()
    if raw:
        try:
            return [int(x) for x in raw.split(",") if x.strip()]
        except ValueError:
            raise BindError(f"{FD_ENV}={raw!r}: expected comma-separated fds") from None
    listen_pid = environ.get("LISTEN_PID", "")
    listen_fds = environ.get("LISTEN_FDS", "")
    if listen_pid and listen_fds:
        try:
            if int(listen_pid) != (os.getpid() if pid is None else pid):
                return None
            count = int(listen_fds)
        except ValueError:
            return None
        return list(range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + count))
    return None


def same_address_twice(binds: Sequence[str]) -> tuple[str, str] | None:
    """Two entries of ``binds`` that bind the same socket address (as ``_resolve_bind``
    resolves them: ``localhost:P`` is ``127.0.0.1:P`` where that comes first; a unix
    path however written; one ``fd://N``), or None. A port 0 is a new port each time;
    unresolvable hosts are left to the bind's error."""
    seen: dict[tuple[Any, ...], str] = {}
    for bind in binds:
        try:
            addr = parse_address(bind)
        except BindError:
            continue
        key: tuple[Any, ...]
        if addr.kind == "unix":
            key = ("unix", os.path.abspath(addr.path))
        elif addr.kind == "fd":
            key = ("fd", addr.fd)
        elif addr.port:
            try:
                family, sockaddr = _resolve_bind(addr)
            except OSError:
                continue
            key = (family, sockaddr[0], addr.port)
        else:
            continue
        if key in seen:
            return seen[key], bind
        seen[key] = bind
    return None


def refuse_same_address_twice(binds: Sequence[str]) -> None:
    """``ConfigError`` when one address is in ``binds`` twice, however written
    (``same_address_twice``): its second bind would fail "in use" on our own socket, or,
    with ``reuse_port``, bind the address twice. The start, a HUP and --check-config ask."""
    twice = same_address_twice(binds)
    if twice is not None:
        raise ConfigError(f"bind = {twice[1]!r} is the same address as {twice[0]!r}: listed twice")


def create_listeners(
    binds: Sequence[str],
    *,
    backlog: int = 2048,
    reuse_port: bool = False,
    umask: int | None = None,
    owner: tuple[int | None, int | None] = (None, None),
    environ: Mapping[str, str] | None = None,
    attempts: int = 5,
    retry_delay: float = 1.0,
    warn: Callable[[str], None] | None = None,
) -> list[Listener]:
    """Make every listener: inherited ones when the environment hands some over, else one
    per bind.  On failure, the listeners already made are closed before the error rises.

    Runs in: master, at start-up and on HUP when ``bind`` changed.
    """
    fds = inherited_fds(environ if environ is not None else os.environ)
    if fds is not None:
        return [Listener(_socket_from_fd(fd)) for fd in fds]
    refuse_same_address_twice(binds)  # (else a retry for seconds, then "in use" on ourselves)
    made: list[Listener] = []
    try:
        for bind in binds:
            made.append(
                bind_one(
                    parse_address(bind),
                    backlog=backlog,
                    reuse_port=reuse_port,
                    umask=umask,
                    owner=owner,
                    attempts=attempts,
                    retry_delay=retry_delay,
                    warn=warn,
                )
            )
    except BaseException:
        for listener in made:
            listener.close(unlink=True)
        raise
    return made


def export_fds(listeners: Sequence[Listener]) -> str:
    """Mark the listeners inheritable across exec and return the ``FORKHORN_FD`` value.

    Runs in: the forked child of the master that is about to exec the new binary (USR2).
    """
    for listener in listeners:
        listener.sock.set_inheritable(True)
    return ",".join(str(listener.fileno()) for listener in listeners)
