"""The integration harness: a real forkhorn master on 127.0.0.1:0 and independent clients.

What it holds:
- ``ServerProcess``: starts ``python -m forkhorn --bind 127.0.0.1:0 ... APP``, reads its
  stderr and stdout in background threads (kept as lists of lines and written to files),
  takes the port from the ``Listening at:`` line, then waits for readiness by an HTTP
  handshake. ``stop()`` sends TERM, then KILL after a bounded wait, and checks that no
  worker process it ever saw survives.
- ``run_cli``: one run of the command that is expected to exit by itself (``--version``,
  ``--check-config``, a broken app).
- ``raw_request``/``RawConnection``/``parse_responses``: raw-socket clients and a small
  response parser that follows RFC 9112 §6.3 framing, so tests see exactly the bytes sent.
- ``run_load``/``run_wrk``: load generators that count failed requests (for the fault tests).
- ``WORKER_CLASSES`` and ``require_worker_class``.

Rules it keeps:
- Loopback only; never a fixed sleep to wait for the server: every wait polls a condition
  with a deadline (``time.monotonic()``) and fails with the server's log when it passes.
- It signals and kills only the pids it started or saw as children of its master (checked
  by pid *and* start time, so a recycled pid is never touched).
- Timings are never asserted: deadlines only bound how long a test may hang.
"""

from __future__ import annotations

import contextlib
import http.client
import importlib.util
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src"
APPS = Path(__file__).resolve().parent / "apps"

WORKER_CLASSES = ["sync", "gthread", "gevent", "eventlet", "fast"]

LISTENING_RE = re.compile(r"Listening at: http://127\.0\.0\.1:(\d+) \((\d+)\)")
BOOTING_RE = re.compile(r"Booting worker with pid: (\d+)")

# Bounds, not expectations: how long a wait may take before the test fails with the log.
START_TIMEOUT = 20.0
STOP_TIMEOUT = 15.0


def stream_body(chunks: int, size: int) -> bytes:
    """What ``apps/stream.py`` sends for ``?chunks=N&size=M``."""
    return b"".join(str(i % 10).encode() * size for i in range(chunks))


def require_worker_class(name: str) -> None:
    """Fail (never skip) when a built-in worker class is not importable yet."""
    if name == "sync" or "." in name or ":" in name:
        return
    if importlib.util.find_spec(f"forkhorn.workers.{name}") is None:
        pytest.fail(
            f"worker class {name!r}: module forkhorn.workers.{name} does not exist yet; "
            "the contract suite expects every worker class in WORKER_CLASSES",
            pytrace=False,
        )


