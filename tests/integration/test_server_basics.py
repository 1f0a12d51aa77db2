"""Issue 3 as a new user meets it: start-up, the sync worker and WSGI, errors, config, logs.

Every test starts a real ``python -m forkhorn`` on 127.0.0.1:0 (``server_factory``) or runs
the command to completion (``run_cli``), and talks to it with independent clients.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import signal
import socket
import tempfile
import time
from pathlib import Path

import pytest

from forkhorn import __version__

from .conftest import ServerFactory
from .server import (
    BOOTING_RE,
    RawConnection,
    connect,
    get,
    parse_response,
    parse_responses,
    raw_request,
    read_until_close,
    run_cli,
    stream_body,
)

# [2026-11-27 02:10:29 +0000] [15067] [INFO] message
ERROR_LOG_LINE = re.compile(r"^\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d [+-]\d{4}\] \[\d+\] \[[A-Z]+\] ")


def json_request(
    port: int, method: str, path: str, payload: object | None = None
) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        body = json.dumps(payload).encode() if payload is not None else None
        headers = {"Content-Type": "application/json"} if body is not None else {}
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


# -- start-up and the Flask example ----------------------------------------------------------------


@pytest.mark.timeout(60)
def test_todo_example_with_three_workers(
    server_factory: ServerFactory, todo_db: dict[str, str]
) -> None:
    # The command, with the `--workers=N` spelling.
    server = server_factory("examples.todo:app", "--workers=3", env=todo_db)
    pids = server.wait_for_workers(3)
    server.wait_for_log(rf"Booting worker with pid: {max(pids)}")

    status, headers, body = json_request(server.port, "POST", "/todos", {"title": "write tests"})
    assert status == 201, body
    item = json.loads(body)
    assert item["title"] == "write tests"
    assert headers["location"] == f"/todos/{item['id']}"

    status, _, body = json_request(server.port, "GET", f"/todos/{item['id']}")
    assert (status, json.loads(body)["title"]) == (200, "write tests")
    status, _, body = json_request(server.port, "GET", "/todos")
    assert status == 200 and [t["id"] for t in json.loads(body)] == [item["id"]]
    status, headers, body = json_request(server.port, "GET", "/")
    assert status == 200 and b"write tests" in body
    assert headers["content-type"].startswith("text/html")
    status, _, _ = json_request(server.port, "DELETE", f"/todos/{item['id']}")
    assert status == 204
    status, _, _ = json_request(server.port, "GET", f"/todos/{item['id']}")
    assert status == 404

    logs = server.logs
    assert f"Starting forkhorn {__version__}" in logs
    assert re.search(rf"Listening at: http://127\.0\.0\.1:{server.port} \({server.pid}\)", logs)
    assert "Using worker: sync" in logs
    booted = sorted(int(m.group(1)) for m in BOOTING_RE.finditer(logs))
    assert booted == sorted(pids)
    for line in server.lines:
        if "Starting forkhorn" in line or "Booting worker" in line:
            assert ERROR_LOG_LINE.match(line), line


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    ("worker_class", "extra", "advised"),
    [("fast", 1, True), ("fast", 0, False), ("sync", 1, False)],
    ids=["fast-more-than-cpus", "fast-one-per-cpu", "sync-more-than-cpus"],
)
def test_more_event_loop_workers_than_cpus_is_pointed_out(
    server_factory: ServerFactory, worker_class: str, extra: int, advised: bool
) -> None:
    cpus = len(os.sched_getaffinity(0))
    workers = cpus + extra
    server = server_factory("hello:app", "-k", worker_class, "--workers", str(workers))
    pids = server.wait_for_workers(workers)
    server.wait_for_log(rf"Booting worker with pid: {max(pids)}")
    advice = f"{workers} fast workers on {cpus} CPUs"
    assert (advice in server.logs) is advised, server.logs
    if advised:
        assert f"--workers {cpus} is usually faster" in server.logs


@pytest.mark.timeout(30)
def test_version() -> None:
    result = run_cli(["--version"])
    assert result.returncode == 0
    assert result.stdout.strip() == f"forkhorn {__version__}"


# -- WSGI: environ, input, responses ---------------------------------------------------------------


@pytest.mark.timeout(60)
def test_environ_passes_wsgiref_validator(server_factory: ServerFactory) -> None:
    server = server_factory("validated:app")
    with RawConnection(server.port) as conn:
        client_port = conn.sock.getsockname()[1]
        body = b"name=value"
        conn.send(
            b"POST /caf%C3%A9/d%2Fe?q=1&r=%20 HTTP/1.1\r\n"
            b"Host: example.test:8080\r\n"
            b"X-Custom: one\r\n"
            b"X-Custom: two\r\n"
            b"Content-Type: application/x-www-form-urlencoded\r\n"
            b"Content-Length: 10\r\n\r\n" + body
        )
        resp = conn.read_response()
    assert resp.status == 200, (resp.body, server.logs)
    env = json.loads(resp.body)
    assert env["REQUEST_METHOD"] == "POST"
    assert env["SCRIPT_NAME"] == ""
    # PEP 3333: PATH_INFO is the percent-decoded path as latin-1 text (%2F decodes too).
    assert env["PATH_INFO"] == b"/caf\xc3\xa9/d/e".decode("latin-1")
    assert env["QUERY_STRING"] == "q=1&r=%20"
    assert env["RAW_URI"] == "/caf%C3%A9/d%2Fe?q=1&r=%20"
    assert env["SERVER_PROTOCOL"] == "HTTP/1.1"
    assert env["SERVER_NAME"] and env["SERVER_PORT"].isdigit()
    assert env["REMOTE_ADDR"] == "127.0.0.1"
    assert env["REMOTE_PORT"] == str(client_port)
    assert env["CONTENT_TYPE"] == "application/x-www-form-urlencoded"
    assert env["CONTENT_LENGTH"] == "10"
    assert env["HTTP_HOST"] == "example.test:8080"
    # RFC 9110 §5.3: repeated fields combine into one comma-separated list.
    assert env["HTTP_X_CUSTOM"].replace(" ", "") == "one,two"
    assert "HTTP_CONTENT_LENGTH" not in env and "HTTP_CONTENT_TYPE" not in env
    assert env["wsgi.url_scheme"] == "http"
    assert env["wsgi.version"] == [1, 0]
    assert env["wsgi.run_once"] is False
    assert env["wsgi.input_terminated"] is True
    assert env["body"] == "name=value"

    # A GET without a body: no CONTENT_LENGTH pretending there is one.
    resp = get(server.port, "/plain")
    assert resp.status == 200
    env = json.loads(resp.body)
    assert env.get("CONTENT_LENGTH", "") in ("", "0")
    assert env["PATH_INFO"] == "/plain" and env["QUERY_STRING"] == ""

    server.stop()
    assert "validated app wrote to wsgi.errors" in server.logs
    # The validator reports an iterable the server never closed, or any other violation.
    assert "garbage collected without being closed" not in server.logs
    assert "Traceback" not in server.logs, server.logs


@pytest.mark.timeout(60)
@pytest.mark.parametrize("mode", ["all", "sized", "lines", "readlines", "iter"])
def test_wsgi_input_read_methods(server_factory: ServerFactory, mode: str) -> None:
    server = server_factory("echo:app")
    payload = b"first line\nsecond line\n\nlast without newline " + bytes(range(256)) * 40
    data = raw_request(
        server.port,
        f"POST /?read={mode} HTTP/1.1\r\nHost: t\r\nContent-Length: {len(payload)}\r\n\r\n".encode()
        + payload,
    )
    (resp,) = parse_responses(data)
    assert resp.status == 200
    echoed = json.loads(resp.body)
    assert echoed["mode"] == mode
    assert echoed["body"].encode("latin-1") == payload


@pytest.mark.timeout(30)
def test_sync_worker_closes_after_each_response(server_factory: ServerFactory) -> None:
    server = server_factory("hello:app")
    with RawConnection(server.port) as conn:
        conn.send(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        resp = conn.read_response()
        assert resp.status == 200 and resp.body == b"Hello, World!"
        assert resp.header("connection") == "close"
        assert resp.header("keep-alive") is None
        assert conn.read_until_close() == b""  # and it does close


@pytest.mark.timeout(30)
@pytest.mark.parametrize("path", ["/", "/stream?chunks=3&size=50"])
def test_head_has_no_body(server_factory: ServerFactory, path: str) -> None:
    server = server_factory("routes:app")
    data = raw_request(server.port, f"HEAD {path} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
    assert data.startswith(b"HTTP/1.1 200 ")
    assert data.endswith(b"\r\n\r\n") and data.count(b"\r\n\r\n") == 1, data
    resp, rest = parse_response(data, "HEAD")
    assert rest == b""
    if path == "/":
        assert resp.header("content-length") == "13"  # what a GET would say


@pytest.mark.timeout(30)
def test_streaming_response_is_chunked_on_http11(server_factory: ServerFactory) -> None:
    server = server_factory("stream:app")
    data = raw_request(
        server.port, b"GET /?chunks=6&size=1000&sleep=0.05 HTTP/1.1\r\nHost: t\r\n\r\n"
    )
    (resp,) = parse_responses(data)
    assert resp.status == 200
    assert resp.header("transfer-encoding") == "chunked"
    assert resp.header("content-length") is None
    assert resp.complete
    assert resp.body == stream_body(6, 1000)


@pytest.mark.timeout(30)
def test_streaming_response_is_close_delimited_on_http10(server_factory: ServerFactory) -> None:
    server = server_factory("stream:app")
    data = raw_request(server.port, b"GET /?chunks=4&size=100 HTTP/1.0\r\n\r\n")
    (resp,) = parse_responses(data)
    assert resp.version == "HTTP/1.1" or resp.version == "HTTP/1.0"
    assert resp.status == 200
    assert resp.header("transfer-encoding") is None  # HTTP/1.0 has no chunked coding
    assert resp.body == stream_body(4, 100)


@pytest.fixture
def big_file(tmp_path: Path) -> Path:
    path = tmp_path / "payload.bin"
    # 3 MiB + 7 bytes of non-repeating-looking content: several sendfile() calls.
    block = bytes((i * 7919 + 13) % 251 for i in range(65536))
    path.write_bytes(block * 48 + b"the end")
    return path


@pytest.mark.timeout(60)
@pytest.mark.parametrize("sendfile", ["default", "--no-sendfile"])
@pytest.mark.parametrize("path", ["/", "/nolength"])
def test_file_response(
    server_factory: ServerFactory, big_file: Path, sendfile: str, path: str
) -> None:
    args = [sendfile] if sendfile != "default" else []
    server = server_factory("files:app", *args, env={"FORKHORN_TEST_FILE": str(big_file)})
    data = raw_request(server.port, f"GET {path} HTTP/1.1\r\nHost: t\r\n\r\n".encode(), 30)
    (resp,) = parse_responses(data)
    assert resp.status == 200
    assert resp.complete
    expected = big_file.read_bytes()
    assert len(resp.body) == len(expected)
    assert resp.body == expected
    if path == "/":
        assert resp.header("content-length") == str(len(expected))


# -- app errors ------------------------------------------------------------------------------------


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    ("path", "message"),
    [("/before", "boom-before-start-response"), ("/after-start", "boom-after-start-response")],
)
def test_exception_before_body_gives_500(
    server_factory: ServerFactory, path: str, message: str
) -> None:
    server = server_factory("raising:app")
    mark = server.mark()
    data = raw_request(server.port, f"GET {path} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
    (resp,) = parse_responses(data)
    assert resp.status == 500
    assert message.encode() not in resp.body  # no traceback to the client
    server.wait_for_log(r"Traceback \(most recent call last\)", since=mark)
    server.wait_for_log(rf"RuntimeError: {message}", since=mark)
    assert get(server.port, "/").status == 200  # and it still serves


@pytest.mark.timeout(30)
@pytest.mark.parametrize(("path", "chunked"), [("/mid-stream", False), ("/mid-chunked", True)])
def test_exception_mid_stream_truncates_and_closes(
    server_factory: ServerFactory, path: str, chunked: bool
) -> None:
    server = server_factory("raising:app")
    mark = server.mark()
    # read_until_close: the server must close the connection (it raises if it stays open).
    data = raw_request(server.port, f"GET {path} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
    (resp,) = parse_responses(data)
    assert resp.status == 200  # the head was already sent
    assert resp.chunked is chunked
    assert not resp.complete, "a failed response must not look complete"
    assert resp.body == b"x" * 1000
    server.wait_for_log(rf"RuntimeError: boom-mid-stream {path}", since=mark)
    assert get(server.port, "/").status == 200


# -- start-up errors -------------------------------------------------------------------------------


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.strip()]


def load_failure(stderr: str) -> str:
    """The master's ``App failed to load`` line (the one that explains its exit)."""
    master = re.search(r"\[(\d+)\] \[INFO\] Starting forkhorn", stderr)
    assert master, stderr
    lines = [
        line
        for line in error_lines(stderr)
        if "App failed to load:" in line and f"[{master.group(1)}]" in line
    ]
    assert lines, stderr
    return lines[-1]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("workers", ["1", "3"])
