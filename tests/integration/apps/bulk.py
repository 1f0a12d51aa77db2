"""A large one-piece response: ``bulk:app``.

``/?size=N``  200 with N bytes of ``x`` (a one-item list, with Content-Length)
"""

from urllib.parse import parse_qs


def app(environ, start_response):
    size = int(parse_qs(environ.get("QUERY_STRING", "")).get("size", ["65536"])[0])
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(size))])
    return [b"x" * size]
