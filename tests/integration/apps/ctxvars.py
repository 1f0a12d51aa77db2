"""A response that uses a ContextVar across its body: ``ctxvars:app``.

The app call sets ``request_id``; every piece of the body reads it back, and the
iterable's ``close()`` resets it with the token from the call, as Flask's
``stream_with_context``, OpenTelemetry's and structlog's context managers do.
``/?pieces=N&size=M`` yields N pieces of M bytes: ``<id>:<i>`` padded with dots. A piece
that sees another value than its request's says ``WRONG``; a reset that fails raises in
``close()`` (the server logs it).
"""

import contextvars
from urllib.parse import parse_qs

request_id = contextvars.ContextVar("request_id", default="none")


class Body:
    def __init__(self, rid, pieces, size, token):
        self.rid, self.pieces, self.size, self.token = rid, pieces, size, token

    def __iter__(self):
        for i in range(self.pieces):
            seen = request_id.get()
            text = f"{seen}:{i}" if seen == self.rid else f"WRONG:{seen}:{i}"
            yield text.encode().ljust(self.size, b".")

    def close(self):
        request_id.reset(self.token)


def app(environ, start_response):
    query = parse_qs(environ.get("QUERY_STRING", ""))
    pieces = int(query.get("pieces", ["3"])[0])
    size = int(query.get("size", ["32"])[0])
    rid = query.get("id", ["r"])[0]
    token = request_id.set(rid)
    start_response("200 OK", [("Content-Type", "text/plain")])
    return Body(rid, pieces, size, token)
