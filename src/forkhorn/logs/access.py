"""Access-log lines: gunicorn's format atoms, compiled once per format string.

An access-log format is a printf-style string with named fields, ``%(h)s %(r)s ...``, as in
gunicorn (and, through it, Apache's common and combined formats). ``AccessFormat(fmt)``
parses the format once; ``render()`` then computes only the atoms that the format names and
returns the line.

Atoms (the same letters and meanings as gunicorn):

    h  remote address            l  '-'                      u  user (HTTP Basic auth) or '-'
    t  time, [27/Nov/2026:02:00:00 +0000]                    r  request line (method target proto)
    m  method                    U  path (no query)          q  query string
    H  protocol                  s  status code              B  body bytes sent
    b  body bytes (0 too)        f  Referer                  a  User-Agent
    T  seconds (int)             M  milliseconds (int)       D  microseconds (int)
    L  seconds, decimal          p  <pid>
    {name}i  request header      {name}o  response header    {var}e  WSGI environ key

Rules kept here:
- The format is checked once, at construction, by rendering a sample request; a bad format
  raises ``ValueError`` then, not on the first request.
- An atom with no value is ``-``; an unknown atom is ``-`` (gunicorn's SafeAtoms).
- String values are escaped so that one request is always one line that splits on quotes:
  ``"`` and ``\\`` get a backslash, and anything outside printable ASCII is written as
  ``\\xhh`` (Apache's mod_log_config rule). gunicorn escapes only ``"``, which lets a header
  value forge the rest of a line; here the escaping is stricter, the atoms are the same.
- T M D B are ints (so ``%(D)d`` works), the rest are strings.
- Nothing here reads the clock or the config: the caller passes ``now`` (``time.time()``).
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

__all__ = ["DEFAULT_ACCESS_LOG_FORMAT", "AccessFormat", "AccessFormatError"]

# gunicorn's default: Apache's "combined" format.
DEFAULT_ACCESS_LOG_FORMAT = '%(h)s %(l)s %(u)s %(t)s "%(r)s" %(s)s %(b)s "%(f)s" "%(a)s"'

# Every "%(name)" in a format; names hold no ")" (gunicorn's header atoms don't either).
_ATOM_RE = re.compile(r"%\(([^)]*)\)")

# Characters written as-is: printable ASCII except '"' and '\'.
_UNSAFE_RE = re.compile(r"[^\x20\x21\x23-\x5b\x5d-\x7e]")
_C_ESCAPES = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}

# Month names are fixed by the Common Log Format, whatever the locale (so no %b).
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")

Headers = Sequence[tuple[str, str]]
Getter = Callable[[Mapping[str, Any], str, Headers, int, float, float], object]


def _escape_char(match: re.Match[str]) -> str:
    ch = match.group()
    known = _C_ESCAPES.get(ch)
    if known is not None:
        return known
    code = ord(ch)
    if code <= 0xFF:
        # PEP 3333: environ strings are latin-1 decodings of the wire bytes, so this is
        # the byte that was received.
        return f"\\x{code:02x}"
    return "".join(f"\\x{b:02x}" for b in ch.encode("utf-8"))


def escape(value: str) -> str:
    """Return ``value`` safe to put between quotes on one log line."""
    if _UNSAFE_RE.search(value) is None:
        return value
    return _UNSAFE_RE.sub(_escape_char, value)


# JSON escaping (``access_log_escape = "json"``): what a JSON string may not hold raw, and
# the C1 controls (U+0080-U+009F), which a terminal may act on.
# Lone surrogates U+DC80-U+DCFF stand for the bytes that are not UTF-8 (surrogateescape).
# Also the line and paragraph separators (a line break to str.splitlines() and some
# viewers) and the bidirectional controls, which reorder what a reader sees.
_JSON_UNSAFE_RE = re.compile(
    r'["\\\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069\udc80-\udcff]'
)
_JSON_ESCAPES = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _json_escape_char(match: re.Match[str]) -> str:
    ch = match.group()
    code = ord(ch)
    if code >= 0xDC80:
        code -= 0xDC00  # a byte that was not UTF-8: its own code
    return _JSON_ESCAPES.get(ch) or f"\\u{code:04x}"


def escape_json(value: str) -> str:
    """Return ``value`` safe inside a JSON string on one log line. Environ strings are
    latin-1 decodings of the wire bytes (PEP 3333): bytes that form UTF-8 are written as
    the text they encode; others as ``\\u00hh``, the byte's own code."""
    unsafe = _JSON_UNSAFE_RE
    text = value
    if not value.isascii():
        try:
            # The UTF-8 sequences as text, each other byte as a lone surrogate.
            text = value.encode("latin-1").decode("utf-8", "surrogateescape")
        except UnicodeEncodeError:
            pass  # not wire bytes (set by the app): already text
    if unsafe.search(text) is None:
        return text
    return unsafe.sub(_json_escape_char, text)


