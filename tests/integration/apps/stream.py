"""A streaming response without Content-Length: ``stream:app``.

``/?chunks=N&size=M&sleep=S`` yields N pieces of M bytes (piece i is the digit i % 10),
sleeping S seconds between them. The expected body is ``expected_body(N, M)``.
``&length=L`` declares ``Content-Length: L`` (which the pieces may not match).
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
    start_response("200 OK", headers)

    def generate():
        for i in range(chunks):
            if i and pause:
                time.sleep(pause)
            yield str(i % 10).encode() * size

    return generate()
