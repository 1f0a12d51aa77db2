"""What apps written for gunicorn read from the environ: ``$SCRIPT_NAME`` mounting and
``wsgi.errors`` going to the error log (file), per worker class."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from .conftest import ServerFactory
from .server import ROOT, forkhorn_command, get, server_env


@pytest.mark.timeout(60)
@pytest.mark.parametrize("how", ["environment", "raw_env"])
def test_script_name_mounts_the_app(
    server_factory: ServerFactory, worker_class: str, how: str
) -> None:
    # gunicorn: SCRIPT_NAME=/app gunicorn ...  or  -e SCRIPT_NAME=/app
    if how == "environment":
        server = server_factory("validated:app", "-k", worker_class, env={"SCRIPT_NAME": "/app/"})
    else:
        server = server_factory("validated:app", "-k", worker_class, "-e", "SCRIPT_NAME=/app")
    for path, script, rest in [
        ("/app/x/y?q=1", "/app", "/x/y"),
        ("/app", "/app", ""),
        ("/app/", "/app", "/"),
        ("/app/a%2Fb", "/app", "/a/b"),
    ]:
        resp = get(server.port, path)
        assert resp.status == 200, (path, resp.status)
        env = json.loads(resp.body)
        assert (env["SCRIPT_NAME"], env["PATH_INFO"]) == (script, rest), path
    # Outside the mount point (whole segments: /application is not under /app).
    assert get(server.port, "/application").status == 404
    assert get(server.port, "/other").status == 404


@pytest.mark.timeout(60)
def test_no_script_name_by_default(server_factory: ServerFactory) -> None:
    server = server_factory("validated:app")
    env = json.loads(get(server.port, "/app/x").body)
    assert (env["SCRIPT_NAME"], env["PATH_INFO"]) == ("", "/app/x")
    assert env["wsgi.multiprocess"] is False  # one worker, as gunicorn says


@pytest.mark.timeout(60)
def test_wsgi_multiprocess_with_several_workers(server_factory: ServerFactory) -> None:
    server = server_factory("validated:app", "--workers", "2")
    assert json.loads(get(server.port, "/").body)["wsgi.multiprocess"] is True


@pytest.mark.timeout(60)
def test_wsgi_errors_goes_to_the_error_logfile(worker_class: str, tmp_path: Path) -> None:
    # gunicorn writes wsgi.errors (Flask's default log handler, its 500 tracebacks) to the
    # error log's streams: with --error-logfile, that file, not stderr. The harness reads
    # the port from stderr, so this test binds a free port and polls the error log file.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    errlog = tmp_path / "error.log"
    args = ["-k", worker_class, "-b", f"127.0.0.1:{port}", "--error-logfile", str(errlog)]
    proc = subprocess.Popen(
        forkhorn_command([*args, "validated:app"]),
        cwd=ROOT,
        env=server_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 20
        while "Booting worker" not in (errlog.read_text() if errlog.exists() else ""):
            assert proc.poll() is None and time.monotonic() < deadline, "did not start"
            time.sleep(0.05)
        while True:
            try:
                resp = get(port, "/")
                break
            except OSError:
                assert time.monotonic() < deadline, "not ready"
                time.sleep(0.05)
        assert resp.status == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=20)
    assert "validated app wrote to wsgi.errors" in errlog.read_text()
    assert b"validated app wrote to wsgi.errors" not in err