ESCAPES = {"default": escape, "json": escape_json}


def format_clf_time(now: float) -> str:
    """``now`` (seconds since the epoch) as local time in Common Log Format brackets."""
    tm = time.localtime(now)
    offset = tm.tm_gmtoff // 60
    sign = "+" if offset >= 0 else "-"
    hours, minutes = divmod(abs(offset), 60)
    return (
        f"[{tm.tm_mday:02d}/{_MONTHS[tm.tm_mon - 1]}/{tm.tm_year:04d}:"
        f"{tm.tm_hour:02d}:{tm.tm_min:02d}:{tm.tm_sec:02d} {sign}{hours:02d}{minutes:02d}]"
    )


def basic_auth_user(environ: Mapping[str, Any]) -> str | None:
    """The user name of an ``Authorization: Basic`` header, or None. As the wire bytes in
    latin-1, as environ strings are (PEP 3333): each escaping then sees the same bytes
    (the JSON one decodes UTF-8 itself), and a name that is not UTF-8 still shows."""
    auth = environ.get("HTTP_AUTHORIZATION")
    if not auth:
        return None
    scheme, _, credentials = auth.partition(" ")
    if scheme.lower() != "basic" or not credentials:
        return None
    try:
        decoded = base64.b64decode(credentials.strip(), validate=True).decode("latin-1")
    except (binascii.Error, ValueError):
        return None
    return decoded.partition(":")[0]


def _header_environ_key(name: str) -> str:
    # PEP 3333: Content-Type and Content-Length have no HTTP_ prefix.
    key = name.upper().replace("-", "_")
    if key in ("CONTENT_TYPE", "CONTENT_LENGTH"):
        return key
    return "HTTP_" + key


def _micros(request_time: float) -> int:
    return round(request_time * 1_000_000)


def _environ_atom(key: str, empty: str = "-") -> Getter:
    def get(e: Mapping[str, Any], s: str, o: Headers, n: int, rt: float, now: float) -> object:
        return e.get(key) or empty

    return get


def _environ_var(e: Mapping[str, Any], name: str) -> str | None:
    """A ``{var}e`` atom's value, None when the environ has no such key. gunicorn matches
    it case-insensitively; the spellings seen in practice are tried first."""
    for key in (name, name.upper()):
        if key in e:
            value = e[key]
            break
    else:
        lower = name.lower()
        value = next((v for k, v in e.items() if k.lower() == lower), None)
    if value is None:
        return None
    return value if isinstance(value, str) else str(value)


def _response_header(o: Headers, name: str) -> str | None:
    """A ``{name}o`` atom's value, None when the response has no such header."""
    lower = name.lower()
    found = None
    for key, value in o:
        if key.lower() == lower:
            found = value  # the last one wins, as in gunicorn
    return found


def _environ_var_atom(name: str) -> Getter:
    def get(e: Mapping[str, Any], s: str, o: Headers, n: int, rt: float, now: float) -> object:
        return _environ_var(e, name) or "-"

    return get


def _response_header_atom(name: str) -> Getter:
    def get(e: Mapping[str, Any], s: str, o: Headers, n: int, rt: float, now: float) -> object:
        found = _response_header(o, name)
        return "-" if found is None else found

    return get


def _request_line(e: Mapping[str, Any], s: str, o: Headers, n: int, rt: float, now: float) -> str:
    target = e.get("RAW_URI")
    if target is None:
        query = e.get("QUERY_STRING")
        target = e.get("PATH_INFO", "") + ("?" + query if query else "")
    return f"{e.get('REQUEST_METHOD', '-')} {target} {e.get('SERVER_PROTOCOL', '-')}"


