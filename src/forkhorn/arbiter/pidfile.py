"""The master's pid file: written at start, renamed during a USR2 upgrade, removed at exit.

Rules it keeps:

1. Refuse to start over a live master: a file naming a running process other than us
   is an error (``Already running on PID N (or pid file '...' is stale)``, gunicorn's
   words); a file naming a dead process is stale and replaced.
2. Write atomically (temporary file in the same directory, then ``rename``), so a
   supervisor never reads a half-written pid.
3. Remove only a file that still names us: after USR2 the new master may own the path.

Runs in: master only.
"""

from __future__ import annotations

import errno
import os
import tempfile

from forkhorn.errors import CONFIG_ERROR, ForkhornError

__all__ = ["Pidfile", "PidfileError", "PidfileUnwritable", "read_pid"]


class PidfileError(ForkhornError):
    """The pid file cannot be written, or names a running master."""

    exit_code = 1


class PidfileUnwritable(PidfileError):
    """The pid file's place cannot be written: the ``pidfile`` setting names a place this
    process may not write, so the exit is the config error's, as for a log file."""

    exit_code = CONFIG_ERROR


def read_pid(path: str) -> int | None:
    """The pid in ``path``, or None when the file is missing or does not hold one."""
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            text = f.read(64).strip()
    except OSError:
        return None
    try:
        pid = int(text)
    except ValueError:
        return None
    return pid if pid > 0 else None


def is_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError as exc:
        return exc.errno == errno.EPERM  # exists, owned by someone else
    return True


class Pidfile:
    """One pid file path and the pid written into it."""

    def __init__(self, path: str) -> None:
        self.path = os.path.abspath(path)
        self.pid: int | None = None

    def validate(self) -> int | None:
        """The pid of a live process named in the file, or None (missing or stale)."""
        pid = read_pid(self.path)
        if pid is None or not is_running(pid):
            return None
        return pid

    def create(self, pid: int) -> None:
        """Write ``pid``.  Raises ``PidfileError`` when a live process other than ``pid``
        (or its parent master during a USR2 upgrade) owns the file."""
        running = self.validate()
        if running is not None and running not in (pid, os.getppid()):
            raise PidfileError(
                f"Already running on PID {running} (or pid file '{self.path}' is stale)"
            )
        self._write(self.path, pid)
        self.pid = pid

    def _write(self, path: str, pid: int) -> None:
        directory = os.path.dirname(path) or "."
        try:
            fd, tmp = tempfile.mkstemp(prefix=".forkhorn-pid.", dir=directory)
        except OSError as exc:
            raise PidfileUnwritable(f"Cannot write pid file {path!r}: {exc.strerror}") from None
        try:
            with os.fdopen(fd, "w", encoding="ascii") as f:
                f.write(f"{pid}\n")
            os.chmod(tmp, 0o644)
            os.rename(tmp, path)
        except OSError as exc:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise PidfileUnwritable(f"Cannot write pid file {path!r}: {exc.strerror}") from None

    def rename(self, path: str) -> None:
        """Move our pid to ``path`` (USR2: ``x.pid`` <-> ``x.pid.2``), removing the old file."""
        if self.pid is None:
            return
        new_path = os.path.abspath(path)
        if new_path == self.path:
            return
        self._write(new_path, self.pid)
        self.unlink()
        self.path = new_path

    def unlink(self) -> None:
        """Remove the file if it still names us (rule 3)."""
        if self.pid is not None and read_pid(self.path) == self.pid:
            try:
                os.unlink(self.path)
            except OSError:
                pass
