"""Value converters: raw value in, typed value out, or ``ValueError("expected ...")``.

Rules kept here:
- A raw value is a string (command line, ``FORKHORN_CMD_ARGS``, environment) or any
  Python object (a config file); every converter accepts both where gunicorn does, so a
  gunicorn config file with ``workers = "4"`` or ``bind = "0.0.0.0:80"`` still works.
- The ``ValueError`` text is only the expectation; ``sources.py`` prefixes the setting
  name, the value and where it came from.
- Converters may look at the filesystem or the user database (``chdir`` must exist, a
  user name becomes a uid) but never at the environment.
"""

from __future__ import annotations

import grp
import inspect
import ipaddress
import pwd
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

# Python identifiers joined by dots, optionally ``:`` then more dotted identifiers:
# ``sync``, ``pkg.mod.Class``, ``pkg.mod:Class``.
_DOTTED_PATH = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*(:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*)?")
# RFC 9110 §5.5: a field value is visible ASCII, spaces and tabs; no CR, LF or NUL.
_FIELD_VALUE = re.compile(r"[\x21-\x7e]([\x20-\x7e\t]*[\x21-\x7e])?")
_HOST_NAME = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_.-]*[A-Za-z0-9_])?")
_OCTAL_DIGITS = re.compile(r"0[0-7]+")
# A setuptools entry point as gunicorn names worker classes: egg:PROJECT#NAME.
_ENTRY_POINT = re.compile(r"egg:[A-Za-z_][\w.-]*#[A-Za-z_][\w.]*")

# The __name__ a config file runs under (see sources.py); classes defined there have it.
CONFIG_FILE_MODULE = "__forkhorn_config__"


class BadItemError(ValueError):
    """One item of a list value is wrong; the error message shows that item, not the list."""

    def __init__(self, message: str, item: object) -> None:
        super().__init__(message)
        self.item = item


def integer(minimum: int = 0, maximum: int | None = None) -> Callable[[object], int]:
    """An int within bounds; accepts ints, integral floats and decimal strings."""
    if maximum is not None:
        expectation = f"expected an integer from {minimum} to {maximum}"
    elif minimum == 1:
        expectation = "expected a positive integer"
    elif minimum == 0:
        expectation = "expected a non-negative integer"
    else:
        expectation = f"expected an integer >= {minimum}"

    def convert(raw: object) -> int:
        value: int
        if isinstance(raw, bool):
            raise ValueError(expectation)
        if isinstance(raw, int):
            value = raw
        elif (isinstance(raw, float) and raw.is_integer()) or (
            isinstance(raw, str) and re.fullmatch(r"\s*[+-]?\d+\s*", raw)
        ):
            value = int(raw)
        else:
            raise ValueError(expectation)
        if value < minimum or (maximum is not None and value > maximum):
            raise ValueError(expectation)
        return value

    return convert


positive_int = integer(1)
non_negative_int = integer(0)


def seconds(raw: object) -> float:
    """A non-negative duration in seconds (int, float or decimal string)."""
    expectation = "expected a non-negative number of seconds"
    if isinstance(raw, bool):
        raise ValueError(expectation)
    if isinstance(raw, int | float):
        value = float(raw)
    elif isinstance(raw, str):
        try:
            value = float(raw)
        except ValueError:
            raise ValueError(expectation) from None
    else:
        raise ValueError(expectation)
    if not value >= 0 or value == float("inf"):  # also rejects NaN
        raise ValueError(expectation)
    return value


_TRUE = {"true", "1", "yes", "on", "y"}
_FALSE = {"false", "0", "no", "off", "n"}


def boolean(raw: object) -> bool:
    if isinstance(raw, bool):
        return raw
    if isinstance(raw, str):
        lowered = raw.strip().lower()
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False
    raise ValueError("expected true or false")


