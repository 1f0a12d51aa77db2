"""Where settings come from, and ``load_config`` which merges them into a ``Config``.

Precedence, lowest first (each layer replaces whole values, lists included):

1. defaults, where ``WEB_CONCURRENCY`` (workers), ``PORT`` (bind ``0.0.0.0:$PORT``) and
   ``FORWARDED_ALLOW_IPS`` replace the default, as gunicorn does: a config file or a flag
   still wins over them;
2. the config file (``-c PATH``, ``-c python:module``, else ``./forkhorn.conf.py`` when it
   exists, else ``./gunicorn.conf.py`` as gunicorn would); its lower-case names that match
   settings are applied, others ignored;
3. ``FORKHORN_CMD_ARGS`` (``GUNICORN_CMD_ARGS`` when it is unset), split like a shell
   command line and parsed like argv;
4. the command line.

Rules kept here:
- Every value is converted in the layer it comes from and remembers that layer, so an
  error names it: ``workers = "abc" (from FORKHORN_CMD_ARGS): expected a positive integer``.
- argparse never prints or exits: its errors become ``ConfigError`` (one line), and
  ``--help``/``--version`` are plain flags that ``cli.main`` acts on.
- Only ``load_config`` reads the environment, and only the mapping it is given.
"""

from __future__ import annotations

import argparse
import builtins
import copy
import difflib
import importlib
import json
import os
import shlex
import sys
import textwrap
import traceback
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from forkhorn.config.converters import CONFIG_FILE_MODULE, BadItemError
from forkhorn.config.registry import (
    DEFAULT_SOURCE,
    LENIENT_PARSER,
    SETTINGS,
    UNIMPLEMENTED_SETTINGS,
    Config,
    validate,
)
from forkhorn.errors import ConfigError

CMD_ARGS_ENV = "FORKHORN_CMD_ARGS"
#: Read instead when FORKHORN_CMD_ARGS is unset, so a gunicorn deployment's environment
#: keeps working.
GUNICORN_CMD_ARGS_ENV = "GUNICORN_CMD_ARGS"
COMMAND_LINE = "command line"
DEFAULT_CONFIG_FILE = "./forkhorn.conf.py"
#: Read when there is no ./forkhorn.conf.py, as gunicorn reads it by default.
GUNICORN_CONFIG_FILE = "./gunicorn.conf.py"
PYTHON_MODULE_PREFIX = "python:"
#: gunicorn's TLS settings. forkhorn has no TLS yet: a config file that asks for it must
#: stop the start, not serve plain HTTP where the operator expects HTTPS (gunicorn's own
#: flags for them are refused on the command line already, as unknown).
TLS_SETTINGS = ("certfile", "keyfile", "ca_certs", "ssl_context")
#: Of those, the ones gunicorn uses only with a certificate: a config template that sets
#: them and no certfile serves plain HTTP on gunicorn, so it is warned, not refused.
TLS_WITH_CERT_ONLY = ("ca_certs", "ssl_context")
#: Any value given for a hook setting counts as set.
_HOOK = object()
#: gunicorn settings forkhorn does not have, with gunicorn's defaults. A config file that
#: sets one to something else still loads (it was written for gunicorn), and the start-up
#: warns that it has no effect: nothing a config asks for is dropped silently.
GUNICORN_ONLY: dict[str, object] = {
    # The lenient parser switches: forkhorn's parser stays strict.
    "permit_obsolete_folding": False,
    "permit_unconventional_http_method": False,
    "permit_unconventional_http_version": False,
    "casefold_http_method": False,
    "strip_header_spaces": False,
    "forwarder_headers": "SCRIPT_NAME,PATH_INFO",
    "root_path": "",
    "tmp_upload_dir": None,
    "enable_stdio_inheritance": False,
    "dogstatsd_tags": "",
    "enable_backlog_metric": False,
    "paste": None,
    "raw_paste_global_conf": [],
    "protocol": "http",
    "uwsgi_allow_ips": "127.0.0.1,::1",
    "ssl_version": 2,
    "cert_reqs": 0,
    "suppress_ragged_eofs": True,
    "do_handshake_on_connect": False,
    "ciphers": None,
    "http_protocols": "h1",
    "http2_cleartext": "off",
    "http2_max_concurrent_streams": 100,
    "http2_initial_window_size": 65535,
    "http2_max_frame_size": 16384,
    "http2_max_header_list_size": 65536,
    "http_parser": "auto",
    "asgi_loop": "auto",
    "asgi_lifespan": "auto",
    "asgi_disconnect_grace_period": 3,
    "websocket_max_message_size": 16777216,
    "control_socket": _HOOK,
    "control_socket_mode": 0o600,
    "control_socket_disable": False,
    "dirty_apps": [],
    "dirty_workers": 0,
    "dirty_timeout": 300,
    "dirty_threads": 1,
    "dirty_graceful_timeout": 30,
    "on_dirty_starting": _HOOK,
    "dirty_post_fork": _HOOK,
    "dirty_worker_init": _HOOK,
    "dirty_worker_exit": _HOOK,
}


