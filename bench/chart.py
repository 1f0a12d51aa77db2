#!/usr/bin/env python3
"""Draw requests per second per server and app from ``peers.py --json`` files.

    python bench/chart.py results/pinned.json [more.json ...] -o bench/results/rps.png
    python bench/chart.py --goals results/rotate-{hello,todo,classic}-8.json \
        -o bench/results/goals.png

One group of bars per app, one bar per server (median req/s over the rounds of that file),
forkhorn's bars highlighted. Needs matplotlib (``pip install matplotlib``); the summary
rules are the harness's own (``peers.summarize`` from ../shared/bench).

``--goals`` reads ``bench/rotate.py --json`` files instead and draws issue #5's goals: for
each goal ratio measured in those files, the within-cycle ratios as a box (quartiles,
median, range) against the goal's line, so a goal met only by some cycles shows as such.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))


def load_rows(paths: list[str], peers_dir: str) -> list[dict[str, Any]]:
    sys.path.insert(0, peers_dir)
    from peers import summarize  # type: ignore[import-not-found]

    rows: list[dict[str, Any]] = []
    for path in paths:
        with open(path) as f:
            doc = json.load(f)
        options = doc["meta"]["options"]
        label = f"{options['workers']}w" + (" pinned" if options.get("server_cpus") else "")
        for row in summarize(doc["runs"], options["servers"], options["apps"]):
            if row.get("rps_median"):
                rows.append({**row, "config": label})
    return rows


def draw(rows: list[dict[str, Any]], out: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = sorted({(r["app"], r["config"]) for r in rows}, key=lambda g: (g[1], g[0]))
    fig, axes = plt.subplots(1, len(groups), figsize=(5.5 * len(groups), 4.8), squeeze=False)
    for ax, (app, config) in zip(axes[0], groups, strict=True):
        mine = sorted(
            (r for r in rows if r["app"] == app and r["config"] == config),
            key=lambda r: r["rps_median"],
        )
        names = [r["server"] for r in mine]
        values = [r["rps_median"] for r in mine]
        colors = ["#d9480f" if n.startswith("forkhorn") else "#868e96" for n in names]
        bars = ax.barh(names, values, color=colors)
        for bar, value in zip(bars, values, strict=True):
            ax.text(
                bar.get_width(),
                bar.get_y() + bar.get_height() / 2,
                f" {value:,.0f}",
                va="center",
                fontsize=8,
            )
        ax.set_title(f"{app} ({config})")
        ax.set_xlabel("requests per second (median)")
        ax.set_xlim(0, max(values) * 1.25)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")


#: Issue #5's goals: (app, workers, ratio key in rotate.py's JSON, the ratio to reach).
GOALS = [
    ("hello", "1", "forkhorn-fast/granian", 1.0),
    ("hello", "1", "forkhorn-fast/meinheld", 1.8),
    ("todo", "1", "forkhorn-fast/bjoern", 0.95),
    ("todo", "9", "forkhorn-fast/gunicorn-meinheld", 1.2),
]


def load_goals(paths: list[str]) -> list[dict[str, Any]]:
    """The goal ratios found in rotate.py JSON files, with their cycles' ratios."""
    found: list[dict[str, Any]] = []
    for path in paths:
        with open(path) as f:
            doc = json.load(f)
        options = doc["options"]
        for app, workers, key, target in GOALS:
            ratios = doc["ratios"].get(key)
            if options["app"] != app or str(options["workers"]) != workers or not ratios:
                continue
            pinned = "pinned" if options.get("server_cpus") else "unpinned"
            found.append(
                {
                    "label": f"{app}, {workers}w {pinned}\n{key.replace('forkhorn-', '')}",
                    "ratios": ratios,
                    "target": target,
                    "cycles": len(ratios),
                }
            )
    if not found:
        raise SystemExit("no goal ratio found in " + ", ".join(paths))
    return found


def draw_goals(goals: list[dict[str, Any]], out: str, title: str) -> None:
    import statistics

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(2.6 * len(goals) + 1.5, 4.8))
    positions = range(1, len(goals) + 1)
    ax.boxplot(
        [g["ratios"] for g in goals],
        positions=list(positions),
        whis=(0, 100),  # whiskers at the extremes: every cycle is shown
        widths=0.5,
        medianprops={"color": "#d9480f", "linewidth": 2},
    )
    for x, goal in zip(positions, goals, strict=True):
        ax.hlines(goal["target"], x - 0.3, x + 0.3, colors="#1c7ed6", linestyles="dashed")
        median = statistics.median(goal["ratios"])
        met = sum(r >= goal["target"] for r in goal["ratios"])
        ax.text(
            x + 0.33,
            median,
            f" {median:.2f}x\n goal {goal['target']}x\n {met}/{goal['cycles']} cycles",
            va="center",
            fontsize=8,
        )
    ax.set_xticks(list(positions), [g["label"] for g in goals], fontsize=8)
    ax.set_xlim(0.5, len(goals) + 0.9)
    ax.set_ylabel("forkhorn fast / peer, req/s within a cycle")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("json", nargs="+")
    parser.add_argument(
        "--goals", action="store_true", help="rotate.py JSON files: draw #5's goal ratios"
    )
    parser.add_argument("-o", "--out", default=os.path.join(HERE, "results", "rps.png"))
    parser.add_argument("--peers-dir", default=os.path.join(HERE, "..", "..", "shared", "bench"))
    parser.add_argument(
        "--title", default="forkhorn and its peers, same machine; each panel from one run"
    )
    args = parser.parse_args()
    if args.goals:
        title = "issue #5's goals: fast against its peers, bench/rotate.py (dashed: the goal)"
        draw_goals(load_goals(args.json), args.out, title)
    else:
        draw(load_rows(args.json, args.peers_dir), args.out, args.title)


if __name__ == "__main__":
    main()
