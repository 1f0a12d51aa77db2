"""bjoern as gunicorn runs an app: imported in each worker after the fork, not before.

    python bench/lazy_bjoern.py MODULE:ATTR PORT WORKERS

``../shared/bench/launch.py`` imports the app once in the parent, which shares its pages
across the workers (like ``--preload``); this one lets a run compare forkhorn's default
with a C server like for like. Each worker binds its own ``SO_REUSEPORT`` socket (bjoern
cannot take a listening socket made before the import). Use it through ``rotate.py``:

    --spec "bjoern-lazy={python} $PWD/bench/lazy_bjoern.py {app} {port} {workers}"
"""

from __future__ import annotations

import importlib
import os
import sys

import prefork  # bench/prefork.py, beside this script


def serve(target: str, port: int) -> None:
    module, _, attr = target.partition(":")
    app = getattr(importlib.import_module(module), attr or "app")
    import bjoern  # type: ignore[import-not-found]

    bjoern.listen(app, "127.0.0.1", port, reuse_port=True)
    bjoern.run()


def main() -> int:
    target, port, workers = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    sys.path.insert(0, os.getcwd())
    return prefork.run(workers, lambda: serve(target, port))


if __name__ == "__main__":
    sys.exit(main())
