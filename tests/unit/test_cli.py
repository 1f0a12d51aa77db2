"""The forkhorn command, run as a real subprocess: exit codes and one-line errors."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from forkhorn import __version__

SRC = Path(__file__).resolve().parents[2] / "src"

APP = """
def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"hello"]
"""


def run(
    args: list[str],
    cwd: Path,
    env: dict[str, str] | None = None,
    command: list[str] | None = None,
    preexec_fn: Callable[[], None] | None = None,
) -> subprocess.CompletedProcess[str]:
    """``forkhorn ARGS`` (or ``COMMAND ARGS``) in ``cwd``, with this checkout's code."""
    environ = {
        key: value
        for key, value in os.environ.items()
        if key not in ("FORKHORN_CMD_ARGS", "WEB_CONCURRENCY", "PORT")
    }
    environ["PYTHONPATH"] = str(SRC)
    environ.update(env or {})
    return subprocess.run(
        [*(command or [sys.executable, "-m", "forkhorn"]), *args],
        cwd=cwd,
        env=environ,
        capture_output=True,
        text=True,
        timeout=30,
        preexec_fn=preexec_fn,  # the test's own child: no threads involved
        check=False,
    )


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: ")
    return lines[0]


def test_version(tmp_path: Path) -> None:
    result = run(["--version"], tmp_path)
    assert result.returncode == 0
    assert result.stdout == f"forkhorn {__version__}\n"


def test_version_works_with_a_broken_default_config(tmp_path: Path) -> None:
    (tmp_path / "forkhorn.conf.py").write_text("raise SystemExit('broken')\n")
    assert run(["--version"], tmp_path).returncode == 0


def test_help_is_generated_from_the_registry(tmp_path: Path) -> None:
    result = run(["--help"], tmp_path)
    assert result.returncode == 0
    assert "--workers" in result.stdout
    assert "--limit-request-body" in result.stdout


def test_check_config_ok(tmp_path: Path) -> None:
    (tmp_path / "hello.py").write_text(APP)
    result = run(["--check-config", "hello:app"], tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "Config OK: app 'hello:app' loads"
    assert result.stderr == ""


def test_check_config_names_what_has_no_effect(tmp_path: Path) -> None:
    (tmp_path / "hello.py").write_text(APP)
    (tmp_path / "gunicorn.conf.py").write_text("strip_header_spaces = True\nspew = False\n")
    result = run(["--check-config", "--statsd-host", "localhost:8125", "hello:app"], tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines() == [
        "Warning: statsd_host is accepted for gunicorn compatibility but not implemented "
        "yet: it has no effect",
        "Warning: strip_header_spaces (from config file ./gunicorn.conf.py) is a gunicorn "
        "setting forkhorn does not have: forkhorn's parser stays strict",
    ]


def test_check_config_uses_chdir_and_pythonpath(tmp_path: Path) -> None:
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "hello_in_site.py").write_text(APP)
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "helper_mod.py").write_text("VALUE = 1\n")
    (tmp_path / "site" / "uses_helper.py").write_text("import helper_mod\n" + APP)
    assert run(["--check-config", "--chdir", "site", "hello_in_site:app"], tmp_path).returncode == 0
    lib = str(tmp_path / "lib")
    result = run(
        ["--check-config", "--chdir", "site", "--pythonpath", lib, "uses_helper:app"], tmp_path
    )
    assert result.returncode == 0, result.stderr


def test_check_config_missing_module(tmp_path: Path) -> None:
    result = run(["--check-config", "nosuchmodule_here:app"], tmp_path)
    assert result.returncode == 1
    assert one_error_line(result).startswith("Error: App module 'nosuchmodule_here' not found")


def test_check_config_error_in_app_import(tmp_path: Path) -> None:
    (tmp_path / "buggy.py").write_text("import os\nboom = undefined_name\n")
    result = run(["--check-config", "buggy:app"], tmp_path)
    assert result.returncode == 1
    line = one_error_line(result)
    assert line.startswith("Error: Failed to import 'buggy': NameError:")
    assert "buggy.py, line 2" in line


def test_check_config_traceback_only_at_debug(tmp_path: Path) -> None:
    (tmp_path / "buggy.py").write_text("boom = undefined_name\n")
    result = run(["--check-config", "--log-level", "debug", "buggy:app"], tmp_path)
    assert result.returncode == 1
    assert "Traceback (most recent call last)" in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("Error: Failed to import 'buggy'")