def test_app_that_fails_to_import_stops_the_master(workers: str) -> None:
    result = run_cli(["--bind", "127.0.0.1:0", "--workers", workers, "broken_import:app"])
    assert result.returncode == 4, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    line = load_failure(result.stderr)
    assert "broken_import fails at import on purpose" in line
    assert line.endswith(" (--log-level debug shows its traceback)"), line
    # Issue 3: "one clear line (`App failed to load: ...`)", not one per process.
    failed = [line for line in result.stderr.splitlines() if "App failed to load:" in line]
    assert len(failed) == 1, result.stderr


@pytest.mark.timeout(60)
def test_missing_module_and_failing_import_are_told_apart() -> None:
    missing = run_cli(["--bind", "127.0.0.1:0", "forkhorn_no_such_module:app"])
    dependency = run_cli(["--bind", "127.0.0.1:0", "broken_dependency:app"])
    for result in (missing, dependency):
        assert result.returncode == 4, result.stderr
        assert "Traceback" not in result.stderr, result.stderr
    missing_line = load_failure(missing.stderr)
    assert "forkhorn_no_such_module" in missing_line
    assert "not found" in missing_line
    dependency_line = load_failure(dependency.stderr)
    # An error inside the app's import names the missing dependency and where it was
    # imported, and does not claim the app module itself is missing.
    assert "forkhorn_test_missing_dependency" in dependency_line
    assert "broken_dependency.py" in dependency_line
    assert "not found" not in dependency_line