#: gunicorn's command-line flags for what forkhorn does not have. argparse would call them
#: unknown and take the value after one for the APP ("unrecognized arguments: --certfile
#: --keyfile k.pem app:app"); they are refused first, each with a line that says why.
GUNICORN_ONLY_FLAGS = {
    "-R": "enable_stdio_inheritance",
    "--enable-stdio-inheritance": "enable_stdio_inheritance",
    "--dogstatsd-tags": "dogstatsd_tags",
    "--enable-backlog-metric": "enable_backlog_metric",
    "--paste": "paste",
    "--paster": "paste",
    "--paste-global": "raw_paste_global_conf",
    "--protocol": "protocol",
    "--uwsgi-allow-from": "uwsgi_allow_ips",
    "--keyfile": "keyfile",
    "--certfile": "certfile",
    "--ca-certs": "ca_certs",
    "--ssl-version": "ssl_version",
    "--cert-reqs": "cert_reqs",
    "--suppress-ragged-eofs": "suppress_ragged_eofs",
    "--do-handshake-on-connect": "do_handshake_on_connect",
    "--ciphers": "ciphers",
    "--http-protocols": "http_protocols",
    "--http2-cleartext": "http2_cleartext",
    "--http2-max-concurrent-streams": "http2_max_concurrent_streams",
    "--http2-initial-window-size": "http2_initial_window_size",
    "--http2-max-frame-size": "http2_max_frame_size",
    "--http2-max-header-list-size": "http2_max_header_list_size",
    "--permit-obsolete-folding": "permit_obsolete_folding",
    "--strip-header-spaces": "strip_header_spaces",
    "--permit-unconventional-http-method": "permit_unconventional_http_method",
    "--permit-unconventional-http-version": "permit_unconventional_http_version",
    "--casefold-http-method": "casefold_http_method",
    "--forwarder-headers": "forwarder_headers",
    "--asgi-loop": "asgi_loop",
    "--asgi-lifespan": "asgi_lifespan",
    "--asgi-disconnect-grace-period": "asgi_disconnect_grace_period",
    "--websocket-max-message-size": "websocket_max_message_size",
    "--http-parser": "http_parser",
    "--root-path": "root_path",
    "--dirty-app": "dirty_apps",
    "--dirty-workers": "dirty_workers",
    "--dirty-timeout": "dirty_timeout",
    "--dirty-threads": "dirty_threads",
    "--dirty-graceful-timeout": "dirty_graceful_timeout",
    "--control-socket": "control_socket",
    "--control-socket-mode": "control_socket_mode",
    "--no-control-socket": "control_socket_disable",
}
_TLS_REFUSAL = (
    "TLS is not implemented yet, and serving plain HTTP where HTTPS was asked for is "
    "refused; terminate TLS in a proxy (nginx, haproxy) in front of forkhorn"
)

#: The PROXY protocol is not read yet: with it on, every request from a load balancer that
#: sends it would be a 400, so the setting is refused rather than warned.
_PROXY_PROTOCOL_REFUSAL = (
    "the PROXY protocol is not implemented yet, and a front end that sends it would get "
    "400 for every request; turn send-proxy off in the load balancer, or leave this off"
)


#: gunicorn flags that ask for nothing forkhorn would refuse to do: taken off the command
#: line (with their value, if they take one) and warned at start-up as having no effect, as
#: the same settings in a config file are. The number is how many values each takes.
GUNICORN_FLAGS_WARNED = {
    "-R": 0,
    "--enable-stdio-inheritance": 0,
    "--dogstatsd-tags": 1,
    "--enable-backlog-metric": 0,
    "--permit-unconventional-http-method": 0,
    "--casefold-http-method": 0,
}
#: gunicorn 27's values for --proxy-protocol, which earlier versions take as a bare flag.
PROXY_PROTOCOL_MODES = ("off", "v1", "v2", "auto")


