"""Every test app behind one server, by path prefix: ``routes:app``.

``/echo...`` -> echo (PATH_INFO kept), ``/stream`` -> stream, ``/raise/X`` -> raising ``/X``,
``/slow/X`` -> slow ``/X``, ``/gate/X`` -> gate ``/X``, ``/bulk`` -> bulk, anything else ->
hello. Lets one running server answer a whole suite of tests.
"""

import bulk
import echo
import gate
import raising
import slow
import stream

import hello


def _strip(environ, prefix):
    environ["SCRIPT_NAME"] = environ.get("SCRIPT_NAME", "") + prefix
    environ["PATH_INFO"] = environ["PATH_INFO"][len(prefix) :] or "/"


def app(environ, start_response):
    path = environ["PATH_INFO"]
    if path.startswith("/echo"):
        return echo.app(environ, start_response)
    if path.startswith("/stream"):
        return stream.app(environ, start_response)
    if path.startswith("/raise/"):
        _strip(environ, "/raise")
        return raising.app(environ, start_response)
    if path.startswith("/slow/"):
        _strip(environ, "/slow")
        return slow.app(environ, start_response)
    if path.startswith("/bulk"):
        return bulk.app(environ, start_response)
    if path.startswith("/gate/"):
        _strip(environ, "/gate")
        return gate.app(environ, start_response)
    return hello.app(environ, start_response)
