"""A load generator for the fault tests: K client threads, keep-alive, every failure kept.

What it holds:
- ``Load``: ``threads`` threads, each with one ``http.client`` connection that it reuses
  until the server announces a close (``Connection: close``) or the connection fails. It
  runs until ``finish()`` (or ``max_requests``/``max_duration``, which only bound it).
- ``Failure``: one failed request with its kind (``refused``, ``reset``, ``disconnected``,
  ``timeout``, ``status``, ``other``), the pid of the worker that held the connection (the
  app under test answers its pid), and when it happened (monotonic).
- ``ConnectionRecord``: what each connection carried (pids that answered on it, whether
  its last response announced the close, how it ended), so a test can check that a
  retiring worker said ``Connection: close`` on every keep-alive connection it held.
- ``run_wrk_load``: wrk as a second, independent client when it is installed.

Rules kept:
- A request is never retried: a failure is counted, the connection is dropped and the
  next request opens a new one (as a proxy that does not retry would).
- ``lost()``: the failures the server is answerable for. A graceful stop may close a
  keep-alive connection once it has been idle for the drain window (``DRAIN_IDLE``: a
  server must close idle connections some time), and a client that reuses it only after
  that fails through no fault of the server: a stalled test process, or a host that
  paused the VM. Such a client sent its request at least ``DRAIN_IDLE`` after the one
  before on that connection, since the server's last keep-alive response went out between
  the two sends and before the stop. Each failure keeps that gap (``gap``), so those are
  told apart, not guessed; every other failure is a loss.
- ``held_by(pid)``: the connections that a worker could be holding right now (the ones it
  answered last, plus open connections that no worker has answered yet): the upper bound
  on what a ``kill -9`` of that worker may cost.
- Nothing here asserts a timing; ``latency`` numbers are for the report only.
"""

from __future__ import annotations

import http.client
import shutil
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field

# The drain window every worker class promises idle keep-alive connections at a graceful
# stop (forkhorn.workers.base.DRAIN_IDLE). Written out, not imported: a server that
# shrank its window must fail these tests, not move their bar with it.
DRAIN_IDLE = 1.0

# Failure kinds of a request sent on a connection the server had closed.
_CLOSED = ("reset", "disconnected")

# Outcome of a connection when it ended.
ANNOUNCED = "announced"  # the server's last response on it said Connection: close
FAILED = "failed"  # a request on it failed
CLIENT = "client"  # the load stopped while it was open


@dataclass
class Failure:
    kind: str
    detail: str
    at: float
    pid: int | None  # the worker that answered on this connection last, if any
    reused: bool  # the connection had carried a response before
    gap: float = 0.0  # on a reused connection: seconds since the previous request's send


@dataclass
class ConnectionRecord:
    pids: list[int] = field(default_factory=list)
    responses: int = 0
    ended: str = ""


@dataclass
class _Client:
    """One thread's current connection, read by ``held_by`` from the test thread."""

    pid: int | None = None
    open: bool = False


def classify(exc: BaseException) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "refused"
    if isinstance(exc, (ConnectionResetError, BrokenPipeError, ConnectionAbortedError)):
        return "reset"
    if isinstance(exc, http.client.RemoteDisconnected):
        return "disconnected"
    if isinstance(exc, (TimeoutError, socket.timeout)):
        return "timeout"
    return "other"


