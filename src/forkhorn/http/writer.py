"""Response head encoding: the status line and header validation.

Rules kept:
- The status is ``"NNN reason"`` with a 3-digit code and a reason free of CTLs (PEP 3333);
  header names are tokens and values are latin-1 text without CR, LF, NUL or other CTLs
  (HTAB allowed). Anything else raises ``InvalidResponseError``: an app can never inject a
  header or split a response.
- Hop-by-hop fields are the server's business (PEP 3333 forbids apps to set them): the
  app's ``Transfer-Encoding``, ``Keep-Alive``, ``Upgrade``, ``TE``, ``Trailer`` and
  ``Proxy-Connection`` are dropped, its ``Connection: close`` is
  honoured and re-emitted by the connection, its ``Content-Length`` is validated and
  becomes the response framing.

How it works: a status and its whole header list are validated and encoded once and
cached together (``encode_head``), so an app answering with the same few header sets pays
one dict lookup per response. Below that, statuses and single (name, value) fields are
cached too, so a new combination (a different Content-Length) costs lookups, not regex
matches and encodes. The caches are bounded and simply cleared when full.
"""

from __future__ import annotations

import http
import re

from .errors import InvalidResponseError
from .grammar import FIELD_VALUE_STR_RE, STATUS_RE, TOKEN_STR_RE

# What a header means to the framing logic.
PLAIN = 0
CONTENT_LENGTH = 1
CONNECTION_CLOSE = 2  # "Connection" containing "close"
DROP = 3  # hop-by-hop fields the server owns
DATE = 4
SERVER = 5

_SPECIAL = {
    "content-length": CONTENT_LENGTH,
    "transfer-encoding": DROP,
    "keep-alive": DROP,
    "connection": DROP,
    # The other hop-by-hop fields (RFC 9110 §7.6.1, §7.8, §10.1.4, §6.6.2): the server
    # sends no Upgrade (a WSGI response cannot switch protocols; a 1xx is refused; a 426
    # is the exception, see encode_block) and no trailers, and would contradict its own
    # Connection line by passing these on.
    "upgrade": DROP,
    "te": DROP,
    "trailer": DROP,
    "proxy-connection": DROP,
    "date": DATE,
    "server": SERVER,
}

_CACHE_LIMIT = 4096
status_cache: dict[str, tuple[int, bytes]] = {}
field_cache: dict[tuple[str, str], tuple[bytes, int, int]] = {}


_BARE_CODE_RE = re.compile(r"[1-9][0-9]{2}")


def _reason(code: int) -> str:
    try:
        return http.HTTPStatus(code).phrase
    except ValueError:
        return ""


def encode_status(status: str) -> tuple[int, bytes]:
    """``"200 OK"`` -> ``(200, b"HTTP/1.1 200 OK\\r\\n")``; raises InvalidResponseError."""
    cached = status_cache.get(status)
    if cached is not None:
        return cached
    if not isinstance(status, str) or STATUS_RE.fullmatch(status) is None:  # type: ignore[redundant-expr]
        if not isinstance(status, str) or _BARE_CODE_RE.fullmatch(status) is None:  # type: ignore[redundant-expr]
            raise InvalidResponseError(f"invalid status {status!r}")
        # "200" without its reason phrase, which PEP 3333 asks for and gunicorn forgives:
        # the status line still needs the space (RFC 9112 §4), and the usual phrase.
        line = f"HTTP/1.1 {status} {_reason(int(status))}\r\n".encode("latin-1")
        result = (int(status), line)
        status_cache[status] = result
        return result
    try:
        line = b"HTTP/1.1 " + status.encode("latin-1") + b"\r\n"
    except UnicodeEncodeError:
        raise InvalidResponseError(f"status {status!r} is not latin-1") from None
    result = (int(status[:3]), line)
    if len(status_cache) >= _CACHE_LIMIT:
        status_cache.clear()
    status_cache[status] = result
    return result


