"""Access-log lines, atom by atom, with plain values and a fixed clock and time zone."""

from __future__ import annotations

import base64
import calendar
import json
import os
import time
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from forkhorn.config import load_config
from forkhorn.errors import ConfigError
from forkhorn.logs import DEFAULT_ACCESS_LOG_FORMAT, AccessFormat, Logger
from forkhorn.logs import logger as logger_module
from forkhorn.logs.access import escape, format_clf_time

NOW = float(calendar.timegm((2026, 11, 27, 2, 0, 0)))
OK_HEADERS = [("Content-Type", "text/plain"), ("Content-Length", "13")]


def set_tz(tz: str | None) -> None:
    if tz is None:
        os.environ.pop("TZ", None)
    else:
        os.environ["TZ"] = tz
    time.tzset()


@pytest.fixture
def utc() -> Iterator[None]:
    old = os.environ.get("TZ")
    set_tz("UTC")
    yield
    set_tz(old)


def make_environ(**extra: Any) -> dict[str, Any]:
    environ: dict[str, Any] = {
        "REQUEST_METHOD": "GET",
        "RAW_URI": "/todos?page=2",
        "PATH_INFO": "/todos",
        "QUERY_STRING": "page=2",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "192.0.2.7",
        "HTTP_REFERER": "http://example.test/",
        "HTTP_USER_AGENT": "curl/8.5.0",
    }
    environ.update(extra)
    return environ


def render(fmt: str, environ: dict[str, Any] | None = None, **kw: Any) -> str:
    return AccessFormat(fmt).render(
        make_environ() if environ is None else environ,
        kw.get("status", "200 OK"),
        kw.get("headers", OK_HEADERS),
        kw.get("sent", 13),
        kw.get("request_time", 0.0125),
        kw.get("now", NOW),
    )


def test_default_format_is_apache_combined(utc: None) -> None:
    assert DEFAULT_ACCESS_LOG_FORMAT == (
        '%(h)s %(l)s %(u)s %(t)s "%(r)s" %(s)s %(b)s "%(f)s" "%(a)s"'
    )
    assert render(DEFAULT_ACCESS_LOG_FORMAT) == (
        '192.0.2.7 - - [27/Nov/2026:02:00:00 +0000] "GET /todos?page=2 HTTP/1.1" 200 13 '
        '"http://example.test/" "curl/8.5.0"'
    )


@pytest.mark.parametrize(
    ("atom", "expected"),
    [
        ("h", "192.0.2.7"),
        ("l", "-"),
        ("u", "-"),
        ("t", "[27/Nov/2026:02:00:00 +0000]"),
        ("r", "GET /todos?page=2 HTTP/1.1"),
        ("m", "GET"),
        ("U", "/todos"),
        ("q", "page=2"),
        ("H", "HTTP/1.1"),
        ("s", "200"),
        ("B", "13"),
        ("b", "13"),
        ("f", "http://example.test/"),
        ("a", "curl/8.5.0"),
        ("T", "0"),
        ("M", "12"),
        ("D", "12500"),
        ("L", "0.012500"),
        ("p", "<PID>"),  # the id must not vary between test processes (xdist)
        ("nosuchatom", "-"),
    ],
)
def test_each_atom(utc: None, atom: str, expected: str) -> None:
    assert render(f"%({atom})s") == expected.replace("PID", str(os.getpid()))


@pytest.mark.parametrize(
    ("request_time", "expected"),
    [
        (0.0, "0 0 0 0.000000"),
        (1.5, "1 1500 1500000 1.500000"),
        (2.000001, "2 2000 2000001 2.000001"),
        (59.9999996, "60 60000 60000000 60.000000"),
    ],
)
def test_request_time_atoms(request_time: float, expected: str) -> None:
    assert render("%(T)s %(M)s %(D)s %(L)s", request_time=request_time) == expected


def test_numeric_atoms_are_ints() -> None:
    assert render("%(B)05d %(D)d %(T)d %(M)d", sent=42, request_time=1.25) == "00042 1250000 1 1250"


def test_zero_body_bytes_are_0_as_in_gunicorn() -> None:
    assert render("%(b)s %(B)s", sent=0) == "0 0"


def test_status_code_only() -> None:
    assert render("%(s)s", status="404 Not Found") == "404"
    assert render("%(s)s", status="599 ") == "599"


def test_missing_environ_values_are_dashes() -> None:
    environ = {"REQUEST_METHOD": "GET", "RAW_URI": "/", "SERVER_PROTOCOL": "HTTP/1.0"}
    assert render(DEFAULT_ACCESS_LOG_FORMAT, environ).endswith('"GET / HTTP/1.0" 200 13 "-" "-"')


