"""The error log and the access log, wired from gunicorn-named settings.

``Logger(cfg)`` sets up two stdlib loggers, ``forkhorn.error`` and ``forkhorn.access``, and
is the only object the arbiter and the workers log through.

Rules kept here:
- Error-log lines look exactly like gunicorn's, which users grep and parse:
  ``[2026-11-27 02:00:00 +0000] [1234] [INFO] Listening at: http://127.0.0.1:8000 (1234)``.
- A message whose level is disabled is never formatted: arguments are printf-style and
  handed to ``logging`` unformatted, after a level check.
- A disabled access log costs one attribute test per request; an enabled one formats only
  the atoms its format names (see ``access.py``) and skips logging's caller lookup.
- ``errorlog``/``accesslog`` ``-`` mean stderr/stdout, anything else is a file opened in
  append mode; a file that cannot be opened is a ``ConfigError`` (one line, at start-up).
- ``logconfig_dict``, when non-empty, is merged over the handlers the settings above would
  make and handed to ``logging.config.dictConfig``; the root logger is left alone unless the
  dict configures it.
- ``gunicorn.error`` and ``gunicorn.access`` are the same logs under gunicorn's names: a
  logging config that configures them configures ours, and they share our handlers.
- ``reopen_files()`` (SIGUSR1, after logrotate moved the files) reopens every file handler
  of both loggers on the same path, and the captured stdout/stderr file.

Runs in: the master and, inherited through fork, every worker. ``reopen_files`` is called
from the main loop of each process, never from a signal handler.
"""

from __future__ import annotations

import configparser
import contextlib
import copy
import json
import logging
import logging.config
import logging.handlers
import os
import socket
import sys
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from typing import IO, Any, Protocol

from forkhorn.errors import ConfigError
from forkhorn.logs.access import DEFAULT_ACCESS_LOG_FORMAT, AccessFormat, AccessFormatError

__all__ = ["ERROR_LOG_DATEFMT", "ERROR_LOG_FORMAT", "LogSettings", "Logger"]

ERROR_LOG_FORMAT = "%(asctime)s [%(process)d] [%(levelname)s] %(message)s"
ERROR_LOG_DATEFMT = "[%Y-%m-%d %H:%M:%S %z]"
ACCESS_LOG_LINE_FORMAT = "%(message)s"

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "warn": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}

# syslog: gunicorn's address forms and its default (UDP to the local daemon).
_SYSLOG_DEFAULT_ADDR = "udp://localhost:514"
_SYSLOG_PORT = 514


class LogSettings(Protocol):
    """The settings ``Logger`` reads; the names are gunicorn's (``forkhorn.config.Config``).

    Optional, read with defaults when absent: ``syslog``, ``syslog_addr``,
    ``syslog_prefix``, ``syslog_facility``, ``access_log_escape``.
    """

    @property
    def errorlog(self) -> str | None: ...
    @property
    def loglevel(self) -> str: ...
    @property
    def accesslog(self) -> str | None: ...
    @property
    def access_log_format(self) -> str | None: ...
    @property
    def capture_output(self) -> bool: ...
    @property
    def logconfig_dict(self) -> Mapping[str, Any] | None: ...
    @property
    def disable_redirect_access_to_syslog(self) -> bool: ...
    @property
    def proc_name(self) -> str | None: ...


#: A log that cannot be written (a full disk, a closed pipe) is said on stderr at most
#: once per this many seconds, with the count of lines lost, instead of logging's own
#: 40-line traceback for every line (every request, for the access log).
WRITE_FAILURE_REPORT_EVERY = 60.0


class _QuietFailures:
    """``handleError`` for forkhorn's handlers: one line now and then, not a traceback per
    record. The server goes on serving either way."""

    _lost = 0
    _reported_at = -WRITE_FAILURE_REPORT_EVERY

    def handleError(self, record: logging.LogRecord) -> None:
        self._lost += 1
        now = time.monotonic()
        if now - self._reported_at < WRITE_FAILURE_REPORT_EVERY:
            return
        self._report(f": {sys.exc_info()[1]}")
        self._reported_at = now

    def close(self) -> None:
        # A new logging set-up (HUP) closes the old handlers: the lines they lost since
        # the last report are told, and the failing flush of a close must not stop it.
        self.tell_lost_lines()
        try:
            super().close()  # type: ignore[misc]
        except (OSError, ValueError):
            pass

    def tell_lost_lines(self) -> None:
        """Report the lines lost since the last report, if any (the process is ending)."""
        if self._lost:
            self._report("")

    def _report(self, error: str) -> None:
        where = getattr(self, "baseFilename", None) or type(self).__name__
        try:
            sys.stderr.write(
                f"forkhorn [{os.getpid()}]: cannot write the log {where}{error}; "
                f"{self._lost} line(s) lost since the last report\n"
            )
            sys.stderr.flush()
        except (OSError, ValueError, AttributeError):  # AttributeError: no stderr at all
            pass
        self._lost = 0


class _OwnFileHandler(_QuietFailures, logging.FileHandler):
    """A file handler made by ``Logger``, so a second set-up can close it."""


class _OwnStreamHandler(_QuietFailures, logging.StreamHandler):  # type: ignore[type-arg]
    """A stderr/stdout handler made by ``Logger``."""