@pytest.mark.timeout(60)
def test_app_that_is_not_callable() -> None:
    result = run_cli(["--bind", "127.0.0.1:0", "notcallable:app"])
    assert result.returncode == 4, result.stderr
    assert "Traceback" not in result.stderr
    line = load_failure(result.stderr)
    assert "notcallable:app" in line
    assert "callable" in line.replace("notcallable", "")


@pytest.mark.timeout(60)
def test_address_in_use_is_one_line() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli(["--bind", f"127.0.0.1:{port}", "hello:app"], timeout=45)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr
    mentions = [
        line for line in error_lines(result.stderr) if re.search(r"in use", line, re.IGNORECASE)
    ]
    assert len(mentions) == 1, result.stderr
    assert str(port) in mentions[0]
    assert "Booting worker" not in result.stderr


@pytest.mark.timeout(60)
def test_a_fatal_start_up_error_reaches_the_error_log_file(tmp_path: Path) -> None:
    """stderr is not the only place an operator looks (and under --daemon it is
    /dev/null): the master's fatal line goes to --error-logfile too, once on each."""
    errors = tmp_path / "error.log"
    result = run_cli(
        [
            "--bind",
            "127.0.0.1:0",
            "--pid",
            str(tmp_path / "no" / "such" / "dir.pid"),
            "--error-logfile",
            str(errors),
            "hello:app",
        ]
    )
    assert result.returncode != 0
    assert len(error_lines(result.stderr)) == 1, result.stderr
    logged = [line for line in errors.read_text().splitlines() if "[ERROR]" in line]
    assert len(logged) == 1 and "pid file" in logged[0], errors.read_text()
    assert "Traceback" not in errors.read_text()


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("app", "code"),
    [("hello:app", 0), ("broken_import:app", 1), ("notcallable:app", 1), ("nosuch_xyz:app", 1)],
)
def test_check_config(app: str, code: int) -> None:
    result = run_cli(["--check-config", app])
    assert result.returncode == code, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    if code:
        assert len(error_lines(result.stderr)) == 1, result.stderr


