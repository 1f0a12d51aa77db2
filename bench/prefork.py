"""The pre-fork launcher of the bench's stand-in servers (``lazy_bjoern.py``,
``mini_uvloop.py``, ``mini_epoll.py``): fork the children, forward TERM and INT to them,
wait for them all; the listening socket they share, and the command line of those that
take one (``MODULE:ATTR PORT WORKERS``)."""

from __future__ import annotations

import os
import signal
import socket
import sys
from collections.abc import Callable
from types import FrameType


def run(workers: int, serve: Callable[[], None]) -> int:
    """Run ``serve()`` in ``workers`` children; a child that fails says why and exits 1."""
    children = []
    for _ in range(workers):
        pid = os.fork()
        if pid == 0:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            code = 0
            try:
                serve()
            except BaseException as exc:  # report, and let the parent see a failure
                print(f"worker {os.getpid()}: {exc!r}", file=sys.stderr)
                code = 1
            os._exit(code)
        children.append(pid)

    def stop(signum: int, frame: FrameType | None) -> None:
        for child in children:
            try:
                os.kill(child, signal.SIGTERM)
            except ProcessLookupError:
                pass

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for _ in children:
        try:
            os.wait()
        except ChildProcessError:
            break
    return 0


def listener(port: int) -> socket.socket:
    """A non-blocking listening socket on 127.0.0.1:``port``, shared by the children."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(2048)
    sock.setblocking(False)
    return sock


def main(serve: Callable[[str, socket.socket], None]) -> int:
    """``MODULE:ATTR PORT WORKERS`` from the command line: listen, then run ``serve(target,
    sock)`` in each child, from the working directory's imports."""
    target, port, workers = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    sys.path.insert(0, os.getcwd())
    sock = listener(port)
    return run(workers, lambda: serve(target, sock))