def proxy_protocol(raw: object) -> bool:
    """gunicorn's boolean, or gunicorn 27's ``off``, ``v1``, ``v2`` and ``auto``."""
    if isinstance(raw, str) and raw.strip().lower() in ("v1", "v2", "auto"):
        return True
    try:
        return boolean(raw)
    except ValueError:
        raise ValueError("expected off, v1, v2, auto, true or false") from None


def optional_boolean(raw: object) -> bool | None:
    return None if raw is None else boolean(raw)


def string(raw: object) -> str:
    if not isinstance(raw, str):
        raise ValueError("expected a string")
    return raw


def optional_string(raw: object) -> str | None:
    """A string, or None; an empty string also means None (unset)."""
    if raw is None:
        return None
    return string(raw) or None


def choice(*choices: str) -> Callable[[object], str]:
    expectation = "expected one of " + ", ".join(choices)

    def convert(raw: object) -> str:
        if isinstance(raw, str) and raw.strip().lower() in choices:
            return raw.strip().lower()
        raise ValueError(expectation)

    return convert


def string_list(raw: object) -> list[str]:
    """A list of strings; a single string becomes a one-item list (as gunicorn does)."""
    if isinstance(raw, str):
        return [raw]
    if isinstance(raw, list | tuple) and all(isinstance(item, str) for item in raw):
        return list(raw)
    raise ValueError("expected a string or a list of strings")


def logger_class_path(raw: object) -> str:
    """``logger_class``: as ``dotted_path``, but a class defined in the config file itself
    is taken too (gunicorn's recipes subclass its Logger there): forkhorn does not load
    the class (the setting is warned as unused), so it need not be importable."""
    if inspect.isclass(raw):
        return f"{raw.__module__}:{raw.__qualname__}"
    return dotted_path(raw)


def dotted_path(raw: object) -> str:
    """A worker or logger class: a short name, ``pkg.mod.Class`` or ``pkg.mod:Class``.

    A class object (from a config file) is turned into its ``module:qualname`` path; one
    defined inside the config file itself cannot be imported again by a worker, so it is
    refused with a hint.
    """
    if inspect.isclass(raw):
        if raw.__module__ in (CONFIG_FILE_MODULE, "__main__") or "<locals>" in raw.__qualname__:
            raise ValueError("expected a class importable by name; put it in a module")
        return f"{raw.__module__}:{raw.__qualname__}"
    if isinstance(raw, str):
        text = raw.strip()
        # gunicorn's entry-point form of its own classes, kept in older configs.
        name = text.removeprefix("egg:gunicorn#")
        # Another project's (egg:meinheld#gunicorn_worker) passes too: loading the class
        # says what to use instead.
        if _DOTTED_PATH.fullmatch(name) or _ENTRY_POINT.fullmatch(text):
            return text
    raise ValueError("expected a name or a dotted path such as pkg.module:Class")


def mapping(raw: object) -> dict[str, Any]:
    if isinstance(raw, dict) and all(isinstance(key, str) for key in raw):
        return dict(raw)
    raise ValueError("expected a dict with string keys")


def header_mapping(raw: object) -> dict[str, str]:
    """secure_scheme_headers: header name -> value, names upper-cased as gunicorn does."""
    value = mapping(raw)
    if not all(isinstance(item, str) for item in value.values()):
        raise ValueError("expected a dict of header names to string values")
    return {key.upper(): str(item) for key, item in value.items()}


def header_value(raw: object) -> str:
    """A response header value; empty means "send no such header"."""
    value = string(raw).strip()
    if value and not _FIELD_VALUE.fullmatch(value):
        raise ValueError("expected visible ASCII characters (no CR, LF or control bytes)")
    return value


def existing_directory(raw: object) -> str | None:
    if raw is None:
        return None
    value = string(raw)
    if not value:
        return None
    if not Path(value).is_dir():
        raise ValueError("expected an existing directory")
    # Absolute, so applying it twice (cli, then a re-exec'd master) cannot go astray.
    return str(Path(value).resolve())