def _take_gunicorn_only_flags(argv: Sequence[str], where: str) -> tuple[list[str], list[str]]:
    """argv without the gunicorn-only flags that are only warned, and their names;
    refuses the others, each with a line that says why. ``--proxy-protocol MODE`` becomes
    ``--proxy-protocol=MODE`` and a bare ``--proxy-protocol`` ``--proxy-protocol=true``."""
    kept: list[str] = []
    warned: list[str] = []
    args = list(argv)
    i = 0
    while i < len(args):
        arg = args[i]
        i += 1
        if arg == "--":
            kept.extend(args[i - 1 :])
            break
        flag, eq, _ = arg.partition("=")
        if arg == "--proxy-protocol":
            mode = "true"
            if i < len(args) and args[i].lower() in PROXY_PROTOCOL_MODES:
                mode = args[i]
                i += 1
            kept.append(f"--proxy-protocol={mode}")
            continue
        name = GUNICORN_ONLY_FLAGS.get(flag)
        if name is None:
            kept.append(arg)
            continue
        if flag in GUNICORN_FLAGS_WARNED:
            warned.append(name)
            takes_value = GUNICORN_FLAGS_WARNED[flag] and not eq
            if takes_value and i < len(args) and not args[i].startswith("-"):
                i += 1  # its value (an option after it is not)
            continue
        context = "" if where == COMMAND_LINE else f" (in {where})"
        if name in TLS_SETTINGS or name in ("ssl_version", "cert_reqs", "ciphers"):
            raise ConfigError(f"{flag}{context}: {_TLS_REFUSAL}")
        strict = " (its parser is always strict)" if name in LENIENT_PARSER else ""
        raise ConfigError(
            f"{flag}{context}: gunicorn's {name} setting, which forkhorn does not have{strict}"
        )
    return kept, warned


# Flags' names written as settings. Not the one-word ones a config file uses for its own
# variables (``env``, ``name``, ``pid = os.getpid()``), except ``preload``, which is
# close to ``reload`` and would be hinted there.
_SETTING_BY_FLAG = {
    name: key
    for key, setting in SETTINGS.items()
    for flag in setting.flags
    if flag.startswith("--")
    and (name := flag.lstrip("-").replace("-", "_")) != key
    and ("_" in name or name == "preload")
}


def _misspelt_setting(name: str, value: object) -> str:
    """The setting a config file's other name probably meant (``wokers = 4``), or "".
    A config file also holds its own helpers (imports, functions, ``import os``, constants
    in capitals), so only a plain value under a lower-case name close to a setting's
    counts; gunicorn ignores such a name silently."""
    if name in SETTINGS or name in GUNICORN_ONLY or name in TLS_SETTINGS:
        return ""  # known (a gunicorn one set to its default, say)
    if name.startswith("_") or not name.islower() or isinstance(value, type(builtins)):
        return ""
    # A flag's name written as a setting (``preload`` for --preload, ``access_logfile``
    # for --access-logfile): the setting behind the flag, not the nearest spelling
    # (``preload`` is close to ``reload``, which would turn on the code reloader).
    by_flag = _SETTING_BY_FLAG.get(name)
    if by_flag:
        return by_flag
    if callable(value):
        # A function is a helper unless its name is very close to a hook's (post_forks,
        # not worker_count for worker_int).
        names = [key for key, setting in SETTINGS.items() if setting.section == "Server hooks"]
        cutoff = 0.9
    else:
        names = [*SETTINGS, *GUNICORN_ONLY]
        cutoff = 0.8
    near = difflib.get_close_matches(name, names, n=1, cutoff=cutoff)
    return near[0] if near else ""


def _gunicorn_default(name: str, value: object) -> bool:
    """Is ``value`` what gunicorn would use for ``name`` anyway (so it asks for nothing)?
    Written as a config file may write it: ``"SCRIPT_NAME, PATH_INFO"``, ``()`` for
    ``[]``, ``False`` for ``"off"``, ``"100"`` for ``100``, an enum for its number."""
    default = GUNICORN_ONLY[name]
    if default is _HOOK:
        return False
    if value == default:
        return True
    if isinstance(default, list) and isinstance(value, (list, tuple)):
        return list(value) == default
    if (default is False or default == "off") and value in (None, False, 0, "", "off"):
        return True
    if isinstance(default, int) and not isinstance(default, bool) and _as_int(value) == default:
        return True
    return _squeezed(value) == _squeezed(default)


