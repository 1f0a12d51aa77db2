"""Slow and hung requests: ``slow:app``.

``/``           200 at once
``/sleep?s=N``  logs "slow app: sleeping Ns", sleeps N seconds, then 200 ``slept N``
``/hang``       logs "slow app: hanging" and never returns (``hang_forever_in_app``),
                until the server aborts it
"""

import time
from urllib.parse import parse_qs


def hang_forever_in_app():
    while True:
        time.sleep(0.1)


def app(environ, start_response):
    path = environ["PATH_INFO"]
    if path == "/sleep":
        seconds = float(parse_qs(environ.get("QUERY_STRING", "")).get("s", ["1"])[0])
        # Tests wait for this line to know the request is in flight (never a fixed sleep).
        environ["wsgi.errors"].write(f"slow app: sleeping {seconds:g}s\n")
        environ["wsgi.errors"].flush()
        time.sleep(seconds)
        body = f"slept {seconds:g}".encode()
    elif path == "/hang":
        environ["wsgi.errors"].write("slow app: hanging\n")
        environ["wsgi.errors"].flush()
        hang_forever_in_app()
        body = b"unreachable"
    else:
        body = b"ok"
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
