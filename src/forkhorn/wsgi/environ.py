"""PEP 3333 environ: turning a parsed ``Request`` into the dict the app receives.

Rules kept:
- Bytes become text here and only here, by PEP 3333's rule: latin-1 for everything that
  came off the wire (``PATH_INFO`` is percent-decoded first, then latin-1 decoded).
- Header names containing ``_`` are dropped by default (``header_map = "drop"``), so that
  ``X_Auth: evil`` cannot pose as ``X-Auth`` once both become ``HTTP_X_AUTH``; ``refuse``
  answers 400 instead and ``dangerous`` passes them (gunicorn's setting and values).
- ``CONTENT_LENGTH`` is the Content-Length the parser accepted (digits only, equal
  duplicates once; ``0`` too, as gunicorn), absent without one; ``CONTENT_TYPE`` is set
  once. Repeated headers are joined with ", "
  (``; `` for Cookie, RFC 6265 §5.4). Trailers never reach the environ.
- ``SCRIPT_NAME`` is the worker's ``$SCRIPT_NAME`` (the environment or ``raw_env``), as in
  gunicorn: a request under it has it taken off the front of ``PATH_INFO``; a request
  outside it is answered 404 (gunicorn answers 500). Matched on whole path segments, so
  ``/app`` does not swallow ``/application``.
- ``SERVER_NAME``/``SERVER_PORT`` come from the Host header when it names a host (an
  absolute-form target's authority replaces it; the default port follows
  ``wsgi.url_scheme``), else from the address of the listener the request came in on
  (``workers/session.py``, ``base_environ_for``): PEP 3333 forbids them empty. A unix
  socket's listener has no port: the scheme's default, as gunicorn gives.
  gunicorn takes them from the listening address on TCP and from Host
  only on unix sockets; here one rule serves every listener of a worker, and PEP 3333's
  URL reconstruction (and Werkzeug's and Django's host lookups) read ``HTTP_HOST`` first
  anyway.

How it works: each worker builds one ``base`` dict of the constant keys once; a request
copies it (a C-level dict copy) and adds its own keys. Header names map to environ keys
through a small cache.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote_to_bytes

from forkhorn.http import BadRequestError, ProtocolError, Request
from forkhorn.http.grammar import HOST_RE

from .proxies import forwarded_scheme

_KEY_CACHE_LIMIT = 1024
#: Marks a header name that the ``refuse`` policy answers with 400.
_REFUSE = "\x00refuse"


class _EnvironKeys(dict[bytes, "str | None"]):
    """Header name (lower-cased bytes) -> environ key, or None to leave it out.

    One instance per ``header_map`` policy, so that the hot loop is a single C-level dict
    lookup per header; unknown names are computed once by ``__missing__``.
    """

    def __init__(self, policy: str) -> None:
        super().__init__()
        self.policy = policy
        self[b"content-type"] = "CONTENT_TYPE"
        # A length is set from the framing before the headers are read, so the header
        # itself lands only when it says 0 (the parser let through digits, and equal
        # duplicates): passed as gunicorn passes it, since Werkzeug's content_length is
        # None without it, which some APIs answer with 411.
        self[b"content-length"] = "CONTENT_LENGTH"

    def __missing__(self, name: bytes) -> str | None:
        key: str | None = "HTTP_" + name.decode("latin-1").upper().replace("-", "_")
        if b"_" in name:
            # X_Auth and X-Auth would both become HTTP_X_AUTH: one could pose as the other.
            if self.policy == "drop":
                key = None
            elif self.policy == "refuse":
                key = _REFUSE
        if len(self) < _KEY_CACHE_LIMIT:
            self[name] = key
        return key


class OutsideScriptNameError(ProtocolError):
    """The request path is not under the ``SCRIPT_NAME`` the app is mounted at."""

    status = 404
    reason = "Not Found"


_METHODS = {
    m: m.decode() for m in (b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"OPTIONS", b"PATCH")
}

_KEYS = {policy: _EnvironKeys(policy) for policy in ("drop", "refuse", "dangerous")}


def make_base_environ(
    server_name: str,
    server_port: str,
    url_scheme: str,
    errors: Any,
    file_wrapper: Any,
    multithread: bool,
    server_software: str,
    script_name: str = "",
    multiprocess: bool = True,
) -> dict[str, Any]:
    """The keys that are the same for every request a worker serves."""
    return {
        "SCRIPT_NAME": script_name.rstrip("/"),
        "SERVER_NAME": server_name,
        "SERVER_PORT": server_port,
        "SERVER_SOFTWARE": server_software,
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": url_scheme,
        "wsgi.errors": errors,
        "wsgi.multithread": multithread,
        "wsgi.multiprocess": multiprocess,
        "wsgi.run_once": False,
        "wsgi.file_wrapper": file_wrapper,
        "wsgi.input_terminated": True,
    }


def build_environ(
    base: dict[str, Any],
    request: Request,
    remote_addr: str,
    remote_port: str,
    wsgi_input: Any,
    header_map: str = "drop",
    scheme_headers: dict[bytes, bytes] | None = None,
) -> dict[str, Any]:
    """The environ for one request. Raises BadRequestError for a refused header.

    ``scheme_headers``: the peer is a trusted front end, whose headers may set
    ``wsgi.url_scheme`` (wsgi/proxies.py)."""
    environ = base.copy()
    target = request.target
    decoded = _targets.get(target)
    if decoded is None:
        decoded = _decode_target(target)
    environ["RAW_URI"], environ["PATH_INFO"], environ["QUERY_STRING"] = decoded
    script_name = environ["SCRIPT_NAME"]
    if script_name:
        path = decoded[1]
        if path == script_name or path.startswith(script_name + "/"):
            environ["PATH_INFO"] = path[len(script_name) :]
        else:
            raise OutsideScriptNameError(f"path outside SCRIPT_NAME {script_name!r}")
    method = request.method
    environ["REQUEST_METHOD"] = _METHODS.get(method) or method.decode("latin-1")
    environ["SERVER_PROTOCOL"] = "HTTP/1.1" if request.http_version == b"1.1" else "HTTP/1.0"
    environ["REMOTE_ADDR"] = remote_addr
    environ["REMOTE_PORT"] = remote_port
    environ["wsgi.input"] = wsgi_input

    keys = _KEYS[header_map]
    for name, value in request.headers:
        key = keys[name]
        if key is None:
            continue
        if key in environ:
            if key == _REFUSE:
                raise BadRequestError(f"header name with underscore: {name.decode()!r}")
            if key == "CONTENT_TYPE":
                raise BadRequestError("duplicate Content-Type")
            if key == "CONTENT_LENGTH":
                continue  # an equal duplicate (set from the framing below)
            sep = "; " if key == "HTTP_COOKIE" else ", "
            environ[key] = environ[key] + sep + value.decode("latin-1")
        elif key == _REFUSE:
            raise BadRequestError(f"header name with underscore: {name.decode()!r}")
        else:
            environ[key] = value.decode("latin-1")

    # From the framing, in plain digits: the header may say "0, 0" or "007".
    if request.content_length:
        environ["CONTENT_LENGTH"] = str(request.content_length)
    elif "CONTENT_LENGTH" in environ:
        environ["CONTENT_LENGTH"] = "0"
    if target[0] != 0x2F and target != b"*" and method != b"CONNECT":
        # RFC 9112 §3.2.2: with an absolute-form target the server MUST ignore Host and
        # use the target's authority, so the app sees the URL the client asked for.
        environ["HTTP_HOST"] = _authority_of(target)
    if scheme_headers is not None:
        scheme = forwarded_scheme(request.headers, scheme_headers)
        if scheme is not None:
            environ["wsgi.url_scheme"] = scheme
    host = environ.get("HTTP_HOST")
    if host is not None:
        # SERVER_NAME/SERVER_PORT from Host (see the module docstring).
        server = _hosts.get(host)
        if server is None:
            server = _split_host(host, environ["wsgi.url_scheme"])
        if server[0]:  # an empty Host (legal) or ":81" has no name: the listener's stays
            environ["SERVER_NAME"], environ["SERVER_PORT"] = server
            return environ
    if not environ["SERVER_PORT"]:
        # A unix socket's listener has no port: the scheme's, as gunicorn gives it.
        environ["SERVER_PORT"] = "443" if environ["wsgi.url_scheme"] == "https" else "80"
    return environ


# Decoded forms of recent request targets and Host values. A server sees the same paths
# and hosts again and again; decoding them (partition, percent-decoding, three latin-1
# decodes) costs more than the lookup (measured: bench/README.md, fast worker hello).
# Bounded: only short values are kept, and a full cache is cleared.
_CACHE_LIMIT = 2048
_CACHEABLE_TARGET = 256
_targets: dict[bytes, tuple[str, str, str]] = {}
_hosts: dict[str, tuple[str, str]] = {}


def refused_environ(
    base: dict[str, Any],
    request: Request,
    remote_addr: str,
    remote_port: str,
    header_map: str = "drop",
) -> dict[str, Any]:
    """The environ for the access-log line of a request the server refused.

    As full as ``build_environ`` makes it (so ``%(a)s`` and ``%({...}i)s`` work), or, where
    that refuses the request itself (a header it will not map, a path outside
    ``SCRIPT_NAME``), the request line and the peer only.
    """
    try:
        return build_environ(base, request, remote_addr, remote_port, None, header_map)
    except ProtocolError:
        pass
    environ = base.copy()
    environ["RAW_URI"], environ["PATH_INFO"], environ["QUERY_STRING"] = _decode_target(
        request.target
    )
    environ["REQUEST_METHOD"] = request.method.decode("latin-1")
    environ["SERVER_PROTOCOL"] = "HTTP/1.1" if request.http_version == b"1.1" else "HTTP/1.0"
    environ["REMOTE_ADDR"] = remote_addr
    environ["REMOTE_PORT"] = remote_port
    return environ


def _decode_target(target: bytes) -> tuple[str, str, str]:
    """RAW_URI, PATH_INFO (percent-decoded, then latin-1 per PEP 3333) and QUERY_STRING."""
    if target[0] != 0x2F:
        path, query = split_non_origin(target)
    else:
        path, _, query = target.partition(b"?")
        if b"#" in target:
            path = path.partition(b"#")[0]
            query = query.partition(b"#")[0]
    decoded = (
        target.decode("latin-1"),
        unquote_to_bytes(path).decode("latin-1") if b"%" in path else path.decode("latin-1"),
        query.decode("latin-1"),
    )
    if len(target) <= _CACHEABLE_TARGET:
        if len(_targets) >= _CACHE_LIMIT:
            _targets.clear()
        _targets[target] = decoded
    return decoded


def _split_host(host: str, scheme: str) -> tuple[str, str]:
    if host[:1] == "[":  # an IPv6 literal
        end = host.find("]")
        name, port = host[: end + 1], host[end + 2 :]
    else:
        name, _, port = host.partition(":")
    server = (name, port or ("443" if scheme == "https" else "80"))
    if port and len(host) <= _CACHEABLE_TARGET:
        # Only a Host with an explicit port is cached: the default port depends on the
        # scheme, which the key does not hold.
        if len(_hosts) >= _CACHE_LIMIT:
            _hosts.clear()
        _hosts[host] = server
    return server


def _authority_of(target: bytes) -> str:
    """The host and port of an absolute-form target (the parser refused userinfo). Raises
    BadRequestError when it is not a valid Host value."""
    rest = target[target.find(b"://") + 3 :]
    end = len(rest)
    for separator in (b"/", b"?", b"#"):
        at = rest.find(separator)
        if 0 <= at < end:
            end = at
    authority = rest[:end]
    if not authority or HOST_RE.fullmatch(authority) is None:
        raise BadRequestError("invalid host in the request target")
    return authority.decode("latin-1")


def split_non_origin(target: bytes) -> tuple[bytes, bytes]:
    """The raw path and query of an absolute-, asterisk- or authority-form target."""
    if target == b"*":
        return b"*", b""
    scheme_end = target.find(b"://")
    if scheme_end < 0:  # CONNECT authority-form: no path
        return b"", b""
    rest = target[scheme_end + 3 :]
    slash = rest.find(b"/")
    qmark = rest.find(b"?")
    if slash < 0 or (0 <= qmark < slash):
        path_query = b"/" + rest[qmark:] if qmark >= 0 else b"/"
    else:
        path_query = rest[slash:]
    path, _, query = path_query.partition(b"?")
    return path, query.partition(b"#")[0]
