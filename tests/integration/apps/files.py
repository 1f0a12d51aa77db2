"""Send a real file through ``wsgi.file_wrapper``: ``files:app``.

The file is ``$FORKHORN_TEST_FILE``. ``/`` declares its Content-Length (so the server may
use sendfile); ``/nolength`` does not (the server must frame it itself). Two file objects
whose descriptor does not hold their bytes: ``/gzip`` sends ``$FORKHORN_TEST_FILE.gz``
through ``gzip.open`` (the plain bytes, under the plain length), ``/proc`` sends
``/proc/self/status`` (a regular file of size 0). ``/shrinking`` declares the file's
size, then the file shrinks to 1,000 bytes just after the server measured it (as a log
rotated or a file replaced in place while it is being sent).
"""

import gzip
import io
import os


class _Shrinking(io.FileIO):
    """A plain file (sendfile may take it) cut to 1,000 bytes when the server asks where
    it stands, which it does after measuring it."""

    def tell(self):
        position = super().tell()
        os.ftruncate(self.fileno(), 1000)
        return position


def app(environ, start_response):
    path = os.environ["FORKHORN_TEST_FILE"]
    if environ["PATH_INFO"] == "/gzip":
        length = os.path.getsize(path)
        start_response("200 OK", [("Content-Length", str(length))])
        return environ["wsgi.file_wrapper"](gzip.open(path + ".gz", "rb"), 32768)
    if environ["PATH_INFO"] == "/proc":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return environ["wsgi.file_wrapper"](open("/proc/self/status", "rb"))
    if environ["PATH_INFO"] == "/shrinking":
        copy = path + ".shrinking"
        with open(path, "rb") as source, open(copy, "wb") as target:
            target.write(source.read())
        start_response("200 OK", [("Content-Length", str(os.path.getsize(copy)))])
        return environ["wsgi.file_wrapper"](_Shrinking(copy, "r+"), 32768)
    headers = [("Content-Type", "application/octet-stream")]
    if environ["PATH_INFO"] != "/nolength":
        headers.append(("Content-Length", str(os.path.getsize(path))))
    start_response("200 OK", headers)
    return environ["wsgi.file_wrapper"](open(path, "rb"), 32768)
