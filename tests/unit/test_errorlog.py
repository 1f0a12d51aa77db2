"""The error log: gunicorn's line format, levels, laziness, files, reopen, logconfig_dict."""

from __future__ import annotations

import calendar
import json
import logging
import os
import re
import subprocess
import sys
import time
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest

from forkhorn.errors import ConfigError
from forkhorn.logs import Logger

SRC = Path(__file__).resolve().parents[2] / "src"
LINE_RE = re.compile(
    r"^\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d [+-]\d{4}\] \[(?P<pid>\d+)\] \[(?P<level>[A-Z]+)\] "
    r"(?P<message>.*)$"
)


def settings(**overrides: Any) -> types.SimpleNamespace:
    values: dict[str, Any] = {
        "errorlog": "-",
        "loglevel": "info",
        "accesslog": None,
        "access_log_format": None,
        "capture_output": False,
        "logconfig_dict": {},
        "disable_redirect_access_to_syslog": False,
        "proc_name": None,
    }
    values.update(overrides)
    return types.SimpleNamespace(**values)


@pytest.fixture
def make_logger() -> Iterator[Callable[..., Logger]]:
    made: list[Logger] = []

    def make(**overrides: Any) -> Logger:
        logger = Logger(settings(**overrides))
        made.append(logger)
        return logger

    yield make
    for logger in made:
        logger.close()


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


def test_line_format_is_gunicorns(tmp_path: Path, make_logger: Callable[..., Logger]) -> None:
    path = tmp_path / "error.log"
    log = make_logger(errorlog=str(path))
    log.info("Listening at: %s (%s)", "http://127.0.0.1:8000", os.getpid())
    [line] = lines(path)
    match = LINE_RE.match(line)
    assert match is not None, line
    assert match["pid"] == str(os.getpid())
    assert match["level"] == "INFO"
    assert match["message"] == f"Listening at: http://127.0.0.1:8000 ({os.getpid()})"


def test_timestamp_exactly(tmp_path: Path, make_logger: Callable[..., Logger]) -> None:
    old = os.environ.get("TZ")
    os.environ["TZ"] = "XST-05:30"
    time.tzset()
    try:
        log = make_logger(errorlog=str(tmp_path / "error.log"))
        [handler] = log.error_log.handlers
        assert handler.formatter is not None
        record = logging.LogRecord("forkhorn.error", logging.WARNING, "x", 1, "hi %s", ("x",), None)
        record.created = float(calendar.timegm((2026, 11, 27, 2, 0, 0)))
        record.process = 4242
        assert handler.formatter.format(record) == (
            "[2026-11-27 07:30:00 +0530] [4242] [WARNING] hi x"
        )
    finally:
        if old is None:
            os.environ.pop("TZ", None)
        else:
            os.environ["TZ"] = old
        time.tzset()


def test_every_level(tmp_path: Path, make_logger: Callable[..., Logger]) -> None:
    path = tmp_path / "error.log"
    log = make_logger(errorlog=str(path), loglevel="debug")
    log.debug("d")
    log.info("i")
    log.warning("w")
    log.error("e")
    log.critical("c")
    log.log("warning", "by name %d", 1)
    log.log(logging.INFO, "by number")
    found = [(m["level"], m["message"]) for m in map(LINE_RE.match, lines(path)) if m]
    assert found == [
        ("DEBUG", "d"),
        ("INFO", "i"),
        ("WARNING", "w"),
        ("ERROR", "e"),
        ("CRITICAL", "c"),
        ("WARNING", "by name 1"),
        ("INFO", "by number"),
    ]