@pytest.mark.timeout(60)
def test_check_config_loads_the_worker_class() -> None:
    """A misspelt -k fails the check, not only the start that follows it."""
    result = run_cli(["--check-config", "-k", "gthraed", "hello:app"])
    assert result.returncode == 1, result.stdout + result.stderr
    assert error_lines(result.stderr) == [
        "Error: worker_class 'gthraed': expected one of sync, gthread, gevent, eventlet, "
        "fast or a dotted path such as 'pkg.mod:MyWorker'"
    ]


# -- configuration ---------------------------------------------------------------------------------


def print_config(args: list[str], **kwargs: object) -> dict[str, tuple[str, str]]:
    result = run_cli(["--print-config", *args], **kwargs)  # type: ignore[arg-type]
    assert result.returncode == 0, result.stderr
    settings = {}
    for line in result.stdout.splitlines():
        match = re.match(r"^(\w+)\s*=\s*(.*?)  # (.*)$", line)
        if match:
            settings[match.group(1)] = (match.group(2), match.group(3))
    assert settings, result.stdout
    return settings


@pytest.mark.timeout(60)
def test_config_precedence_in_print_config(tmp_path: Path) -> None:
    conf = tmp_path / "conf.py"
    conf.write_text("workers = 2\ntimeout = 11\nkeepalive = 7\ngraceful_timeout = 13\n")
    settings = print_config(
        ["-c", str(conf), "--keep-alive", "9", "hello:app"],
        env={"FORKHORN_CMD_ARGS": "--timeout 22 --keep-alive 8"},
    )
    assert settings["graceful_timeout"][0] == "13"
    assert settings["graceful_timeout"][1].startswith("config file")
    assert settings["workers"][0] == "2"
    assert settings["workers"][1].startswith("config file")
    assert str(conf) in settings["workers"][1]
    assert settings["timeout"] == ("22", "FORKHORN_CMD_ARGS")
    assert settings["keepalive"] == ("9", "command line")
    assert settings["backlog"][1] == "default"
    assert settings["wsgi_app"] == ("'hello:app'", "command line")


