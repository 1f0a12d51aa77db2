"""A stop signal that arrives while eventlet patches the process must still end the
booting worker: ``eventlet.monkey_patch()`` swallows every exception, SystemExit
included, so the worker holds stop signals until it returns.

Run in a child interpreter: importing eventlet here would hook ``os.fork`` for every
later test of this process.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

SCENARIO = """
import os, signal, time
from forkhorn.arbiter.signals import _stop_while_booting
from forkhorn.workers import eventlet as eventlet_worker

swallowed = []

def monkey_patch_like_eventlet():
    try:
        os.kill(os.getpid(), signal.SIGTERM)  # the master's TERM, mid-patch
        time.sleep(0.05)  # where the handler would run if the signal were not held
    except BaseException as exc:  # what eventlet's patcher does
        swallowed.append(exc)

signal.signal(signal.SIGTERM, _stop_while_booting)
eventlet_worker.eventlet.monkey_patch = monkey_patch_like_eventlet
try:
    eventlet_worker.EventletWorker.patch(None)
except SystemExit:
    print("left", swallowed)
else:
    print("booted on", swallowed)
"""


def test_term_during_monkey_patch_ends_the_boot() -> None:
    src = Path(__file__).resolve().parents[2] / "src"
    path = os.pathsep.join([str(src), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "PYTHONPATH": path}
    done = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", SCENARIO],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )
    assert done.stdout.strip() == "left []", done.stdout + done.stderr