def test_empty_query_and_path_are_empty_as_in_gunicorn() -> None:
    # gunicorn writes environ.get("QUERY_STRING") and environ.get("PATH_INFO") as they are.
    environ = {"REQUEST_METHOD": "GET", "QUERY_STRING": "", "PATH_INFO": ""}
    assert render("[%(q)s] [%(U)s]", environ) == "[] []"


def test_request_line_without_raw_uri() -> None:
    environ = make_environ()
    del environ["RAW_URI"]
    assert render("%(r)s", environ) == "GET /todos?page=2 HTTP/1.1"
    environ["QUERY_STRING"] = ""
    assert render("%(r)s", environ) == "GET /todos HTTP/1.1"


def test_time_uses_local_time_zone() -> None:
    old = os.environ.get("TZ")
    try:
        set_tz("XST-05:30")  # POSIX sign: five and a half hours east of UTC
        assert format_clf_time(NOW) == "[27/Nov/2026:07:30:00 +0530]"
        set_tz("YST+03")
        assert format_clf_time(NOW) == "[26/Nov/2026:23:00:00 -0300]"
    finally:
        set_tz(old)


def test_time_follows_the_clock(utc: None) -> None:
    fmt = AccessFormat("%(t)s")
    environ = make_environ()
    assert fmt.render(environ, "200 OK", [], 0, 0.0, NOW) == "[27/Nov/2026:02:00:00 +0000]"
    assert fmt.render(environ, "200 OK", [], 0, 0.0, NOW + 0.5) == "[27/Nov/2026:02:00:00 +0000]"
    assert fmt.render(environ, "200 OK", [], 0, 0.0, NOW + 61) == "[27/Nov/2026:02:01:01 +0000]"


def basic(credentials: bytes) -> str:
    return "Basic " + base64.b64encode(credentials).decode("ascii")


@pytest.mark.parametrize(
    ("authorization", "expected"),
    [
        (basic(b"alice:s3cret"), "alice"),
        (basic(b"alice:with:colons"), "alice"),
        (basic(b"nocolon"), "nocolon"),
        ("basic " + base64.b64encode(b"bob:x").decode(), "bob"),
        ("Basic !!!not-base64!!!", "-"),
        (basic(b"\xff\xfe:x"), "\\xff\\xfe"),  # not UTF-8: its bytes, escaped
        (basic("jos\u00e9:x".encode()), "jos\\xc3\\xa9"),  # UTF-8: its bytes, as Apache
        ("Bearer abc.def", "-"),
        ("Basic", "-"),
        ("", "-"),
    ],
)
def test_user_from_basic_auth(authorization: str, expected: str) -> None:
    assert render("%(u)s", make_environ(HTTP_AUTHORIZATION=authorization)) == expected


def test_request_header_atoms() -> None:
    environ = make_environ(
        HTTP_X_REQUEST_ID="abc-123", CONTENT_TYPE="application/json", CONTENT_LENGTH="7"
    )
    assert render("%({x-request-id}i)s", environ) == "abc-123"
    assert render("%({X-Request-Id}i)s", environ) == "abc-123"
    assert render("%({content-type}i)s %({Content-Length}i)s", environ) == "application/json 7"
    assert render("%({x-missing}i)s", environ) == "-"


def test_response_header_atoms() -> None:
    headers = [("Content-Type", "text/html"), ("Set-Cookie", "a=1"), ("set-cookie", "b=2")]
    assert render("%({content-type}o)s", headers=headers) == "text/html"
    assert render("%({Set-Cookie}o)s", headers=headers) == "b=2"  # the last one
    assert render("%({etag}o)s", headers=headers) == "-"


def test_environ_atoms() -> None:
    environ = make_environ(**{"wsgi.url_scheme": "https", "SCRIPT_NAME": "", "X_NUM": 5})
    assert render("%({wsgi.url_scheme}e)s", environ) == "https"
    assert render("%({REMOTE_ADDR}e)s %({remote_addr}e)s", environ) == "192.0.2.7 192.0.2.7"
    assert render("%({Remote_Addr}e)s", environ) == "192.0.2.7"
    assert render("%({x_num}e)s", environ) == "5"
    assert render("%({script_name}e)s %({absent}e)s", environ) == "- -"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("plain text", "plain text"),
        ('say "hi"', 'say \\"hi\\"'),
        ("back\\slash", "back\\\\slash"),
        ("line\nbreak\r\ttab", "line\\nbreak\\r\\ttab"),
        ("nul\x00del\x7f", "nul\\x00del\\x7f"),
        ("caf\xe9", "caf\\xe9"),  # latin-1 decoding of the byte 0xE9
        ("\u20ac", "\\xe2\\x82\\xac"),  # not from the wire: its UTF-8 bytes
    ],
)
def test_escape(value: str, expected: str) -> None:
    assert escape(value) == expected