def _squeezed(value: object) -> str:
    return "".join(str(value).split()).lower()


def _as_int(value: object) -> int | None:
    try:
        return int(value)  # type: ignore[call-overload,no-any-return]
    except (TypeError, ValueError):
        return None


class _ArgumentParser(argparse.ArgumentParser):
    """argparse that raises ConfigError instead of printing usage and exiting."""

    def error(self, message: str) -> NoReturn:
        raise ConfigError(message)

    def exit(self, status: int = 0, message: str | None = None) -> NoReturn:
        raise ConfigError(message or f"argument parsing stopped with status {status}")


def _summary(doc: str) -> str:
    text = " ".join(textwrap.dedent(doc).split())
    first = text.split(". ")[0].rstrip(".")
    # argparse %-formats help strings.
    return first.replace("%", "%%").replace("``", "")


def _flag_help(name: str, setting: Any) -> str:
    """A flag's line in --help: the doc's first sentence, the default as gunicorn shows it
    (``[30]``), and whether the setting does anything yet."""
    text = _summary(setting.doc)
    if name in UNIMPLEMENTED_SETTINGS:
        text += " (accepted for gunicorn configs; not implemented yet, warned)"
    if setting.action in ("flag", "flag_false"):
        return text
    default = setting.default
    if isinstance(setting.default_doc, str) and not setting.default_doc.startswith("["):
        default = setting.default_doc.strip("'")
    if default is None or default == "" or default == [] or default == {}:
        return text
    if isinstance(default, list):
        default = ",".join(str(item) for item in default)
    return f"{text} [{str(default).replace('%', '%%')}]"


_HELP_EPILOG = """Every setting, the config-file-only ones too (hooks, secure_scheme_headers,
logconfig_dict), with its environment variable and default: docs/settings.md.
Start-up exit codes: 1 bind, 2 configuration, 3 worker boot, 4 app load.
"""


def build_parser() -> argparse.ArgumentParser:
    """The command-line parser, generated from the registry."""
    parser = _ArgumentParser(
        prog="forkhorn",
        usage="forkhorn [OPTIONS] [APP]",
        description="A pre-fork HTTP/1.1 WSGI server with gunicorn's interface.",
        epilog=_HELP_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        add_help=False,
        argument_default=argparse.SUPPRESS,
    )
    parser.add_argument("-h", "--help", action="store_true", dest="_help", help="show help")
    parser.add_argument(
        "-v", "--version", action="store_true", dest="_version", help="show the version"
    )
    for name, setting in SETTINGS.items():
        help_text = _flag_help(name, setting)
        if name == "wsgi_app":
            parser.add_argument(name, nargs="?", metavar="APP", help=help_text)
            continue
        if not setting.flags:
            continue
        if setting.action == "flag":
            parser.add_argument(
                *setting.flags, dest=name, action="store_const", const=True, help=help_text
            )
        elif setting.action == "flag_false":
            parser.add_argument(
                *setting.flags, dest=name, action="store_const", const=False, help=help_text
            )
        else:
            parser.add_argument(
                *setting.flags,
                dest=name,
                action="append" if setting.action == "append" else "store",
                metavar=setting.metavar,
                help=help_text,
            )
    return parser


def help_text() -> str:
    """The ``--help`` text."""
    return build_parser().format_help()


@dataclass(frozen=True, slots=True)
class CommandLineRequest:
    """What ``cli.main`` must know before (or without) a full load."""

    help: bool
    version: bool
    debug: bool


def peek_command_line(argv: Sequence[str]) -> CommandLineRequest:
    """Look for ``--help``, ``--version`` and ``--log-level debug`` without loading.

    Tolerant by design: ``forkhorn --version`` must work even with a broken config file
    or other bad flags, which the full load reports afterwards.
    """
    try:
        namespace, _ = build_parser().parse_known_args(list(argv))
    except ConfigError:
        return CommandLineRequest(help=False, version=False, debug=False)
    found = vars(namespace)
    return CommandLineRequest(
        help=bool(found.get("_help")),
        version=bool(found.get("_version")),
        debug=str(found.get("loglevel", "")).lower() == "debug",
    )