def encode_field(name: str, value: str) -> tuple[bytes, int, int]:
    """Validate one app header: returns ``(b"Name: value\\r\\n", kind, length)``.

    ``length`` is the parsed value for Content-Length and 0 otherwise.
    """
    key = (name, value)
    cached = field_cache.get(key)
    if cached is not None:
        return cached
    if not isinstance(name, str) or not isinstance(value, str):  # type: ignore[redundant-expr]
        raise InvalidResponseError(f"header {name!r}: {value!r} is not a pair of str")
    if TOKEN_STR_RE.fullmatch(name) is None:
        raise InvalidResponseError(f"invalid header name {name!r}")
    value = value.strip(" \t")
    if FIELD_VALUE_STR_RE.fullmatch(value) is None:
        raise InvalidResponseError(f"invalid value for header {name!r}: {value!r}")
    try:
        line = name.encode("latin-1") + b": " + value.encode("latin-1") + b"\r\n"
    except UnicodeEncodeError:
        raise InvalidResponseError(f"header {name!r} is not latin-1") from None
    kind = _SPECIAL.get(name.lower(), PLAIN)
    length = 0
    if kind == CONTENT_LENGTH:
        if not value.isascii() or not value.isdigit() or len(value) > 18:
            raise InvalidResponseError(f"invalid Content-Length {value!r}")
        length = int(value)
    elif (
        kind == DROP
        and name.lower() == "connection"
        and any(part.strip(" \t").lower() == "close" for part in value.split(","))
    ):
        kind = CONNECTION_CLOSE
    result = (line, kind, length)
    if len(field_cache) >= _CACHE_LIMIT:
        field_cache.clear()
    field_cache[key] = result
    return result


#: (encoded field lines, Content-Length or -1, app asked to close, has Date, has Server)
HeaderBlock = tuple[bytes, int, bool, bool, bool]


#: The status whose Upgrade field the server passes on: RFC 9110 §15.5.22 says a 426 MUST
#: name the protocols to upgrade to. No switch follows, so it is safe to pass.
UPGRADE_REQUIRED = 426


def encode_block(headers: list[tuple[str, str]], code: int = 0) -> HeaderBlock:
    """Validate and encode an app's whole header list (see ``HeaderBlock``)."""
    lines = []
    length = -1
    app_close = has_date = has_server = upgrade = False
    for pair in headers:
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:  # type: ignore[redundant-expr]
            raise InvalidResponseError(f"header {pair!r} is not a (name, value) pair")
        line, kind, value_length = encode_field(pair[0], pair[1])
        if kind == PLAIN:
            lines.append(line)
        elif kind == CONTENT_LENGTH:
            if length >= 0 and length != value_length:
                raise InvalidResponseError("conflicting Content-Length headers")
            if length < 0:
                lines.append(line)
            length = value_length
        elif kind == CONNECTION_CLOSE:
            app_close = True
        elif kind == DATE:
            has_date = True
            lines.append(line)
        elif kind == SERVER:
            has_server = True
            lines.append(line)
        elif code == UPGRADE_REQUIRED and line[:8].lower() == b"upgrade:":
            upgrade = True
            lines.append(line)
        # DROP: hop-by-hop fields; the server writes its own.
    if upgrade:
        # RFC 9110 §7.8: Upgrade comes with the "upgrade" connection option. A second
        # Connection line (the server's own, "close" or "keep-alive") adds to it (§5.3).
        lines.append(b"Connection: upgrade\r\n")
    return (b"".join(lines), length, app_close, has_date, has_server)


#: (status code, status line + encoded field lines, Content-Length or -1, app asked to
#: close, has Date, has Server)
HeadEntry = tuple[int, bytes, int, bool, bool, bool]
head_cache: dict[tuple[str, tuple[tuple[str, str], ...]], HeadEntry] = {}


def encode_head(status: str, headers: list[tuple[str, str]]) -> HeadEntry:
    """Validate and encode a status and its header list together (see ``HeadEntry``),
    and remember the result in ``head_cache``, which the caller looks up first: an app
    answers with the same few status and header sets over and over, and one lookup per
    response is all the writer then costs."""
    code, status_line = encode_status(status)
    fields, length, app_close, has_date, has_server = encode_block(headers, code)
    entry = (code, status_line + fields, length, app_close, has_date, has_server)
    try:
        key = (status, tuple(headers))
        hash(key)
    except TypeError:  # unhashable pairs (lists instead of tuples): validated every time
        return entry
    if len(head_cache) >= _CACHE_LIMIT:
        head_cache.clear()
    head_cache[key] = entry
    return entry


def server_line(value: bytes) -> bytes:
    """The ``Server`` field line for the ``server_header`` setting (``b""``: none)."""
    return b"Server: " + value + b"\r\n" if value else b""


def without_content_length(fields: bytes) -> bytes:
    """The encoded field lines minus Content-Length (for a 204)."""
    return b"".join(
        line + b"\r\n"
        for line in fields.split(b"\r\n")[:-1]
        if not line.lower().startswith(b"content-length:")
    )


def chunk(data: bytes) -> bytes:
    """Frame one piece of a chunked body (RFC 9112 §7.1)."""
    return b"%x\r\n%b\r\n" % (len(data), data)


LAST_CHUNK = b"0\r\n\r\n"
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