def test_check_config_not_callable(tmp_path: Path) -> None:
    (tmp_path / "notcallable.py").write_text("app = 3\n")
    result = run(["--check-config", "notcallable:app"], tmp_path)
    assert result.returncode == 1
    assert "must be callable" in one_error_line(result)


def test_check_config_without_app(tmp_path: Path) -> None:
    # The config error's code, as at start-up.
    for args in (["--check-config"], []):
        result = run(args, tmp_path)
        assert result.returncode == 2
        assert "No application module specified" in one_error_line(result)


def test_check_config_and_the_start_refuse_a_pid_file_that_cannot_be_written(
    tmp_path: Path,
) -> None:
    """--check-config said "Config OK"; the start bound, then exited with the bind
    error's code. Both now stop with the config error's. A directory that does not
    exist yet passes the check: an on_starting hook may make it before the start writes
    the file."""
    (tmp_path / "hello.py").write_text(APP)
    (tmp_path / "afile").write_text("")
    pid = str(tmp_path / "afile" / "x.pid")
    result = run(["--check-config", "--pid", pid, "hello:app"], tmp_path)
    assert result.returncode == 2, result.stderr
    assert "Cannot write pid file: " in one_error_line(result)
    assert "is not a directory" in result.stderr
    missing = str(tmp_path / "no" / "such" / "dir" / "x.pid")
    result = run(["--check-config", "--pid", missing, "hello:app"], tmp_path)
    assert result.returncode == 2, result.stderr
    assert "Cannot write pid file: no directory" in one_error_line(result)
    result = run(["--pid", missing, "-b", "127.0.0.1:0", "hello:app"], tmp_path)
    assert result.returncode == 2, result.stderr
    assert "Cannot write pid file" in result.stderr
    (tmp_path / "mkdir_conf.py").write_text(
        "import os\n\ndef on_starting(server):\n"
        f"    os.makedirs({os.path.dirname(missing)!r}, exist_ok=True)\n"
    )
    result = run(["--check-config", "-c", "mkdir_conf.py", "--pid", missing, "hello:app"], tmp_path)
    assert result.returncode == 0, result.stderr


def test_check_config_finds_an_address_listed_twice_in_two_spellings(tmp_path: Path) -> None:
    (tmp_path / "hello.py").write_text(APP)
    args = ["--check-config", "-b", "127.0.0.1:27999", "-b", "localhost:27999", "hello:app"]
    if socket.getaddrinfo("localhost", 27999)[0][4][0] != "127.0.0.1":
        pytest.skip("localhost does not resolve to 127.0.0.1 first here")
    result = run(args, tmp_path)
    assert result.returncode == 2, result.stderr
    assert one_error_line(result) == (
        "Error: bind = 'localhost:27999' is the same address as '127.0.0.1:27999': listed twice"
    )


