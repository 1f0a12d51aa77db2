"""Echo the request back as JSON: ``echo:app``.

The response holds ``method``, ``path`` (PATH_INFO), ``query``, ``headers`` (the HTTP_*
keys), ``environ`` (every str-valued key), ``body`` (latin-1 text) and ``mode``. The query
parameter ``read`` picks how ``wsgi.input`` is read, so each reading method is exercised:
``all`` (read()), ``sized`` (a read(n) loop), ``lines`` (readline() loop), ``readlines``,
``iter`` (iteration), ``none`` (the body is left unread); ``sizedkw``, ``lineskw`` and
``readlineskw`` pass their sizes by keyword (``read(size=7)``), as PEP 3333's names allow.
With ``digest=1`` the body is given as its length and SHA-256 (``body_sha256``) instead;
with ``sleep=S`` the app works S seconds before it reads the body.
"""

import hashlib
import json
import time
from urllib.parse import parse_qs


def read_body(stream, mode):
    if mode == "all":
        return stream.read()
    if mode == "sized":
        parts = []
        while True:
            part = stream.read(7)
            if not part:
                return b"".join(parts)
            parts.append(part)
    if mode == "lines":
        parts = []
        while True:
            line = stream.readline()
            if not line:
                return b"".join(parts)
            parts.append(line)
    if mode == "sizedkw":
        parts = []
        while part := stream.read(size=7):
            parts.append(part)
        return b"".join(parts)
    if mode == "lineskw":
        parts = []
        while line := stream.readline(size=5):
            assert len(line) <= 5
            parts.append(line)
        return b"".join(parts)
    if mode == "readlineskw":
        parts = []
        while lines := stream.readlines(hint=10):
            parts.extend(lines)
        return b"".join(parts)
    if mode == "readlines":
        return b"".join(stream.readlines())
    if mode == "iter":
        return b"".join(stream)
    if mode == "none":
        return b""
    raise ValueError(f"unknown read mode {mode!r}")


def app(environ, start_response):
    query = parse_qs(environ.get("QUERY_STRING", ""))
    mode = query.get("read", ["all"])[0]
    time.sleep(float(query.get("sleep", ["0"])[0]))
    body = read_body(environ["wsgi.input"], mode)
    payload = {
        "method": environ["REQUEST_METHOD"],
        "path": environ["PATH_INFO"],
        "query": environ.get("QUERY_STRING", ""),
        "mode": mode,
        "headers": {k: v for k, v in environ.items() if k.startswith("HTTP_")},
        "environ": {k: v for k, v in environ.items() if isinstance(v, str)},
    }
    if query.get("digest"):
        payload["body_length"] = len(body)
        payload["body_sha256"] = hashlib.sha256(body).hexdigest()
    else:
        payload["body"] = body.decode("latin-1")
    data = json.dumps(payload).encode()
    start_response(
        "200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(data)))]
    )
    return [data]