def _atoms() -> dict[str, Getter]:
    """The fixed one-letter atoms."""

    def dash(e: Mapping[str, Any], s: str, o: Headers, n: int, rt: float, now: float) -> str:
        return "-"

    def user(e: Mapping[str, Any], s: str, o: Headers, n: int, rt: float, now: float) -> str:
        return basic_auth_user(e) or "-"

    def status(e: Mapping[str, Any], s: str, o: Headers, n: int, rt: float, now: float) -> str:
        return s.partition(" ")[0]

    def body(e: Mapping[str, Any], s: str, o: Headers, n: int, rt: float, now: float) -> int:
        return n

    def body_text(e: Mapping[str, Any], s: str, o: Headers, n: int, rt: float, now: float) -> str:
        # "0" for an empty body, not CLF's "-": gunicorn writes 0, and parsers of its
        # lines expect a number there.
        return str(n)

    def secs(e: Mapping[str, Any], s: str, o: Headers, n: int, rt: float, now: float) -> int:
        return _micros(rt) // 1_000_000

    def millis(e: Mapping[str, Any], s: str, o: Headers, n: int, rt: float, now: float) -> int:
        return _micros(rt) // 1_000

    def micros(e: Mapping[str, Any], s: str, o: Headers, n: int, rt: float, now: float) -> int:
        return _micros(rt)

    def decimal(e: Mapping[str, Any], s: str, o: Headers, n: int, rt: float, now: float) -> str:
        whole, frac = divmod(_micros(rt), 1_000_000)
        return f"{whole}.{frac:06d}"

    def pid(e: Mapping[str, Any], s: str, o: Headers, n: int, rt: float, now: float) -> str:
        # Read per line, not cached: the Logger is built in the master, used after fork.
        return f"<{os.getpid()}>"

    return {
        "h": _environ_atom("REMOTE_ADDR"),
        "l": dash,
        "u": user,
        "r": _request_line,
        "m": _environ_atom("REQUEST_METHOD"),
        # Empty, not "-", as gunicorn writes them (environ.get without a default).
        "U": _environ_atom("PATH_INFO", ""),
        "q": _environ_atom("QUERY_STRING", ""),
        "H": _environ_atom("SERVER_PROTOCOL"),
        "s": status,
        "B": body,
        "b": body_text,
        "f": _environ_atom("HTTP_REFERER"),
        "a": _environ_atom("HTTP_USER_AGENT"),
        "T": secs,
        "M": millis,
        "D": micros,
        "L": decimal,
        "p": pid,
    }


class _Atoms(dict[str, object]):
    """gunicorn's atoms mapping, for access-log filters (``record.args``).

    gunicorn puts every request header (``{user-agent}i``), response header
    (``{content-type}o``) and environ key (``{remote_addr}e``) in it, lower-cased, and
    reads ``{...}`` keys case-insensitively, so a filter may read one the format does not
    show (``record.args.get("{user-agent}i")`` to drop a health check's lines). Here those
    are looked up when asked for, not made for every line; an atom that is not there
    reads as "-" (``get`` gives its default, ``in`` says False), as in gunicorn.
    """

    __slots__ = ("_environ", "_escape", "_headers")

    def __init__(
        self, environ: Mapping[str, Any], headers: Headers, escape: Callable[[str], str]
    ) -> None:
        super().__init__()
        self._environ = environ
        self._headers = headers
        self._escape = escape

    def _lookup(self, key: object) -> object | None:
        """A ``{name}i``, ``{name}o`` or ``{name}e`` atom, any case (None: absent)."""
        if not (isinstance(key, str) and len(key) > 3 and key[0] == "{" and key[-2] == "}"):
            return None
        name, kind = key[1:-2], key[-1].lower()
        value: object | None = None
        if kind == "i":
            value = self._environ.get(_header_environ_key(name))
        elif kind == "o":
            value = _response_header(self._headers, name)
        elif kind == "e":
            value = _environ_var(self._environ, name)
        if value is None:
            return None
        value = self._escape(value) if type(value) is str else value
        dict.__setitem__(self, key.lower(), value)
        return value

    # ``{...}`` keys are kept lower-cased, and read and written in any case, as gunicorn's
    # are: a filter that redacts ``record.args["{x-token}i"]`` changes what a format that
    # says ``%({X-Token}i)s`` writes.
    def __getitem__(self, key: str) -> object:
        if key[:1] == "{":
            key = key.lower()
        try:
            return dict.__getitem__(self, key)
        except KeyError:
            value = self._lookup(key)
            return "-" if value is None else value

    def __setitem__(self, key: str, value: object) -> None:
        dict.__setitem__(self, key.lower() if key[:1] == "{" else key, value)

    def get(self, key: str, default: object = None) -> object:
        if key[:1] == "{":
            key = key.lower()
        if dict.__contains__(self, key):
            return dict.__getitem__(self, key)
        value = self._lookup(key)
        return default if value is None else value

    def __contains__(self, key: object) -> bool:
        if isinstance(key, str) and key[:1] == "{":
            key = key.lower()
        return dict.__contains__(self, key) or self._lookup(key) is not None


def _unknown(e: Mapping[str, Any], s: str, o: Headers, n: int, rt: float, now: float) -> str:
    return "-"


_FIXED_ATOMS = _atoms()


