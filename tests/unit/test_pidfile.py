"""The master's pid file."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from forkhorn.arbiter.pidfile import Pidfile, PidfileError, read_pid


def _dead_pid() -> int:
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os._exit(0)
    os.waitpid(pid, 0)
    return pid


def test_create_and_unlink(tmp_path: Path) -> None:
    path = tmp_path / "forkhorn.pid"
    pidfile = Pidfile(str(path))
    pidfile.create(os.getpid())
    assert path.read_text() == f"{os.getpid()}\n"
    pidfile.unlink()
    assert not path.exists()


def test_a_stale_file_is_replaced(tmp_path: Path) -> None:
    path = tmp_path / "forkhorn.pid"
    path.write_text(f"{_dead_pid()}\n")
    Pidfile(str(path)).create(os.getpid())
    assert read_pid(str(path)) == os.getpid()


def test_a_live_master_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "forkhorn.pid"
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child waits to be killed
        import time

        time.sleep(30)
        os._exit(0)
    try:
        path.write_text(f"{pid}\n")
        with pytest.raises(PidfileError, match=f"Already running on PID {pid}"):
            Pidfile(str(path)).create(os.getpid())
        assert read_pid(str(path)) == pid
    finally:
        os.kill(pid, 9)
        os.waitpid(pid, 0)


def test_garbage_is_treated_as_stale(tmp_path: Path) -> None:
    path = tmp_path / "forkhorn.pid"
    path.write_text("not a pid")
    assert read_pid(str(path)) is None
    Pidfile(str(path)).create(os.getpid())
    assert read_pid(str(path)) == os.getpid()


def test_rename_moves_the_file(tmp_path: Path) -> None:
    path = tmp_path / "forkhorn.pid"
    pidfile = Pidfile(f"{path}.2")
    pidfile.create(os.getpid())
    pidfile.rename(str(path))
    assert not Path(f"{path}.2").exists()
    assert read_pid(str(path)) == os.getpid()
    assert pidfile.path == str(path)


def test_unlink_leaves_a_file_that_names_another_process(tmp_path: Path) -> None:
    path = tmp_path / "forkhorn.pid"
    pidfile = Pidfile(str(path))
    pidfile.create(os.getpid())
    path.write_text("1\n")  # a new master took over the path
    pidfile.unlink()
    assert path.exists()


def test_unwritable_directory_is_a_one_line_error(tmp_path: Path) -> None:
    with pytest.raises(PidfileError, match="Cannot write pid file"):
        Pidfile(str(tmp_path / "missing" / "x.pid")).create(os.getpid())