def test_header_values_cannot_forge_a_line() -> None:
    environ = make_environ(HTTP_USER_AGENT='x" 500 0 "\n127.0.0.1 - - [forged]')
    line = render('"%(a)s"', environ)
    assert "\n" not in line
    assert line == '"x\\" 500 0 \\"\\n127.0.0.1 - - [forged]"'


def test_percent_in_values_is_kept() -> None:
    environ = make_environ(RAW_URI="/a%20b?x=%s", QUERY_STRING="x=%s")
    assert render("%(r)s %(q)s", environ) == "GET /a%20b?x=%s HTTP/1.1 x=%s"


def test_literal_text_and_percent_escape() -> None:
    assert render("100%% %(s)s done") == "100% 200 done"
    assert render("no atoms at all") == "no atoms at all"


@pytest.mark.parametrize("fmt", ["%s %(h)s", "%(h)s %", "%(s)d", "%(h"])
def test_bad_format_is_rejected_up_front(fmt: str) -> None:
    with pytest.raises(ValueError, match="invalid access_log_format"):
        AccessFormat(fmt)


# -- through Logger -------------------------------------------------------------------------


@pytest.fixture
def make_logger() -> Iterator[Callable[..., Logger]]:
    made: list[Logger] = []

    def make(**settings: Any) -> Logger:
        values: dict[str, Any] = {
            "errorlog": "-",
            "loglevel": "info",
            "accesslog": None,
            "access_log_format": DEFAULT_ACCESS_LOG_FORMAT,
            "capture_output": False,
            "logconfig_dict": {},
            "disable_redirect_access_to_syslog": False,
            "proc_name": None,
        }
        values.update(settings)
        logger = Logger(types.SimpleNamespace(**values))
        made.append(logger)
        return logger

    yield make
    for logger in made:
        logger.close()


def test_access_log_file(utc: None, tmp_path: Path, make_logger: Callable[..., Logger]) -> None:
    path = tmp_path / "access.log"
    logger = make_logger(accesslog=str(path), access_log_format='%(h)s "%(r)s" %(s)s %(B)s')
    assert logger.access_enabled
    logger.access(make_environ(), "201 Created", OK_HEADERS, 5, 0.01)
    logger.access(make_environ(REQUEST_METHOD="POST"), "404 Not Found", [], 0, 0.01)
    assert path.read_text() == (
        '192.0.2.7 "GET /todos?page=2 HTTP/1.1" 201 5\n'
        '192.0.2.7 "POST /todos?page=2 HTTP/1.1" 404 0\n'
    )