@pytest.mark.timeout(60)
def test_default_config_file_and_web_concurrency(tmp_path: Path) -> None:
    (tmp_path / "forkhorn.conf.py").write_text("timeout = 17\n")
    settings = print_config(["hello:app"], cwd=tmp_path, env={"WEB_CONCURRENCY": "5"})
    assert settings["timeout"][0] == "17"
    assert settings["timeout"][1].startswith("config file")
    assert settings["workers"] == ("5", "WEB_CONCURRENCY")


@pytest.mark.timeout(60)
def test_config_precedence_reaches_the_server(
    server_factory: ServerFactory, tmp_path: Path
) -> None:
    conf = tmp_path / "conf.py"
    conf.write_text("workers = 2\n")
    server = server_factory("hello:app", "-c", str(conf), env={"FORKHORN_CMD_ARGS": "-w 3"})
    server.wait_for_workers(3)
    server.stop()
    server = server_factory(
        "hello:app", "-c", str(conf), "-w", "1", env={"FORKHORN_CMD_ARGS": "-w 3"}
    )
    server.wait_for_workers(1)


@pytest.mark.timeout(30)
def test_bad_value_in_environment_is_one_line() -> None:
    result = run_cli(["hello:app"], env={"FORKHORN_CMD_ARGS": "--workers abc"})
    assert result.returncode == 2
    lines = error_lines(result.stderr)
    assert len(lines) == 1, result.stderr
    assert "workers" in lines[0] and "abc" in lines[0] and "FORKHORN_CMD_ARGS" in lines[0]


@pytest.mark.timeout(30)
def test_unknown_flag_is_one_line() -> None:
    result = run_cli(["--no-such-flag", "hello:app"])
    assert result.returncode == 2
    lines = error_lines(result.stderr)
    assert len(lines) == 1, result.stderr
    assert "--no-such-flag" in lines[0]


# -- access log ------------------------------------------------------------------------------------


@pytest.mark.timeout(30)
def test_unimplemented_gunicorn_settings_are_named_at_start_up(
    server_factory: ServerFactory,
) -> None:
    """Accepted so a gunicorn configuration keeps loading, never ignored silently; set to
    its default (``spew = False`` in many templates), it asks for nothing missing."""
    server = server_factory(
        "hello:app",
        "--statsd-host",
        "127.0.0.1:9125",
        "--forwarded-allow-ips",
        "*",
        "--forwarded-allow-ips",
        "127.0.0.1,::1",  # the default again: the last one counts
        "--statsd-host",
        "127.0.0.1:9125",
    )
    server.wait_for_log(r"\[WARNING\] statsd_host is accepted for gunicorn compatibility")
    assert "proxy_protocol" not in server.logs  # only what was set is named
    assert "forwarded_allow_ips" not in server.logs  # set, but to its default
    assert get(server.port).status == 200