class AccessFormatError(ValueError):
    """An access log format that cannot render a line; ``reason`` says why, without the
    format (the settings' errors name the setting and value themselves)."""

    def __init__(self, fmt: str, reason: str) -> None:
        super().__init__(f"invalid access_log_format {fmt!r}: {reason}")
        self.reason = reason


class AccessFormat:
    """One compiled access-log format. Safe to share between threads.

    Runs in: workers, once per response (``render``); construction anywhere.
    """

    __slots__ = ("_escape", "_fmt", "_getters", "_time_second", "_time_text")

    def __init__(self, fmt: str = DEFAULT_ACCESS_LOG_FORMAT, escaping: str = "default") -> None:
        self._fmt = fmt
        self._escape = ESCAPES[escaping]
        fixed = _atoms()
        getters: list[tuple[str, Getter]] = []
        for key in dict.fromkeys(_ATOM_RE.findall(fmt)):  # unique, in order
            getters.append((key, self._compile_atom(key, fixed)))
        self._getters = tuple(getters)
        # The "t" atom changes once a second; cache its text (a stale read from another
        # thread only costs a recomputation).
        self._time_second = -1
        self._time_text = ""
        self._check()

    @property
    def fmt(self) -> str:
        return self._fmt

    def _compile_atom(self, key: str, fixed: dict[str, Getter]) -> Getter:
        if key == "t":
            return self._clf_time
        if key in fixed:
            return fixed[key]
        if key.startswith("{") and len(key) > 3 and key[-2] == "}":
            # The kind in any case, as gunicorn reads the whole key lower-cased: its
            # ``%({x-token}I)s`` is ``{x-token}i``.
            name, kind = key[1:-2], key[-1].lower()
            if kind == "i":
                return _environ_atom(_header_environ_key(name))
            if kind == "o":
                return _response_header_atom(name)
            if kind == "e":
                return _environ_var_atom(name)
        return _unknown

    def _clf_time(
        self, e: Mapping[str, Any], s: str, o: Headers, n: int, rt: float, now: float
    ) -> str:
        second = int(now)
        if second != self._time_second:
            self._time_text = format_clf_time(second)
            self._time_second = second
        return self._time_text

    def _check(self) -> None:
        # "%s" with a mapping would print the whole atoms dict; only named fields are allowed.
        if "%" in _ATOM_RE.sub("", self._fmt.replace("%%", "")):
            raise AccessFormatError(self._fmt, "every field must be named, as in %(h)s")
        sample = {
            "REQUEST_METHOD": "GET",
            "RAW_URI": "/?a=1",
            "PATH_INFO": "/",
            "QUERY_STRING": "a=1",
            "SERVER_PROTOCOL": "HTTP/1.1",
            "REMOTE_ADDR": "127.0.0.1",
        }
        try:
            self.render(sample, "200 OK", [("Content-Length", "2")], 2, 0.001, 0.0)
        except (TypeError, ValueError, KeyError) as exc:
            raise AccessFormatError(self._fmt, str(exc)) from None

    def atoms(
        self,
        environ: Mapping[str, Any],
        status: str,
        response_headers: Headers,
        sent_bytes: int,
        request_time: float,
        now: float,
    ) -> dict[str, object]:
        """Every one-letter atom and the format's own, escaped as in the line: what
        gunicorn hands its access records as ``record.args``, which filters written for
        it read (``record.args["U"]``). ``fmt % atoms`` is the line. Missing keys give
        "-", as in gunicorn. Made only when the access log has filters. (The loop is
        render's; kept apart so that render, run for every line, calls nothing more.)"""
        escape_value = self._escape
        atoms = _Atoms(environ, response_headers, escape_value)
        for key, get in (*_FIXED_ATOMS.items(), *self._getters):
            value = get(environ, status, response_headers, sent_bytes, request_time, now)
            if key[:1] == "{" and value == "-" and atoms._lookup(key) is None:
                # Not there: left out, as gunicorn leaves it, so that a filter's ``in``
                # and ``get(key, default)`` say so; the line still reads "-".
                continue
            atoms[key] = escape_value(value) if type(value) is str else value
        return atoms

    def render(
        self,
        environ: Mapping[str, Any],
        status: str,
        response_headers: Headers,
        sent_bytes: int,
        request_time: float,
        now: float,
    ) -> str:
        """The access-log line for one response (without a newline)."""
        atoms: dict[str, object] = {}
        escape_value = self._escape
        for key, get in self._getters:
            value = get(environ, status, response_headers, sent_bytes, request_time, now)
            atoms[key] = escape_value(value) if type(value) is str else value
        return self._fmt % atoms