def server_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a forkhorn run: the source tree and the test apps importable."""
    env = {
        key: value
        for key, value in os.environ.items()
        # Settings must come only from what a test passes.
        if key not in ("FORKHORN_CMD_ARGS", "GUNICORN_CMD_ARGS", "WEB_CONCURRENCY", "PORT")
    }
    paths = [str(APPS), str(SRC), str(ROOT)]
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env["PYTHONUNBUFFERED"] = "1"
    env.pop("PYTHONWARNINGS", None)
    if extra:
        env.update(extra)
    return env


def forkhorn_command(args: Sequence[str]) -> list[str]:
    return [sys.executable, "-m", "forkhorn", *args]


def run_cli(
    args: Sequence[str],
    *,
    cwd: Path | str = ROOT,
    env: dict[str, str] | None = None,
    timeout: float = 30.0,
) -> subprocess.CompletedProcess[str]:
    """Run forkhorn to completion (it must exit by itself within ``timeout``)."""
    proc = subprocess.Popen(
        forkhorn_command(args),
        cwd=cwd,
        env=server_env(env),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        out, err = proc.communicate()
        pytest.fail(
            f"forkhorn {' '.join(args)} did not exit within {timeout}s\nstdout:\n{out}\n"
            f"stderr:\n{err}",
            pytrace=False,
        )
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _kill_group(proc: subprocess.Popen[str]) -> None:
    # The process leads its own session (start_new_session), so its group holds only it
    # and the children it forked.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


# -- /proc helpers ---------------------------------------------------------------------------------


def _stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name, or None if it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The command name is in parentheses and may hold spaces or parentheses itself.
    return text[text.rindex(")") + 2 :].split()


def process_identity(pid: int) -> int | None:
    """The start time of ``pid`` (clock ticks since boot): with the pid, an identity."""
    fields = _stat_fields(pid)
    if fields is None:
        return None
    return int(fields[19])  # field 22 of stat; fields[0] is field 3 (state)


def is_alive(pid: int, start_time: int | None = None) -> bool:
    """Running (not a zombie) and, if given, still the same process."""
    fields = _stat_fields(pid)
    if fields is None or fields[0] in ("Z", "X", "x"):
        return False
    return start_time is None or int(fields[19]) == start_time


def children_of(pid: int) -> list[int]:
    """Live (non-zombie) child pids of ``pid``."""
    found: set[int] = set()
    task_dir = Path(f"/proc/{pid}/task")
    try:
        for task in task_dir.iterdir():
            try:
                found.update(int(p) for p in (task / "children").read_text().split())
            except (FileNotFoundError, ProcessLookupError):
                continue
    except FileNotFoundError:
        return []
    except OSError:
        found = set()
    if not found:
        # Kernels without CONFIG_PROC_CHILDREN: scan every process's parent pid.
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                fields = _stat_fields(int(entry.name))
                if fields is not None and int(fields[1]) == pid:
                    found.add(int(entry.name))
    return sorted(p for p in found if is_alive(p))


# -- the server process ----------------------------------------------------------------------------


class ServerError(AssertionError):
    """The server did not do what the harness waited for."""


class ServerProcess:
    """One forkhorn master started by a test (see the module docstring)."""

    def __init__(
        self,
        app: str,
        args: Sequence[str] = (),
        *,
        cwd: Path | str = ROOT,
        env: dict[str, str] | None = None,
        log_dir: Path | None = None,
        bind: bool = True,
        ready_path: str = "/",
    ) -> None:
        self.app = app
        self.args = list(args)
        self.cwd = Path(cwd)
        self.extra_env = dict(env or {})
        self.log_dir = log_dir
        self.bind = bind
        self.ready_path = ready_path
        self.lines: list[str] = []  # stderr: the error log
        self.out_lines: list[str] = []  # stdout: the access log with --access-logfile -
        self._cond = threading.Condition()
        self._readers: list[threading.Thread] = []
        self._port: int | None = None
        self._seen: dict[int, int] = {}  # worker pid -> start time
        self.proc: subprocess.Popen[bytes] | None = None
        self.returncode: int | None = None

    # -- start ------------------------------------------------------------------------

    @property
    def command(self) -> list[str]:
        bind = ["--bind", "127.0.0.1:0"] if self.bind else []
        return forkhorn_command([*bind, *self.args, self.app])

    def start(self, timeout: float = START_TIMEOUT, wait_ready: bool = True) -> ServerProcess:
        self.proc = subprocess.Popen(
            self.command,
            cwd=self.cwd,
            env=server_env(self.extra_env),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,  # a Ctrl-C in the terminal does not reach it
        )
        self._start_reader(self.proc.stderr, self.lines, "stderr")
        self._start_reader(self.proc.stdout, self.out_lines, "stdout")
        deadline = time.monotonic() + timeout
        match = self.wait_for_log(LISTENING_RE, timeout=timeout)
        self._port = int(match.group(1))
        if wait_ready:
            self.wait_ready(deadline - time.monotonic())
        return self

    def _start_reader(self, stream: object, sink: list[str], name: str) -> None:
        path = self.log_dir / f"forkhorn-{id(self)}.{name}.log" if self.log_dir else None

        def read() -> None:
            file = open(path, "w", encoding="utf-8") if path else None  # noqa: SIM115
            try:
                for raw in iter(stream.readline, b""):  # type: ignore[attr-defined]
                    line = raw.decode("utf-8", "replace").rstrip("\n")
                    if file:
                        file.write(line + "\n")
                        file.flush()
                    with self._cond:
                        sink.append(line)
                        booting = BOOTING_RE.search(line)
                        if booting:
                            self._remember_worker(int(booting.group(1)))
                        self._cond.notify_all()
            finally:
                if file:
                    file.close()
                with self._cond:
                    self._cond.notify_all()

        thread = threading.Thread(target=read, name=f"forkhorn-{name}", daemon=True)
        thread.start()
        self._readers.append(thread)

    def _remember_worker(self, pid: int) -> None:
        if pid not in self._seen:
            start = process_identity(pid)
            if start is not None:
                self._seen[pid] = start

    def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        """Handshake: wait until a request gets any HTTP response."""
        deadline = time.monotonic() + max(timeout, 0.5)
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            self._check_running("while waiting for readiness")
            try:
                data = raw_request(
                    self.port,
                    f"GET {self.ready_path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                    "Connection: close\r\n\r\n".encode(),
                    timeout=min(5.0, max(0.5, deadline - time.monotonic())),
                )
                if data.startswith(b"HTTP/1."):
                    return
                last_error = ServerError(f"unexpected answer {data[:80]!r}")
            except OSError as exc:
                last_error = exc
            with self._cond:
                self._cond.wait(0.05)  # a short poll interval, not a sleep that assumes
        raise ServerError(f"server not ready within {timeout}s: {last_error!r}\n{self.logs}")

    def _check_running(self, doing: str) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            self._join_readers()
            raise ServerError(
                f"forkhorn exited with code {self.proc.returncode} {doing}\n{self.logs}"
            )

    # -- what tests use -----------------------------------------------------------------

    @property
    def port(self) -> int:
        if self._port is None:
            raise ServerError("the server has no port yet")
        return self._port

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def url(self, path: str = "/") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    @property
    def logs(self) -> str:
        with self._cond:
            return "\n".join(self.lines)

    @property
    def stdout(self) -> str:
        with self._cond:
            return "\n".join(self.out_lines)

    def mark(self) -> int:
        """The current length of the error log, for ``wait_for_log(..., since=mark)``."""
        with self._cond:
            return len(self.lines)

    def worker_pids(self) -> list[int]:
        """Live worker processes (children of the master); remembered for ``stop()``."""
        pids = children_of(self.pid)
        with self._cond:
            for pid in pids:
                self._remember_worker(pid)
        return pids

    def wait_for_workers(
        self, count: int, timeout: float = 15.0, exclude: Iterable[int] = ()
    ) -> list[int]:
        """Wait until exactly ``count`` workers run, none of them in ``exclude``."""
        excluded = set(exclude)
        deadline = time.monotonic() + timeout
        pids: list[int] = []
        while time.monotonic() < deadline:
            self._check_running(f"while waiting for {count} workers")
            pids = self.worker_pids()
            if len(pids) == count and not excluded.intersection(pids):
                return pids
            with self._cond:
                self._cond.wait(0.05)
        raise ServerError(
            f"expected {count} workers (none of {sorted(excluded)}), have {pids}\n{self.logs}"
        )

    def wait_for_log(
        self,
        pattern: str | re.Pattern[str],
        timeout: float = 10.0,
        since: int = 0,
        stream: str = "stderr",
    ) -> re.Match[str]:
        """The first match of ``pattern`` in a log line at index ``since`` or later."""
        regex = re.compile(pattern) if isinstance(pattern, str) else pattern
        sink = self.lines if stream == "stderr" else self.out_lines
        deadline = time.monotonic() + timeout
        index = since
        with self._cond:
            while True:
                while index < len(sink):
                    match = regex.search(sink[index])
                    if match:
                        return match
                    index += 1
                remaining = deadline - time.monotonic()
                readers_done = all(not t.is_alive() for t in self._readers)
                if remaining <= 0 or (readers_done and self._readers):
                    break
                self._cond.wait(min(remaining, 0.2))
        raise ServerError(
            f"no log line matching {regex.pattern!r} within {timeout}s ({stream})\n"
            f"stderr:\n{self.logs}\nstdout:\n{self.stdout}"
        )

    def count_log(self, pattern: str, since: int = 0) -> int:
        regex = re.compile(pattern)
        with self._cond:
            return sum(1 for line in self.lines[since:] if regex.search(line))

    def wait_for_count(
        self, pattern: str, count: int, timeout: float = 10.0, since: int = 0
    ) -> int:
        """Wait until at least ``count`` lines from ``since`` match; how many match then.

        A line a worker wrote before its response may still be in the pipe when the client
        has the response: count only after waiting for it."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = sum(1 for line in self.lines[since:] if regex.search(line))
                remaining = deadline - time.monotonic()
                if found >= count or remaining <= 0:
                    return found
                self._cond.wait(min(remaining, 0.2))

    def signal(self, sig: int) -> None:
        self._check_running(f"before signal {sig}")
        os.kill(self.pid, sig)

    def wait_exit(self, timeout: float = STOP_TIMEOUT) -> int:
        """Wait for the master to exit by itself; its exit code."""
        assert self.proc is not None
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise ServerError(f"forkhorn did not exit within {timeout}s\n{self.logs}") from None
        self.returncode = code
        self._join_readers()
        return code

    def _join_readers(self) -> None:
        for thread in self._readers:
            thread.join(5.0)

    def stop(self, timeout: float = STOP_TIMEOUT) -> int | None:
        """TERM, wait up to ``timeout``, then KILL; assert no worker it saw survives."""
        if self.proc is None:
            return None
        with contextlib.suppress(ServerError):
            self.worker_pids()  # remember the current workers before they go
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5.0)
        self.returncode = self.proc.returncode
        self._join_readers()
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()
        survivors = self._reap_stragglers(deadline=time.monotonic() + 3.0)
        if survivors:
            raise ServerError(
                f"worker processes {survivors} outlived the master (killed now)\n{self.logs}"
            )
        return self.returncode

    def _reap_stragglers(self, deadline: float) -> list[int]:
        """Workers still running after the master exited; they are killed by pid."""
        with self._cond:
            seen = dict(self._seen)
        # Give orphans a moment to finish exiting on their own: a worker may still be in its
        # exit path when the master returns.
        alive = [pid for pid, start in seen.items() if is_alive(pid, start)]
        while alive and time.monotonic() < deadline:
            time.sleep(0.05)
            alive = [pid for pid in alive if is_alive(pid, seen[pid])]
        for pid in alive:
            if is_alive(pid, seen[pid]):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        return alive

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# -- raw sockets and a response parser -------------------------------------------------------------