@pytest.mark.timeout(30)
def test_limits_above_their_maximum_are_capped_with_a_warning(
    server_factory: ServerFactory,
) -> None:
    """A gunicorn config raising limit_request_line past 8190 (long query strings) starts,
    as under gunicorn, which caps it silently; here the start-up says so."""
    server = server_factory("hello:app", "--limit-request-line", "16384")
    server.wait_for_log(r"\[WARNING\] limit_request_line = 16384 .* the maximum, 8190")
    line = 8190 - len("GET  HTTP/1.1")
    ok = raw_request(server.port, b"GET /" + b"a" * (line - 1) + b" HTTP/1.1\r\nHost: t\r\n\r\n")
    assert parse_responses(ok)[0].status == 200
    long = raw_request(server.port, b"GET /" + b"a" * line + b" HTTP/1.1\r\nHost: t\r\n\r\n")
    assert parse_responses(long)[0].status == 414


@pytest.mark.timeout(30)
def test_an_access_log_on_a_full_disk_is_said_once_not_per_request(
    server_factory: ServerFactory,
) -> None:
    """/dev/full fails every write with ENOSPC: logging's own handler printed a 40-line
    traceback on stderr for every request. Now one line says so (per worker, per minute)."""
    server = server_factory("hello:app", "--workers", "1", "--access-logfile", "/dev/full")
    for _ in range(20):
        assert get(server.port).status == 200
    server.wait_for_log(r"cannot write the log /dev/full: .*No space left on device")
    assert server.count_log(r"cannot write the log") == 1, server.logs
    assert "Traceback" not in server.logs
    # The first report came with the start-up handshake's line; the 20 lines lost after
    # it are told as the worker stops, not dropped with it (the next report was a minute
    # away).
    assert server.stop() == 0
    assert re.search(r"cannot write the log /dev/full; 20 line\(s\) lost", server.logs), server.logs


@pytest.mark.timeout(30)
def test_access_log_default_format(server_factory: ServerFactory) -> None:
    server = server_factory("hello:app", "--access-logfile", "-")
    resp = get(
        server.port,
        "/some/path?x=1&y=2",
        **{"User-Agent": "forkhorn-test/1.0", "Referer": "http://ref.test/page"},
    )
    assert resp.status == 200
    match = server.wait_for_log(r"/some/path", stream="stdout")
    # gunicorn's default: %(h)s %(l)s %(u)s %(t)s "%(r)s" %(s)s %(b)s "%(f)s" "%(a)s"
    assert re.fullmatch(
        r"127\.0\.0\.1 - - \[\d\d/[A-Z][a-z]{2}/\d{4}:\d\d:\d\d:\d\d [+-]\d{4}\] "
        r'"GET /some/path\?x=1&y=2 HTTP/1\.1" 200 13 "http://ref\.test/page" "forkhorn-test/1\.0"',
        match.string,
    ), match.string


@pytest.mark.timeout(30)
def test_access_log_custom_format(server_factory: ServerFactory) -> None:
    fmt = "%(m)s %(U)s %(q)s %(s)s %(B)s %(H)s %({x-trace}i)s %({content-type}o)s %(p)s"
    server = server_factory("hello:app", "--access-logfile", "-", "--access-logformat", fmt)
    assert get(server.port, "/fmt?a=b", **{"X-Trace": "abc123"}).status == 200
    match = server.wait_for_log(r"^GET /fmt ", stream="stdout")
    fields = match.string.split(" ")
    assert fields[:8] == ["GET", "/fmt", "a=b", "200", "13", "HTTP/1.1", "abc123", "text/plain"]
    # %(p)s is the worker's pid, which the master logged when it booted it.
    assert re.search(rf"Booting worker with pid: {fields[8].strip('<>')}\b", server.logs)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("worker_class", ["sync", "fast"])