def test_check_config_reads_a_relative_logging_config_from_chdir(tmp_path: Path) -> None:
    """As the start does: --chdir first, then the logging config's path."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "hello.py").write_text(APP)
    (site / "log.ini").write_text(
        "[loggers]\nkeys=root\n[handlers]\nkeys=h\n[formatters]\nkeys=\n"
        "[logger_root]\nhandlers=h\n[handler_h]\nclass=StreamHandler\nargs=(sys.stderr,)\n"
    )
    result = run(
        ["--check-config", "--chdir", "site", "--log-config", "log.ini", "hello:app"], tmp_path
    )
    assert result.returncode == 0, result.stderr


def test_check_config_warns_of_reload_with_preload(tmp_path: Path) -> None:
    (tmp_path / "hello.py").write_text(APP)
    result = run(["--check-config", "--reload", "--preload", "hello:app"], tmp_path)
    assert result.returncode == 0, result.stderr
    assert "Warning: --reload restarts workers on code changes, but with --preload" in (
        result.stderr
    )


def test_print_config(tmp_path: Path) -> None:
    (tmp_path / "conf.py").write_text("workers = 3\n")
    result = run(
        ["--print-config", "-c", "conf.py", "--timeout", "5", "hello:app"],
        tmp_path,
        env={"FORKHORN_CMD_ARGS": "--keep-alive 9", "PORT": "9999"},
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()

    def line_for(name: str) -> str:
        return next(line for line in lines if line.split(" ", 1)[0] == name)

    assert line_for("workers").endswith("= 3  # config file conf.py")
    assert line_for("timeout").endswith("= 5  # command line")
    assert line_for("keepalive").endswith("= 9  # FORKHORN_CMD_ARGS")
    assert line_for("bind").endswith("= ['0.0.0.0:9999']  # PORT")
    assert line_for("backlog").endswith("= 2048  # default")


@pytest.mark.parametrize(
    ("args", "env", "expected"),
    [
        (["--bogus", "app:x"], {}, "Error: unknown option --bogus; see forkhorn --help"),
        (
            ["--wrokers", "3", "app:x"],
            {},
            "Error: unknown option --wrokers (did you mean --workers?); see forkhorn --help",
        ),
        (["-w", "abc", "app:x"], {}, 'Error: workers = "abc" (from command line)'),
        (
            ["app:x"],
            {"FORKHORN_CMD_ARGS": "--workers abc"},
            'Error: workers = "abc" (from FORKHORN_CMD_ARGS): expected a positive integer',
        ),
        (
            ["app:x"],
            {"GUNICORN_CMD_ARGS": "--access-logformat 'x"},
            "Error: GUNICORN_CMD_ARGS: No closing quotation",
        ),
        (["-b", "host:port", "app:x"], {}, 'Error: bind = "host:port" (from command line)'),
        (["-c", "missing.py", "app:x"], {}, "Error: config file missing.py not found"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    tmp_path: Path, args: list[str], env: dict[str, str], expected: str
) -> None:
    result = run(args, tmp_path, env)
    assert result.returncode == 2
    assert one_error_line(result).startswith(expected)
    assert "usage:" not in result.stderr


def test_broken_config_file_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "forkhorn.conf.py").write_text("workers = 2\n1 / 0\n")
    result = run(["app:x"], tmp_path)
    assert result.returncode == 2
    assert one_error_line(result) == (
        "Error: config file ./forkhorn.conf.py failed: ZeroDivisionError: division by zero (line 2)"
    )


def test_wrong_hook_arity_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "forkhorn.conf.py").write_text("def post_fork(server):\n    pass\n")
    result = run(["--check-config", "app:x"], tmp_path)
    assert result.returncode == 2
    line = one_error_line(result)
    assert line.startswith("Error: post_fork = <function post_fork")
    assert "expected a callable taking 2 positional arguments" in line


def test_serving_without_app_is_a_config_error(tmp_path: Path) -> None:
    result = run([], tmp_path)
    assert result.returncode == 2
    assert "No application module specified" in one_error_line(result)


def test_ctrl_c_exits_130_quietly(tmp_path: Path) -> None:
    # A config file is real code run by the command; an interrupt while it runs stands in
    # for Ctrl-C at any point of start-up.
    (tmp_path / "forkhorn.conf.py").write_text("raise KeyboardInterrupt\n")
    result = run(["app:x"], tmp_path)
    assert result.returncode == 130
    assert result.stderr == ""


WORKER_MODULE = """
from forkhorn.workers.sync import SyncWorker


class MyWorker(SyncWorker):
    pass
