"""The gthread poller: a request that arrived after the last poll is read and served,
never reset by closing the connection with it unread; and a stop signal's drain of the
accept queue leaves the poller's state to the loop.

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

from forkhorn.arbiter.listeners import Listener, bind_one, parse_address
from forkhorn.arbiter.scoreboard import Scoreboard
from forkhorn.config import load_config
from forkhorn.http import ServerConnection
from forkhorn.logs import Logger
from forkhorn.workers.gthread import STALE_SLACK, ThreadWorker, _Client


def _poller(listeners: list[Listener] | None = None) -> ThreadWorker:
    cfg = load_config(["examples.hello:app"], {})
    worker = ThreadWorker(
        1, os.getppid(), listeners or [], "examples.hello:app", 30, cfg, Logger(cfg),
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
    worker._drained = []
    worker._drain_until = float("inf")
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


def test_stop_signal_only_takes_the_queue_and_the_loop_adopts_it() -> None:
    """The TERM handler runs between any two bytecodes of the loop: if it adopted the
    drained connections itself, its update of the held count or the deadline heap could
    interleave with the loop's own and be lost (the wind-down then ends early and drops
    connections that were about to be served). It only takes them; the loop adopts."""
    listener = bind_one(parse_address("127.0.0.1:0"), backlog=16)
    port = int(listener.getsockname()[1])
    worker = _poller([listener])
    queued = socket.create_connection(("127.0.0.1", port), timeout=5)
    try:
        assert worker.drain_queued() == []  # the master serves on: left to the others
        assert listener.refuse_new()  # what the master does as it stops
        worker.unregister_listeners()  # what the stop handler calls
        assert len(worker._drained) == 1
        assert worker._held == 0 and worker._heap == []  # the poller's state untouched
        worker._drain_until = time.monotonic() + 1.0  # the wind-down's window
        worker._adopt_drained()
        assert worker._drained == [] and worker._held == 1
        ((deadline, _, client),) = worker._heap
        assert deadline <= worker._drain_until  # bounded by the drain window
        client.sock.close()
    finally:
        queued.close()
        listener.close()


def test_stale_deadline_entries_do_not_pin_closed_connections() -> None:
    # Connections that were dispatched or closed leave their entry in the deadline heap;
    # those entries must be swept, not kept (with the connection) until header_timeout.
    worker = _poller()
    for _ in range(1000):
        ours, theirs = socket.socketpair()
        ours.setblocking(False)
        client = _Client(ours, ("127.0.0.1", "50000"), ServerConnection())
        worker._held += 1
        worker._watch(client, time.monotonic() + 30.0)
        worker._drop(client)  # closed long before its deadline
        theirs.close()
    live, theirs = _idle_client(worker)
    assert len(worker._heap) <= 2 * worker._held + 64 + 1
    assert any(entry[2] is live for entry in worker._heap)
    worker._drop(live)
    theirs.close()
    worker.selector.close()


def test_the_stale_entry_sweep_keeps_the_deadline_it_was_given() -> None:
    """A connection watched when the heap is full of stale entries (the sweep runs in that
    very call) keeps its own deadline: swept away with them, it was held for ever."""
    worker = _poller()
    stale = []
    # Dispatched connections leave their entries behind: enough that the next watch,
    # holding one connection, finds more than 2 * 1 + STALE_SLACK entries.
    for _ in range(STALE_SLACK + 2):
        client, theirs = _idle_client(worker)
        worker._unwatch(client)
        worker._held -= 1
        stale.append((client, theirs))
    client, theirs = _idle_client(worker)  # this call sweeps
    try:
        assert [entry[2] for entry in worker._heap] == [client]
        with theirs:
            worker._expire(time.monotonic())
            assert client.sock.fileno() == -1  # its deadline passed: closed
    finally:
        for old, peer in stale:
            old.sock.close()
            peer.close()
