"""A minimal pre-fork server on a plain ``select.epoll`` loop: ``mini_uvloop.py``'s
protocol without uvloop.

    python bench/mini_epoll.py MODULE:ATTR PORT WORKERS

The same yardstick as ``mini_uvloop.py`` (no validation, no limits, no supervision; a
head split at CRLFs, the app called inline), on the simplest loop Python has: one
``epoll.poll()`` per turn, one ``recv`` and one ``send`` per ready connection. Beside
``mini_uvloop.py`` under the classic load it says whether the event loop is what nine
workers pay for (twelfth session: uvloop / epoll 1.06x, so it is not). Not a server to
run: it assumes each response fits the socket buffer. Use it through ``rotate.py``:

    --spec "miniep={python} $PWD/bench/mini_epoll.py {app} {port} {workers}"
"""

from __future__ import annotations

import gc
import importlib
import select
import socket
import sys

import prefork  # bench/prefork.py, beside this script
from mini_uvloop import MiniProtocol  # its respond(): the same work per request


def serve(target: str, listener: socket.socket) -> None:
    module, _, attr = target.partition(":")
    # staticmethod: a plain function app must not become a bound method of the protocol.
    MiniProtocol.app = staticmethod(getattr(importlib.import_module(module), attr or "app"))
    MiniProtocol.port = listener.getsockname()[1]
    protocol = MiniProtocol()
    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, 10, 10)  # as the fast worker does
    poller = select.epoll()
    listen_fd = listener.fileno()
    poller.register(listen_fd, select.EPOLLIN)
    conns: dict[int, socket.socket] = {}
    buffers: dict[int, bytes] = {}
    while True:
        for fd, _ in poller.poll():
            if fd == listen_fd:
                try:
                    conn, _ = listener.accept()
                except BlockingIOError:
                    continue
                conn.setblocking(False)
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                conns[conn.fileno()] = conn
                buffers[conn.fileno()] = b""
                poller.register(conn.fileno(), select.EPOLLIN)
                continue
            conn = conns[fd]
            try:
                data = conn.recv(65536)
            except BlockingIOError:
                continue
            except ConnectionError:
                data = b""
            if not data:
                poller.unregister(fd)
                conn.close()
                del conns[fd], buffers[fd]
                continue
            buffer = buffers[fd] + data
            out = []
            while b"\r\n\r\n" in buffer:
                head, _, buffer = buffer.partition(b"\r\n\r\n")
                out.append(protocol.respond(head))
            buffers[fd] = buffer
            if out:
                try:
                    conn.send(b"".join(out))
                except OSError:
                    pass


if __name__ == "__main__":
    sys.exit(prefork.main(serve))