def connect(port: int, timeout: float = 10.0) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    sock.settimeout(timeout)
    return sock


def read_until_close(sock: socket.socket, timeout: float = 10.0) -> bytes:
    """Everything until the peer closes. A reset counts as a close, after the data that
    arrived before it. Raises TimeoutError (with ``.partial``) if the peer keeps it open."""
    sock.settimeout(timeout)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    while True:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            data = sock.recv(65536)
        except ConnectionResetError:
            break
        except TimeoutError:
            error = TimeoutError(f"connection still open after {timeout}s")
            error.partial = b"".join(chunks)  # type: ignore[attr-defined]
            raise error from None
        if not data:
            break
        chunks.append(data)
    return b"".join(chunks)


def read_until_fin(sock: socket.socket, timeout: float = 10.0) -> bytes:
    """Everything until the peer's FIN; a reset fails the test (unlike
    ``read_until_close``): a reset can destroy an answer before the client reads it."""
    sock.settimeout(timeout)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except ConnectionResetError:
        pytest.fail(f"the connection was reset after {data[:60]!r}")
    return data


def raw_request(port: int, data: bytes, timeout: float = 10.0) -> bytes:
    """Send ``data`` on a new connection and return every byte until the server closes."""
    with connect(port, timeout) as sock:
        sock.sendall(data)
        return read_until_close(sock, timeout)