def test_access_log_to_stdout(
    utc: None,
    make_logger: Callable[..., Logger],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Logger.access reads the wall clock through its module's "time"; pin it.
    monkeypatch.setattr(logger_module, "time", types.SimpleNamespace(time=lambda: NOW))
    logger = make_logger(accesslog="-")
    logger.access(make_environ(), "200 OK", OK_HEADERS, 13, 0.01)
    out, err = capsys.readouterr()
    assert out == (
        '192.0.2.7 - - [27/Nov/2026:02:00:00 +0000] "GET /todos?page=2 HTTP/1.1" 200 13 '
        '"http://example.test/" "curl/8.5.0"\n'
    )
    assert err == ""


def test_default_format_when_setting_is_empty(
    make_logger: Callable[..., Logger], capsys: pytest.CaptureFixture[str]
) -> None:
    logger = make_logger(accesslog="-", access_log_format="")
    logger.access(make_environ(), "200 OK", OK_HEADERS, 13, 0.01)
    assert capsys.readouterr().out.endswith('200 13 "http://example.test/" "curl/8.5.0"\n')


def test_disabled_access_log_formats_nothing(
    make_logger: Callable[..., Logger], monkeypatch: pytest.MonkeyPatch
) -> None:
    logger = make_logger(accesslog=None)
    assert not logger.access_enabled

    def explode(*args: object) -> str:
        raise AssertionError("rendered while disabled")

    monkeypatch.setattr(AccessFormat, "render", explode)
    logger.access(make_environ(), "200 OK", [], 0, 0.0)


def test_a_failing_line_is_logged_not_raised(
    tmp_path: Path, make_logger: Callable[..., Logger], monkeypatch: pytest.MonkeyPatch
) -> None:
    errors = tmp_path / "error.log"
    logger = make_logger(accesslog=str(tmp_path / "access.log"), errorlog=str(errors))

    def explode(*args: object) -> str:
        raise RuntimeError("bad atom")

    monkeypatch.setattr(AccessFormat, "render", explode)
    logger.access(make_environ(), "200 OK", [], 0, 0.0)
    text = errors.read_text()
    assert "[ERROR] Failed to format the access log line" in text
    assert "RuntimeError: bad atom" in text


def test_bad_format_setting_is_a_config_error(make_logger: Callable[..., Logger]) -> None:
    with pytest.raises(ConfigError, match=r"^access_log_format = .*: every field must be named"):
        make_logger(accesslog="-", access_log_format="%(h)s %")


def test_access_log_reopens_after_rename(
    tmp_path: Path, make_logger: Callable[..., Logger]
) -> None:
    path = tmp_path / "access.log"
    logger = make_logger(accesslog=str(path), access_log_format="%(m)s %(U)s")
    logger.access(make_environ(PATH_INFO="/one"), "200 OK", [], 0, 0.0)
    path.rename(tmp_path / "access.log.1")
    logger.access(make_environ(PATH_INFO="/two"), "200 OK", [], 0, 0.0)  # still the old file
    logger.reopen_files()
    logger.access(make_environ(PATH_INFO="/three"), "200 OK", [], 0, 0.0)
    assert (tmp_path / "access.log.1").read_text() == "GET /one\nGET /two\n"
    assert path.read_text() == "GET /three\n"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("plain", "plain"),
        ("caf\u00c3\u00a9", "café"),  # UTF-8 bytes, as PEP 3333 hands them over (latin-1)
        ('a"b\\c', 'a\\"b\\\\c'),
        ("x\ty\n\r", "x\\ty\\n\\r"),
        ("\x1b[31m\x00\x7f", "\\u001b[31m\\u0000\\u007f"),
        ("\u00c2\u0085", "\\u0085"),  # a C1 control, in UTF-8: escaped too
        ("\xe9t\xe9", "\\u00e9t\\u00e9"),  # not UTF-8: each byte as its code point
        # One stray byte leaves the UTF-8 around it as text (it made every byte an escape).
        ("c\u00c3\u00a9d\xff", "c\u00e9d\\u00ff"),
        ("snow\u2603", "snow\u2603"),  # text set by the app, not wire bytes
        # Line separators and bidi controls, as UTF-8 on the wire: escaped.
        ("a\u00e2\u0080\u00a8b\u00e2\u0080\u00aec", "a\\u2028b\\u202ec"),
    ],
)
def test_json_escaping_keeps_a_json_line_valid(value: str, expected: str) -> None:
    out = AccessFormat('{"v": "%({x}e)s"}', "json").render({"x": value}, "200 OK", [], 0, 0.0, 0.0)
    assert out == '{"v": "' + expected + '"}'
    assert json.loads(out)["v"] == json.loads('"' + expected + '"')


def test_json_escaping_tells_users_apart() -> None:
    """The user was decoded from UTF-8, then taken for wire bytes by the JSON escaping and
    decoded again: "jos\u00c3\u00a9" and "jos\u00e9" logged as the same name."""
    fmt = AccessFormat('{"u": "%(u)s"}', "json")
    users = []
    for name in ("jos\u00e9", "jos\u00c3\u00a9"):
        environ = make_environ(HTTP_AUTHORIZATION=basic(name.encode() + b":pw"))
        users.append(json.loads(fmt.render(environ, "200 OK", [], 0, 0.0, 0.0))["u"])
    assert users == ["jos\u00e9", "jos\u00c3\u00a9"]


def test_the_escaping_setting_reaches_the_access_log() -> None:
    with pytest.raises(ConfigError):
        load_config(["--access-log-escape", "yaml", "x:app"], {})
    assert load_config(["--access-log-escape", "json", "x:app"], {}).access_log_escape == "json"


def test_the_atom_kind_is_read_in_any_case_as_gunicorn_reads_it() -> None:
    """gunicorn looks every ``{...}`` key up lower-cased, so ``%({user-agent}I)s`` is the
    request header there; it was "-" here unless a filter was installed."""
    assert render("%({User-Agent}I)s|%({CONTENT-TYPE}O)s|%({remote_addr}E)s") == (
        "curl/8.5.0|text/plain|192.0.2.7"
    )