class Load:
    """Keep-alive GETs from ``threads`` threads until ``finish()``; see the module docstring."""

    def __init__(
        self,
        port: int,
        threads: int = 4,
        path: str = "/",
        timeout: float = 10.0,
        max_requests: int = 100_000,
        max_duration: float = 60.0,
    ) -> None:
        self.port = port
        self.path = path
        self.timeout = timeout
        self.max_requests = max_requests
        self.max_duration = max_duration
        self.ok = 0
        self.failures: list[Failure] = []
        self.connections: list[ConnectionRecord] = []
        self.latencies: list[float] = []
        self.lock = threading.Lock()
        self.changed = threading.Condition(self.lock)
        self._stop = threading.Event()
        self._clients = [_Client() for _ in range(threads)]
        self._threads = [
            threading.Thread(target=self._run, args=(c,), daemon=True, name=f"load-{i}")
            for i, c in enumerate(self._clients)
        ]
        self._deadline = 0.0

    # -- running -----------------------------------------------------------------------
    def start(self) -> Load:
        self._deadline = time.monotonic() + self.max_duration
        for thread in self._threads:
            thread.start()
        return self

    def __enter__(self) -> Load:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.finish()

    @property
    def total(self) -> int:
        return self.ok + len(self.failures)

    def _more(self) -> bool:
        return (
            not self._stop.is_set()
            and time.monotonic() < self._deadline
            and self.total < self.max_requests
        )

    def _run(self, client: _Client) -> None:
        conn: http.client.HTTPConnection | None = None
        record = ConnectionRecord()
        last_sent = 0.0  # when the connection's previous request was sent
        while self._more():
            if conn is None:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
                record = ConnectionRecord()
                with self.lock:
                    self.connections.append(record)
                    client.pid, client.open = None, True
            started = time.monotonic()
            try:
                conn.request("GET", self.path)
                resp = conn.getresponse()
                body = resp.read()
            except (OSError, http.client.HTTPException) as exc:
                gap = started - last_sent if record.responses else 0.0
                self._failed(client, record, classify(exc), repr(exc), gap)
                conn.close()
                conn = None
                continue
            last_sent = started
            pid = _pid_of(body)
            with self.changed:
                self.latencies.append(time.monotonic() - started)
                record.responses += 1
                if pid is not None:
                    record.pids.append(pid)
                    client.pid = pid
                if 200 <= resp.status < 300:
                    self.ok += 1
                else:
                    self.failures.append(
                        Failure("status", str(resp.status), time.monotonic(), pid, True)
                    )
                if resp.will_close:
                    record.ended = ANNOUNCED
                    client.pid, client.open = None, False
                self.changed.notify_all()
            if resp.will_close:
                conn.close()
                conn = None
        if conn is not None:
            conn.close()
            with self.lock:
                record.ended = record.ended or CLIENT
                client.open = False

    def _failed(
        self, client: _Client, record: ConnectionRecord, kind: str, detail: str, gap: float
    ) -> None:
        with self.changed:
            self.failures.append(
                Failure(kind, detail, time.monotonic(), client.pid, record.responses > 0, gap)
            )
            record.ended = FAILED
            client.pid, client.open = None, False
            self.changed.notify_all()

    def wait_for(self, count: int, timeout: float = 20.0) -> None:
        """Block until ``count`` more requests have completed (ok or failed)."""
        deadline = time.monotonic() + timeout
        with self.changed:
            target = self.total + count
            while self.total < target:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not any(t.is_alive() for t in self._threads):
                    raise AssertionError(
                        f"the load did not reach {count} more requests: {self.summary()}"
                    )
                self.changed.wait(min(remaining, 0.2))

    def held_by(self, pid: int) -> int:
        """Open connections that ``pid`` answered last or that nobody has answered yet."""
        with self.lock:
            return sum(1 for c in self._clients if c.open and c.pid in (pid, None))

    def pids(self) -> set[int]:
        with self.lock:
            return {pid for record in self.connections for pid in record.pids}

    def finish(self, timeout: float | None = None) -> Load:
        self._stop.set()
        for thread in self._threads:
            thread.join(self.timeout + 5 if timeout is None else timeout)
        assert not any(t.is_alive() for t in self._threads), "a load thread did not stop"
        return self

    # -- report ------------------------------------------------------------------------
    def lost(self, grace: float = DRAIN_IDLE) -> list[Failure]:
        """Failures not explained by the client reusing its connection ``grace`` or more
        after its previous request (see the module docstring). Only a closed connection
        (reset, or closed before the response) is explained so; a bad status or a timeout
        always counts."""
        return [f for f in self.failures if not (f.kind in _CLOSED and f.gap >= grace)]

    def failure_kinds(self) -> dict[str, int]:
        kinds: dict[str, int] = {}
        for failure in self.failures:
            kinds[failure.kind] = kinds.get(failure.kind, 0) + 1
        return kinds

    def summary(self) -> str:
        lat = sorted(self.latencies)
        p99 = f"{lat[int(len(lat) * 0.99)] * 1000:.1f}ms" if lat else "-"
        slow = len(self.failures) - len(self.lost())
        return (
            f"{len(self.failures)} failed / {self.total} ({self.failure_kinds()}; "
            f"{slow} sent >= {DRAIN_IDLE}s after the connection's previous request), "
            f"{len(self.connections)} connections, p99 {p99}; first failures: "
            f"{[(f.kind, f.detail, f.pid, round(f.gap, 3)) for f in self.failures[:5]]}"
        )


def _pid_of(body: bytes) -> int | None:
    """The app under test answers ``<pid>`` or ``<word> <pid>``."""
    last = body.split()[-1:] if body else []
    return int(last[0]) if last and last[0].isdigit() else None


@dataclass
class WrkRun:
    requests: int
    failed: int
    output: str


def run_wrk_load(url: str, seconds: int = 2, connections: int = 8) -> WrkRun | None:
    """One wrk run against ``url`` (None when wrk is not installed): an independent client."""
    import re

    wrk = shutil.which("wrk")
    if wrk is None:
        return None
    proc = subprocess.run(
        [wrk, "-t2", f"-c{connections}", f"-d{seconds}s", url],
        capture_output=True,
        text=True,
        timeout=seconds + 30,
        check=False,
    )
    out = proc.stdout + proc.stderr
    total = re.search(r"(\d+) requests in", out)
    if total is None:
        raise AssertionError(f"wrk failed ({proc.returncode}):\n{out}")
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = sum(int(v) for v in re.findall(r"(?:connect|read|write|timeout) (\d+)", out))
    return WrkRun(int(total.group(1)), (int(non2xx.group(1)) if non2xx else 0) + errors, out)