"""


def test_check_config_finds_a_worker_class_beside_the_app(tmp_path: Path) -> None:
    """The paths (--chdir, --pythonpath) apply before the worker class is imported, as at
    start-up; the check refused a class the start found."""
    site = tmp_path / "site"
    (site / "myworkers").mkdir(parents=True)
    (site / "myworkers" / "__init__.py").write_text("")
    (site / "myworkers" / "custom.py").write_text(WORKER_MODULE)
    (site / "hello.py").write_text(APP)
    args = ["--check-config", "-k", "myworkers.custom.MyWorker", "hello:app"]
    result = run([*args[:-1], "--chdir", "site", args[-1]], tmp_path)
    assert result.returncode == 0, result.stderr
    result = run([*args[:-1], "--pythonpath", str(site), "--chdir", "site", args[-1]], tmp_path)
    assert result.returncode == 0, result.stderr


def test_a_worker_module_that_raises_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "hello.py").write_text(APP)
    (tmp_path / "broken_worker.py").write_text("import os\nraise RuntimeError('not today')\n")
    (tmp_path / "syntax_worker.py").write_text("class W(:\n    pass\n")
    result = run(["--check-config", "-k", "broken_worker.W", "hello:app"], tmp_path)
    assert result.returncode == 1
    assert one_error_line(result) == (
        "Error: worker_class 'broken_worker.W': importing broken_worker raised "
        "RuntimeError: not today (broken_worker.py, line 2)"
    )
    # At start-up too: after the start line, one error line and the config error's code.
    result = run(["-b", "127.0.0.1:0", "-k", "syntax_worker.W", "hello:app"], tmp_path)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("Error: worker_class 'syntax_worker.W': importing syntax_worker ")
    assert "SyntaxError" in last and "line 1" in last


def test_on_starting_that_raises_stops_the_start_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "hello.py").write_text(APP)
    (tmp_path / "forkhorn.conf.py").write_text(
        "def on_starting(server):\n    raise RuntimeError('no database')\n"
    )
    result = run(["-b", "127.0.0.1:0", "hello:app"], tmp_path)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last == (
        "Error: hook on_starting raised RuntimeError: no database (forkhorn.conf.py, line 2)"
    )


def test_gunicorn_egg_worker_names_are_taken(tmp_path: Path) -> None:
    (tmp_path / "hello.py").write_text(APP)
    result = run(["--check-config", "-k", "egg:gunicorn#gthread", "hello:app"], tmp_path)
    assert result.returncode == 0, result.stderr


def test_check_config_checks_the_logging_settings_without_opening_logs(tmp_path: Path) -> None:
    """A logging config that makes the start exit 2 fails the check the same way; and
    the check opens nothing (a handler in mode "w" would empty a running server's log)."""
    (tmp_path / "hello.py").write_text(APP)
    result = run(["--check-config", "--log-config", "missing.ini", "hello:app"], tmp_path)
    assert result.returncode == 2
    assert one_error_line(result).startswith("Error: logconfig 'missing.ini': ")
    (tmp_path / "bad.json").write_text('{"handlers": {"h": {"class": "nosuch_mod.H"}}}')
    result = run(["--check-config", "--log-config-json", "bad.json", "hello:app"], tmp_path)
    assert result.returncode == 2
    line = one_error_line(result)
    assert line.startswith("Error: logconfig_json 'bad.json': handler 'h': cannot import")
    assert "No module named 'nosuch_mod'" in line
    (tmp_path / "no-formatters.ini").write_text("[loggers]\nkeys=root\n[handlers]\nkeys=\n")
    result = run(["--check-config", "--log-config", "no-formatters.ini", "hello:app"], tmp_path)
    assert result.returncode == 2
    assert "missing section or key 'formatters'" in one_error_line(result)
    running = tmp_path / "running.log"
    running.write_text("a running server's lines\n")
    (tmp_path / "forkhorn.conf.py").write_text(
        "logconfig_dict = {'handlers': {'f': {'class': 'logging.FileHandler', 'mode': 'w',"
        f" 'filename': {str(running)!r}}}}}}}\n"
    )
    args = ["--check-config", "--error-logfile", "error.log", "--capture-output", "hello:app"]
    result = run(args, tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "Config OK: app 'hello:app' loads"
    assert running.read_text() == "a running server's lines\n"
    assert not (tmp_path / "error.log").exists()


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (
            ["--access-logformat", "%s"],
            "Error: access_log_format = '%s' (from command line): every field must be named",
        ),
        (
            ["--log-syslog", "--log-syslog-to", "bogus://x"],
            "Error: syslog_addr = 'bogus://x' (from command line): expected unix://",
        ),
        (
            ["--log-syslog", "--log-syslog-facility", "nonsense"],
            "Error: syslog_facility = 'nonsense' (from command line): unknown facility",
        ),
    ],
)
def test_check_config_refuses_what_the_logs_set_up_refuses(
    tmp_path: Path, args: list[str], line: str
) -> None:
    """The access format and the syslog address and facility were checked only when the
    logs were set up: --check-config said "Config OK" for values that stop the start."""
    (tmp_path / "hello.py").write_text(APP)
    for command in (
        ["--check-config", *args, "hello:app"],
        [*args, "-b", "127.0.0.1:0", "hello:app"],
    ):
        result = run(command, tmp_path)
        assert result.returncode == 2, result.stderr
        assert one_error_line(result).startswith(line)