def umask(raw: object) -> int:
    """A file mode mask: 18, "18", "0o22", "0x12" or "0022" (leading zero means octal)."""
    expectation = "expected a umask from 0 to 0o777, e.g. 0o22 or 0022"
    if isinstance(raw, bool):
        raise ValueError(expectation)
    if isinstance(raw, int):
        value = raw
    elif isinstance(raw, str):
        text = raw.strip()
        try:
            # int(x, 0) refuses "0022"; a shell user means octal, so read it as octal.
            value = int(text, 8) if _OCTAL_DIGITS.fullmatch(text) else int(text, 0)
        except ValueError:
            raise ValueError(expectation) from None
    else:
        raise ValueError(expectation)
    if not 0 <= value <= 0o777:
        raise ValueError(expectation)
    return value


def _system_id(raw: object, lookup: Callable[[str], int], what: str, short: str) -> int | None:
    """A name or a non-negative number -> the numeric id; None means "do not switch"."""
    if raw is None or raw == "":
        return None
    if isinstance(raw, int) and not isinstance(raw, bool) and raw >= 0:
        return raw
    if isinstance(raw, str):
        if raw.isdigit():
            return int(raw)
        try:
            return lookup(raw)
        except KeyError:
            raise ValueError(
                f"expected a {what} name or {short} that exists on this system"
            ) from None
    raise ValueError(f"expected a {what} name or {short}")


def user_id(raw: object) -> int | None:
    """A user name or numeric uid -> uid; None means "do not switch user"."""
    return _system_id(raw, lambda name: pwd.getpwnam(name).pw_uid, "user", "uid")


def group_id(raw: object) -> int | None:
    """A group name or numeric gid -> gid; None means "do not switch group"."""
    return _system_id(raw, lambda name: grp.getgrnam(name).gr_gid, "group", "gid")


def address_list(raw: object) -> list[str]:
    """Trusted peers: "*" or IP addresses / networks, comma separated or as a list."""
    if isinstance(raw, str):
        items = [item.strip() for item in raw.split(",") if item.strip()]
    elif isinstance(raw, list | tuple) and all(isinstance(item, str) for item in raw):
        items = [item.strip() for item in raw]
    else:
        raise ValueError("expected a comma-separated list of IP addresses or networks, or *")
    for item in items:
        if item == "*":
            continue
        try:
            ipaddress.ip_network(item, strict=False)
        except ValueError:
            raise BadItemError("expected IP addresses or networks, or *", item) from None
    return items


@dataclass(frozen=True, slots=True)
class BindAddress:
    """A parsed ``bind`` value; ``str(cfg.bind[i])`` stays the user's spelling."""

    kind: Literal["tcp", "unix", "fd"]
    host: str = ""  # tcp: "" means every interface; IPv6 without brackets
    port: int = 0  # tcp: 0 asks the kernel for a free port
    path: str = ""  # unix
    fd: int = -1  # fd


# gunicorn binds a bare HOST (no port) to port 8000.
DEFAULT_PORT = 8000