@dataclass
class Response:
    """One parsed HTTP/1.x response."""

    version: str
    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes = b""
    chunked: bool = False
    complete: bool = True  # False: the connection closed before the framing said it ends
    trailers: list[tuple[str, str]] = field(default_factory=list)

    def header(self, name: str) -> str | None:
        """The value of ``name`` (several joined with ', '), or None."""
        values = [v for k, v in self.headers if k == name.lower()]
        return ", ".join(values) if values else None

    def header_count(self, name: str) -> int:
        return sum(1 for k, _ in self.headers if k == name.lower())

    @property
    def closes(self) -> bool:
        return "close" in (self.header("connection") or "").lower()


class IncompleteResponse(ValueError):
    pass


def parse_response(data: bytes, method: str = "GET", eof: bool = True) -> tuple[Response, bytes]:
    """Parse one response from the front of ``data``; return it and the bytes after it.

    With ``eof`` the data is everything the connection carried, so a body without framing
    runs to the end and a short body is returned with ``complete=False``; without it, a
    response that is not all there raises ``IncompleteResponse``.
    """
    end = data.find(b"\r\n\r\n")
    if end < 0:
        raise IncompleteResponse(f"no complete head in {data[:200]!r}")
    head, rest = data[:end].decode("latin-1"), data[end + 4 :]
    status_line, *header_lines = head.split("\r\n")
    version, _, tail = status_line.partition(" ")
    code, _, reason = tail.partition(" ")
    if not version.startswith("HTTP/1.") or not code.isdigit():
        raise ValueError(f"bad status line {status_line!r}")
    headers = []
    for line in header_lines:
        name, sep, value = line.partition(":")
        if not sep or name != name.strip():
            raise ValueError(f"bad header line {line!r}")
        headers.append((name.lower(), value.strip(" \t")))
    resp = Response(version, int(code), reason, headers)
    # RFC 9112 §6.3: the body length.
    if method == "HEAD" or resp.status in (204, 304) or 100 <= resp.status < 200:
        return resp, rest
    te = (resp.header("transfer-encoding") or "").lower()
    if te:
        resp.chunked = te.split(",")[-1].strip() == "chunked"
        if resp.chunked:
            return _parse_chunked(resp, rest, eof)
    length = resp.header("content-length")
    if length is not None and not te:
        size = int(length)
        if len(rest) < size:
            if not eof:
                raise IncompleteResponse("body not all there")
            resp.body, resp.complete = rest, False
            return resp, b""
        resp.body = rest[:size]
        return resp, rest[size:]
    if not eof:
        raise IncompleteResponse("a close-delimited body needs the whole connection")
    resp.body = rest
    return resp, b""