#: The longest syslog message sent, in bytes: rsyslog's default maximum is 8 KiB and a UDP
#: datagram 64 KiB. A longer line (a client's huge headers in the access line) is cut, with
#: a note, rather than lost whole: the client could otherwise hide its own request.
SYSLOG_MAX_BYTES = 8000


class _OwnSyslogHandler(_QuietFailures, logging.handlers.SysLogHandler):
    """A syslog handler made by ``Logger``."""

    #: How its failures name it (``syslog unix:///dev/log``), set by the Logger.
    baseFilename = "syslog"

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        data = text.encode("utf-8", "surrogateescape")
        if len(data) <= SYSLOG_MAX_BYTES:
            return text
        kept = data[:SYSLOG_MAX_BYTES].decode("utf-8", "ignore")
        return f"{kept} [... {len(data) - SYSLOG_MAX_BYTES} bytes cut]"


_OWN_HANDLERS = (_OwnFileHandler, _OwnStreamHandler, _OwnSyslogHandler)
#: Handlers a logging config (``--log-config``, ``logconfig_dict``) gave our logs: the next
#: set-up replaces them, where handlers that code added to gunicorn's loggers are kept.
_CONFIG_MADE: weakref.WeakSet[logging.Handler] = weakref.WeakSet()


def parse_level(name: str | int) -> int:
    """A ``loglevel`` setting as a ``logging`` level number."""
    if isinstance(name, int):
        return name
    try:
        return _LEVELS[name.strip().lower()]
    except KeyError:
        choices = ", ".join(k for k in _LEVELS if k != "warn")
        raise ConfigError(f"loglevel = {name!r}: expected one of {choices}") from None


def _error_formatter() -> logging.Formatter:
    return logging.Formatter(ERROR_LOG_FORMAT, ERROR_LOG_DATEFMT)


def _open_file_handler(path: str, what: str) -> logging.FileHandler:
    try:
        return _OwnFileHandler(path, mode="a", encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot open {what} {path!r}: {exc.strerror or exc}") from None


def _kept_or_read(
    sources: Mapping[str, Any] | None, key: str, read: Callable[[str], Any], path: str
) -> Any:
    """A logging config file's contents: as ``Logger.snapshot`` kept them, else read."""
    if sources is not None and key in sources:
        return sources[key]
    return read(path)


def _read_ini_config(path: str) -> str:
    """``--log-config``: the text of a ``logging.config.fileConfig`` file. (Python 3.10's
    fileConfig reads a missing or empty file as an empty config, KeyError 'formatters':
    said here as 3.11+ says it.)"""
    if not os.path.exists(path):
        raise ConfigError(f"logconfig {path!r}: {path} doesn't exist")
    try:
        with open(path, encoding="utf-8") as file:
            text = file.read()
    except (OSError, ValueError) as exc:
        raise ConfigError(f"logconfig {path!r}: {exc}") from None
    if not text:
        raise ConfigError(f"logconfig {path!r}: {path} is an empty file")
    return text


def _read_json_config(path: str) -> dict[str, Any]:
    """``--log-config-json``: a file holding a ``logging.config.dictConfig`` dict."""
    try:
        with open(path, encoding="utf-8") as file:
            value = json.load(file)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"logconfig_json {path!r}: {exc}") from None
    if not isinstance(value, dict):
        raise ConfigError(f"logconfig_json {path!r}: expected a JSON object")
    return value


def _config_failure(exc: BaseException) -> str:
    """What was wrong with a logging config, in words: ``logging.config`` says "Unable to
    configure handler 'h'" and keeps the reason (a missing module, a file that cannot be
    opened) on ``__cause__``; ``fileConfig`` says ``KeyError('formatters')`` for a
    missing section."""
    if isinstance(exc, KeyError):
        text = f"missing section or key {exc.args[0]!r}" if exc.args else "missing a section"
    else:
        text = str(exc) or type(exc).__name__
    cause = exc.__cause__ or exc.__context__
    if cause is not None and str(cause) and str(cause) not in text:
        text += f": {cause}"
    return text