def parse_bind(raw: str) -> BindAddress:
    """Parse one bind address: ``HOST:PORT``, ``[v6]:PORT``, ``HOST``, ``:PORT``,
    ``unix:PATH`` (or ``unix://PATH``), ``fd://N``, optionally ``tcp://`` in front.

    Raises ValueError with the expectation; used by the converter and by the listeners.
    """
    text = raw.strip()
    if text.startswith("unix:"):
        path = text[len("unix://") :] if text.startswith("unix://") else text[len("unix:") :]
        if not path:
            raise ValueError("expected a socket path after unix:")
        return BindAddress("unix", path=path)
    if text.startswith("fd://"):
        number = text[len("fd://") :]
        if not number.isdigit():
            raise ValueError("expected a file descriptor number after fd://")
        return BindAddress("fd", fd=int(number))
    if text.startswith("tcp://"):
        text = text[len("tcp://") :]
    if not text:
        raise ValueError("expected HOST:PORT, [IPv6]:PORT, unix:PATH or fd://N")
    port_text = ""
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ValueError("expected ] to close the IPv6 address")
        host, rest = text[1:end], text[end + 1 :]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError("expected an IPv6 address inside [ ]") from None
        if rest:
            if not rest.startswith(":"):
                raise ValueError("expected :PORT after ]")
            port_text = rest[1:]
            if not port_text:
                raise ValueError("expected a port number after :")
    elif text.count(":") > 1:
        raise ValueError("expected an IPv6 address in brackets, e.g. [::1]:8000")
    else:
        host, sep, port_text = text.partition(":")
        if sep and not port_text:
            raise ValueError("expected a port number after :")
        if host and not _HOST_NAME.fullmatch(host):
            raise ValueError("expected a host name or IP address")
    port = DEFAULT_PORT
    if port_text:
        if not port_text.isdigit() or int(port_text) > 65535:
            raise ValueError("expected a port number from 0 to 65535")
        port = int(port_text)
    return BindAddress("tcp", host=host, port=port)


def bind_list(raw: object) -> list[str]:
    try:
        values = string_list(raw)
    except ValueError:
        raise ValueError("expected an address or a list of addresses") from None
    if not values:
        raise ValueError("expected at least one address")
    seen: set[BindAddress] = set()
    for value in values:
        try:
            address = parse_bind(value)
        except ValueError as exc:
            raise BadItemError(str(exc), value) from None
        # The second bind of one address would fail "in use" after retrying for seconds.
        # (Port 0 asks the kernel for a free port each time: not a repeat.)
        if address in seen and not (address.kind == "tcp" and address.port == 0):
            raise BadItemError("listed twice", value)
        seen.add(address)
    return [value.strip() for value in values]


def env_assignments(raw: object) -> list[str]:
    """raw_env: ``KEY=VALUE`` strings."""
    values = string_list(raw)
    for value in values:
        key, sep, _ = value.partition("=")
        if not sep or not key.strip():
            raise BadItemError("expected KEY=VALUE", value)
    return values


def hook(arity: int) -> Callable[[object], Callable[..., Any]]:
    """A server hook: a callable (or a dotted path to one) taking ``arity`` positional args.

    Checked with ``inspect.signature().bind`` rather than by counting parameters, so
    defaults and ``*args`` are honoured, and a wrong arity fails at load time instead of
    at the first fork.
    """
    noun = "argument" if arity == 1 else "arguments"

    def convert(raw: object) -> Callable[..., Any]:
        target = raw
        if isinstance(raw, str):
            target = import_object(raw)
        if not callable(target):
            raise ValueError(f"expected a callable taking {arity} {noun}")
        try:
            signature = inspect.signature(target)
        except (TypeError, ValueError):  # some builtins have no signature: trust them
            return target
        try:
            signature.bind(*([None] * arity))
        except TypeError:
            raise ValueError(
                f"expected a callable taking {arity} positional {noun}, got {signature}"
            ) from None
        return target

    return convert


def import_object(path: str) -> object:
    """Import ``pkg.mod.attr`` or ``pkg.mod:attr`` (hook values given as strings)."""
    import importlib

    if not _DOTTED_PATH.fullmatch(path):
        raise ValueError("expected a dotted path such as pkg.module.function")
    if ":" in path:
        module_name, _, attr_path = path.partition(":")
    else:
        module_name, _, attr_path = path.rpartition(".")
    if not module_name:
        raise ValueError("expected a dotted path such as pkg.module.function")
    try:
        obj: object = importlib.import_module(module_name)
    except Exception as exc:
        raise ValueError(f"cannot import {module_name!r}: {exc}") from None
    for part in attr_path.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"{module_name!r} has no attribute {attr_path!r}")
        obj = getattr(obj, part)
    return obj
