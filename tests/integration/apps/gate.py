"""Requests that wait for the test client: ``gate:app``.

The client creates a file once it has seen what it expects; the app waits for that file
(polling, at most 10 s), so a test can tell whether the server had sent something before
the app went on, without any timing in the assertion.

``/wait?file=PATH``    waits for PATH, then 200 ``seen`` (or ``not seen`` after 10 s)
``/stream?file=PATH``  chunked: yields ``first``, waits for PATH, yields ``seen`` or
                       ``not seen``
"""

import os
import time
from urllib.parse import parse_qs

LIMIT = 10.0


def wait_for(path):
    deadline = time.monotonic() + LIMIT
    while time.monotonic() < deadline:
        if os.path.exists(path):
            return b"seen"
        time.sleep(0.01)
    return b"not seen"


def app(environ, start_response):
    path = parse_qs(environ.get("QUERY_STRING", ""))["file"][0]
    if environ["PATH_INFO"] == "/stream":
        start_response("200 OK", [("Content-Type", "text/plain")])

        def generate():
            yield b"first"
            yield wait_for(path)

        return generate()
    body = wait_for(path)
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