@pytest.mark.parametrize(
    ("loglevel", "expected"),
    [
        ("debug", ["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]),
        ("INFO", ["INFO", "WARNING", "ERROR", "CRITICAL"]),
        ("warning", ["WARNING", "ERROR", "CRITICAL"]),
        ("error", ["ERROR", "CRITICAL"]),
        ("critical", ["CRITICAL"]),
    ],
)
def test_level_filter(
    tmp_path: Path, make_logger: Callable[..., Logger], loglevel: str, expected: list[str]
) -> None:
    path = tmp_path / "error.log"
    log = make_logger(errorlog=str(path), loglevel=loglevel)
    for method in (log.debug, log.info, log.warning, log.error, log.critical):
        method("x")
    assert [m["level"] for m in map(LINE_RE.match, lines(path)) if m] == expected


class Counted:
    """An argument that counts how often it is turned into text."""

    def __init__(self) -> None:
        self.formatted = 0

    def __str__(self) -> str:
        self.formatted += 1
        return "counted"


def test_disabled_levels_are_never_formatted(
    tmp_path: Path, make_logger: Callable[..., Logger]
) -> None:
    path = tmp_path / "error.log"
    log = make_logger(errorlog=str(path), loglevel="warning")
    arg = Counted()
    log.debug("value %s", arg)
    log.info("value %s", arg)
    assert arg.formatted == 0
    log.warning("value %s", arg)
    assert arg.formatted == 1
    assert lines(path)[0].endswith("[WARNING] value counted")


def test_exception_has_traceback(tmp_path: Path, make_logger: Callable[..., Logger]) -> None:
    path = tmp_path / "error.log"
    log = make_logger(errorlog=str(path))
    try:
        raise ZeroDivisionError("nope")
    except ZeroDivisionError:
        log.exception("Error handling request %s", "/boom")
    text = path.read_text()
    assert LINE_RE.match(text.splitlines()[0])
    assert "[ERROR] Error handling request /boom\nTraceback (most recent call last):" in text
    assert text.endswith("ZeroDivisionError: nope\n")


def test_stderr_when_dash(
    make_logger: Callable[..., Logger], capsys: pytest.CaptureFixture[str]
) -> None:
    log = make_logger(errorlog="-")
    log.info("Booting worker with pid: %s", 17)
    out, err = capsys.readouterr()
    assert out == ""
    match = LINE_RE.match(err.rstrip("\n"))
    assert match is not None and match["message"] == "Booting worker with pid: 17"


def test_a_log_that_cannot_be_written_tells_its_losses_when_replaced(
    make_logger: Callable[..., Logger], capsys: pytest.CaptureFixture[str]
) -> None:
    """/dev/full fails every flush. The first failure is said at once, the next ones are
    counted; a new set-up (HUP) tells the count as it closes the old handler, whose own
    failing flush must not break the set-up."""
    log = make_logger(errorlog="/dev/full")
    for n in range(3):
        log.error("line %d", n)
    err = capsys.readouterr().err
    assert "cannot write the log /dev/full: [Errno 28] No space left on device; 1 line(s)" in err
    log.setup(settings(errorlog="-"))
    err = capsys.readouterr().err
    assert "cannot write the log /dev/full; 2 line(s) lost since the last report" in err
    log.tell_lost_lines()  # nothing left to tell
    assert "lost" not in capsys.readouterr().err


def test_bad_loglevel_is_a_config_error(make_logger: Callable[..., Logger]) -> None:
    with pytest.raises(ConfigError, match=r"loglevel = 'loud': expected one of debug, info"):
        make_logger(loglevel="loud")


def test_unopenable_file_is_a_config_error(
    tmp_path: Path, make_logger: Callable[..., Logger]
) -> None:
    missing = tmp_path / "no" / "such" / "dir" / "error.log"
    with pytest.raises(ConfigError) as info:
        make_logger(errorlog=str(missing))
    assert str(info.value) == f"cannot open error log {str(missing)!r}: No such file or directory"
    with pytest.raises(ConfigError, match="cannot open access log"):
        make_logger(accesslog=str(missing))


def test_reopen_after_rename(tmp_path: Path, make_logger: Callable[..., Logger]) -> None:
    path = tmp_path / "error.log"
    rotated = tmp_path / "error.log.1"
    log = make_logger(errorlog=str(path))
    log.info("one")
    path.rename(rotated)
    log.info("two")  # the handler still holds the renamed file
    log.reopen_files()
    log.info("three")
    assert [line.rsplit("] ", 1)[1] for line in lines(rotated)] == ["one", "two"]
    assert [line.rsplit("] ", 1)[1] for line in lines(path)] == ["three"]


def test_reopen_failure_keeps_the_old_file(
    tmp_path: Path, make_logger: Callable[..., Logger]
) -> None:
    logdir = tmp_path / "logs"
    logdir.mkdir()
    path = logdir / "error.log"
    log = make_logger(errorlog=str(path))
    moved = tmp_path / "moved"
    logdir.rename(moved)  # the directory is gone, so the path cannot be reopened
    log.reopen_files()
    log.info("still here")
    text = (moved / "error.log").read_text()
    assert "[ERROR] Cannot reopen" in text
    assert text.endswith("[INFO] still here\n")


def test_setup_again_replaces_handlers(tmp_path: Path, make_logger: Callable[..., Logger]) -> None:
    first, second = tmp_path / "first.log", tmp_path / "second.log"
    make_logger(errorlog=str(first))
    log = make_logger(errorlog=str(second))
    log.info("only in second")
    assert first.read_text() == ""
    assert lines(second)[0].endswith("[INFO] only in second")
    assert len(log.error_log.handlers) == 1


def test_logconfig_dict_replaces_the_formatter(
    tmp_path: Path, make_logger: Callable[..., Logger]
) -> None:
    custom = tmp_path / "custom.log"
    config = {
        "formatters": {"short": {"format": "%(levelname)s|%(name)s|%(message)s"}},
        "handlers": {
            "custom": {
                "class": "logging.FileHandler",
                "filename": str(custom),
                "formatter": "short",
            }
        },
        "loggers": {
            "forkhorn.error": {"level": "DEBUG", "handlers": ["custom"], "propagate": False},
            "forkhorn.access": {"level": "INFO", "handlers": ["custom"], "propagate": False},
        },
    }
    log = make_logger(logconfig_dict=config, loglevel="info")
    log.debug("debug via dict")
    assert log.access_enabled
    log.access({"REQUEST_METHOD": "GET"}, "204 No Content", [], 0, 0.0)
    for handler in log.error_log.handlers:
        handler.close()  # made by dictConfig, so not closed by Logger.close()
    assert lines(custom)[0] == "DEBUG|forkhorn.error|debug via dict"
    assert lines(custom)[1].startswith("INFO|forkhorn.access|- - - [")


def test_logconfig_dict_keeps_settings_handlers(
    tmp_path: Path, make_logger: Callable[..., Logger]
) -> None:
    path = tmp_path / "error.log"
    # A dict that only lowers a level still writes to --error-logfile, and with no
    # --access-logfile the access log stays off.
    config = {"loggers": {"forkhorn.error": {"level": "DEBUG", "handlers": ["forkhorn_error"]}}}
    log = make_logger(errorlog=str(path), logconfig_dict=config)
    log.debug("kept")
    assert lines(path)[0].endswith("[DEBUG] kept")
    assert not log.access_enabled


def test_bad_logconfig_dict_is_a_config_error(make_logger: Callable[..., Logger]) -> None:
    with pytest.raises(ConfigError, match="logconfig_dict"):
        make_logger(logconfig_dict={"handlers": {"h": {"class": "no.such.Handler"}}})


CAPTURE_SCRIPT = """
import os, sys, types
from forkhorn.logs import Logger
cfg = types.SimpleNamespace(
    errorlog=sys.argv[1], loglevel="info", accesslog=None, access_log_format=None,
    capture_output=True, logconfig_dict={}, disable_redirect_access_to_syslog=False,
    proc_name=None,
)
log = Logger(cfg)
log.info("logged")
print("printed")
sys.stdout.flush()
os.write(2, b"raw stderr\\n")
os.rename(sys.argv[1], sys.argv[1] + ".1")
log.reopen_files()
print("after reopen")
sys.stdout.flush()
"""


def test_capture_output_sends_stdout_and_stderr_to_the_error_log(tmp_path: Path) -> None:
    # Runs in a child: capture_output redirects file descriptors 1 and 2 of the process.
    path = tmp_path / "error.log"
    env = dict(os.environ, PYTHONPATH=str(SRC))
    done = subprocess.run(
        [sys.executable, "-c", CAPTURE_SCRIPT, str(path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "" and done.stderr == ""
    rotated = (tmp_path / "error.log.1").read_text()
    assert "[INFO] logged\n" in rotated
    assert "printed\n" in rotated
    assert "raw stderr\n" in rotated
    assert path.read_text() == "after reopen\n"


@pytest.mark.parametrize("qualname", ["forkhorn.error", "gunicorn.error"])
def test_log_config_ini_file_configures_the_loggers_it_names(
    tmp_path: Path, make_logger: Callable[..., Logger], qualname: str
) -> None:
    """gunicorn's --log-config (logging.config.fileConfig), written for forkhorn or for
    gunicorn (its logger names configure ours)."""
    custom = tmp_path / "ini.log"
    ini = tmp_path / "logging.ini"
    ini.write_text(
        "[loggers]\nkeys=root,error\n\n"
        "[handlers]\nkeys=file\n\n"
        "[formatters]\nkeys=short\n\n"
        "[logger_root]\nlevel=WARNING\nhandlers=\n\n"
        f"[logger_error]\nlevel=INFO\nhandlers=file\npropagate=0\nqualname={qualname}\n\n"
        f"[handler_file]\nclass=FileHandler\nformatter=short\nargs=({str(custom)!r},)\n\n"
        "[formatter_short]\nformat=INI %(levelname)s %(message)s\n"
    )
    log = make_logger(logconfig=str(ini))
    log.info("via the ini file")
    for handler in log.error_log.handlers:
        handler.close()  # made by fileConfig, so not closed by Logger.close()
    assert lines(custom) == ["INI INFO via the ini file"]


def test_log_config_json_file_is_a_dict_config(
    tmp_path: Path, make_logger: Callable[..., Logger]
) -> None:
    """gunicorn's --log-config-json: the same as logconfig_dict, from a file."""
    custom = tmp_path / "json.log"
    config = tmp_path / "logging.json"
    config.write_text(
        json.dumps(
            {
                "formatters": {"short": {"format": "JSON %(levelname)s %(message)s"}},
                "handlers": {
                    "f": {"class": "logging.FileHandler", "filename": str(custom),
                          "formatter": "short"},
                },
                "loggers": {"forkhorn.error": {"level": "INFO", "handlers": ["f"]}},
            }
        )
    )  # fmt: skip
    log = make_logger(logconfig_json=str(config))
    log.info("via the json file")
    for handler in log.error_log.handlers:
        handler.close()
    assert lines(custom) == ["JSON INFO via the json file"]


def test_of_several_logging_configs_the_first_in_gunicorns_order_is_used(
    tmp_path: Path, make_logger: Callable[..., Logger]
) -> None:
    """gunicorn takes logconfig_dict, then logconfig_json, then logconfig: a config
    file setting two of them works there, and must here (the unused one is not read)."""
    custom = tmp_path / "dict.log"
    as_dict = {
        "formatters": {"short": {"format": "DICT %(message)s"}},
        "handlers": {"f": {"class": "logging.FileHandler", "filename": str(custom),
                           "formatter": "short"}},
        "loggers": {"forkhorn.error": {"level": "INFO", "handlers": ["f"]}},
    }  # fmt: skip
    missing = str(tmp_path / "missing")
    log = make_logger(logconfig_dict=as_dict, logconfig_json=missing + ".json", logconfig=missing)
    log.info("the dict wins")
    for handler in log.error_log.handlers:
        handler.close()
    assert lines(custom) == ["DICT the dict wins"]
    with pytest.raises(ConfigError, match=r"^logconfig_json '.*missing.json': "):
        make_logger(logconfig_json=missing + ".json", logconfig=missing)


def test_a_log_config_file_that_cannot_be_read_is_one_config_error(
    tmp_path: Path, make_logger: Callable[..., Logger]
) -> None:
    with pytest.raises(ConfigError, match=r"^logconfig_json '.*missing.json': "):
        make_logger(logconfig_json=str(tmp_path / "missing.json"))
    with pytest.raises(ConfigError, match=r"^logconfig '.*missing.ini': .*doesn't exist"):
        make_logger(logconfig=str(tmp_path / "missing.ini"))
    ini = tmp_path / "no-formatters.ini"
    ini.write_text("[loggers]\nkeys=root\n\n[handlers]\nkeys=\n\n[logger_root]\nhandlers=\n")
    with pytest.raises(ConfigError, match="missing section or key 'formatters'"):
        make_logger(logconfig=str(ini))


def test_a_bad_logconfig_dict_says_why(tmp_path: Path, make_logger: Callable[..., Logger]) -> None:
    """logging.config's own words name the handler, not the reason (kept on __cause__)."""
    bad_module = {"handlers": {"h": {"class": "nosuch_module_here.Handler"}}}
    with pytest.raises(ConfigError, match=r"handler 'h': .*No module named 'nosuch_module_here'"):
        make_logger(logconfig_dict=bad_module)
    bad_file = {"handlers": {"h": {"class": "logging.FileHandler",
                                   "filename": str(tmp_path / "no" / "dir.log")}}}  # fmt: skip
    with pytest.raises(ConfigError, match=r"handler 'h': .*No such file or directory"):
        make_logger(logconfig_dict=bad_file)


def test_an_app_borrowing_gunicorns_handlers_logs_to_the_error_log(
    tmp_path: Path, make_logger: Callable[..., Logger]
) -> None:
    """The Flask recipe ``app.logger.handlers = getLogger("gunicorn.error").handlers``
    must not leave the app with no handler (its lines would be lost)."""
    path = tmp_path / "error.log"
    make_logger(errorlog=str(path), loglevel="debug")
    gunicorn_error = logging.getLogger("gunicorn.error")
    app_logger = logging.getLogger("test_errorlog.app")
    app_logger.propagate = False
    app_logger.handlers = gunicorn_error.handlers
    app_logger.setLevel(gunicorn_error.level)
    try:
        app_logger.debug("from the app")
    finally:
        app_logger.handlers = []
    (line,) = lines(path)
    match = LINE_RE.match(line)
    assert match is not None, line
    assert (match["level"], match["message"]) == ("DEBUG", "from the app")
    assert logging.getLogger("gunicorn.access").handlers == []  # no access log configured


def test_logconfig_dict_for_gunicorns_logger_configures_ours(
    tmp_path: Path, make_logger: Callable[..., Logger], capsys: pytest.CaptureFixture[str]
) -> None:
    custom = tmp_path / "gunicorn.log"
    config = {
        "formatters": {"short": {"format": "G %(levelname)s %(message)s"}},
        "handlers": {
            "file": {"class": "logging.FileHandler", "filename": str(custom), "formatter": "short"}
        },
        "loggers": {"gunicorn.error": {"level": "DEBUG", "handlers": ["file"]}},
    }
    log = make_logger(logconfig_dict=config, loglevel="info")
    log.debug("debug, enabled by the dict")
    handlers = list(log.error_log.handlers)
    make_logger(loglevel="warning")  # a reload with another configuration
    for handler in handlers:
        handler.close()  # made by dictConfig, so not closed by Logger.close()
    assert lines(custom) == ["G DEBUG debug, enabled by the dict"]
    assert capsys.readouterr().err == ""  # not also on stderr
    assert logging.getLogger("gunicorn.error").level == logging.WARNING


class _NoHealth(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "/health" not in record.getMessage()


class _NoHealthByAtoms(logging.Filter):
    """As gunicorn recipes write it: the atoms are the record's args."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        assert isinstance(args, dict)
        return bool(args["U"] != "/health" and args["{x-nothing}i"] == "-")


def _access(log: Logger, path: str) -> None:
    environ = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": path,
        "RAW_URI": path,
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "127.0.0.1",
    }
    log.access(environ, "200 OK", [], 2, 0.001)


@pytest.mark.parametrize("name", ["gunicorn.access", "forkhorn.access"])
@pytest.mark.parametrize("kind", [_NoHealth, _NoHealthByAtoms])
def test_a_filter_on_the_access_logger_drops_its_lines(
    tmp_path: Path, make_logger: Callable[..., Logger], name: str, kind: type
) -> None:
    """The usual recipe for health checks: a filter on gunicorn.access applied to nothing
    (the lines are made on forkhorn.access), and an entry for forkhorn.access that only
    added a filter left it with no handler, the access log silently off. A filter that
    reads ``record.args`` as gunicorn's atoms got an empty tuple."""
    path = tmp_path / "access.log"
    config = {
        "filters": {"nohealth": {"()": kind}},
        "loggers": {name: {"filters": ["nohealth"]}},
    }
    log = make_logger(accesslog=str(path), access_log_format="%(r)s %(s)s", logconfig_dict=config)
    assert log.access_enabled
    _access(log, "/health")
    _access(log, "/orders")
    assert lines(path) == ["GET /orders HTTP/1.1 200"]
    log.setup(settings(accesslog=str(path)))  # a reload without the filter
    assert logging.getLogger(name).filters == []
    _access(log, "/health")
    assert '"GET /health HTTP/1.1" 200' in lines(path)[-1]  # the filter went with its config


class _NoProbes(logging.Filter):
    """A gunicorn recipe: the atoms hold every request header, response header and environ
    key, lower-cased, whether the format shows them or not."""

    seen: ClassVar[list[tuple[object, ...]]] = []

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        assert isinstance(args, dict)
        _NoProbes.seen.append(
            (
                args.get("{x-request-id}i"),
                args["{X-Request-Id}i"],
                "{user-agent}i" in args,
                args.get("{content-type}o"),
                args["{remote_addr}e"],
                args.get("{x-absent}i", "default"),
                "{x-absent}i" in args,
                args["{x-absent}o"],
            )
        )
        return "kube-probe" not in str(args.get("{user-agent}i", ""))


def test_an_access_filter_reads_headers_and_environ_keys_the_format_does_not_show(
    tmp_path: Path, make_logger: Callable[..., Logger]
) -> None:
    """A filter written for gunicorn reads any header or environ atom, in any case, from
    ``record.args``: forkhorn held only the format's own, so such a filter never matched
    and the probe lines it was meant to drop were written."""
    path = tmp_path / "access.log"
    config = {
        "filters": {"noprobes": {"()": _NoProbes}},
        "loggers": {"gunicorn.access": {"filters": ["noprobes"]}},
    }
    log = make_logger(accesslog=str(path), access_log_format="%(U)s %(s)s", logconfig_dict=config)
    _NoProbes.seen.clear()
    for agent in ("kube-probe/1.29", "curl/8"):
        environ = {
            "REQUEST_METHOD": "GET",
            "PATH_INFO": "/",
            "RAW_URI": "/",
            "SERVER_PROTOCOL": "HTTP/1.1",
            "REMOTE_ADDR": "127.0.0.1",
            "HTTP_USER_AGENT": agent,
            "HTTP_X_REQUEST_ID": "abc123",
        }
        log.access(environ, "200 OK", [("Content-Type", "text/plain")], 2, 0.001)
    assert lines(path) == ["/ 200"]  # the probe's line was dropped
    expected = ("abc123", "abc123", True, "text/plain", "127.0.0.1", "default", False, "-")
    assert _NoProbes.seen == [expected, expected]


class _JsonAccess(logging.Formatter):
    """gunicorn's JSON access-log recipe: a formatter built on the atoms in record.args."""

    def format(self, record: logging.LogRecord) -> str:
        args = record.args
        assert isinstance(args, dict)
        return json.dumps({"path": args["U"], "status": args["s"], "agent": args["a"]})


class _HandlerFilterByAtoms(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        assert isinstance(args, dict)
        return bool(args["U"] != "/health")


@pytest.mark.parametrize("name", ["gunicorn.access", "forkhorn.access"])
def test_an_access_formatter_or_handler_filter_reads_the_atoms_from_record_args(
    tmp_path: Path, make_logger: Callable[..., Logger], name: str
) -> None:
    """A formatter or a handler's filter reading ``record.args`` got ``()`` (the atoms
    went only to filters on the logger): no JSON line was written, and a filter that then
    raised killed the sync worker at every request."""
    path = tmp_path / "access.json"
    config = {
        "formatters": {"json": {"()": _JsonAccess}},
        "filters": {"nohealth": {"()": _HandlerFilterByAtoms}},
        "handlers": {
            "jsonfile": {
                "class": "logging.FileHandler",
                "filename": str(path),
                "formatter": "json",
                "filters": ["nohealth"],
            }
        },
        "loggers": {name: {"handlers": ["jsonfile"], "level": "INFO"}},
    }
    log = make_logger(accesslog="-", logconfig_dict=config)
    try:
        _access(log, "/health")
        _access(log, "/orders")
        assert [json.loads(line) for line in lines(path)] == [
            {"path": "/orders", "status": "200", "agent": "-"}
        ]
    finally:  # the config's own handler: not the Logger's to close
        for handler in log.access_log.handlers:
            if isinstance(handler, logging.FileHandler):
                handler.close()


def test_a_raising_access_handler_costs_its_line_not_the_request(
    tmp_path: Path, make_logger: Callable[..., Logger]
) -> None:
    """The plain path (no filter, a plain formatter) let a handler's exception escape
    into the request: it must cost that line only, and be reported."""
    errors = tmp_path / "error.log"
    log = make_logger(errorlog=str(errors), accesslog=str(tmp_path / "access.log"))

    class _Broken(logging.Handler):
        def handle(self, record: logging.LogRecord) -> bool:
            raise RuntimeError("handler broke")

        def emit(self, record: logging.LogRecord) -> None:  # pragma: no cover
            pass

    broken = _Broken()
    log.access_log.addHandler(broken)
    try:
        _access(log, "/orders")  # must not raise
    finally:
        log.access_log.removeHandler(broken)
    assert "An access-log filter or handler failed" in errors.read_text()


def test_a_filter_added_by_code_stays_and_one_that_raises_costs_its_line(
    tmp_path: Path, make_logger: Callable[..., Logger], capsys: pytest.CaptureFixture[str]
) -> None:
    """gunicorn.access filters added by a config file's own code (or a post_fork hook)
    apply, across reloads; a filter that raises never fails the request."""
    path = tmp_path / "access.log"
    theirs = logging.getLogger("gunicorn.access")
    quiet = _NoHealth()
    try:
        log = make_logger(accesslog=str(path), access_log_format="%(r)s")
        theirs.addFilter(quiet)  # after the set-up, as a post_fork hook does
        _access(log, "/health")
        log.setup(settings(accesslog=str(path), access_log_format="%(r)s"))  # a reload
        _access(log, "/health")
        _access(log, "/orders")
        assert lines(path) == ["GET /orders HTTP/1.1"]

        class Broken(logging.Filter):
            def filter(self, record: logging.LogRecord) -> bool:
                raise TypeError("a filter written for something else")

        broken = Broken()
        theirs.addFilter(broken)
        _access(log, "/orders")  # no exception
        _access(log, "/orders")
        theirs.removeFilter(broken)
    finally:
        theirs.removeFilter(quiet)
    assert capsys.readouterr().err.count("An access-log filter or handler failed") == 1


@pytest.fixture
def root_logger() -> Iterator[logging.Logger]:
    """The root logger, put back as it was after a test's logging config changed it."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield root
    for handler in root.handlers:
        if handler not in handlers:
            handler.close()
    root.handlers = handlers
    root.setLevel(level)


@pytest.mark.parametrize("form", ["dict", "ini"])
def test_gunicorns_loggers_made_to_propagate_send_our_lines_to_the_root(
    tmp_path: Path,
    make_logger: Callable[..., Logger],
    capsys: pytest.CaptureFixture[str],
    root_logger: logging.Logger,
    form: str,
) -> None:
    """One formatted handler on the root logger for every line (JSON for a log pipeline):
    gunicorn's loggers with no handlers of their own and ``propagate`` on. forkhorn forced
    propagation off, so its lines kept the plain format on stderr and stdout."""
    custom = tmp_path / "root.log"
    if form == "dict":
        quiet = {"handlers": [], "propagate": True}
        log = make_logger(
            accesslog="-",
            logconfig_dict={
                "formatters": {"root": {"format": "ROOT %(name)s %(message)s"}},
                "handlers": {
                    "file": {"class": "logging.FileHandler", "filename": str(custom),
                             "formatter": "root"},
                },
                "root": {"level": "INFO", "handlers": ["file"]},
                "loggers": {"gunicorn.error": quiet, "gunicorn.access": quiet},
            },
        )  # fmt: skip
    else:
        ini = tmp_path / "logging.ini"
        ini.write_text(
            "[loggers]\nkeys=root,error,access\n\n"
            "[handlers]\nkeys=file\n\n"
            "[formatters]\nkeys=root\n\n"
            "[logger_root]\nlevel=INFO\nhandlers=file\n\n"
            "[logger_error]\nlevel=INFO\nhandlers=\npropagate=1\nqualname=gunicorn.error\n\n"
            "[logger_access]\nlevel=INFO\nhandlers=\npropagate=1\nqualname=gunicorn.access\n\n"
            f"[handler_file]\nclass=FileHandler\nformatter=root\nargs=({str(custom)!r},)\n\n"
            "[formatter_root]\nformat=ROOT %(name)s %(message)s\n"
        )
        log = make_logger(logconfig=str(ini))
    log.info("an error-log line")
    assert log.access_enabled
    log.access_log.info("an access line")
    for handler in root_logger.handlers:
        handler.flush()
    assert lines(custom) == [
        "ROOT forkhorn.error an error-log line",
        "ROOT forkhorn.access an access line",
    ]
    captured = capsys.readouterr()
    assert (captured.out, captured.err) == ("", "")  # not also in the plain format
    # A reload without that config: our own handlers again, nothing to the root.
    make_logger(loglevel="info")
    assert logging.getLogger("forkhorn.error").propagate is False
    assert logging.getLogger("gunicorn.error").propagate is False


@pytest.mark.parametrize(
    ("prefix", "tag"),
    [(None, "forkhorn.app.wsgi.error"), ("web", "forkhorn.web.error")],
)
def test_syslog_lines_are_gunicorns_with_our_name(
    tmp_path: Path, make_logger: Callable[..., Logger], prefix: str | None, tag: str
) -> None:
    """gunicorn writes ``gunicorn.<prefix>.error: [pid] message`` (the prefix being
    ``syslog_prefix`` or the process name, ``:`` made ``.``), with the level in the
    priority only; rsyslog filters key on that tag."""
    import socket

    path = tmp_path / "log.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(str(path))
        server.settimeout(10)
        log = make_logger(
            syslog=True,
            syslog_addr=f"unix://{path}",
            syslog_prefix=prefix,
            syslog_facility="local0",
            default_proc_name="app:wsgi",
        )
        log.warning("Listening at: %s", "x")
        line = server.recv(4096).decode()
    # local0 (16) * 8 + warning (4) = 132
    assert line.rstrip("\x00\n") == f"<132>{tag}: [{os.getpid()}] Listening at: x"


def test_a_syslog_line_too_long_for_a_datagram_is_cut_not_lost(
    tmp_path: Path, make_logger: Callable[..., Logger]
) -> None:
    """A client's huge headers made its access line longer than a datagram can carry:
    the line was dropped whole. It is cut to SYSLOG_MAX_BYTES, with a note."""
    import socket

    from forkhorn.logs.logger import SYSLOG_MAX_BYTES

    path = tmp_path / "log.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(str(path))
        server.settimeout(10)
        log = make_logger(syslog=True, syslog_addr=f"unix://{path}", syslog_facility="local0")
        log.error("huge %s end", "\\xff" * 50_000)
        line = server.recv(65536).decode()
    assert line.rstrip("\x00\n").endswith(" bytes cut]"), line[-80:]
    assert len(line.encode()) < SYSLOG_MAX_BYTES + 200


@pytest.mark.parametrize(
    ("overrides", "says"),
    [
        ({"errorlog": "/nonexistent-dir/e.log"}, "errorlog: cannot open"),
        ({"accesslog": "/tmp"}, "accesslog: '/tmp' is a directory"),
        (
            {"logconfig_dict": {"handlers": {"h": {"class": "logging.StreamHandler",
                                                   "level": "LOUD"}}}},
            "handler 'h': unknown level 'LOUD'",
        ),
        (
            {"logconfig_dict": {"loggers": {"gunicorn.error": {"handlers": ["nope"]}}}},
            "logger 'gunicorn.error' names no handler 'nope'",
        ),
        (
            {"logconfig_dict": {"handlers": {"f": {"class": "logging.FileHandler",
                                                   "filename": "/nonexistent-dir/x.log"}}}},
            "handler 'f': cannot open",
        ),
    ],
)  # fmt: skip
def test_check_logging_config_finds_what_the_start_would_fail_on(
    overrides: dict[str, Any], says: str
) -> None:
    """``--check-config``'s look, which opens nothing."""
    from forkhorn.logs import check_logging_config

    with pytest.raises(ConfigError, match=re.escape(says)):
        check_logging_config(settings(**overrides))
    check_logging_config(settings())  # the defaults pass


def test_syslog_on_a_unix_stream_socket_is_reached_without_saying_stream(
    tmp_path: Path, make_logger: Callable[..., Logger]
) -> None:
    """``unix://PATH`` meant a datagram socket only: a syslog daemon on a stream socket
    (syslog-ng's unix-stream) got nothing. Datagram first, then stream, as gunicorn."""
    import socket

    path = tmp_path / "log.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(str(path))
        server.listen()
        server.settimeout(10)
        log = make_logger(syslog=True, syslog_addr=f"unix://{path}", syslog_facility="local0")
        log.warning("over a stream")
        conn, _ = server.accept()
        with conn:
            conn.settimeout(10)
            data = conn.recv(4096).decode()
    assert "over a stream" in data


def test_a_logconfig_dict_keeps_syslog(tmp_path: Path, make_logger: Callable[..., Logger]) -> None:
    """A dict that only adds a filter (the health-check recipe) turned --log-syslog off
    for both logs: it is one of the settings the dict merges over."""
    import socket

    path = tmp_path / "log.sock"
    config = {"loggers": {"gunicorn.access": {"level": "INFO"}}}
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(str(path))
        server.settimeout(10)
        log = make_logger(
            syslog=True, syslog_addr=f"unix://{path}", syslog_facility="local0",
            accesslog="-", logconfig_dict=config,
        )  # fmt: skip
        log.warning("error line")
        assert "error line" in server.recv(4096).decode()
        _access(log, "/orders")
        assert "GET /orders HTTP/1.1" in server.recv(4096).decode()


def test_usr1_reopens_every_loggers_files(
    tmp_path: Path, make_logger: Callable[..., Logger]
) -> None:
    """A log config that gives the app's own logger a file: USR1 reopened only the error
    and access logs, and the app's lines went on into the rotated file (gunicorn reopens
    them all)."""
    app_log = tmp_path / "app.log"
    config = {
        "handlers": {"appfile": {"class": "logging.FileHandler", "filename": str(app_log)}},
        "loggers": {"myapp": {"handlers": ["appfile"], "level": "INFO"}},
    }
    log = make_logger(logconfig_dict=config)
    app = logging.getLogger("myapp")
    try:
        app.info("before")
        app_log.rename(tmp_path / "app.log.1")
        log.reopen_files()
        app.info("after")
        assert lines(app_log) == ["after"]
        assert lines(tmp_path / "app.log.1") == ["before"]
    finally:
        for handler in list(app.handlers):
            app.removeHandler(handler)
            handler.close()


INI = """
[loggers]
keys=root

[handlers]
keys=file

[formatters]
keys=plain

[logger_root]
level=INFO
handlers=file

[handler_file]
class=FileHandler
formatter=plain
args=('%(here)s/ini-error.log',)

[formatter_plain]
format=INI %(message)s
"""


def test_an_ini_log_config_has_gunicorns_here_and_file_defaults(
    tmp_path: Path, make_logger: Callable[..., Logger]
) -> None:
    """``%(here)s`` and ``%(__file__)s`` were refused ("Bad value substitution"): gunicorn
    gives fileConfig both, and ini files written for it put their logs beside them."""
    ini = tmp_path / "log.ini"
    ini.write_text(INI.replace("[logger_root]", "[logger_root]\n# %(__file__)s"))
    from forkhorn.logs import check_logging_config

    check_logging_config(settings(logconfig=str(ini)))  # --check-config takes it too
    make_logger(logconfig=str(ini))
    root = logging.getLogger()
    try:
        root.info("from the root")
        assert lines(tmp_path / "ini-error.log") == ["INI from the root"]
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
            handler.close()


@pytest.mark.parametrize("text", ["class=NoSuchHandler", "class=nosuch.module.Handler"])
def test_an_ini_naming_a_class_that_does_not_import_is_one_line(
    tmp_path: Path, make_logger: Callable[..., Logger], text: str
) -> None:
    ini = tmp_path / "log.ini"
    ini.write_text(INI.replace("class=FileHandler", text))
    with pytest.raises(ConfigError, match=r"logconfig '.*log\.ini': "):
        make_logger(logconfig=str(ini))


def test_a_refused_reload_sets_the_previous_log_config_up_from_what_it_read(
    tmp_path: Path, make_logger: Callable[..., Logger]
) -> None:
    """A HUP refused because the --log-config file on disk is now broken: the restore
    read the same broken file, failed too, and left the logs half set up (the master's
    lines off their file, new workers without an access log). ``restore`` uses what the
    previous set-up read."""
    ini = tmp_path / "log.ini"
    ini.write_text(INI)
    log = make_logger(logconfig=str(ini))
    before = log.snapshot()
    ini.write_text(INI.replace("class=FileHandler", "class=NoSuchHandler"))
    with pytest.raises(ConfigError):
        log.setup(before[0])
    log.restore(before)
    root = logging.getLogger()
    try:
        root.info("after the refused reload")
        assert lines(tmp_path / "ini-error.log")[-1] == "INI after the refused reload"
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
            handler.close()


class _Redact(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        assert isinstance(args, dict)
        args["{x-token}i"] = "***"  # gunicorn's atoms are lower-cased
        return True


def test_an_access_filter_can_redact_a_header_the_format_names_in_another_case(
    tmp_path: Path, make_logger: Callable[..., Logger]
) -> None:
    """The format's ``%({X-Token}i)s`` was kept under that spelling, so a filter writing
    gunicorn's lower-case key changed nothing and the secret was logged."""
    path = tmp_path / "access.log"
    config = {"filters": {"redact": {"()": _Redact}},
              "loggers": {"gunicorn.access": {"filters": ["redact"]}}}  # fmt: skip
    log = make_logger(
        accesslog=str(path), access_log_format="%(U)s token=%({X-Token}i)s",
        logconfig_dict=config,
    )  # fmt: skip
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/", "RAW_URI": "/",
               "SERVER_PROTOCOL": "HTTP/1.1", "HTTP_X_TOKEN": "s3cret"}  # fmt: skip
    log.access(environ, "200 OK", [], 2, 0.001)
    assert lines(path) == ["/ token=***"]


def test_a_format_header_the_request_lacks_is_not_in_the_atoms(
    make_logger: Callable[..., Logger],
) -> None:
    """A header the format shows but the request did not send: ``in`` said True and
    ``get(key, default)`` gave "-", so a filter dropping requests that carry it dropped
    every line. Absent, as in gunicorn; the line still reads "-"."""
    from forkhorn.logs.access import AccessFormat

    fmt = AccessFormat("%(U)s probe=%({X-Probe}i)s")
    environ = {"PATH_INFO": "/", "HTTP_X_EMPTY": ""}
    atoms = fmt.atoms(environ, "200 OK", [], 0, 0.0, 0.0)
    assert "{x-probe}i" not in atoms and atoms.get("{x-probe}i", "none") == "none"
    assert fmt.fmt % atoms == "/ probe=-"
    atoms = fmt.atoms({**environ, "HTTP_X_PROBE": "1"}, "200 OK", [], 0, 0.0, 0.0)
    assert "{x-probe}i" in atoms and fmt.fmt % atoms == "/ probe=1"


def test_usr1_leaves_a_delayed_file_unopened(
    tmp_path: Path, make_logger: Callable[..., Logger]
) -> None:
    """A handler with ``delay=True`` that has written nothing: USR1 created its file."""
    path = tmp_path / "never.log"
    config = {
        "handlers": {"lazy": {"class": "logging.FileHandler", "filename": str(path),
                              "delay": True}},
        "loggers": {"quiet": {"handlers": ["lazy"]}},
    }  # fmt: skip
    log = make_logger(logconfig_dict=config)
    quiet = logging.getLogger("quiet")
    try:
        log.reopen_files()
        assert not path.exists()
    finally:
        for handler in list(quiet.handlers):
            quiet.removeHandler(handler)
            handler.close()


def test_a_broken_ini_is_named_by_its_path(
    tmp_path: Path, make_logger: Callable[..., Logger]
) -> None:
    ini = tmp_path / "log.ini"
    ini.write_text("[loggers]\nkeys=root\nthis is not ini\n")
    with pytest.raises(ConfigError) as info:
        make_logger(logconfig=str(ini))
    assert str(ini) in str(info.value) and "StringIO" not in str(info.value)


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_handlers_added_to_gunicorns_loggers_get_the_lines(
    tmp_path: Path, make_logger: Callable[..., Logger]
) -> None:
    """As under gunicorn, where these are the loggers that write: a handler an app adds to
    ``gunicorn.error`` or ``gunicorn.access`` (Sentry, JSON, a file) gets the error lines
    and the access lines, besides the configured logs; one a config file adds at its top,
    before the set-up, too, and it stays through a set-up again (HUP)."""
    early, late_error, late_access = _Collect(), _Collect(), _Collect()
    logging.getLogger("gunicorn.error").addHandler(early)  # a config file's top level
    error_path, access_path = tmp_path / "error.log", tmp_path / "access.log"
    log = make_logger(errorlog=str(error_path), accesslog=str(access_path))
    try:
        logging.getLogger("gunicorn.error").addHandler(late_error)  # the app, at import
        logging.getLogger("gunicorn.access").addHandler(late_access)
        log.error("Error handling request /boom")
        log.access({"REQUEST_METHOD": "GET", "PATH_INFO": "/"}, "200 OK", [], 2, 0.001)
        assert early.messages == late_error.messages == ["Error handling request /boom"]
        assert len(late_access.messages) == 1 and "GET" in late_access.messages[0]
        assert "Error handling request /boom" in error_path.read_text()  # still there too
        assert len(lines(access_path)) == 1
        log.setup(settings(errorlog=str(error_path), accesslog=str(access_path)))  # HUP
        log.warning("after the reload")
        assert early.messages[-1] == "after the reload"
        assert logging.getLogger("gunicorn.error").handlers.count(early) == 1
    finally:
        for name, handler in (
            ("gunicorn.error", early), ("gunicorn.error", late_error),
            ("gunicorn.access", late_access),
        ):  # fmt: skip
            logging.getLogger(name).removeHandler(handler)


def test_gunicorns_access_logger_disabled_turns_the_access_log_off(
    tmp_path: Path, make_logger: Callable[..., Logger]
) -> None:
    """``logging.getLogger("gunicorn.access").disabled = True`` (a config file's way to
    turn the access log off) does so here too, set before the set-up or after."""
    path = tmp_path / "access.log"
    gunicorn_access = logging.getLogger("gunicorn.access")
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/"}
    gunicorn_access.disabled = True
    try:
        log = make_logger(accesslog=str(path))
        log.access(environ, "200 OK", [], 2, 0.001)
        assert lines(path) == []
        gunicorn_access.disabled = False
        log.setup(settings(accesslog=str(path)))
        log.access(environ, "200 OK", [], 2, 0.001)
        assert len(lines(path)) == 1
        gunicorn_access.disabled = True  # the app, later
        log.access(environ, "200 OK", [], 2, 0.001)
        assert len(lines(path)) == 1
    finally:
        gunicorn_access.disabled = False
