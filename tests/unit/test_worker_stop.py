"""A worker's part in a graceful stop: drain the accept queue, then (only then) shut the
shared socket when the master asked the kernel to refuse new connections.

Real sockets on loopback; the worker is a real SyncWorker built as the arbiter builds it,
without forking or running it.
"""

from __future__ import annotations

import os
import socket
import sys

import pytest

from forkhorn.arbiter.listeners import Listener, bind_one, parse_address
from forkhorn.arbiter.scoreboard import Scoreboard
from forkhorn.config import load_config
from forkhorn.logs import Logger
from forkhorn.workers.sync import SyncWorker

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux BPF filter")


def _worker(listener: Listener) -> SyncWorker:
    cfg = load_config(["examples.hello:app"], {})
    return SyncWorker(
        1, os.getppid(), [listener], "examples.hello:app", 30, cfg, Logger(cfg),
        Scoreboard(1).allocate(),
    )  # fmt: skip


def test_a_worker_that_drained_the_queue_shuts_the_refusing_socket() -> None:
    listener = bind_one(parse_address("127.0.0.1:0"), backlog=16)
    port = int(listener.getsockname()[1])
    worker = _worker(listener)
    queued = socket.create_connection(("127.0.0.1", port), timeout=5)
    try:
        listener.refuse_new()  # what the master does on TERM
        drained = worker.drain_queued()
        assert len(drained) == 1  # the queued connection is taken, to be served
        worker.refuse_if_stopping()
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=5)
    finally:
        for sock, _ in drained:
            sock.close()
        queued.close()
        listener.close()


def test_a_worker_that_never_drained_leaves_the_socket_to_its_siblings() -> None:
    """Stopped before it ever accepted (still loading the app): shutting the socket would
    reset connections the other workers are about to drain and serve."""
    listener = bind_one(parse_address("127.0.0.1:0"), backlog=16)
    port = int(listener.getsockname()[1])
    sibling = socket.socket(fileno=os.dup(listener.fileno()))  # another worker's copy
    worker = _worker(listener)
    queued = socket.create_connection(("127.0.0.1", port), timeout=5)
    try:
        listener.refuse_new()
        worker.refuse_if_stopping()
        worker.close_listeners()
        sibling.setblocking(False)
        conn, _ = sibling.accept()  # still queued, still there for the sibling
        conn.close()
    finally:
        queued.close()
        sibling.close()
        listener.close()