def _parse_chunked(resp: Response, rest: bytes, eof: bool) -> tuple[Response, bytes]:
    body = bytearray()
    pos = 0
    while True:
        line_end = rest.find(b"\r\n", pos)
        if line_end < 0:
            break
        size_text = rest[pos:line_end].split(b";")[0].strip()
        size = int(size_text, 16)
        if size == 0:
            pos = line_end + 2
            # Trailer section, up to an empty line.
            while True:
                t_end = rest.find(b"\r\n", pos)
                if t_end < 0:
                    pos = -1
                    break
                line = rest[pos:t_end]
                pos = t_end + 2
                if not line:
                    resp.body = bytes(body)
                    return resp, rest[pos:]
                name, _, value = line.decode("latin-1").partition(":")
                resp.trailers.append((name.lower(), value.strip()))
            break
        chunk_start = line_end + 2
        if len(rest) < chunk_start + size + 2:
            body += rest[chunk_start : chunk_start + size]
            break
        body += rest[chunk_start : chunk_start + size]
        pos = chunk_start + size + 2
    if not eof:
        raise IncompleteResponse("chunked body not all there")
    resp.body, resp.complete = bytes(body), False
    return resp, b""


def parse_responses(data: bytes, methods: Sequence[str] = ()) -> list[Response]:
    """Every response in ``data`` (a whole connection's bytes), in order."""
    responses = []
    index = 0
    while data:
        method = methods[index] if index < len(methods) else "GET"
        resp, data = parse_response(data, method, eof=True)
        responses.append(resp)
        index += 1
    return responses


