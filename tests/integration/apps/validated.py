"""An app wrapped in ``wsgiref.validate.validator``: ``validated:app``.

The validator checks the environ, ``wsgi.input``/``wsgi.errors``, start_response and the
response iterable against PEP 3333 and raises AssertionError on a violation (so the client
sees a 500); its warnings are turned into errors too. The inner app also checks the keys
PEP 3333 requires and the extras forkhorn promises, and answers the str-valued environ as
JSON, with the body it read (``read(n)`` only: the validator allows nothing else).
"""

import json
import warnings
from wsgiref.validate import validator

REQUIRED = (
    "REQUEST_METHOD",
    "SCRIPT_NAME",
    "PATH_INFO",
    "QUERY_STRING",
    "SERVER_NAME",
    "SERVER_PORT",
    "SERVER_PROTOCOL",
    "wsgi.version",
    "wsgi.url_scheme",
    "wsgi.input",
    "wsgi.errors",
    "wsgi.multithread",
    "wsgi.multiprocess",
    "wsgi.run_once",
)
EXTRAS = ("REMOTE_ADDR", "REMOTE_PORT", "RAW_URI", "wsgi.input_terminated", "wsgi.file_wrapper")


def inner(environ, start_response):
    missing = [key for key in REQUIRED + EXTRAS if key not in environ]
    if missing:
        raise AssertionError(f"environ lacks {missing}")
    length = int(environ.get("CONTENT_LENGTH") or 0)
    body = environ["wsgi.input"].read(length) if length else b""
    environ["wsgi.errors"].write("validated app wrote to wsgi.errors\n")
    environ["wsgi.errors"].flush()
    payload = {k: v for k, v in environ.items() if isinstance(v, str)}
    payload["wsgi.version"] = list(environ["wsgi.version"])
    payload["wsgi.multiprocess"] = environ["wsgi.multiprocess"]
    payload["wsgi.run_once"] = environ["wsgi.run_once"]
    payload["wsgi.input_terminated"] = environ["wsgi.input_terminated"]
    payload["body"] = body.decode("latin-1")
    data = json.dumps(payload).encode()
    start_response(
        "200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(data)))]
    )
    return [data]


checked = validator(inner)


def app(environ, start_response):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        # The validator's own iterable goes back to the server: it checks that the server
        # iterates it properly and calls close() (a missed close() is reported on stderr as
        # "Iterator garbage collected without being closed", which the tests look for).
        return checked(environ, start_response)
