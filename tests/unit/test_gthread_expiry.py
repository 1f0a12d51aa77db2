"""The gthread poller's keep-alive expiry: a request that arrived after the last poll
is read and served, never reset by closing the connection with it unread.

A real ThreadWorker, built as the arbiter builds it, with the poller state its run()
would set up; the connection is a real socket pair. Nothing is forked or run.
"""

from __future__ import annotations

import os
import queue
import selectors
import socket
import threading
import time
from collections import deque

from forkhorn.arbiter.scoreboard import Scoreboard
from forkhorn.config import load_config
from forkhorn.http import ServerConnection
from forkhorn.logs import Logger
from forkhorn.workers.gthread import ThreadWorker, _Client


def _poller() -> ThreadWorker:
    cfg = load_config(["examples.hello:app"], {})
    worker = ThreadWorker(
        1, os.getppid(), [], "examples.hello:app", 30, cfg, Logger(cfg),
        Scoreboard(1).allocate(),
    )  # fmt: skip
    # What run() sets up before serving (the parts _expire and its callees use).
    worker._head_timeout = 5.0
    worker._idle_timeout = 2.0
    worker._lock = threading.Lock()
    worker._busy = set()
    worker._held = 0
    worker._heap = []
    worker._seq = 0
    worker._returned = deque()
    worker._jobs = queue.SimpleQueue()
    worker.selector = selectors.DefaultSelector()
    return worker


def _idle_client(worker: ThreadWorker) -> tuple[_Client, socket.socket]:
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    client = _Client(ours, ("127.0.0.1", "50000"), ServerConnection())
    worker._held += 1
    worker._watch(client, time.monotonic() - 1.0)  # its keep-alive deadline has passed
    return client, theirs


def test_idle_connection_past_its_deadline_is_closed() -> None:
    worker = _poller()
    client, theirs = _idle_client(worker)
    with theirs:
        worker._expire(time.monotonic())
        assert client.sock.fileno() == -1  # closed
        assert worker._held == 0
        assert theirs.recv(1) == b""  # a clean close: nothing was sent, nothing reset


def test_request_that_arrived_after_the_poll_is_served_not_reset() -> None:
    worker = _poller()
    client, theirs = _idle_client(worker)
    with theirs:
        theirs.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")  # in the kernel, unread
        worker._expire(time.monotonic())
        assert client.sock.fileno() != -1, "closed with a request unread (a reset)"
        assert worker._jobs.get_nowait() is client  # handed to the pool
        assert client.request is not None and client.request.target == b"/"
    client.sock.close()


def test_peer_that_closed_after_the_poll_is_dropped() -> None:
    worker = _poller()
    client, theirs = _idle_client(worker)
    theirs.close()
    worker._expire(time.monotonic())
    assert client.sock.fileno() == -1
    assert worker._jobs.empty()
