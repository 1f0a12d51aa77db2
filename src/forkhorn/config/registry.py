"""The settings registry and the resolved, typed, read-only ``Config``.

What it holds:
- ``Config``: inherits every options class, so each setting is a typed attribute
  (``cfg.workers: int``); ``__slots__`` and the descriptors make ``cfg.wokers`` an
  AttributeError and a mypy error, and assignment impossible.
- ``SETTINGS``: name -> ``Setting``, in documentation order (sections in
  ``OPTION_CLASSES`` order, settings in declaration order).
- ``validate()``: every rule that involves more than one setting, in one place.

``config`` imports nothing from forkhorn but ``forkhorn.errors`` (architecture rule).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

from forkhorn.config.converters import parse_bind
from forkhorn.config.options.hooks import HookOptions
from forkhorn.config.options.logging import LoggingOptions
from forkhorn.config.options.process import ProcessOptions
from forkhorn.config.options.security import (
    DEFAULT_MAX_FIELD_SIZE,
    MAX_HEADERS,
    MAX_REQUEST_LINE,
    SecurityOptions,
)
from forkhorn.config.options.server import ServerOptions
from forkhorn.config.options.worker import WorkerOptions
from forkhorn.config.setting import Setting
from forkhorn.errors import ConfigError

OPTION_CLASSES: tuple[type, ...] = (
    ServerOptions,
    WorkerOptions,
    SecurityOptions,
    LoggingOptions,
    ProcessOptions,
    HookOptions,
)


def _collect() -> dict[str, Setting[Any]]:
    found: dict[str, Setting[Any]] = {}
    for options in OPTION_CLASSES:
        for value in vars(options).values():
            if isinstance(value, Setting):
                if value.name in found:
                    raise RuntimeError(f"setting {value.name!r} is declared twice")
                found[value.name] = value
    return found


SETTINGS: Mapping[str, Setting[Any]] = _collect()

DEFAULT_SOURCE = "default"


#: Settings accepted from gunicorn configurations that have no effect yet
#: (``Config.no_effect``): the PROXY protocol (turning it on is refused, config/sources.py)
#: and statsd are planned. Not worker_tmp_dir: it is moot here (the heartbeat is in shared
#: memory, not a file), and Docker guides set it to /dev/shm everywhere, so a warning would
#: only be noise.
UNIMPLEMENTED_SETTINGS = (
    "proxy_allow_ips",
    "statsd_host",
    "statsd_prefix",
    "logger_class",
    "spew",
)
#: gunicorn's default logger class, spelt out by migrated configs: the same as ours.
DEFAULT_LOGGER_NAMES = frozenset(
    ("gunicorn.glogging.Logger", "gunicorn.glogging:Logger", "simple", "forkhorn.logs.Logger")
)
#: What to do instead, where there is something.
NO_EFFECT_ADVICE = {
    "logger_class": (
        "forkhorn's logger is used; for what a custom class usually does (drop health "
        "checks from the access log, log as JSON), give forkhorn.access a logging.Filter "
        "or a formatter in logconfig_dict"
    ),
}
#: Limits whose larger values mean their maximum, as in gunicorn (which caps them
#: silently): the HTTP core reads no longer request line and no more fields. A config
#: asking for more still loads, with a warning (``Config.no_effect``).
CAPPED_LIMITS = {"limit_request_line": MAX_REQUEST_LINE, "limit_request_fields": MAX_HEADERS}

#: Limits where gunicorn reads 0 as "no limit" and forkhorn keeps a bound (a migrated
#: config is warned: requests gunicorn served would get 414 or 431), and what 0 means here.
ZERO_IS_NOT_UNLIMITED = {
    "limit_request_line": f"the maximum, {MAX_REQUEST_LINE} bytes (longer lines get 414)",
    "limit_request_field_size": (
        f"the default, {DEFAULT_MAX_FIELD_SIZE} bytes (larger fields get 431; set the size "
        "you need instead)"
    ),
}

#: Jitters and the limits they spread; one set without its limit does nothing.
JITTERS = {
    "max_requests_jitter": "max_requests",
    "max_worker_lifetime_jitter": "max_worker_lifetime",
}

#: The logging configs in the order gunicorn takes the first one set; the others are
#: not used (and warned).
LOGGING_CONFIGS = ("logconfig_dict", "logconfig_json", "logconfig")

#: gunicorn's switches that loosen its parser; forkhorn has none.
LENIENT_PARSER = frozenset(
    (
        "permit_obsolete_folding",
        "permit_unconventional_http_version",
        "strip_header_spaces",
    )
)
#: Why a gunicorn-only setting that is not a strictness switch has no effect here, where
#: "it has no effect" alone would leave the reader guessing.
IGNORED_BECAUSE = {
    "permit_unconventional_http_method": (
        "not needed, forkhorn accepts every method token RFC 9110 allows (get, Get, "
        "M-SEARCH) already, where gunicorn's default answers 400"
    ),
    "casefold_http_method": "methods reach the app as the client sent them",
}


class Config(
    ServerOptions,
    WorkerOptions,
    SecurityOptions,
    LoggingOptions,
    ProcessOptions,
    HookOptions,
):
    """Every setting, resolved, with where each value came from.

    Made by ``load_config``; read-only. ``cfg.reload()`` makes a new one from the same
    argv and environment (re-reading the config file), for HUP.
    """

    __slots__ = (
        "_argv",
        "_environ",
        "_ignored",
        "_notes",
        "_sources",
        "_values",
        "start_directory",
    )

    def __init__(
        self,
        values: Mapping[str, Any],
        sources: Mapping[str, str],
        argv: list[str],
        environ: Mapping[str, str],
        ignored: Sequence[tuple[str, str]] = (),
        notes: Sequence[str] = (),
        directory: str | None = None,
    ) -> None:
        missing = set(SETTINGS) - set(values)
        if missing:
            raise ValueError(f"values missing for: {', '.join(sorted(missing))}")
        self._values: dict[str, Any] = dict(values)
        self._sources: dict[str, str] = {name: sources.get(name, DEFAULT_SOURCE) for name in values}
        self._argv = list(argv)
        self._environ = dict(environ)
        #: (name, source) of the gunicorn settings forkhorn does not have that a config
        #: file set (``sources.GUNICORN_ONLY``).
        self._ignored = list(ignored)
        #: More lines for ``no_effect``: names in a config file that look like misspelt
        #: settings.
        self._notes = list(notes)
        #: The working directory the command line's relative paths (``-c conf.py``,
        #: ``--chdir app``) were read from. ``chdir`` moves the process away from it,
        #: so a reload reads them from here again, and a USR2 upgrade starts here.
        self.start_directory = directory or working_directory(environ)

    def source(self, name: str) -> str:
        """Where ``name``'s value came from: ``default``, ``config file <path>``,
        ``FORKHORN_CMD_ARGS``, ``WEB_CONCURRENCY``, ``PORT``, ``FORWARDED_ALLOW_IPS``
        or ``command line``."""
        if name not in self._sources:
            raise KeyError(f"no setting named {name!r}")
        return self._sources[name]

    def as_dict(self) -> dict[str, Any]:
        """Every setting's value, by name (a shallow copy)."""
        return dict(self._values)

    def no_effect(self) -> list[str]:
        """One line for each thing this config asks for that forkhorn does not do (yet):
        a setting accepted but not implemented, set to other than its default, and a
        gunicorn setting forkhorn does not have, set in the config file. The master
        warns each at start-up and ``--check-config`` prints them."""
        lines = [
            f"{name} is accepted for gunicorn compatibility but not implemented yet: "
            + NO_EFFECT_ADVICE.get(name, "it has no effect")
            for name in UNIMPLEMENTED_SETTINGS
            if self._sources[name] != DEFAULT_SOURCE
            and self._values[name] != SETTINGS[name].default
            and not (name == "logger_class" and self._values[name] in DEFAULT_LOGGER_NAMES)
        ]
        for name, maximum in CAPPED_LIMITS.items():
            value = self._values[name]
            if value > maximum:
                lines.append(
                    f"{name} = {value} (from {self._sources[name]}) is above the maximum, "
                    f"{maximum}, which is used instead (gunicorn caps it the same way)"
                )
        for jitter, limit in JITTERS.items():
            if self._values[jitter] and not self._values[limit]:
                lines.append(
                    f"{jitter} = {self._values[jitter]} (from {self._sources[jitter]}) has no "
                    f"effect without {limit}"
                )
        if self._values["reload"] and self._values["preload_app"]:
            lines.append(
                "--reload restarts workers on code changes, but with --preload they keep the "
                "app the master loaded: edits to it take effect only on USR2"
            )
        chosen = [name for name in LOGGING_CONFIGS if self._values[name]]
        for name in chosen[1:]:
            lines.append(
                f"{name} (from {self._sources[name]}) is not used: {chosen[0]} (from "
                f"{self._sources[chosen[0]]}) is set too and comes first, as in gunicorn"
            )
        for name, meaning in ZERO_IS_NOT_UNLIMITED.items():
            if self._values[name] == 0 and self._sources[name] != DEFAULT_SOURCE:
                lines.append(
                    f"{name} = 0 (from {self._sources[name]}) means no limit to gunicorn; "
                    f"forkhorn reads it as {meaning}"
                )
        for name, source in self._ignored:
            why = IGNORED_BECAUSE.get(name) or (
                "forkhorn's parser stays strict" if name in LENIENT_PARSER else "it has no effect"
            )
            lines.append(
                f"{name} (from {source}) is a gunicorn setting forkhorn does not have: {why}"
            )
        return lines + self._notes

    @property
    def argv(self) -> list[str]:
        """The command-line arguments this config was loaded from."""
        return list(self._argv)

    @property
    def start_environ(self) -> dict[str, str]:
        """The environment this config was loaded from: the process's before ``raw_env``
        was applied to it (gunicorn's ``env_orig``)."""
        return dict(self._environ)

    # gunicorn's Config attributes that server hooks and config files commonly read.
    @property
    def settings(self) -> dict[str, SettingValue]:
        """``cfg.settings["workers"].value``, as in gunicorn (read-only views)."""
        return {name: SettingValue(name, value) for name, value in self._values.items()}

    @property
    def address(self) -> list[tuple[str, int] | str | int]:
        """The bind addresses as gunicorn gives them: ``(host, port)``, a unix socket's
        path, or a file descriptor number."""
        out: list[tuple[str, int] | str | int] = []
        for raw in self._values["bind"]:
            bind = parse_bind(raw)  # validated when the config was loaded
            if bind.kind == "tcp":
                out.append((bind.host, bind.port))
            elif bind.kind == "unix":
                out.append(bind.path)
            else:
                out.append(bind.fd)
        return out

    @property
    def env(self) -> dict[str, str]:
        """``raw_env`` as a dict (gunicorn's ``cfg.env``): what the CLI and each worker put
        in ``os.environ``. The converter has checked every item is ``KEY=VALUE``."""
        pairs = (item.partition("=") for item in self._values["raw_env"] or ())
        return {key.strip(): value for key, _, value in pairs}

    @property
    def proc_name(self) -> str:  # type: ignore[override]
        """The process name: the ``proc_name`` setting, else ``default_proc_name`` (the APP
        argument), as gunicorn's ``cfg.proc_name`` gives it."""
        return str(self._values["proc_name"] or self._values["default_proc_name"])

    @property
    def worker_class_str(self) -> str:
        return self.worker_class_name

    @property
    def is_ssl(self) -> bool:
        return False  # TLS is not served yet (the TLS flags are refused at start-up)

    @property
    def worker_class_name(self) -> str:
        """The worker class to run: ``sync`` with ``threads`` > 1 means ``gthread``
        (gunicorn's rule)."""
        if self.worker_class == "sync" and self.threads > 1:
            return "gthread"
        return self.worker_class

    def reload(self) -> Config:
        """Re-read the config file with the same argv and environment (HUP), from the
        directory they were first read in."""
        from forkhorn.config.sources import load_config  # sources imports this module

        # Back by descriptor: the directory we are in may be gone by now (a deploy that
        # deleted an old release), and then has no path to return to.
        here = os.open(".", os.O_RDONLY)
        try:
            try:
                os.chdir(self.start_directory)
            except OSError:
                pass  # gone too: read relative paths from where we are, as before
            return load_config(self._argv, self._environ, self.start_directory)
        finally:
            os.fchdir(here)
            os.close(here)

    def print_config_text(self, hide_secrets: bool = False) -> str:
        """Every resolved value with its source, one per line, in documentation order.

        The lines read as a Python config file (``name = value  # source``).
        ``hide_secrets``: for a log (``--log-level debug``), which may travel further than
        a terminal: ``raw_env`` values whose names look secret are shown as ``***``.
        """
        width = max(len(name) for name in SETTINGS)
        lines = []
        for name, setting in SETTINGS.items():
            value = self._values[name]
            if hide_secrets and name == "raw_env" and value:
                value = [_hide_secret(item) for item in value]
            lines.append(f"{name:<{width}} = {_show(value, setting)}  # {self.source(name)}")
        return "\n".join(lines) + "\n"

    def __repr__(self) -> str:
        changed = {
            name: self._values[name] for name, src in self._sources.items() if src != "default"
        }
        return f"Config({changed!r})"