def test_a_json_access_log_stays_json(server_factory: ServerFactory, worker_class: str) -> None:
    """A JSON-shaped format is a common way to ship access logs. Apache's ``\\xhh`` for a
    non-ASCII byte is not a JSON escape: a browser's UTF-8 user agent made the line
    invalid. ``--access-log-escape json`` writes such bytes as the text they encode."""
    fmt = '{"path": "%(U)s", "ua": "%(a)s", "x": "%({x-odd}i)s", "status": %(s)s}'
    server = server_factory(
        "hello:app", "-k", worker_class, "--access-logfile", "-",
        "--access-logformat", fmt, "--access-log-escape", "json",
    )  # fmt: skip
    with connect(server.port) as sock:
        sock.sendall(
            b"GET /caf%C3%A9 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n"
            b'User-Agent: Mozilla/5.0 (caf\xc3\xa9) "quoted" back\\slash\r\n'
            b"X-Odd: \xe9t\xe9\tend\r\n\r\n"  # latin-1, not UTF-8, and a tab
        )
        assert read_until_close(sock).startswith(b"HTTP/1.1 200 ")
    line = server.wait_for_log(r'^\{"path": "/caf', stream="stdout").string
    record = json.loads(line)
    assert record == {
        "path": "/café",
        "ua": 'Mozilla/5.0 (café) "quoted" back\\slash',
        "x": "\u00e9t\u00e9\tend",  # each byte as its code point
        "status": 200,
    }, line


@pytest.mark.timeout(30)
def test_requests_library_and_curl_agree(server_factory: ServerFactory) -> None:
    """Independent clients see the same response (curl is installed by CI)."""
    import shutil
    import subprocess

    import requests

    server = server_factory("hello:app")
    resp = requests.get(server.url("/"), timeout=10)
    assert (resp.status_code, resp.content) == (200, b"Hello, World!")
    curl = shutil.which("curl")
    assert curl, "curl is not installed (.ci/run installs it)"
    out = subprocess.run(
        [curl, "-s", "-i", "--max-time", "10", server.url("/")],
        capture_output=True,
        timeout=20,
        check=True,
    ).stdout
    assert out.startswith(b"HTTP/1.1 200 OK\r\n") and out.endswith(b"Hello, World!")


@pytest.mark.timeout(30)
def test_client_that_sends_nothing_does_not_block_the_worker(
    server_factory: ServerFactory,
) -> None:
    server = server_factory("hello:app", "--workers", "1")
    with connect(server.port) as idle:
        assert get(server.port, "/").status == 200
        idle.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        assert read_until_close(idle).startswith(b"HTTP/1.1 200 OK")


def _unprivileged() -> tuple[int, int] | None:
    """nobody's uid and nogroup's (or nobody's) gid, when running as root; else None."""
    if os.geteuid() != 0:
        return None
    import grp
    import pwd

    try:
        uid = pwd.getpwnam("nobody").pw_uid
    except KeyError:
        return None
    for name in ("nogroup", "nobody"):
        try:
            return uid, grp.getgrnam(name).gr_gid
        except KeyError:
            continue
    return None


@pytest.mark.timeout(60)
@pytest.mark.skipif(_unprivileged() is None, reason="needs root and a nobody user")
def test_user_and_group_own_the_unix_socket_and_the_log_files(
    server_factory: ServerFactory,
) -> None:
    """With --user/--group, the unix socket and the log files belong to them (as under
    gunicorn): a proxy in the group can connect with --umask 007, and after a rotation
    (mv, then USR1) the workers write into the new access log, not the rotated one."""
    owner = _unprivileged()
    assert owner is not None
    uid, gid = owner
    # Not under pytest's tmp_path: its parent is root's alone, and the workers, as
    # nobody, reopen the access log by its path.
    work = Path(tempfile.mkdtemp(prefix="forkhorn-user-", dir="/tmp"))
    try:
        work.chmod(0o755)
        sock_path, log = work / "s.sock", work / "access.log"
        server = server_factory(
            "hello:app",
            "--bind",
            f"unix:{sock_path}",
            "--user",
            str(uid),
            "--group",
            str(gid),
            "--umask",
            "007",
            "--access-logfile",
            str(log),
        )
        assert (sock_path.stat().st_uid, sock_path.stat().st_gid) == (uid, gid)
        assert (log.stat().st_uid, log.stat().st_gid) == (uid, gid)
        assert get(server.port, "/before").status == 200
        log.rename(work / "access.log.1")
        mark = server.mark()
        os.kill(server.pid, signal.SIGUSR1)
        server.wait_for_log(r"Handling signal: usr1", since=mark)
        deadline = time.monotonic() + 10
        while "/after" not in (log.read_text() if log.exists() else ""):
            assert time.monotonic() < deadline, server.logs
            get(server.port, "/after")
            time.sleep(0.1)
        assert log.stat().st_uid == uid
        assert "Cannot reopen" not in server.logs
    finally:
        shutil.rmtree(work, ignore_errors=True)


