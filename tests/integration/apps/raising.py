"""An app that fails at chosen points: ``raising:app``.

``/``             200 ok
``/before``       raises before start_response
``/after-start``  calls start_response, then raises before any body
``/mid-stream``   Content-Length 100000, yields 1000 bytes, then raises
``/mid-chunked``  no Content-Length (chunked), yields 1000 bytes, then raises
Each message names the point, so the test finds its traceback in the log.
"""

PARTIAL = b"x" * 1000


def app(environ, start_response):
    path = environ["PATH_INFO"]
    if path == "/before":
        raise RuntimeError("boom-before-start-response")
    if path == "/after-start":
        start_response("200 OK", [("Content-Type", "text/plain")])
        raise RuntimeError("boom-after-start-response")
    if path in ("/mid-stream", "/mid-chunked"):
        headers = [("Content-Type", "text/plain")]
        if path == "/mid-stream":
            headers.append(("Content-Length", "100000"))
        start_response("200 OK", headers)
        return _fail_midway(path)
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
    return [b"ok"]


def _fail_midway(path):
    yield PARTIAL
    raise RuntimeError(f"boom-mid-stream {path}")
