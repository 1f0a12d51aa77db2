#!/usr/bin/env python3
"""Servers started together, measured in turn by short wrk runs: ratios this host can settle.

    /tmp/peers/bin/python bench/rotate.py --servers granian,forkhorn-fast --app hello \\
        --cycles 40 --json bench/results/rotate-hello.json --markdown bench/results/rotate-hello.md

Why: this host has fast and slow phases. The same pinned worker runs hello at about 45k or
60k req/s depending on the minute, and ``path_bench.py`` in one process flips between
about 7.8 and 12.3 us per request (bench/README.md). ``peers.py`` starts each server
afresh for every run, so the two runs of one of its rounds are 10 to 20 s apart: often in
different phases. Here every server is started once, up front, and pinned to the same
CPU (an idle one costs nothing), and each cycle measures them one after the other with
short runs (``--duration``, 2 s by default), the order reversed every other cycle (ABBA).
The runs of a cycle are seconds apart, so a cycle's ratio usually compares like with
like. The ratio's median and quartiles over many cycles are the result.

Server names and commands come from ``../shared/bench/peers.py`` (``--spec NAME=COMMAND``
adds one, with the same ``{app} {port} {workers} {python} {bench} {apps} {tmp}``
placeholders). The server's CPU time per request is summed over its process tree from
``/proc``. Loopback only; only the processes started here are signalled.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
DEFAULT_PEERS = HERE.parents[1] / "shared" / "bench" / "peers.py"
FORKHORN = "forkhorn --workers {workers} --bind 127.0.0.1:{port} -k fast {app}"


def load_peers(path: Path) -> Any:
    spec = importlib.util.spec_from_file_location("peers", path)
    if spec is None or spec.loader is None:
        sys.exit(f"cannot load the peers harness from {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def quartiles(values: list[float]) -> tuple[float, float, float]:
    if len(values) < 2:
        v = values[0] if values else float("nan")
        return v, v, v
    q1, q2, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, q2, q3


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--servers", required=True, help="comma-separated names (peers.py --list)")
    ap.add_argument("--app", default="hello", help="hello, todo, ... (peers.py's apps)")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--cycles", type=int, default=30)
    ap.add_argument("--duration", type=int, default=2, help="seconds per wrk run")
    ap.add_argument("-c", "--connections", type=int, default=50)
    ap.add_argument("-t", "--threads", type=int, default=2)
    ap.add_argument("--server-cpus", default="1", help="taskset list for servers ('' = none)")
    ap.add_argument("--client-cpus", default="0", help="taskset list for wrk ('' = none)")
    ap.add_argument("--python", default=sys.executable, help="the peers' interpreter")
    ap.add_argument("--peers", type=Path, default=DEFAULT_PEERS)
    ap.add_argument("--spec", action="append", default=[], metavar="NAME=COMMAND")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--markdown", type=Path)
    o = ap.parse_args(argv)

    peers = load_peers(o.peers)
    servers = dict(peers.SERVERS)
    servers["forkhorn-fast"] = peers.Server(FORKHORN, note="forkhorn -k fast")
    for item in o.spec:
        name, sep, cmd = item.partition("=")
        if not sep:
            sys.exit(f"--spec wants NAME=COMMAND, got {item!r}")
        servers[name.strip()] = peers.Server(cmd.strip(), note="custom --spec")
    names = [n.strip() for n in o.servers.split(",") if n.strip()]
    unknown = [n for n in names if n not in servers]
    if unknown:
        sys.exit(f"unknown server(s): {', '.join(unknown)}")
    if o.app not in peers.APPS:
        sys.exit(f"unknown app {o.app!r}: one of {', '.join(peers.APPS)}")
    app = peers.APPS[o.app]
    bindir = os.path.dirname(o.python)
    workdir = tempfile.mkdtemp(prefix="rotate-")
    peers.set_child_subreaper()
    if o.client_cpus:
        os.sched_setaffinity(0, peers.cpu_list(o.client_cpus))  # this script runs beside wrk

    running: dict[str, Any] = {}
    ports: dict[str, int] = {}
    try:
        for name in names:
            spec = servers[name]
            port = peers.free_port()
            tmp = os.path.join(workdir, name)
            os.makedirs(tmp, exist_ok=True)
            ctx = {
                "app": app.asgi_target if spec.asgi else app.target,
                "port": port,
                "workers": o.workers,
                "python": o.python,
                "bench": peers.HERE,
                "apps": peers.APPS_DIR,
                "tmp": tmp,
            }
            if spec.prepare:
                spec.prepare(ctx, o.app)
            cmd = [tok.format(**ctx) for tok in shlex.split(spec.cmd)]
            local = os.path.join(bindir, cmd[0])
            if os.sep not in cmd[0] and os.access(local, os.X_OK):
                cmd[0] = local
            if o.server_cpus:
                cmd = ["taskset", "-c", o.server_cpus, *cmd]
            env = dict(os.environ)
            env["PYTHONPATH"] = peers.APPS_DIR + (
                os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else ""
            )
            env["BENCH_TMPDIR"] = tmp
            env.pop("WEB_CONCURRENCY", None)
            running[name] = peers.Running(cmd, peers.APPS_DIR, env, os.path.join(tmp, "log"))
            ports[name] = port
            deadline = time.monotonic() + 30
            while True:
                try:
                    if peers.http_get(port, app.path).startswith("HTTP/"):
                        break
                except OSError:
                    pass
                if running[name].proc.poll() is not None or time.monotonic() > deadline:
                    sys.exit(f"{name} did not start:\n{running[name].tail()}")
                time.sleep(0.1)
            running[name].refresh()

        def wrk(name: str, seconds: int) -> dict[str, Any]:
            cmd = [
                "wrk",
                f"-t{o.threads}",
                f"-c{o.connections}",
                f"-d{seconds}s",
                f"http://127.0.0.1:{ports[name]}{app.path}",
            ]
            if o.client_cpus:
                cmd = ["taskset", "-c", o.client_cpus, *cmd]
            srv = running[name]
            ticks0 = srv.sample()[2]
            text = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 30).stdout
            ticks1 = srv.sample()[2]
            out = peers.parse_wrk_text(text)
            requests = out.get("requests", 0)
            errors = sum(out.get(k, 0) for k in ("connect", "read", "write", "timeout"))
            return {
                "rps": out.get("rps", 0.0),
                "errors": errors + out.get("status", 0),
                "cpu_us": (ticks1 - ticks0) / os.sysconf("SC_CLK_TCK") * 1e6 / requests
                if requests
                else None,
            }

        for name in names:  # warm-up: caches, the interpreter's specialisation, the app
            wrk(name, 1)
        cycles: list[dict[str, Any]] = []
        for cycle in range(o.cycles):
            order = names if cycle % 2 == 0 else names[::-1]
            row: dict[str, Any] = {}
            for name in order:
                row[name] = wrk(name, o.duration)
            cycles.append(row)
            print(
                f"cycle {cycle + 1:3d}: " + "  ".join(f"{n} {row[n]['rps']:8.0f}" for n in names),
                flush=True,
            )
    finally:
        for srv in running.values():
            srv.stop(5)

    summary = {
        name: {
            "rps": statistics.median(c[name]["rps"] for c in cycles),
            "cpu_us": statistics.median(
                c[name]["cpu_us"] for c in cycles if c[name]["cpu_us"] is not None
            ),
            "errors": sum(c[name]["errors"] for c in cycles),
        }
        for name in names
    }
    lines = [
        f"`{o.app}`, {o.workers} worker(s), wrk -t{o.threads} -c{o.connections} "
        f"-d{o.duration}s, servers on CPU {o.server_cpus or 'any'}, wrk on CPU "
        f"{o.client_cpus or 'any'}, {o.cycles} cycles (ABBA), "
        f"{time.strftime('%Y-%m-%d %H:%M')}",
        "",
        "| server | req/s (median of cycles) | CPU us/request | errors |",
        "|---|---|---|---|",
    ]
    for name in names:
        s = summary[name]
        lines.append(f"| {name} | {s['rps']:,.0f} | {s['cpu_us']:.1f} | {s['errors']} |")
    lines += ["", "| ratio (within each cycle) | median | quartiles | range |", "|---|---|---|---|"]
    ratios: dict[str, list[float]] = {}
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            values = [c[a]["rps"] / c[b]["rps"] for c in cycles if c[b]["rps"]]
            ratios[f"{a}/{b}"] = values
            q1, q2, q3 = quartiles(values)
            lines.append(
                f"| {a} / {b} | {q2:.2f}x | {q1:.2f}x-{q3:.2f}x | "
                f"{min(values):.2f}x-{max(values):.2f}x |"
            )
    table = "\n".join(lines)
    print("\n" + table)
    if o.markdown:
        o.markdown.write_text(table + "\n")
    if o.json:
        o.json.write_text(
            json.dumps(
                {
                    "options": {k: str(v) for k, v in vars(o).items()},
                    "cycles": cycles,
                    "summary": summary,
                    "ratios": ratios,
                },
                indent=1,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
