"""A streaming response without Content-Length: ``stream:app``.

``/?chunks=N&size=M&sleep=S`` yields N pieces of M bytes (piece i is the digit i % 10),
sleeping S seconds between them. The expected body is ``expected_body(N, M)``.
``&length=L`` declares ``Content-Length: L`` (which the pieces may not match),
``&status=S`` answers S instead of ``200 OK``, ``&whole=1`` returns the pieces joined in a
one-item list instead of a generator.
"""

import time
from urllib.parse import parse_qs


def expected_body(chunks, size):
    return b"".join(str(i % 10).encode() * size for i in range(chunks))


def app(environ, start_response):
    query = parse_qs(environ.get("QUERY_STRING", ""))
    chunks = int(query.get("chunks", ["5"])[0])
    size = int(query.get("size", ["10"])[0])
    pause = float(query.get("sleep", ["0"])[0])
    headers = [("Content-Type", "application/octet-stream")]
    if "length" in query:
        headers.append(("Content-Length", query["length"][0]))
    start_response(query.get("status", ["200 OK"])[0], headers)
    if "whole" in query:
        return [expected_body(chunks, size)]

    def generate():
        for i in range(chunks):
            if i and pause:
                time.sleep(pause)
            yield str(i % 10).encode() * size

    return generate()