def check_logging_config(cfg: Any) -> None:
    """``--check-config``'s look at the logging settings, without opening anything: the
    ``logconfig`` file exists and has its sections, ``logconfig_json`` is a JSON object,
    and every handler, formatter and filter class a config names can be imported.
    Raises ``ConfigError`` (one line), as the start would."""
    _access_format(cfg)
    if getattr(cfg, "syslog", False):
        _syslog_settings(cfg)
    for setting in ("errorlog", "accesslog"):
        path = getattr(cfg, setting, None)
        if path and path != "-":
            _writable(path, setting)
    json_file, ini = _logging_config_files(cfg)  # only the one the set-up uses
    if ini:
        if not os.path.exists(ini):
            raise ConfigError(f"logconfig {ini!r}: {ini} doesn't exist")
        parser = configparser.ConfigParser({"__file__": ini, "here": os.path.dirname(ini)})
        try:
            parser.read(ini, encoding="utf-8")
        except (configparser.Error, UnicodeDecodeError) as exc:
            raise ConfigError(f"logconfig {ini!r}: {exc}") from None
        for section in ("loggers", "handlers", "formatters"):
            if section not in parser:
                raise ConfigError(f"logconfig {ini!r}: missing section or key {section!r}")
        where = f"logconfig {ini!r}"
        handler_keys = _keys(parser["handlers"])
        for key in handler_keys:
            klass = parser.get(f"handler_{key}", "class", fallback=None)
            if klass is None:
                raise ConfigError(f"{where}: missing section or key 'handler_{key}'")
            handler = _importable(klass, f"{where}: handler {key!r}", ini=True)
            try:  # fileConfig evaluates args in the logging module's names too
                args = eval(parser.get(f"handler_{key}", "args", fallback="()"), vars(logging))
            except Exception as exc:
                raise ConfigError(f"{where}: handler {key!r}: bad args: {exc}") from None
            if (
                isinstance(handler, type)
                and issubclass(handler, logging.FileHandler)
                and isinstance(args, tuple)
                and args
                and isinstance(args[0], str)
            ):
                _writable(args[0], f"{where}: handler {key!r}")
        for key in _keys(parser["loggers"]):
            section = "logger_root" if key == "root" else f"logger_{key}"
            if section not in parser:
                raise ConfigError(f"{where}: missing section or key {section!r}")
            for handler_key in _keys(parser[section], "handlers"):
                if handler_key not in handler_keys:
                    raise ConfigError(f"{where}: {section} names no handler {handler_key!r}")
    user = _read_json_config(json_file) if json_file else getattr(cfg, "logconfig_dict", None)
    if not user:
        return
    label = f"logconfig_json {json_file!r}" if json_file else "logconfig_dict"
    for section in ("handlers", "formatters", "filters", "loggers"):
        entries = user.get(section) or {}
        if not isinstance(entries, Mapping):
            raise ConfigError(f"{label}: {section} must be a dict")
        for name, entry in entries.items():
            if not isinstance(entry, Mapping):
                continue
            where = f"{label}: {section[:-1]} {name!r}"
            klass = entry.get("()") or entry.get("class")
            if isinstance(klass, str) and section != "loggers":
                _importable(klass, where)
            _known_level(entry.get("level"), where)
            if section == "handlers" and isinstance(entry.get("filename"), str):
                _writable(entry["filename"], where)
    handlers = set(user.get("handlers") or {}) | {"forkhorn_error", "forkhorn_access"}
    loggers = dict(user.get("loggers") or {})
    if isinstance(user.get("root"), Mapping):
        loggers["root"] = user["root"]
        _known_level(user["root"].get("level"), f"{label}: root")
    for name, entry in loggers.items():
        if isinstance(entry, Mapping):
            for handler in entry.get("handlers") or ():
                if handler not in handlers:
                    raise ConfigError(f"{label}: logger {name!r} names no handler {handler!r}")


def _known_level(level: object, where: str) -> None:
    if level is None or isinstance(level, int):
        return
    # getLevelName maps a known name to its number (getLevelNamesMapping is 3.11's).
    if not isinstance(logging.getLevelName(str(level).upper()), int):
        raise ConfigError(f"{where}: unknown level {level!r}")


def _writable(path: str, where: str) -> None:
    """A log file the start would open: a file, in a directory that exists and that
    this process may write (checked without opening it)."""
    target = os.path.abspath(path)
    if os.path.isdir(target):
        raise ConfigError(f"{where}: {path!r} is a directory")
    directory = os.path.dirname(target)
    if not os.path.isdir(directory):
        raise ConfigError(f"{where}: cannot open {path!r}: no directory {directory}")
    if not os.access(target if os.path.exists(target) else directory, os.W_OK):
        raise ConfigError(f"{where}: cannot open {path!r}: permission denied")


def _keys(section: configparser.SectionProxy, option: str = "keys") -> list[str]:
    return [key.strip() for key in section.get(option, "").split(",") if key.strip()]


def _logging_config_files(cfg: Any) -> tuple[str | None, str | None]:
    """``logconfig_json`` and ``logconfig``, each None unless it is the logging config
    used: gunicorn takes the first set of ``logconfig_dict``, ``logconfig_json`` and
    ``logconfig`` (the config warns of the others)."""
    if getattr(cfg, "logconfig_dict", None):
        return None, None
    json_file = getattr(cfg, "logconfig_json", None)
    return json_file, None if json_file else getattr(cfg, "logconfig", None)


def _importable(name: str, where: str, ini: bool = False) -> Any:
    """Resolve a class named in a logging config as ``logging.config`` would."""
    try:
        if ini:
            try:  # fileConfig's own lookup: a name in the logging module first
                return eval(name, vars(logging))  # as logging.config.fileConfig does
            except (AttributeError, NameError, SyntaxError):
                pass
        return logging.config.BaseConfigurator({}).resolve(name)
    except (ImportError, ValueError, AttributeError) as exc:
        raise ConfigError(f"{where}: cannot import {name!r}: {_config_failure(exc)}") from None


_SyslogAddress = tuple[str | tuple[str, int], socket.SocketKind | None]


