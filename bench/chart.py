#!/usr/bin/env python3
"""Draw requests per second per server and app from ``peers.py --json`` files.

    python bench/chart.py results/pinned.json [more.json ...] -o bench/results/rps.png

One group of bars per app, one bar per server (median req/s over the rounds of that file),
forkhorn's bars highlighted. Needs matplotlib (``pip install matplotlib``); the summary
rules are the harness's own (``peers.summarize`` from ../shared/bench).
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("json", nargs="+")
    parser.add_argument("-o", "--out", default=os.path.join(HERE, "results", "rps.png"))
    parser.add_argument("--peers-dir", default=os.path.join(HERE, "..", "..", "shared", "bench"))
    parser.add_argument(
        "--title", default="forkhorn and its peers, same machine; each panel from one run"
    )
    args = parser.parse_args()
    draw(load_rows(args.json, args.peers_dir), args.out, args.title)


if __name__ == "__main__":
    main()
