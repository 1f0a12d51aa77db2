"""An app that fails at chosen points: ``raising:app``.

``/``             200 ok
``/before``       raises before start_response
``/after-start``  calls start_response, then raises before any body
``/mid-stream``   Content-Length 100000, yields 1000 bytes, then raises
``/mid-chunked``  no Content-Length (chunked), yields 1000 bytes, then raises
``/mid-oserror``  as ``/mid-chunked``, but raises an ``OSError`` of its own (a file it
                  streams failed), which is not the client leaving
``/refused/X``    a response head the server must refuse, the body a one-item list
                  (``?stream``: a generator): X is ``header`` (CRLF in a value),
                  ``status`` (``2000 OK``) or ``interim`` (a 1xx)
``/hop``          200 with every hop-by-hop field an app might set
``/exit``, ``/interrupt``, ``/generator-exit``
                  raise SystemExit, KeyboardInterrupt or GeneratorExit from the app call
                  (``?stream``: from the iterable, before its first chunk)
``/none``         calls start_response and returns None
``/input``        pokes at an empty ``wsgi.input`` (write, seek, close, a new attribute)
                  and returns what its read() gave: b"" for every request, whatever the
                  one before did
``/write-file``   write()s a prefix, then returns ``wsgi.file_wrapper`` of this file
``/write-str``    write()s a str before anything was sent
``/write-buffers`` write()s a bytearray, then memoryviews (bytes-like: served)
``/yield-none``   a generator that yields a chunk, None, then another chunk
``/first-none``   returns ``[None, b"after"]``
``/stop``         calls start_response, then raises StopIteration (next() on an exhausted
                  iterator), which is a takeover only on a request that asked to upgrade
Each message names the point, so the test finds its traceback in the log.
"""

import array

PARTIAL = b"x" * 1000


REFUSED = {
    "/refused/header": ("200 OK", [("X-A", "a\r\nInjected: 1")]),
    "/refused/status": ("2000 OK", []),
    "/refused/interim": ("101 Switching Protocols", [("Upgrade", "websocket")]),
}
HOP_BY_HOP = [
    ("Connection", "Upgrade"),
    ("Upgrade", "websocket"),
    ("Keep-Alive", "timeout=5"),
    ("TE", "trailers"),
    ("Trailer", "X-Checksum"),
    ("Proxy-Connection", "keep-alive"),
    ("Transfer-Encoding", "chunked"),
]


BASE_EXCEPTIONS = {
    "/exit": lambda: SystemExit("boom-exit"),
    "/interrupt": lambda: KeyboardInterrupt("boom-interrupt"),
    "/generator-exit": lambda: GeneratorExit("boom-generator-exit"),
}


def app(environ, start_response):
    path = environ["PATH_INFO"]
    if path in BASE_EXCEPTIONS:
        exc = BASE_EXCEPTIONS[path]()
        if environ["QUERY_STRING"] == "stream":
            start_response("200 OK", [("Content-Type", "text/plain")])
            return _raise_first(exc)
        raise exc
    if path == "/none":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return None
    if path == "/input":
        stream = environ["wsgi.input"]
        for poke in (
            lambda: stream.write(b"left by an earlier request"),
            lambda: stream.seek(0),
            lambda: setattr(stream, "left", 1),
            lambda: stream.close(),
        ):
            try:
                poke()
            except Exception:
                pass
        body = stream.read()
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"read " + repr(body).encode()]
    if path in REFUSED:
        status, headers = REFUSED[path]
        start_response(status, headers)
        if environ["QUERY_STRING"] == "stream":
            return iter([b"never sent"])
        return [b"never sent"]
    if path == "/write-file":
        write = start_response("200 OK", [("Content-Type", "text/plain")])
        write(b"PREFIX\n")
        return environ["wsgi.file_wrapper"](open(__file__, "rb"))
    if path == "/write-str":
        write = start_response("200 OK", [("Content-Type", "text/plain")])
        write("a str")
        return [b"never sent"]
    if path == "/write-buffers":
        write = start_response("200 OK", [("Content-Type", "text/plain")])
        write(bytearray(b"array;"))
        write(memoryview(b"view;"))
        # Items two bytes wide: framed by its 4 bytes, not its 2 items.
        write(memoryview(array.array("H", [0x4241, 0x3B43])))
        return []
    if path == "/yield-none":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return _none_midway()
    if path == "/first-none":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [None, b"after"]
    if path == "/stop":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [next(iter([]))]
    if path == "/hop":
        start_response("200 OK", [("Content-Type", "text/plain"), *HOP_BY_HOP])
        return [b"hop"]
    if path == "/before":
        raise RuntimeError("boom-before-start-response")
    if path == "/after-start":
        start_response("200 OK", [("Content-Type", "text/plain")])
        raise RuntimeError("boom-after-start-response")
    if path in ("/mid-stream", "/mid-chunked", "/mid-oserror"):
        headers = [("Content-Type", "text/plain")]
        if path == "/mid-stream":
            headers.append(("Content-Length", "100000"))
        start_response("200 OK", headers)
        return _fail_midway(path)
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
    return [b"ok"]


def _fail_midway(path):
    yield PARTIAL
    if path == "/mid-oserror":
        raise OSError(5, "boom-mid-oserror: the report could not be read")
    raise RuntimeError(f"boom-mid-stream {path}")


def _raise_first(exc):
    raise exc
    yield b"never"


def _none_midway():
    yield b"part1;"
    yield None
    yield b"part2;"