class RawConnection:
    """A raw socket that reads one response at a time (keep-alive, pipelining)."""

    def __init__(self, port: int, timeout: float = 10.0, sock: socket.socket | None = None):
        self.sock = sock if sock is not None else connect(port, timeout)
        self.timeout = timeout
        self.buffer = b""
        self.eof = False

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self, deadline: float) -> None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"no complete response; have {self.buffer[:300]!r}")
        self.sock.settimeout(remaining)
        try:
            # Large reads: read_response parses the whole buffer after each one, so an
            # 8 MB body in 64 KiB reads cost seconds of CPU on a loaded machine.
            data = self.sock.recv(1 << 20)
        except ConnectionResetError:
            data = b""
        except TimeoutError:
            raise TimeoutError(f"no complete response; have {self.buffer[:300]!r}") from None
        if not data:
            self.eof = True
        self.buffer += data

    def read_response(self, method: str = "GET") -> Response:
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                resp, self.buffer = parse_response(self.buffer, method, eof=self.eof)
                return resp
            except IncompleteResponse:
                if self.eof:
                    raise ConnectionError(
                        f"connection closed before a complete response: {self.buffer[:300]!r}"
                    ) from None
                self._fill(deadline)

    def read_until(self, marker: bytes) -> None:
        """Wait until ``marker`` has been received (it stays in the buffer)."""
        deadline = time.monotonic() + self.timeout
        while marker not in self.buffer:
            if self.eof:
                raise ConnectionError(f"closed before {marker!r}: {self.buffer[:300]!r}")
            self._fill(deadline)

    def read_head_line(self) -> bytes:
        """One line (for ``100 Continue`` and the empty line after it)."""
        deadline = time.monotonic() + self.timeout
        while b"\r\n\r\n" not in self.buffer and not self.eof:
            self._fill(deadline)
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            raise ConnectionError(f"closed before a head: {self.buffer!r}")
        head, self.buffer = self.buffer[: end + 4], self.buffer[end + 4 :]
        return head

    def read_until_close(self, timeout: float | None = None) -> bytes:
        data = self.buffer + read_until_close(self.sock, timeout or self.timeout)
        self.buffer = b""
        self.eof = True
        return data

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> RawConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def get(port: int, path: str = "/", timeout: float = 10.0, **headers: str) -> Response:
    """One request with http.client on a new connection (an independent client)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path, headers=headers)
        raw = conn.getresponse()
        body = raw.read()
        return Response(
            f"HTTP/{raw.version // 10}.{raw.version % 10}",
            raw.status,
            raw.reason,
            [(k.lower(), v) for k, v in raw.getheaders()],
            body,
        )
    finally:
        conn.close()


class InFlight:
    """One request on its own thread with http.client; ``result()`` waits for it."""

    def __init__(self, port: int, path: str, timeout: float = 30.0) -> None:
        self.response: Response | None = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(port, path, timeout), daemon=True)
        self._thread.start()

    def _run(self, port: int, path: str, timeout: float) -> None:
        try:
            self.response = get(port, path, timeout=timeout)
        except BaseException as exc:
            self.error = exc

    def result(self, timeout: float = 30.0) -> Response:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the request did not finish"
        if self.error is not None:
            raise self.error
        assert self.response is not None
        return self.response

    def outcome(self, timeout: float = 30.0) -> Response | BaseException:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the request did not finish"
        return self.response if self.response is not None else self.error  # type: ignore[return-value]


# -- load generators -------------------------------------------------------------------------------


@dataclass
class LoadResult:
    ok: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    @property
    def total(self) -> int:
        return self.ok + self.failed


def run_load(
    port: int,
    requests: int,
    threads: int = 4,
    path: str = "/",
    keepalive: bool = True,
    timeout: float = 10.0,
    stop: threading.Event | None = None,
    result: LoadResult | None = None,
    max_duration: float = 120.0,
) -> LoadResult:
    """Send ``requests`` GETs over ``threads`` threads with http.client; count failures.

    A request fails when it raises or its status is not 2xx; after a failure, or when the
    server closes, the thread opens a new connection (as a proxy or browser would). With
    ``stop`` set the threads stop early (the counts cover what was sent); ``result`` is
    filled as requests complete (``BackgroundLoad`` reads it live). ``max_duration`` bounds
    the whole run.
    """
    result = result if result is not None else LoadResult()
    lock = result.lock
    deadline = time.monotonic() + max_duration
    share, extra = divmod(requests, threads)

    def worker(count: int) -> None:
        conn: http.client.HTTPConnection | None = None
        for _ in range(count):
            if (stop is not None and stop.is_set()) or time.monotonic() > deadline:
                break
            try:
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
                headers = {} if keepalive else {"Connection": "close"}
                conn.request("GET", path, headers=headers)
                resp = conn.getresponse()
                resp.read()
                good = 200 <= resp.status < 300
                if resp.will_close or not keepalive:
                    conn.close()
                    conn = None
                with lock:
                    if good:
                        result.ok += 1
                    else:
                        result.failed += 1
                        result.errors.append(f"status {resp.status}")
            except (OSError, http.client.HTTPException) as exc:
                with lock:
                    result.failed += 1
                    result.errors.append(repr(exc))
                if conn is not None:
                    conn.close()
                conn = None
        if conn is not None:
            conn.close()

    pool = [
        threading.Thread(target=worker, args=(share + (1 if i < extra else 0),), daemon=True)
        for i in range(threads)
    ]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join(max(0.0, deadline - time.monotonic()) + timeout)
    return result


class BackgroundLoad:
    """``run_load`` in a thread until ``finish()``: load while a test does something.

    ``wait_for_requests(n)`` blocks until ``n`` more requests have completed, so a test can
    make sure load is flowing before (and after) it acts, without sleeping.
    """

    def __init__(
        self,
        port: int,
        threads: int = 4,
        path: str = "/",
        keepalive: bool = True,
        max_duration: float = 120.0,
    ) -> None:
        self.stop_event = threading.Event()
        self.result = LoadResult()
        self._thread = threading.Thread(
            target=run_load,
            kwargs={
                "port": port,
                "requests": 10**9,
                "threads": threads,
                "path": path,
                "keepalive": keepalive,
                "stop": self.stop_event,
                "result": self.result,
                "max_duration": max_duration,
            },
            daemon=True,
        )

    def start(self) -> BackgroundLoad:
        self._thread.start()
        return self

    def wait_for_requests(self, count: int, timeout: float = 20.0) -> None:
        with self.result.lock:
            target = self.result.total + count
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.result.lock:
                if self.result.total >= target:
                    return
            if not self._thread.is_alive():
                break
            time.sleep(0.01)  # poll interval
        raise ServerError(f"the load did not reach {count} more requests: {self.result}")

    def finish(self, timeout: float = 30.0) -> LoadResult:
        self.stop_event.set()
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the load generator did not stop"
        return self.result


@dataclass
class WrkResult:
    requests: int
    non_2xx: int
    socket_errors: dict[str, int]
    output: str

    @property
    def failed(self) -> int:
        return self.non_2xx + sum(self.socket_errors.values())


def require_wrk() -> str:
    path = shutil.which("wrk")
    if path is None:
        pytest.fail("wrk is not installed (.ci/run installs it)", pytrace=False)
    return path


def run_wrk(url: str, duration: float = 3.0, connections: int = 20, threads: int = 2) -> WrkResult:
    """Run wrk against ``url``; failed = non-2xx/3xx responses plus socket errors."""
    wrk = require_wrk()
    proc = subprocess.run(
        [wrk, f"-t{threads}", f"-c{connections}", f"-d{max(1, round(duration))}s", url],
        capture_output=True,
        text=True,
        timeout=duration + 30,
        check=False,
    )
    out = proc.stdout + proc.stderr
    total = re.search(r"(\d+) requests in", out)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = {
        name: int(value) for name, value in re.findall(r"(connect|read|write|timeout) (\d+)", out)
    }
    if proc.returncode != 0 or total is None:
        raise ServerError(f"wrk failed ({proc.returncode}):\n{out}")
    return WrkResult(int(total.group(1)), int(non2xx.group(1)) if non2xx else 0, errors, out)


@contextlib.contextmanager
def server_pool(
    log_dir: Path, args_for: Callable[[str], list[str]], app: str = "routes:app"
) -> Iterator[Callable[[str], ServerProcess]]:
    """One running server per worker class, started on first use and reused by every test
    of a module (restarted if it died); all stopped, and their problems reported, at the
    end."""
    servers: dict[str, ServerProcess] = {}

    def server_for(worker_class: str) -> ServerProcess:
        server = servers.get(worker_class)
        if server is None or server.proc is None or server.proc.poll() is not None:
            if server is not None:
                server.stop()
            server = ServerProcess(
                app, [*args_for(worker_class), "--workers", "2"], cwd=ROOT, log_dir=log_dir
            )
            servers[worker_class] = server
            server.start()
        return server

    yield server_for
    problems = []
    for server in servers.values():
        try:
            server.stop()
        except AssertionError as exc:
            problems.append(str(exc))
    if problems:
        pytest.fail("\n\n".join(problems), pytrace=False)