def _refuse_unknown_flags(parser: argparse.ArgumentParser, argv: Sequence[str], where: str) -> None:
    """An unknown ``--flag`` named as such, with the nearest known one: argparse would take
    the value after it for the APP and call both unrecognized (``--wrokers 3 app:app``)."""
    actions = parser._option_string_actions
    takes_value = False
    for arg in argv:
        if takes_value:  # the previous option's value, whatever it looks like ("--> %(h)s")
            takes_value = False
            continue
        if arg == "--":
            return
        if not arg.startswith("-") or arg == "-":
            continue
        flag, equals, _ = arg.partition("=")
        matches = [option for option in actions if option.startswith(flag)]
        if flag in actions or matches:
            # Known, or an abbreviation argparse resolves (or calls ambiguous).
            action = actions[flag] if flag in actions else actions[matches[0]]
            takes_value = not equals and action.nargs != 0
            continue
        if not arg.startswith("--") or len(arg) < 3:
            continue  # -w3 and friends: argparse's business
        context = "" if where == COMMAND_LINE else f" (in {where})"
        near = difflib.get_close_matches(flag, list(actions), n=1, cutoff=0.75)
        hint = f" (did you mean {near[0]}?)" if near else ""
        raise ConfigError(f"unknown option {flag}{context}{hint}; see forkhorn --help")


def _parse(argv: Sequence[str], where: str) -> tuple[dict[str, Any], list[str]]:
    """argv -> {setting name: raw value} for the flags actually given, and the names of
    the gunicorn-only flags given that are warned, not refused."""
    argv, warned = _take_gunicorn_only_flags(argv, where)
    parser = build_parser()
    _refuse_unknown_flags(parser, argv, where)
    try:
        namespace = parser.parse_args(list(argv))
    except ConfigError as exc:
        context = "" if where == COMMAND_LINE else f" (in {where})"
        raise ConfigError(f"{exc}{context}; see forkhorn --help") from None
    found = vars(namespace)
    found.pop("_help", None)
    found.pop("_version", None)
    if found.get("wsgi_app") is None:
        found.pop("wsgi_app", None)
    return found, warned


def _show_raw(value: object) -> str:
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    return repr(value)


class _Layers:
    """The values being merged, and the source of each."""

    def __init__(self) -> None:
        self.values: dict[str, Any] = {}
        self.sources: dict[str, str] = {}

    def set(self, name: str, raw: object, source: str) -> None:
        setting = SETTINGS[name]
        try:
            value = setting.convert(raw)
        except ValueError as exc:
            shown = exc.item if isinstance(exc, BadItemError) else raw
            raise ConfigError(f"{name} = {_show_raw(shown)} (from {source}): {exc}") from None
        self.values[name] = value
        self.sources[name] = source


def _read_config_file(spec: str) -> tuple[dict[str, Any], str]:
    """Run a config file (or import ``python:module``); return its names and source label."""
    label = f"config file {spec}"
    # As gunicorn: the working directory is importable while the config runs, so
    # ``python:module`` and a config that imports its project's settings work. The
    # console script does not have it on sys.path; the app's --chdir comes later.
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    if spec.startswith(PYTHON_MODULE_PREFIX):
        module_name = spec[len(PYTHON_MODULE_PREFIX) :]
        try:
            module = importlib.import_module(module_name)
        except Exception as exc:
            raise ConfigError(
                f"config module {module_name!r} failed to import: {type(exc).__name__}: {exc}"
            ) from exc
        return dict(vars(module)), label
    path = Path(spec)
    if not path.is_file():
        raise ConfigError(f"config file {spec} not found")
    namespace: dict[str, Any] = {
        "__builtins__": builtins,
        "__file__": str(path),
        "__name__": CONFIG_FILE_MODULE,
    }
    try:
        code = compile(path.read_bytes(), str(path), "exec")
        exec(code, namespace)
    except (Exception, SystemExit) as exc:
        raise ConfigError(
            f"config file {spec} failed: {type(exc).__name__}: {exc}{_line_in(exc, path)}"
        ) from exc
    return namespace, label


def _line_in(exc: BaseException, path: Path) -> str:
    """`` (line N)``: the last line of the config file in the traceback, if any."""
    if isinstance(exc, SyntaxError):
        return ""  # its message already says "(file, line N)"
    lines = [
        frame.lineno
        for frame in traceback.extract_tb(exc.__traceback__)
        if frame.filename == str(path)
    ]
    return f" (line {lines[-1]})" if lines else ""


