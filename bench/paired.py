#!/usr/bin/env python3
"""Round-by-round ratios between two servers of a ``peers.py --json`` run.

    python bench/paired.py bench/results/goals.json forkhorn-fast granian [--app hello]

Why: on this shared host one server's throughput moves by up to 1.6x between two 5-second
runs a minute apart (bench/README.md), so the ratio of two medians taken over different
minutes can land anywhere in that band. peers.py runs every server once per round, one
after the other, so the two runs of a round saw nearly the same host. The ratio within
each round cancels most of the drift; its median and quartiles over many rounds say how
far a result can be trusted. Printed as a Markdown table, one row per round, then the
summary line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from typing import Any


def round_ratios(runs: list[dict[str, Any]], a: str, b: str, app: str) -> list[dict[str, Any]]:
    """One row per round in which both servers ran ``app`` successfully."""
    by_round: dict[int, dict[str, dict[str, Any]]] = {}
    for run in runs:
        if run.get("app") == app and run.get("ok") and run.get("server") in (a, b):
            by_round.setdefault(int(run["round"]), {})[run["server"]] = run
    rows = []
    for rnd in sorted(by_round):
        pair = by_round[rnd]
        if a in pair and b in pair and pair[b]["rps"]:
            rows.append(
                {
                    "round": rnd,
                    "a": pair[a]["rps"],
                    "b": pair[b]["rps"],
                    "ratio": pair[a]["rps"] / pair[b]["rps"],
                    "noisy": bool(pair[a].get("noisy") or pair[b].get("noisy")),
                }
            )
    return rows


def summary(ratios: list[float]) -> str:
    if not ratios:
        return "no round with both servers"
    text = f"median {statistics.median(ratios):.2f}x over {len(ratios)} rounds"
    if len(ratios) >= 4:
        q1, _, q3 = statistics.quantiles(ratios, n=4)
        text += f", quartiles {q1:.2f}x-{q3:.2f}x"
    return text + f", range {min(ratios):.2f}x-{max(ratios):.2f}x"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("json", help="a peers.py --json file")
    parser.add_argument("a", help="server whose throughput is divided")
    parser.add_argument("b", help="server it is divided by")
    parser.add_argument("--app", help="app (default: every app of the run)")
    args = parser.parse_args(argv)
    with open(args.json) as f:
        doc = json.load(f)
    apps = [args.app] if args.app else doc["meta"]["options"]["apps"]
    found = False
    for app in apps:
        rows = round_ratios(doc["runs"], args.a, args.b, app)
        found = found or bool(rows)
        print(f"\n{args.a} / {args.b}, app `{app}`:\n")
        print(f"| round | {args.a} req/s | {args.b} req/s | ratio |")
        print("|---|---|---|---|")
        for row in rows:
            ratio = f"{row['ratio']:.2f}x" + (" (noisy)" if row["noisy"] else "")
            print(f"| {row['round']} | {row['a']:.0f} | {row['b']:.0f} | {ratio} |")
        print(f"\n{summary([row['ratio'] for row in rows])}")
    if not found:
        print(f"no round has both {args.a} and {args.b}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
