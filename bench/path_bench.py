"""The fast worker's request path without any I/O: microseconds of Python per request.

A real ``FastWorker`` and ``HttpProtocol`` are built as in a worker process, the protocol
is given a transport that only collects what is written, and ``data_received`` is called
in a loop with the request ``wrk`` sends. What is left is exactly the Python the server
runs per request (parse, environ, app, response, bookkeeping), with no syscall, no event
loop and no loopback TCP: the part of a pinned hello run that forkhorn's code controls.
Use it to measure a change to the hot path in isolation (the machine's noise is much
smaller here than under wrk), and ``--profile`` to see where the time goes.

    python bench/path_bench.py                      # examples.hello:app
    python bench/path_bench.py --app todo:app --path /todo --sys-path ../shared/bench/apps
    python bench/path_bench.py --profile 20         # cProfile, top 20 by own time
    python bench/path_bench.py --evict 4096 -n 3000 # 4 MiB touched between requests
    python bench/path_bench.py --opcodes 25         # bytecodes per request, by function

Numbers are best-of-N means; compare two builds in runs minutes apart on a quiet host.
``--opcodes`` counts the bytecodes and Python calls one request executes (a trace hook,
so exact and free of noise, though not a time): a change to the hot path should lower it.
"""

from __future__ import annotations

import argparse
import collections
import cProfile
import os
import pstats
import socket
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT)]

from forkhorn.arbiter.listeners import Listener  # noqa: E402
from forkhorn.arbiter.scoreboard import Scoreboard  # noqa: E402
from forkhorn.config import load_config  # noqa: E402
from forkhorn.logs import Logger  # noqa: E402
from forkhorn.workers.fast import FastWorker, HttpProtocol  # noqa: E402


class NullTransport:
    """Just enough of an asyncio transport for the protocol's request path."""

    def __init__(self) -> None:
        self.written = 0
        self.last = b""

    def write(self, data: bytes) -> None:
        self.written += 1
        self.last = data

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 50000) if name == "peername" else default

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


class TurnLoop:
    """The loop's ``call_soon``, run by ``turn()``: the protocol writes its responses at
    the end of each turn of the loop (``FastWorker.flush``)."""

    def __init__(self) -> None:
        self.ready: list[Any] = []

    def call_soon(self, callback: Any, *args: Any) -> None:
        self.ready.append((callback, args))

    def turn(self) -> None:
        ready, self.ready = self.ready, []
        for callback, args in ready:
            callback(*args)


def build(app: str) -> tuple[FastWorker, HttpProtocol, NullTransport, socket.socket]:
    cfg = load_config([app], {})
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    worker = FastWorker(
        1, os.getppid(), [Listener(listener)], app, 30, cfg, Logger(cfg), Scoreboard(4).allocate()
    )
    worker.load_wsgi()
    worker.prepare()
    worker.tune_gc()  # as a booted worker does
    worker.loop = TurnLoop()  # type: ignore[assignment]
    protocol = HttpProtocol(worker)
    transport = NullTransport()
    protocol.connection_made(transport)  # type: ignore[arg-type]
    return worker, protocol, transport, listener


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--app", default="examples.hello:app")
    parser.add_argument("--path", default="/")
    parser.add_argument("--sys-path", action="append", default=[], help="prepend to sys.path")
    parser.add_argument("-n", type=int, default=100_000, help="requests per repeat")
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--profile", type=int, default=0, metavar="TOP")
    parser.add_argument(
        "--opcodes", type=int, default=0, metavar="TOP", help="count bytecodes per request"
    )
    parser.add_argument(
        "--evict",
        type=int,
        default=0,
        metavar="KIB",
        help="touch this much memory between requests (as an app would) and time only "
        "the request path: its cost with cold caches",
    )
    args = parser.parse_args()
    sys.path[:0] = [str(Path(p).resolve()) for p in args.sys_path]

    worker, protocol, transport, listener = build(args.app)
    request = f"GET {args.path} HTTP/1.1\r\nHost: 127.0.0.1:8000\r\n\r\n".encode()
    receive = protocol.data_received
    turn = worker.loop.turn  # type: ignore[attr-defined]

    def feed(data: bytes) -> None:
        # One request per turn of the loop: the most a turn can cost per request (under
        # load a turn serves every connection that has a request waiting).
        receive(data)
        turn()

    n = args.n

    scratch = bytearray(args.evict * 1024)
    clock = time.perf_counter

    def run() -> float:
        if not scratch:
            start = clock()
            for _ in range(n):
                feed(request)
            return (clock() - start) / n * 1e6
        spent = 0.0
        for _ in range(n):
            scratch.count(b"\x01")  # reads every byte: evicts what the path had cached
            start = clock()
            feed(request)
            spent += clock() - start
        return spent / n * 1e6

    run()  # warm up caches (targets, hosts, header blocks)
    if transport.written == 0 or not transport.last.startswith(b"HTTP/1.1 "):
        raise SystemExit(f"no response written: {transport.last[:80]!r}")
    times = [run() for _ in range(args.repeat)]
    print(
        f"{args.app} {args.path}: best {min(times):.2f} us/request, "
        f"median {sorted(times)[len(times) // 2]:.2f} (n={n}, repeats={args.repeat}, "
        f"evict={args.evict} KiB, Python {sys.version.split()[0]})"
    )
    status_line = transport.last.split(b"\r\n", 1)[0].decode()
    print(f"response: {status_line}")
    if args.profile:
        profiler = cProfile.Profile()
        profiler.runcall(run)
        pstats.Stats(profiler).sort_stats("tottime").print_stats(args.profile)
    if args.opcodes:
        count_opcodes(lambda: feed(request), args.opcodes)
    listener.close()


def count_opcodes(one_request: Any, top: int, requests: int = 20) -> None:
    """Print the bytecodes and calls per request, per function (sys.settrace)."""
    opcodes: collections.Counter[str] = collections.Counter()
    calls: collections.Counter[str] = collections.Counter()

    def tracer(frame: Any, event: str, arg: Any) -> Any:
        code = frame.f_code
        where = f"{code.co_name} ({Path(code.co_filename).name}:{code.co_firstlineno})"
        if event == "call":
            calls[where] += 1
            frame.f_trace_opcodes = True
        elif event == "opcode":
            opcodes[where] += 1
        return tracer

    sys.settrace(tracer)
    try:
        for _ in range(requests):
            one_request()
    finally:
        sys.settrace(None)
    total = sum(opcodes.values()) / requests
    print(f"{total:.0f} bytecodes, {sum(calls.values()) / requests:.0f} Python calls per request")
    for where, count in opcodes.most_common(top):
        print(f"{count / requests:6.0f} {calls[where] / requests:4.0f}x  {where}")


if __name__ == "__main__":
    main()