def load_config(
    argv: list[str], environ: Mapping[str, str], directory: str | None = None
) -> Config:
    """Resolve every setting from defaults, config file, environment and argv.

    ``argv`` excludes the program name. Raises ConfigError with one line on any bad input.
    ``directory``: where relative paths are read from (the current directory), for
    ``Config.start_directory``; a reload passes the one start-up used.
    """
    cli, cli_warned = _parse(argv, COMMAND_LINE)
    args_env = CMD_ARGS_ENV
    if not environ.get(CMD_ARGS_ENV, "").strip() and environ.get(GUNICORN_CMD_ARGS_ENV, ""):
        args_env = GUNICORN_CMD_ARGS_ENV
    try:
        words = shlex.split(environ.get(args_env, ""))
    except ValueError as exc:  # an unbalanced quote
        raise ConfigError(f"{args_env}: {exc}") from None
    env_args, env_warned = _parse(words, args_env)

    layers = _Layers()
    # A bad PORT or WEB_CONCURRENCY only matters if nothing later replaces the default it
    # feeds: gunicorn ignores a stray PORT when -b is given.
    env_errors: dict[str, ConfigError] = {}
    for name, setting in SETTINGS.items():
        layers.values[name] = copy.deepcopy(setting.default)
        layers.sources[name] = DEFAULT_SOURCE
        for env_name in setting.env:
            raw = environ.get(env_name, "")
            if raw.strip():
                try:
                    layers.set(
                        name, setting.env_convert(raw) if setting.env_convert else raw, env_name
                    )
                except ConfigError as exc:
                    env_errors[name] = exc

    config_spec: str | None = None
    if "config" in cli:
        config_spec, config_source = cli["config"], COMMAND_LINE
    elif "config" in env_args:
        config_spec, config_source = env_args["config"], args_env
    elif Path(DEFAULT_CONFIG_FILE).is_file():
        config_spec, config_source = DEFAULT_CONFIG_FILE, DEFAULT_SOURCE
    elif Path(GUNICORN_CONFIG_FILE).is_file():
        config_spec, config_source = GUNICORN_CONFIG_FILE, DEFAULT_SOURCE
    ignored: list[tuple[str, str]] = [(name, COMMAND_LINE) for name in cli_warned]
    ignored += [(name, args_env) for name in env_warned]
    notes: list[str] = []
    if config_spec:
        layers.set("config", config_spec, config_source)
        namespace, label = _read_config_file(config_spec)
        for name, raw in namespace.items():
            # The file cannot name another config file: it is already being read.
            if name in SETTINGS and name != "config":
                layers.set(name, raw, label)
            elif name in GUNICORN_ONLY and not _gunicorn_default(name, raw):
                ignored.append((name, label))
            elif name in TLS_WITH_CERT_ONLY and raw:
                notes.append(
                    f"{name} (from {label}) has no effect: gunicorn uses it only with "
                    "certfile and keyfile, and forkhorn has no TLS yet"
                )
            elif name in TLS_SETTINGS and raw:
                raise ConfigError(f"{name} (from {label}): {_TLS_REFUSAL}")
            else:
                near = _misspelt_setting(name, raw)
                if near:
                    notes.append(f"{name} (from {label}) is not a setting: did you mean {near}?")

    for parsed, source in ((env_args, args_env), (cli, COMMAND_LINE)):
        for name, raw in parsed.items():
            layers.set(name, raw, source)

    for name, error in env_errors.items():
        if layers.sources[name] == DEFAULT_SOURCE:
            raise error

    if layers.values.get("proxy_protocol"):
        source = layers.sources["proxy_protocol"]
        raise ConfigError(f"proxy_protocol (from {source}): {_PROXY_PROTOCOL_REFUSAL}")

    # gunicorn names the processes after the app unless told otherwise.
    if layers.values["wsgi_app"] and layers.sources["default_proc_name"] == DEFAULT_SOURCE:
        layers.values["default_proc_name"] = layers.values["wsgi_app"]
        layers.sources["default_proc_name"] = layers.sources["wsgi_app"]

    validate(layers.values, layers.sources)
    return Config(layers.values, layers.sources, argv, environ, ignored, notes, directory)