def test_logger_class_gunicorns_default_is_not_warned(tmp_path: Path) -> None:
    """Migrated configs spell gunicorn's default out; it is forkhorn's logger anyway."""
    (tmp_path / "hello.py").write_text(APP)
    args = ["--check-config", "--logger-class", "gunicorn.glogging.Logger", "hello:app"]
    result = run(args, tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    result = run(["--check-config", "--logger-class", "myproj.logs.Quiet", "hello:app"], tmp_path)
    assert "logger_class is accepted" in result.stderr
    assert "logging.Filter" in result.stderr
    # gunicorn's recipe subclasses its Logger in the config file itself: warned the same,
    # not refused for being unimportable (forkhorn never loads it).
    (tmp_path / "conf.py").write_text(
        "import logging\nclass JsonLogger(logging.Logger):\n    pass\nlogger_class = JsonLogger\n"
    )
    result = run(["--check-config", "-c", "conf.py", "hello:app"], tmp_path)
    assert result.returncode == 0, result.stderr
    assert "logger_class is accepted" in result.stderr


def test_a_worker_ported_from_gunicorn_is_told_its_request_methods_are_unused(
    tmp_path: Path,
) -> None:
    (tmp_path / "hello.py").write_text(APP)
    (tmp_path / "ported.py").write_text(
        WORKER_MODULE + "\n    def handle_request(self, listener, req, client, addr):\n"
        "        raise AssertionError('never called')\n"
    )
    result = run(["--check-config", "-k", "ported.MyWorker", "hello:app"], tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip().startswith(
        "Warning: Worker class ported.MyWorker defines handle_request, gunicorn's "
        "per-request method(s), which forkhorn never calls"
    )
    # A plain subclass is not warned.
    (tmp_path / "myworker_plain.py").write_text(WORKER_MODULE)
    result = run(["--check-config", "-k", "myworker_plain.MyWorker", "hello:app"], tmp_path)
    assert result.returncode == 0 and result.stderr == "", result.stderr


@pytest.mark.parametrize("closed", [[2], [1, 2], [0, 1, 2]])
def test_it_serves_with_standard_streams_closed(tmp_path: Path, closed: list[int]) -> None:
    """``forkhorn ... 2>&-``: Python starts with no sys.stderr, and the first log line
    stopped the start (exit 1, nothing printed anywhere)."""
    (tmp_path / "hello.py").write_text(APP)
    marker = tmp_path / "ready"
    (tmp_path / "forkhorn.conf.py").write_text(
        "import os, signal\n"
        "def when_ready(server):\n"
        f"    open({str(marker)!r}, 'w').write(str(os.fstat(2).st_ino))\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
    )

    def close_streams() -> None:
        for fd in closed:
            os.close(fd)

    result = run(["-b", "127.0.0.1:0", "hello:app"], tmp_path, preexec_fn=close_streams)
    assert result.returncode == 0
    assert marker.exists()
    assert int(marker.read_text()) == os.stat(os.devnull).st_ino  # not a log or a pipe


def test_a_bind_beside_systemd_sockets_is_said_to_be_unused(tmp_path: Path) -> None:
    """Under socket activation the sockets systemd passed are served, as in gunicorn, and
    a --bind of the command line is ignored: now with a line that says so."""
    (tmp_path / "hello.py").write_text(APP)
    (tmp_path / "forkhorn.conf.py").write_text(
        "import os, signal\ndef when_ready(server):\n    os.kill(os.getpid(), signal.SIGTERM)\n"
    )
    (tmp_path / "activate.py").write_text(
        "import os, socket, sys\n"
        "sock = socket.create_server(('127.0.0.1', 0))\n"
        "os.dup2(sock.fileno(), 3)\n"
        "os.set_inheritable(3, True)  # (a no-op dup2 when the socket is fd 3 already)\n"
        "os.environ.update(LISTEN_FDS='1', LISTEN_PID=str(os.getpid()))\n"
        "os.execv(sys.executable, [sys.executable, '-m', 'forkhorn', *sys.argv[1:]])\n"
    )
    args = ["--bind", "127.0.0.1:1", "hello:app"]
    result = run(args, tmp_path, command=[sys.executable, "activate.py"])
    assert result.returncode == 0, result.stderr
    assert (
        "Using the 1 socket(s) systemd passed (LISTEN_FDS); bind 127.0.0.1:1 is not used"
        in result.stderr
    )


def test_usr2_as_pid_1_is_refused(tmp_path: Path) -> None:
    """In a PID namespace without an init (a container), the new master would be PID 1's
    child, killed with it when the upgrade's TERM reaches the old master."""
    import shutil

    if shutil.which("unshare") is None:
        pytest.skip("no unshare")
    (tmp_path / "hello.py").write_text(APP)
    (tmp_path / "forkhorn.conf.py").write_text(
        "import os, signal, threading\n"
        "def when_ready(server):\n"
        "    os.kill(os.getpid(), signal.SIGUSR2)\n"
        "    threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGTERM)).start()\n"
    )
    command = ["unshare", "--pid", "--fork", "--mount-proc", sys.executable, "-m", "forkhorn"]
    result = run(["-b", "127.0.0.1:0", "hello:app"], tmp_path, command=command)
    if "Starting forkhorn" not in result.stderr:
        pytest.skip(f"cannot make a PID namespace here: {result.stderr.strip()[:200]}")
    assert result.returncode == 0, result.stderr
    assert "USR2 signal ignored: this master is PID 1" in result.stderr
    assert "Re-executing" not in result.stderr
