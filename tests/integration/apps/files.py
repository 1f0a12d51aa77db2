"""Send a real file through ``wsgi.file_wrapper``: ``files:app``.

The file is ``$FORKHORN_TEST_FILE``. ``/`` declares its Content-Length (so the server may
use sendfile); ``/nolength`` does not (the server must frame it itself).
"""

import os


def app(environ, start_response):
    path = os.environ["FORKHORN_TEST_FILE"]
    headers = [("Content-Type", "application/octet-stream")]
    if environ["PATH_INFO"] != "/nolength":
        headers.append(("Content-Length", str(os.path.getsize(path))))
    start_response("200 OK", headers)
    return environ["wsgi.file_wrapper"](open(path, "rb"), 32768)