def parse_syslog_address(addr: str) -> _SyslogAddress:
    """gunicorn's syslog_addr forms: unix://PATH[#dgram|#stream], udp://H:P, tcp://H:P.
    A unix socket of neither kind is tried as a datagram socket, then as a stream one
    (``socktype`` None: logging's fallback, as gunicorn leaves it): syslog-ng and some
    containers' log collectors listen on a stream socket. Raises ``ValueError`` saying
    what was expected (``_syslog_settings`` names the setting and its source)."""
    scheme, sep, rest = addr.partition("://")
    if not sep:
        raise ValueError("expected unix://, udp:// or tcp://")
    scheme = scheme.lower()
    if scheme == "unix":
        path, _, kind = rest.partition("#")
        kinds = {"stream": socket.SOCK_STREAM, "dgram": socket.SOCK_DGRAM}
        return path, kinds.get(kind)
    if scheme in ("udp", "tcp"):
        host, _, port = rest.rpartition(":") if ":" in rest else (rest, "", "")
        host = host.strip("[]") or "localhost"
        try:
            number = int(port) if port else _SYSLOG_PORT
        except ValueError:
            raise ValueError(f"bad port {port!r}") from None
        socktype = socket.SOCK_DGRAM if scheme == "udp" else socket.SOCK_STREAM
        return (host, number), socktype
    raise ValueError("expected unix://, udp:// or tcp://")


def syslog_facility(name: str) -> int:
    """A syslog facility's number from its name, in any case (``ValueError`` if unknown)."""
    facility = logging.handlers.SysLogHandler.facility_names.get(name.lower())
    if facility is None:
        raise ValueError(
            "unknown facility; expected one of "
            + ", ".join(sorted(logging.handlers.SysLogHandler.facility_names))
        )
    return facility


def _setting_error(cfg: Any, name: str, value: object, reason: str) -> ConfigError:
    """A bad logging value, named as the config's own errors name a setting: with where
    it came from, when the settings know (a ``Config``)."""
    origin = ""
    source = getattr(cfg, "source", None)
    if callable(source):
        with contextlib.suppress(KeyError):
            origin = f" (from {source(name)})"
    return ConfigError(f"{name} = {value!r}{origin}: {reason}")


def _access_format(cfg: Any) -> AccessFormat:
    fmt = getattr(cfg, "access_log_format", None) or DEFAULT_ACCESS_LOG_FORMAT
    try:
        return AccessFormat(fmt, getattr(cfg, "access_log_escape", "default"))
    except AccessFormatError as exc:
        raise _setting_error(cfg, "access_log_format", fmt, exc.reason) from None


def _syslog_settings(cfg: Any) -> tuple[str, _SyslogAddress, int]:
    """``syslog_addr`` (as given, and parsed) and ``syslog_facility``'s number."""
    addr = getattr(cfg, "syslog_addr", None) or _SYSLOG_DEFAULT_ADDR
    try:
        parsed = parse_syslog_address(addr)
    except ValueError as exc:
        raise _setting_error(cfg, "syslog_addr", addr, str(exc)) from None
    name = getattr(cfg, "syslog_facility", None) or "user"
    try:
        facility = syslog_facility(name)
    except ValueError as exc:
        raise _setting_error(cfg, "syslog_facility", name, str(exc)) from None
    return addr, parsed, facility


def _release_handlers(logger: logging.Logger) -> None:
    """Remove every handler; close the ones a Logger made. Handlers someone else made (a
    logging config) are removed but left open."""
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        if isinstance(handler, _OWN_HANDLERS):
            handler.close()


class WSGIErrors:
    """``wsgi.errors``: what the app writes goes to the error log's streams, as in gunicorn.

    Flask's default handler and wsgiref-style apps write here; with ``--error-logfile``
    gunicorn puts those lines (and the tracebacks of unhandled exceptions) in that file,
    not on stderr, which a daemonized master points at /dev/null. The streams are looked
    up on each write, so a file reopened by USR1 is followed. Falls back to stderr when
    no handler has a stream (syslog only).
    """

    def __init__(self, logger: logging.Logger) -> None:
        self._logger = logger

    def _streams(self) -> list[Any]:
        streams: list[Any] = []
        for handler in self._logger.handlers:
            stream = getattr(handler, "stream", None)
            if stream is not None and not any(stream is s for s in streams):
                streams.append(stream)
        return streams or [sys.stderr]

    def write(self, data: str) -> int:
        for stream in self._streams():
            try:
                stream.write(data)
                stream.flush()
            except (OSError, ValueError):
                pass  # a closed or broken log stream must not fail the request
        return len(data)

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        for stream in self._streams():
            try:
                stream.flush()
            except (OSError, ValueError):
                pass