class SettingValue:
    """One entry of ``Config.settings``: gunicorn's ``.name`` and ``.value`` (and
    ``.get()``), read-only."""

    __slots__ = ("name", "value")

    def __init__(self, name: str, value: Any) -> None:
        self.name = name
        self.value = value

    def get(self) -> Any:
        return self.value

    def __repr__(self) -> str:
        return f"<setting {self.name} = {self.value!r}>"


_SECRET_NAME_RE = re.compile(r"PASS|SECRET|TOKEN|KEY|CREDENTIAL|AUTH|PRIVATE|DSN|_URL$", re.I)


def _hide_secret(assignment: str) -> str:
    """``KEY=VALUE`` with the value hidden when the name looks like a secret's (a database
    URL holds its password, a DSN its key)."""
    key, eq, value = assignment.partition("=")
    return f"{key}{eq}***" if eq and value and _SECRET_NAME_RE.search(key) else assignment


def _show(value: object, setting: Setting[Any]) -> str:
    if setting.arity is not None and callable(value):
        module = getattr(value, "__module__", "?")
        qualname = getattr(value, "__qualname__", None) or type(value).__qualname__
        if value is setting.default:
            # pre_request's default logs at the debug level; the others do nothing.
            return "<no-op>" if (setting.default_doc or "").endswith(": pass") else "<default>"
        return f"<{module}.{qualname}>"
    try:
        return repr(value)
    except Exception as exc:  # a config file's own object; --print-config must not die
        return f"<{type(value).__name__}: repr() failed: {exc}>"


def validate(values: Mapping[str, Any], sources: Mapping[str, str]) -> None:
    """Rules that involve more than one setting, or a bound the converters cannot see.

    Raises ConfigError naming the settings and their sources.
    """

    def where(name: str) -> str:
        return f"{name} = {values[name]!r} (from {sources.get(name, DEFAULT_SOURCE)})"

    if values["timeout"] and values["request_timeout"] > values["timeout"]:
        # The worker-level timeout would fire first and the request deadline would never
        # be seen, which is not what the user asked for.
        raise ConfigError(
            f"{where('request_timeout')}: must not exceed {where('timeout')} (or set timeout 0)"
        )


def working_directory(environ: Mapping[str, str]) -> str:
    """The current directory, by the path the shell reached it through when ``$PWD``
    names it (``cd /srv/app/current``, a symlink a deploy moves to each new release):
    a reload then follows the link to the new release, as gunicorn's default ``chdir``
    does. Else the resolved path."""
    cwd = os.getcwd()
    pwd = environ.get("PWD", "")
    if pwd and os.path.isabs(pwd) and pwd != cwd:
        try:
            if os.path.samefile(pwd, cwd):
                return pwd
        except OSError:
            pass
    return cwd
