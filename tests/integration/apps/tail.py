"""A generator with work after its last yield: ``tail:app``.

Answers ``Content-Length: 5`` with ``b"hel"``, ``b"lo"`` and an empty piece, then writes
``tail ran for <METHOD>`` to ``wsgi.errors`` (a commit, a log line: app code that a server
which stops iterating at once never runs).
"""


def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "5")])

    def body():
        yield b"hel"
        yield b"lo"
        yield b""
        environ["wsgi.errors"].write(f"tail ran for {environ['REQUEST_METHOD']}\n")
        environ["wsgi.errors"].flush()

    return body()