class Logger:
    """The error log and the access log of one forkhorn process tree.

    ``debug/info/warning/error/critical/exception(msg, *args)`` take printf-style arguments,
    as ``logging`` does. ``access(...)`` writes one access-log line when ``access_enabled``.
    """

    def __init__(self, cfg: LogSettings) -> None:
        self.error_log = logging.getLogger("forkhorn.error")
        self.access_log = logging.getLogger("forkhorn.access")
        self.cfg = cfg
        self._access_format = AccessFormat()
        self._access_enabled = False
        self._gunicorn_access = logging.getLogger("gunicorn.access")
        # Handlers code added to gunicorn's loggers (kept across set-ups) and those the
        # user's logging config made (replaced by each set-up): _close_own_handlers.
        self._added: dict[str, list[logging.Handler]] = {}
        self._access_handler_filters = False
        self._access_failed_at = -WRITE_FAILURE_REPORT_EVERY
        self._config_filters: list[tuple[logging.Logger, Any]] = []
        self._filters_before: dict[str, list[Any]] = {}
        self._capture_path: str | None = None
        self._capture_file: IO[str] | None = None
        self._sources: dict[str, Any] = {}  # the logging config files' contents (snapshot)
        self.setup(cfg)

    # -- set-up ---------------------------------------------------------------------------

    def snapshot(self) -> tuple[LogSettings, dict[str, Any]]:
        """The current set-up, for ``restore``: the settings and what its logging config
        files held when they were read (a refused or abandoned reload sets the previous
        logging up again, and the file on disk may be the new, broken one by then)."""
        return self.cfg, dict(self._sources)

    def restore(self, snapshot: tuple[LogSettings, dict[str, Any]]) -> None:
        """Set up again what ``snapshot`` saw, from the files' contents it kept."""
        cfg, sources = snapshot
        self.setup(cfg, sources)

    def setup(self, cfg: LogSettings, sources: Mapping[str, Any] | None = None) -> None:
        """(Re)configure both logs from ``cfg``; also used on HUP with the new config.
        ``sources``: logging config files' contents to use instead of reading them."""
        self.cfg = cfg
        read: dict[str, Any] = {}
        access_format = _access_format(cfg)
        level = parse_level(cfg.loglevel or "info")

        self._close_own_handlers()
        self.error_log.propagate = False
        self.error_log.setLevel(level)
        self.access_log.propagate = False
        self.access_log.setLevel(logging.INFO)
        for ours, theirs in self._gunicorn_pairs():
            # Stays so unless the user's logging config asks for propagation (which
            # dictConfig leaves alone when a logger's entry does not say).
            theirs.propagate = False
            ours.filters.clear()  # ours are only the config's: it says anew which
        # gunicorn's loggers keep filters that code added (a config file's top level, a
        # hook), but not those the previous logging config made: it makes them anew.
        for logger, item in self._config_filters:
            logger.removeFilter(item)
        self._filters_before = {
            theirs.name: list(theirs.filters) for _, theirs in self._gunicorn_pairs()
        }
        self._access_format = access_format

        errorlog = cfg.errorlog or "-"
        if cfg.capture_output and errorlog != "-":
            self._capture_output(errorlog)

        user_dict = cfg.logconfig_dict
        json_file, ini_file = _logging_config_files(cfg)
        if json_file:
            user_dict = read[f"json:{json_file}"] = _kept_or_read(
                sources, f"json:{json_file}", _read_json_config, json_file
            )
        if user_dict:
            label = f"logconfig_json {json_file!r}" if json_file else "logconfig_dict"
            self._dict_config(user_dict, errorlog, cfg.accesslog, label)
            self._share_with_gunicorn_names()
            self._access_enabled = self.access_log.isEnabledFor(logging.INFO) and bool(
                self.access_log.hasHandlers()
            )
            self._sources = read
            return

        self.error_log.addHandler(self._make_error_handler(errorlog))
        access_handler = self._make_access_handler(cfg.accesslog)
        if access_handler is not None:
            self.access_log.addHandler(access_handler)
        if getattr(cfg, "syslog", False):
            self.error_log.addHandler(self._make_syslog_handler("error"))
            if not cfg.disable_redirect_access_to_syslog:
                self.access_log.addHandler(self._make_syslog_handler("access"))
        if ini_file:
            text = read[f"ini:{ini_file}"] = _kept_or_read(
                sources, f"ini:{ini_file}", _read_ini_config, ini_file
            )
            # gunicorn's --log-config: a logging.config.fileConfig file. The loggers it
            # names get its handlers instead of the ones above; the others keep theirs.
            # gunicorn's defaults: ``%(here)s`` and ``%(__file__)s`` name the file's place.
            defaults = {"__file__": ini_file, "here": os.path.dirname(ini_file)}
            try:
                parser = configparser.ConfigParser(defaults)
                parser.read_string(text, source=ini_file)  # its errors name the file
                logging.config.fileConfig(parser, disable_existing_loggers=False)
            except configparser.Error as exc:
                raise ConfigError(f"logconfig {ini_file!r}: {ini_file} is invalid: {exc}") from None
            except (
                OSError,
                KeyError,
                ValueError,
                TypeError,
                RuntimeError,
                ImportError,
                NameError,
                AttributeError,
                SyntaxError,
            ) as exc:
                raise ConfigError(f"logconfig {ini_file!r}: {_config_failure(exc)}") from None
        self._share_with_gunicorn_names()
        self._access_enabled = bool(self.access_log.hasHandlers())
        self._sources = read

    def _share_with_gunicorn_names(self) -> None:
        """Make ``gunicorn.error`` and ``gunicorn.access`` the same logs as ours.

        Both ways, because deployments written for gunicorn use the names both ways: a
        logging config (``--log-config``, ``logconfig_dict``) that gives handlers or a
        level to ``gunicorn.error`` configures forkhorn's error log, and an app that
        borrows ``logging.getLogger("gunicorn.error").handlers`` (a common Flask recipe)
        gets forkhorn's handlers instead of none, which would drop its lines silently.

        A config that makes gunicorn's logger propagate (``"propagate": True``, an ini's
        ``propagate=1``) is taken whole, as gunicorn takes it: its handlers, none
        included, and the lines passed on to the root logger's (one formatted handler on
        the root for every log, a common container set-up).
        """
        before = self._filters_before
        self._config_filters = [
            (theirs, item)
            for _, theirs in self._gunicorn_pairs()
            for item in theirs.filters
            if item not in before.get(theirs.name, ())
        ]
        # A filter on gunicorn.error applies where the lines are made, on ours. Those on
        # gunicorn.access (the usual recipe to drop health checks) are asked at each line
        # (access()), so that one added after this set-up counts too.
        for item in logging.getLogger("gunicorn.error").filters:
            if item not in self.error_log.filters:
                self.error_log.addFilter(item)
        for ours, theirs in self._gunicorn_pairs():
            if theirs.propagate:
                _release_handlers(ours)
                for handler in theirs.handlers:
                    ours.addHandler(handler)
                ours.propagate = True
            elif theirs.handlers:  # the user's logging config named gunicorn's logger
                _release_handlers(ours)
                for handler in theirs.handlers:
                    ours.addHandler(handler)
            if theirs.level != logging.NOTSET:
                ours.setLevel(theirs.level)
            _CONFIG_MADE.update(h for h in ours.handlers if not isinstance(h, _OWN_HANDLERS))
            for handler in self._added.get(theirs.name, ()):
                ours.addHandler(handler)
            # One list for both names: a handler added to gunicorn.error or gunicorn.access
            # later (an app's Sentry or JSON handler) gets the lines, as under gunicorn.
            theirs.handlers = ours.handlers
            theirs.setLevel(ours.level)
            # gunicorn's logger turned off (``logging.getLogger("gunicorn.access").disabled
            # = True`` in a config file) turns ours off; access() also asks it each time.
            ours.disabled = theirs.disabled
        self.check_access_handlers()  # after the handlers above were shared

    def check_access_handlers(self) -> None:
        """gunicorn's access records always carry the atoms as args: a handler's filter or
        a formatter of the user's (a JSON one built on record.args, a common recipe) may
        read them, so records for such handlers are made with them. Asked at each set-up
        and again as a worker starts serving (``prepare_http``), after the ``post_fork``
        and ``post_worker_init`` hooks, which may have added one; of the root's handlers
        too when the access log propagates."""
        handlers = list(self.access_log.handlers)
        if self.access_log.propagate:
            handlers += logging.getLogger().handlers
        self._access_handler_filters = any(
            h.filters or type(h.formatter) not in (type(None), logging.Formatter) for h in handlers
        )

    def _gunicorn_pairs(self) -> list[tuple[logging.Logger, logging.Logger]]:
        return [
            (self.error_log, logging.getLogger("gunicorn.error")),
            (self.access_log, logging.getLogger("gunicorn.access")),
        ]

    def _make_error_handler(self, errorlog: str) -> logging.Handler:
        handler: logging.Handler
        if errorlog == "-":
            handler = _OwnStreamHandler(sys.stderr)
        else:
            handler = _open_file_handler(errorlog, "error log")
            self._hand_to_workers(errorlog)
        handler.setFormatter(_error_formatter())
        return handler

    def _make_access_handler(self, accesslog: str | None) -> logging.Handler | None:
        handler: logging.Handler
        if accesslog is None or accesslog == "":
            return None
        if accesslog == "-":
            handler = _OwnStreamHandler(sys.stdout)
        else:
            handler = _open_file_handler(accesslog, "access log")
            self._hand_to_workers(accesslog)
        handler.setFormatter(logging.Formatter(ACCESS_LOG_LINE_FORMAT))
        return handler

    def _make_syslog_handler(self, which: str) -> logging.Handler:
        addr, (address, socktype), facility = _syslog_settings(self.cfg)
        try:
            handler = _OwnSyslogHandler(address, facility, socktype)
        except OSError as exc:
            raise ConfigError(f"cannot open syslog {addr!r}: {exc.strerror or exc}") from None
        handler.baseFilename = f"syslog {addr}"
        # gunicorn's tag and line, with our name: "forkhorn.<prefix>.error: [pid] message",
        # the prefix being syslog_prefix or the process name (the APP argument by
        # default). No level in the line: syslog's priority carries it.
        prefix = (
            getattr(self.cfg, "syslog_prefix", None)
            or self.cfg.proc_name
            or getattr(self.cfg, "default_proc_name", None)
            or "forkhorn"
        )
        prefix = prefix.replace(":", ".")
        handler.setFormatter(
            logging.Formatter(f"forkhorn.{prefix}.{which}: [%(process)d] %(message)s")
        )
        return handler

    def _dict_config(
        self, user: Mapping[str, Any], errorlog: str, accesslog: str | None, label: str
    ) -> None:
        # The defaults describe the handlers the settings would make, so a dict that only
        # changes a formatter or a level keeps --error-logfile/--access-logfile working.
        # Sections merge by name, one level deep; anything else in the user's dict replaces
        # the default. The handlers are made by factories inside dictConfig, because
        # dictConfig first closes every handler that exists.
        handlers: dict[str, Any] = {
            "forkhorn_error": {"()": lambda: self._make_error_handler(errorlog)}
        }
        error_handlers = ["forkhorn_error"]
        access_handlers: list[str] = []
        if accesslog:
            handlers["forkhorn_access"] = {"()": lambda: self._make_access_handler(accesslog)}
            access_handlers.append("forkhorn_access")
        if getattr(self.cfg, "syslog", False):
            # --log-syslog is one of the settings the dict merges over, as gunicorn keeps it.
            handlers["forkhorn_error_syslog"] = {"()": lambda: self._make_syslog_handler("error")}
            error_handlers.append("forkhorn_error_syslog")
            if not self.cfg.disable_redirect_access_to_syslog:
                handlers["forkhorn_access_syslog"] = {
                    "()": lambda: self._make_syslog_handler("access")
                }
                access_handlers.append("forkhorn_access_syslog")
        merged: dict[str, Any] = {
            "version": 1,
            "disable_existing_loggers": False,
            "formatters": {},
            "handlers": handlers,
            "loggers": {
                "forkhorn.error": {
                    "level": self.error_log.level,
                    "handlers": error_handlers,
                    "propagate": False,
                },
                "forkhorn.access": {
                    "level": "INFO",
                    "handlers": access_handlers,
                    "propagate": False,
                },
            },
        }
        for key, value in copy.deepcopy(dict(user)).items():
            if isinstance(value, dict) and isinstance(merged.get(key), dict):
                if key == "loggers":
                    # Our two loggers merge a level deeper: an entry that only adds a
                    # filter or a level keeps the handlers the settings made (dictConfig
                    # would otherwise leave the logger with none, the log silently off).
                    for name in ("forkhorn.error", "forkhorn.access"):
                        if isinstance(value.get(name), dict):
                            value[name] = {**merged["loggers"][name], **value[name]}
                merged[key].update(value)
            else:
                merged[key] = value
        try:
            logging.config.dictConfig(merged)
        except (ValueError, TypeError, AttributeError, ImportError) as exc:
            if isinstance(exc.__cause__, ConfigError):
                raise exc.__cause__ from None
            raise ConfigError(f"{label}: {_config_failure(exc)}") from None

    def _capture_output(self, path: str) -> None:
        """Send fds 1 and 2 (print(), C extensions, tracebacks) to the error log file."""
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        try:
            capture = open(path, "a", buffering=1, encoding="utf-8")  # noqa: SIM115 - kept open
        except OSError as exc:
            raise ConfigError(f"cannot open error log {path!r}: {exc.strerror or exc}") from None
        self._hand_to_workers(path)
        os.dup2(capture.fileno(), 1)
        os.dup2(capture.fileno(), 2)
        if self._capture_file is not None:
            self._capture_file.close()
        self._capture_file = capture
        self._capture_path = path

    def _hand_to_workers(self, path: str) -> None:
        """Give a log file to the ``user``/``group`` the workers switch to, as gunicorn
        does. The master, as root, opens it first, at start and again on USR1 after a
        rotation (before it signals the workers); left to root, the workers could not
        reopen it and would go on writing into the rotated file. Nothing to do, or
        allowed, once not root (the workers themselves)."""
        uid = getattr(self.cfg, "user", None)
        gid = getattr(self.cfg, "group", None)
        if (uid is None and gid is None) or os.geteuid() != 0:
            return
        try:
            os.chown(path, -1 if uid is None else uid, -1 if gid is None else gid)
        except OSError as exc:
            self.error_log.warning("Cannot give %s to the workers' user: %s", path, exc)

    def _close_own_handlers(self) -> None:
        for _, theirs in self._gunicorn_pairs():
            # Handlers code added to gunicorn's logger (a config file's top level, a hook,
            # a preloaded app) stay, as under gunicorn: handed to ours again after the
            # set-up. Ours, and those the previous logging config made, go.
            self._added[theirs.name] = [
                h
                for h in theirs.handlers
                if not isinstance(h, _OWN_HANDLERS) and h not in _CONFIG_MADE
            ]
            # The same list as ours (_share_with_gunicorn_names) until here: set again
            # after the new configuration, which may also name these loggers itself.
            theirs.handlers = []
            theirs.setLevel(logging.NOTSET)
        for logger in (self.error_log, self.access_log):
            _release_handlers(logger)

    def close(self) -> None:
        """Remove and close the handlers this Logger made (tests; end of process)."""
        self._close_own_handlers()
        self._access_enabled = False
        if self._capture_file is not None:
            self._capture_file.close()
            self._capture_file = None

    def tell_lost_lines(self) -> None:
        """Say what each handler lost since its last report: called as the process ends,
        where ``logging.shutdown`` would skip a handler whose flush fails."""
        for logger in (self.error_log, self.access_log):
            for handler in logger.handlers:
                if isinstance(handler, _QuietFailures):
                    handler.tell_lost_lines()

    def reopen_files(self) -> None:
        """Reopen every log file on its path (SIGUSR1, after the files were rotated).

        Runs in: the main loop of the master and of each worker, never a signal handler.
        """
        if self._capture_path is not None:
            try:
                self._capture_output(self._capture_path)
            except ConfigError as exc:
                self.error_log.error("Cannot reopen the captured output: %s", exc)
        # Every logger's files, as gunicorn reopens them: a logging config may give the
        # app's own logger a file, rotated with the others.
        loggers = [logging.getLogger()] + [
            each
            for each in logging.Logger.manager.loggerDict.values()
            if isinstance(each, logging.Logger)
        ]
        seen: set[int] = set()
        for logger in loggers:
            for handler in logger.handlers:
                if isinstance(handler, logging.FileHandler) and id(handler) not in seen:
                    seen.add(id(handler))
                    self._reopen_handler(handler)

    def _reopen_handler(self, handler: logging.FileHandler) -> None:
        if handler.stream is None:
            return  # opened on its first line (``delay=True``): nothing to reopen yet
        try:
            stream = handler._open()
        except OSError as exc:
            # Keep writing to the old file rather than losing lines.
            self.error_log.error("Cannot reopen %s: %s", handler.baseFilename, exc)
            return
        self._hand_to_workers(handler.baseFilename)
        old = handler.setStream(stream)
        if old is not None:
            old.close()

    # -- the error log --------------------------------------------------------------------
    # Each method tests the level before calling into logging, so a disabled debug() costs
    # one cached lookup; stacklevel points logging's caller lookup past this wrapper.

    def log(self, level: int | str, msg: object, *args: object, **kwargs: Any) -> None:
        lvl = parse_level(level)
        if self.error_log.isEnabledFor(lvl):
            kwargs["stacklevel"] = kwargs.get("stacklevel", 1) + 1
            self.error_log.log(lvl, msg, *args, **kwargs)

    def debug(self, msg: object, *args: object, **kwargs: Any) -> None:
        if self.error_log.isEnabledFor(logging.DEBUG):
            kwargs["stacklevel"] = kwargs.get("stacklevel", 1) + 1
            self.error_log.debug(msg, *args, **kwargs)

    def info(self, msg: object, *args: object, **kwargs: Any) -> None:
        if self.error_log.isEnabledFor(logging.INFO):
            kwargs["stacklevel"] = kwargs.get("stacklevel", 1) + 1
            self.error_log.info(msg, *args, **kwargs)

    def warning(self, msg: object, *args: object, **kwargs: Any) -> None:
        if self.error_log.isEnabledFor(logging.WARNING):
            kwargs["stacklevel"] = kwargs.get("stacklevel", 1) + 1
            self.error_log.warning(msg, *args, **kwargs)

    def error(self, msg: object, *args: object, **kwargs: Any) -> None:
        if self.error_log.isEnabledFor(logging.ERROR):
            kwargs["stacklevel"] = kwargs.get("stacklevel", 1) + 1
            self.error_log.error(msg, *args, **kwargs)

    def critical(self, msg: object, *args: object, **kwargs: Any) -> None:
        if self.error_log.isEnabledFor(logging.CRITICAL):
            kwargs["stacklevel"] = kwargs.get("stacklevel", 1) + 1
            self.error_log.critical(msg, *args, **kwargs)

    def exception(self, msg: object, *args: object, **kwargs: Any) -> None:
        """Log at ERROR with the current exception's traceback."""
        if self.error_log.isEnabledFor(logging.ERROR):
            kwargs.setdefault("exc_info", True)
            kwargs["stacklevel"] = kwargs.get("stacklevel", 1) + 1
            self.error_log.error(msg, *args, **kwargs)

    # -- the access log -------------------------------------------------------------------

    @property
    def access_enabled(self) -> bool:
        """Whether ``access()`` writes anything; workers may skip timing when it is False."""
        return self._access_enabled

    def access(
        self,
        environ: Mapping[str, Any],
        status: str,
        response_headers: Sequence[tuple[str, str]],
        sent_bytes: int,
        request_time: float,
    ) -> None:
        """Write one access-log line: ``status`` like ``"200 OK"``, ``sent_bytes`` the body
        bytes sent, ``request_time`` in seconds.

        Runs in: a worker, after the response was sent. Never raises.
        """
        if not self._access_enabled or self._gunicorn_access.disabled:
            return
        log = self.access_log
        if not log.isEnabledFor(logging.INFO):
            return
        if log.filters or self._gunicorn_access.filters or self._access_handler_filters:
            self._filtered_access(log, environ, status, response_headers, sent_bytes, request_time)
            return
        try:
            line = self._access_format.render(
                environ, status, response_headers, sent_bytes, request_time, time.time()
            )
        except Exception:
            self.error_log.exception("Failed to format the access log line")
            return
        # makeRecord + handle skips Logger.info's findCaller() stack walk, which would cost
        # more than the formatting; the line is already formatted, so args are empty.
        record = log.makeRecord(log.name, logging.INFO, "(access)", 0, line, (), None)
        try:
            log.handle(record)
        except Exception:
            self._access_failed()

    def _access_failed(self) -> None:
        """A handler or filter raised: that line is lost, never the request (reported
        once per WRITE_FAILURE_REPORT_EVERY)."""
        now = time.monotonic()
        if now - self._access_failed_at >= WRITE_FAILURE_REPORT_EVERY:
            self._access_failed_at = now
            self.error_log.exception("An access-log filter or handler failed")

    def _filtered_access(
        self,
        log: logging.Logger,
        environ: Mapping[str, Any],
        status: str,
        response_headers: Sequence[tuple[str, str]],
        sent_bytes: int,
        request_time: float,
    ) -> None:
        """The access record as gunicorn makes it, for filters written for gunicorn: the
        format as ``msg`` and the atoms as ``args`` (``record.args["U"]``). The filters of
        ``gunicorn.access`` apply too, added whenever (a config file's top level, a
        ``post_fork`` hook). A filter that raises costs its line, never the request."""
        try:
            fmt = self._access_format
            atoms = fmt.atoms(
                environ, status, response_headers, sent_bytes, request_time, time.time()
            )
            record = log.makeRecord(log.name, logging.INFO, "(access)", 0, fmt.fmt, (atoms,), None)
            theirs = self._gunicorn_access
            if theirs.filters and not theirs.filter(record):
                return
            log.handle(record)
        except Exception:
            self._access_failed()