GUNICORN_HOOKS = """
import sys


def on_starting(server):
    sys.stderr.write(f"hook on_starting workers={server.app.cfg.workers}\\n")


def when_ready(server):
    sys.stderr.write(f"hook when_ready forked={len(server.WORKERS)}\\n")
    sys.stderr.write(f"hook when_ready address={server.address} timeout={server.timeout}\\n")


def post_worker_init(worker):
    same = worker.app.wsgi() is worker.wsgi is worker.app.callable
    sys.stderr.write(f"hook post_worker_init same={same} workers={worker.app.cfg.workers}\\n")
"""


@pytest.mark.timeout(60)
def test_gunicorn_hooks_see_the_app_object_and_when_ready_comes_first(
    server_factory: ServerFactory, tmp_path: Path
) -> None:
    """Real gunicorn configs reach ``server.app.cfg`` and ``worker.app.wsgi()`` (its
    application object), and expect ``when_ready`` before the first worker is forked;
    ``server.app`` was missing, which stopped such a config's start."""
    config = tmp_path / "hooks.conf.py"
    config.write_text(GUNICORN_HOOKS)
    server = server_factory("hello:app", "-c", str(config), "--workers", "2")
    server.wait_for_workers(2)
    server.wait_for_log(r"hook post_worker_init same=True workers=2")
    logs = server.logs
    assert "hook on_starting workers=2" in logs
    assert "hook when_ready forked=0" in logs
    # gunicorn's Arbiter.address and .timeout, which when_ready hooks log.
    assert f"hook when_ready address=[('127.0.0.1', {server.port})] timeout=30.0" in logs
    assert logs.index("hook when_ready") < logs.index("Booting worker")
    assert "Exception in" not in logs


@pytest.mark.timeout(30)
def test_log_level_debug_shows_the_configuration_and_each_request(
    server_factory: ServerFactory, worker_class: str
) -> None:
    """As gunicorn at debug: the master logs every setting at start-up (with where it came
    from, --print-config's lines) and the default pre_request hook logs each request."""
    server = server_factory(
        "hello:app", "--workers", "1", "-k", worker_class, "--log-level", "debug",
        "-e", "DB_PASSWORD=hunter2", "-e", "MODE=prod",
    )  # fmt: skip
    assert get(server.port, "/a/b?x=1").status == 200
    # A log travels further than a terminal: secret-looking environment values are hidden.
    assert "['DB_PASSWORD=***', 'MODE=prod']" in server.logs, server.logs
    assert "hunter2" not in server.logs
    server.wait_for_log(r"\[DEBUG\] GET /a/b$")
    assert "[DEBUG] Current configuration:\n  wsgi_app " in server.logs, server.logs
    assert re.search(r"\n  loglevel +=  ?'debug'  # command line\n", server.logs), server.logs
    assert "?x=1" not in server.logs  # the path, as gunicorn's req.path
    # Not percent-decoded, in the absolute form too: an encoded CRLF cannot forge a line.
    raw_request(server.port, b"GET http://t/y%0d%0aforged HTTP/1.1\r\nHost: t\r\n\r\n")
    server.wait_for_log(r"\[DEBUG\] GET /y%0d%0aforged$")
    assert not re.search(r"^forged", server.logs, re.MULTILINE), server.logs


@pytest.mark.timeout(30)
def test_log_level_info_shows_neither(server_factory: ServerFactory) -> None:
    server = server_factory("hello:app", "--workers", "1", "-k", "fast")
    assert get(server.port, "/a/b").status == 200
    assert server.stop() == 0
    assert "Current configuration" not in server.logs
    assert "GET /a/b" not in server.logs
