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
import signal
import sys
from types import FrameType


def serve(target: str, port: int) -> None:
    module, _, attr = target.partition(":")
    app = getattr(importlib.import_module(module), attr or "app")
    import bjoern  # type: ignore[import-not-found]

    bjoern.listen(app, "127.0.0.1", port, reuse_port=True)
    bjoern.run()


def main() -> int:
    target, port, workers = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    sys.path.insert(0, os.getcwd())
    children = []
    for _ in range(workers):
        pid = os.fork()
        if pid == 0:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            code = 0
            try:
                serve(target, port)
            except BaseException as exc:  # report, and let the parent see a failure
                print(f"worker {os.getpid()}: {exc!r}", file=sys.stderr)
                code = 1
            os._exit(code)
        children.append(pid)

    def stop(signum: int, frame: FrameType | None) -> None:
        for child in children:
            try:
                os.kill(child, signal.SIGTERM)
            except ProcessLookupError:
                pass

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for _ in children:
        try:
            os.wait()
        except ChildProcessError:
            break
    return 0


if __name__ == "__main__":
    sys.exit(main())
