"""The settings registry: defaults, sources and precedence, converters, errors, hooks."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

from forkhorn.config import SETTINGS, Config, load_config, parse_bind
from forkhorn.errors import ConfigError


@pytest.fixture(autouse=True)
def _empty_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # ./forkhorn.conf.py is read when present: run every test where there is none.
    monkeypatch.chdir(tmp_path)


def write_config(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


def test_defaults_follow_gunicorn() -> None:
    cfg = load_config([], {})
    assert cfg.bind == ["127.0.0.1:8000"]
    assert cfg.workers == 1
    assert cfg.worker_class == "sync"
    assert cfg.backlog == 2048
    assert cfg.timeout == 30
    assert cfg.graceful_timeout == 30
    assert cfg.keepalive == 2
    assert cfg.limit_request_line == 4094
    assert cfg.limit_request_fields == 100
    assert cfg.limit_request_field_size == 8190
    assert cfg.limit_request_body == 0
    assert cfg.header_map == "drop"
    assert cfg.server_header == "forkhorn"
    assert cfg.errorlog == "-"
    assert cfg.accesslog is None
    assert cfg.loglevel == "info"
    assert cfg.access_log_format == '%(h)s %(l)s %(u)s %(t)s "%(r)s" %(s)s %(b)s "%(f)s" "%(a)s"'
    assert cfg.header_timeout == 30
    assert cfg.wsgi_app is None
    assert cfg.config is None
    assert all(cfg.source(name) == "default" for name in SETTINGS)


def test_every_setting_is_a_config_attribute_with_doc() -> None:
    cfg = load_config([], {})
    for name, setting in SETTINGS.items():
        attribute = "reload_enabled" if name == "reload" else name
        if name == "proc_name":  # as gunicorn's: the setting, else default_proc_name
            assert cfg.proc_name == cfg.default_proc_name == "forkhorn"
            assert load_config(["app:wsgi"], {}).proc_name == "app:wsgi"
            assert load_config(["-n", "web", "app:wsgi"], {}).proc_name == "web"
            continue
        assert getattr(cfg, attribute) == setting.default or setting.arity is not None
        assert setting.doc.strip(), name
        assert setting.section, name


def test_typo_and_assignment_are_errors() -> None:
    cfg = load_config([], {})
    with pytest.raises(AttributeError):
        cfg.wokers  # type: ignore[attr-defined]  # noqa: B018
    with pytest.raises(AttributeError):
        cfg.workers = 3  # type: ignore[assignment]
    with pytest.raises(AttributeError):
        cfg.made_up = 1  # type: ignore[attr-defined]


def test_flags_and_positional_app() -> None:
    cfg = load_config(
        ["--workers=9", "server:app", "--bind", "127.0.0.1:8000", "-b", "unix:/tmp/x.sock"], {}
    )
    assert cfg.workers == 9
    assert cfg.wsgi_app == "server:app"
    assert cfg.bind == ["127.0.0.1:8000", "unix:/tmp/x.sock"]
    assert cfg.source("workers") == "command line"
    assert cfg.default_proc_name == "server:app"


def test_boolean_flags() -> None:
    cfg = load_config(["--preload", "-D", "--reuse-port", "--reload", "--no-sendfile"], {})
    assert cfg.preload_app is True
    assert cfg.daemon is True
    assert cfg.reuse_port is True
    assert cfg.reload_enabled is True
    assert cfg.sendfile is False


def test_gunicorn_cmd_args_count_when_forkhorn_cmd_args_is_unset() -> None:
    cfg = load_config([], {"GUNICORN_CMD_ARGS": "--workers 3"})
    assert (cfg.workers, cfg.source("workers")) == (3, "GUNICORN_CMD_ARGS")
    both = {"GUNICORN_CMD_ARGS": "--workers 3", "FORKHORN_CMD_ARGS": "--timeout 9"}
    cfg = load_config([], both)
    assert (cfg.workers, cfg.timeout) == (1, 9)  # ours wins; gunicorn's is not merged


def test_gunicorn_conf_py_is_read_when_there_is_no_forkhorn_conf_py(tmp_path: Path) -> None:
    (tmp_path / "gunicorn.conf.py").write_text("workers = 5\n")
    cfg = load_config([], {})
    assert (cfg.workers, cfg.source("workers")) == (5, "config file ./gunicorn.conf.py")
    (tmp_path / "forkhorn.conf.py").write_text("workers = 6\n")
    assert load_config([], {}).workers == 6


def test_gunicorn_settings_forkhorn_lacks_are_named_not_dropped(tmp_path: Path) -> None:
    """A gunicorn config file may set what forkhorn does not have: it still loads, and
    each such setting given a value of its own is named (the start-up warns)."""
    path = write_config(
        tmp_path / "conf.py",
        "permit_obsolete_folding = True\n"
        "root_path = '/api'\n"
        "forwarder_headers = 'SCRIPT_NAME,PATH_INFO'\n"  # gunicorn's default: asks nothing
        "dirty_workers = '0'\n"  # its default, written as a string
        "forwarder_headers = 'SCRIPT_NAME, PATH_INFO'\n"  # gunicorn reads it as its default
        "dirty_apps = ()\n"
        "http2_cleartext = False\n"
        "def on_dirty_starting(arbiter):\n    pass\n"
        "statsd_host = 'localhost:8125'\n"
        "spew = False\n"  # accepted, at its default
        "my_own_variable = 3\n",  # not a setting of either server
    )
    notes = load_config(["-c", path], {}).no_effect()
    assert notes == [
        "statsd_host is accepted for gunicorn compatibility but not implemented yet: "
        "it has no effect",
        f"permit_obsolete_folding (from config file {path}) is a gunicorn setting forkhorn "
        "does not have: forkhorn's parser stays strict",
        f"root_path (from config file {path}) is a gunicorn setting forkhorn does not have: "
        "it has no effect",
        f"on_dirty_starting (from config file {path}) is a gunicorn setting forkhorn does "
        "not have: it has no effect",
    ]
    assert load_config([], {}).no_effect() == []


def test_precedence_file_env_cli(tmp_path: Path) -> None:
    path = write_config(tmp_path / "conf.py", "workers = 2\ntimeout = 5\nkeepalive = 7\n")
    environ = {"FORKHORN_CMD_ARGS": "--workers 3 --timeout 6"}
    cfg = load_config(["-c", path, "--workers", "4"], environ)
    assert (cfg.workers, cfg.source("workers")) == (4, "command line")
    assert (cfg.timeout, cfg.source("timeout")) == (6, "FORKHORN_CMD_ARGS")
    assert (cfg.keepalive, cfg.source("keepalive")) == (7, f"config file {path}")
    assert cfg.source("backlog") == "default"
    assert cfg.config == path


def test_web_concurrency_replaces_the_default_only(tmp_path: Path) -> None:
    cfg = load_config([], {"WEB_CONCURRENCY": "5"})
    assert (cfg.workers, cfg.source("workers")) == (5, "WEB_CONCURRENCY")
    path = write_config(tmp_path / "conf.py", "workers = 2\n")
    assert load_config(["-c", path], {"WEB_CONCURRENCY": "5"}).workers == 2
    assert load_config(["-w", "3"], {"WEB_CONCURRENCY": "5"}).workers == 3


def test_port_sets_the_default_bind_only_when_none_given(tmp_path: Path) -> None:
    cfg = load_config([], {"PORT": "9001"})
    assert (cfg.bind, cfg.source("bind")) == (["0.0.0.0:9001"], "PORT")
    path = write_config(tmp_path / "conf.py", "bind = '127.0.0.1:7000'\n")
    assert load_config(["-c", path], {"PORT": "9001"}).bind == ["127.0.0.1:7000"]
    assert load_config(["-b", ":7001"], {"PORT": "9001"}).bind == [":7001"]
    # A bad PORT (or WEB_CONCURRENCY) is an error only where its default is used.
    assert load_config(["-b", ":7001"], {"PORT": "notaport"}).bind == [":7001"]
    assert load_config(["-c", path], {"PORT": "x"}).bind == ["127.0.0.1:7000"]
    assert load_config(["-w", "3"], {"WEB_CONCURRENCY": "many"}).workers == 3
    with pytest.raises(ConfigError, match=r"bind = .* \(from PORT\)"):
        load_config([], {"PORT": "notaport"})
    with pytest.raises(ConfigError, match=r"\(from WEB_CONCURRENCY\)"):
        load_config([], {"WEB_CONCURRENCY": "many"})


def test_only_the_given_environ_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WEB_CONCURRENCY", "7")
    monkeypatch.setenv("FORKHORN_CMD_ARGS", "--workers 8")
    assert load_config([], {}).workers == 1


@pytest.mark.parametrize(
    ("argv", "environ", "message"),
    [
        (
            ["--certfile", "c.pem", "--keyfile", "k.pem", "app:app"],
            {},
            "--certfile: TLS is not implemented yet",
        ),
        (["--root-path=/api", "app:app"], {}, "--root-path: gunicorn's root_path setting, "),
        (
            ["--permit-obsolete-folding", "app:app"],
            {},
            "--permit-obsolete-folding: gunicorn's permit_obsolete_folding setting, which "
            "forkhorn does not have (its parser is always strict)",
        ),
        (
            ["app:app"],
            {"GUNICORN_CMD_ARGS": "--http-protocols h2"},
            "--http-protocols (in GUNICORN_CMD_ARGS): gunicorn's http_protocols setting",
        ),
    ],
)
def test_gunicorn_only_flags_are_refused_saying_why(
    argv: list[str], environ: dict[str, str], message: str
) -> None:
    """argparse called them unknown and took the value after one for the APP."""
    with pytest.raises(ConfigError) as info:
        load_config(argv, environ)
    assert str(info.value).startswith(message), str(info.value)


def test_gunicorn_flags_that_ask_for_nothing_harmful_are_warned() -> None:
    """A Datadog command line (statsd and its tags), -R, and the method switches start,
    each said to have no effect, as the same settings in a config file are; the value
    after a flag that takes one is not taken for the APP."""
    cfg = load_config(
        [
            "--statsd-host",
            "localhost:8125",
            "--dogstatsd-tags",
            "env:prod",
            "-R",
            "--permit-unconventional-http-method",
            "--casefold-http-method",
            "app:app",
        ],
        {"GUNICORN_CMD_ARGS": "--dogstatsd-tags=team:web --enable-backlog-metric"},
    )
    assert cfg.wsgi_app == "app:app"
    notes = cfg.no_effect()
    for name, source in [
        ("dogstatsd_tags", "command line"),
        ("enable_stdio_inheritance", "command line"),
        ("dogstatsd_tags", "GUNICORN_CMD_ARGS"),
        ("enable_backlog_metric", "GUNICORN_CMD_ARGS"),
    ]:
        assert (
            f"{name} (from {source}) is a gunicorn setting forkhorn does not have: it has"
            " no effect" in notes
        ), notes
    # A flag's value is not the next option: --check-config stays an option.
    cfg = load_config(["app:app", "--dogstatsd-tags", "--check-config"], {})
    assert cfg.check_config and cfg.wsgi_app == "app:app"
    [method] = [n for n in notes if n.startswith("permit_unconventional_http_method")]
    assert "accepts every method token RFC 9110 allows" in method
    assert "strict" not in method


def test_proxy_protocol_takes_gunicorn_27s_modes_and_the_bare_flag() -> None:
    for argv in (["--proxy-protocol", "off"], ["--proxy-protocol=off"], ["--proxy-protocol=OFF"]):
        cfg = load_config([*argv, "app:app"], {})
        assert (cfg.proxy_protocol, cfg.wsgi_app) == (False, "app:app")
    for argv in (["--proxy-protocol", "v1"], ["--proxy-protocol=auto"], ["--proxy-protocol"]):
        with pytest.raises(ConfigError, match=r"^proxy_protocol \(from command line\): the PROXY"):
            load_config([*argv, "app:app"], {})


def test_bad_value_error_names_value_and_source(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config([], {"FORKHORN_CMD_ARGS": "--workers abc"})
    assert (
        str(info.value) == 'workers = "abc" (from FORKHORN_CMD_ARGS): expected a positive integer'
    )
    assert info.value.exit_code == 2
    path = write_config(tmp_path / "conf.py", "workers = 0\n")
    with pytest.raises(ConfigError, match=rf"^workers = 0 \(from config file {path}\): expected"):
        load_config(["-c", path], {})
    with pytest.raises(ConfigError, match=r'^timeout = "-1" \(from command line\)'):
        load_config(["--timeout=-1"], {})
    with pytest.raises(ConfigError, match=r"^workers = .*\(from WEB_CONCURRENCY\)"):
        load_config([], {"WEB_CONCURRENCY": "many"})


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--bogus"], "unknown option --bogus"),
        (["--timout", "3", "a:app"], "unknown option --timout (did you mean --timeout?)"),
        (["--work", "3"], "ambiguous option: --work could match --workers"),
        (["--access-logformat", "--> %(h)s", "--bogus"], "unknown option --bogus"),
        (["--workers"], "expected one argument"),
        (["a:app", "b:app"], "unrecognized arguments: b:app"),
        (["--log-level", "loud"], "expected one of debug, info"),
    ],
)
def test_command_line_errors_are_one_line(argv: list[str], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(argv, {})
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_env_args_unknown_flag_names_the_variable() -> None:
    with pytest.raises(ConfigError, match=r"--nope \(in FORKHORN_CMD_ARGS\)"):
        load_config([], {"FORKHORN_CMD_ARGS": "--nope"})


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1:8000",
        "localhost:0",
        "[::1]:8000",
        "[::]",
        "example.com",
        ":9000",
        "0.0.0.0",
        "unix:/tmp/a.sock",
        "unix:///tmp/a.sock",
        "fd://3",
        "tcp://127.0.0.1:80",
    ],
)
def test_bind_accepts(address: str) -> None:
    assert load_config(["-b", address], {}).bind == [address]


@pytest.mark.parametrize(
    "address",
    ["::1", "host:", "host:port", "1.2.3.4:65536", "[::1", "[nothex]:80", "unix:", "fd://x", ""],
)
def test_bind_refuses(address: str) -> None:
    with pytest.raises(ConfigError, match=r"^bind = "):
        load_config(["-b", address], {})


def test_bind_refuses_an_address_listed_twice() -> None:
    # Binding it the second time would fail "in use", after retrying for seconds.
    with pytest.raises(ConfigError, match=r"^bind = \"tcp://127.0.0.1:80\" .*: listed twice"):
        load_config(["-b", "127.0.0.1:80", "-b", "tcp://127.0.0.1:80"], {})
    with pytest.raises(ConfigError, match=r"listed twice"):
        load_config(["-b", "unix:/tmp/a.sock", "-b", "unix:///tmp/a.sock"], {})
    # Port 0 asks the kernel for a free port each time.
    assert load_config(["-b", "127.0.0.1:0", "-b", "127.0.0.1:0"], {}).bind == ["127.0.0.1:0"] * 2


def test_parse_bind_forms() -> None:
    assert parse_bind("[::1]:81").host == "::1"
    assert parse_bind("[::1]:81").port == 81
    assert parse_bind("example.com").port == 8000
    assert parse_bind(":81").host == ""
    assert parse_bind("unix:/x").path == "/x"
    assert parse_bind("fd://4").fd == 4


@pytest.mark.parametrize(
    ("raw", "expected"), [("0o22", 0o22), ("0022", 0o22), ("18", 18), ("0", 0), ("0x12", 18)]
)
def test_umask(raw: str, expected: int) -> None:
    assert load_config(["-m", raw], {}).umask == expected


def test_umask_from_file_and_refused(tmp_path: Path) -> None:
    path = write_config(tmp_path / "conf.py", "umask = 0o27\n")
    assert load_config(["-c", path], {}).umask == 0o27
    with pytest.raises(ConfigError, match="umask"):
        load_config(["-m", "0o1000"], {})


@pytest.mark.parametrize(
    "value", ["sync", "gthread", "gevent", "fast", "pkg.mod:Class", "pkg.mod.Class"]
)
def test_worker_class_forms(value: str) -> None:
    assert load_config(["-k", value], {}).worker_class == value


def test_worker_class_refuses_garbage_and_sync_with_threads_is_gthread() -> None:
    with pytest.raises(ConfigError, match="worker_class"):
        load_config(["-k", "not a class"], {})
    assert load_config(["--threads", "4"], {}).worker_class_name == "gthread"
    assert load_config([], {}).worker_class_name == "sync"


def test_limits_and_cross_field_rules(tmp_path: Path) -> None:
    assert load_config(["--limit-request-line", "8190"], {}).limit_request_line == 8190
    assert load_config(["--limit-request-line", "8190"], {}).no_effect() == []
    # Above the maximum: gunicorn caps it silently; forkhorn caps it and says so.
    cfg = load_config(["--limit-request-line", "16384", "--limit-request-fields", "40000"], {})
    assert cfg.no_effect() == [
        "limit_request_line = 16384 (from command line) is above the maximum, 8190, which "
        "is used instead (gunicorn caps it the same way)",
        "limit_request_fields = 40000 (from command line) is above the maximum, 32768, which "
        "is used instead (gunicorn caps it the same way)",
    ]
    with pytest.raises(ConfigError, match="limit_request_line"):
        load_config(["--limit-request-line", "-1"], {})
    assert load_config(["--limit-request-field_size", "100"], {}).limit_request_field_size == 100
    # gunicorn reads 0 as no limit for these two; forkhorn keeps a bound and says so.
    cfg = load_config(["--limit-request-line", "0", "--limit-request-field-size", "0"], {})
    assert cfg.no_effect() == [
        "limit_request_line = 0 (from command line) means no limit to gunicorn; forkhorn "
        "reads it as the maximum, 8190 bytes (longer lines get 414)",
        "limit_request_field_size = 0 (from command line) means no limit to gunicorn; "
        "forkhorn reads it as the default, 8190 bytes (larger fields get 431; set the size "
        "you need instead)",
    ]
    with pytest.raises(ConfigError, match=r"request_timeout.*timeout"):
        load_config(["--request-timeout", "60", "--timeout", "30"], {})
    # A jitter without its limit does nothing: accepted (gunicorn does), and said.
    cfg = load_config(["--max-requests-jitter", "5", "--max-worker-lifetime-jitter", "3"], {})
    assert cfg.no_effect() == [
        "max_requests_jitter = 5 (from command line) has no effect without max_requests",
        "max_worker_lifetime_jitter = 3.0 (from command line) has no effect without "
        "max_worker_lifetime",
    ]
    path = write_config(
        tmp_path / "conf.py", "logconfig = 'x.ini'\nlogconfig_dict = {'version': 1}\n"
    )
    # gunicorn uses the first of logconfig_dict, logconfig_json and logconfig; so does
    # forkhorn, and it says which is not used.
    assert load_config(["-c", path], {}).no_effect() == [
        f"logconfig (from config file {path}) is not used: logconfig_dict (from config "
        f"file {path}) is set too and comes first, as in gunicorn"
    ]


def test_server_header_and_raw_env() -> None:
    assert load_config(["--server-header", ""], {}).server_header == ""
    with pytest.raises(ConfigError, match="server_header"):
        load_config([], {"FORKHORN_CMD_ARGS": "--server-header 'a\x01b'"})
    cfg = load_config(["-e", "A=1", "--env", "B=x=y"], {})
    assert cfg.raw_env == ["A=1", "B=x=y"]
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        load_config(["-e", "NOEQUALS"], {})


def test_forwarded_allow_ips(tmp_path: Path) -> None:
    cfg = load_config(["--forwarded-allow-ips", "10.0.0.0/8, 192.168.1.1"], {})
    assert cfg.forwarded_allow_ips == ["10.0.0.0/8", "192.168.1.1"]
    assert load_config([], {"FORWARDED_ALLOW_IPS": "*"}).forwarded_allow_ips == ["*"]
    with pytest.raises(ConfigError, match="forwarded_allow_ips"):
        load_config(["--forwarded-allow-ips", "not-an-ip"], {})


def test_an_option_value_that_looks_like_an_option_is_a_value() -> None:
    cfg = load_config(["--access-logformat", "--> %(h)s %(r)s", "a:app"], {})
    assert cfg.access_log_format == "--> %(h)s %(r)s"
    assert load_config(["--access-logformat=--x", "-w", "2"], {}).workers == 2


def test_a_misspelt_setting_in_a_config_file_is_pointed_out(tmp_path: Path) -> None:
    """gunicorn ignores ``wokers = 4`` silently; the config still loads here, with a line
    naming the setting it probably meant. The file's own helpers are left alone."""
    path = write_config(
        tmp_path / "conf.py",
        "import os\n"
        "wokers = 4\n"
        "timout = 3\n"
        "bind_addr = '0.0.0.0'\n"
        "port = 8000\n"
        "MAX_WORKERS = 9\n"
        "def post_forks(server, worker):\n    pass\n"
        "def worker_count():\n    return 4\n"
        "def make_app():\n    pass\n"
        "preload = True\n"
        "access_logfile = '-'\n"
        "env = 'production'\n"  # a file's own variables, named like one-word flags
        "name = 'api'\n"
        "pid = 12\n",
    )
    cfg = load_config(["-c", path], {})
    assert cfg.workers == 1
    assert cfg.no_effect() == [
        f"wokers (from config file {path}) is not a setting: did you mean workers?",
        f"timout (from config file {path}) is not a setting: did you mean timeout?",
        f"post_forks (from config file {path}) is not a setting: did you mean post_fork?",
        # A flag's name: the setting behind the flag (not reload, the nearest spelling).
        f"preload (from config file {path}) is not a setting: did you mean preload_app?",
        f"access_logfile (from config file {path}) is not a setting: did you mean accesslog?",
    ]


def test_proxy_protocol_on_is_refused(tmp_path: Path) -> None:
    """Not read yet: on, every request from a front end that sends it would be a 400."""
    with pytest.raises(ConfigError, match=r"proxy_protocol \(from command line\): the PROXY"):
        load_config(["--proxy-protocol"], {})
    conf = tmp_path / "pp.conf.py"
    for value in ("'v2'", "'auto'", "True"):
        conf.write_text(f"proxy_protocol = {value}\n")
        with pytest.raises(ConfigError, match=r"proxy_protocol \(from config file"):
            load_config(["-c", str(conf)], {})
    for value in ("'off'", "False"):
        conf.write_text(f"proxy_protocol = {value}\n")
        assert load_config(["-c", str(conf)], {}).proxy_protocol is False
    conf.write_text("proxy_protocol = 'v3'\n")
    with pytest.raises(ConfigError, match="expected off, v1, v2, auto"):
        load_config(["-c", str(conf)], {})


def test_chdir_is_checked_and_made_absolute(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    assert load_config(["--chdir", "sub"], {}).chdir == str((tmp_path / "sub").resolve())
    with pytest.raises(ConfigError, match="chdir"):
        load_config(["--chdir", "missing"], {})


def test_config_file_gunicorn_style(tmp_path: Path) -> None:
    path = write_config(
        tmp_path / "conf.py",
        "import multiprocessing\n"
        "bind = '0.0.0.0:8080'\n"
        "workers = '3'\n"
        "wsgi_app = 'myapp:app'\n"
        "accesslog = '-'\n"
        "preload_app = True\n"
        "raw_env = ['A=1']\n"
        "UNKNOWN_SETTING = 1\n"
        "not_a_setting = 2\n"
        "def post_fork(server, worker):\n"
        "    pass\n"
        "def on_starting(server):\n"
        "    pass\n",
    )
    cfg = load_config(["-c", path], {})
    assert cfg.bind == ["0.0.0.0:8080"]
    assert cfg.workers == 3
    assert cfg.wsgi_app == "myapp:app"
    assert cfg.accesslog == "-"
    assert cfg.preload_app is True
    assert cfg.raw_env == ["A=1"]
    assert cfg.post_fork.__name__ == "post_fork"
    assert cfg.source("post_fork") == f"config file {path}"
    assert cfg.source("pre_fork") == "default"
    cfg.pre_fork(None, None)  # the default hooks are callable no-ops


def test_default_config_file_is_read_when_present(tmp_path: Path) -> None:
    (tmp_path / "forkhorn.conf.py").write_text("workers = 6\n")
    cfg = load_config([], {})
    assert cfg.workers == 6
    assert cfg.source("workers") == "config file ./forkhorn.conf.py"


def test_config_via_env_args(tmp_path: Path) -> None:
    path = write_config(tmp_path / "conf.py", "workers = 4\n")
    cfg = load_config([], {"FORKHORN_CMD_ARGS": f"-c {path}"})
    assert cfg.workers == 4
    assert cfg.source("config") == "FORKHORN_CMD_ARGS"


def test_python_module_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "fh_conf_module_a.py").write_text("workers = 5\nthreads = 2\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "fh_conf_module_a", raising=False)
    cfg = load_config(["-c", "python:fh_conf_module_a"], {})
    assert (cfg.workers, cfg.threads) == (5, 2)
    assert cfg.source("workers") == "config file python:fh_conf_module_a"
    with pytest.raises(ConfigError, match="config module 'fh_no_such_conf' failed to import"):
        load_config(["-c", "python:fh_no_such_conf"], {})


def test_a_config_imports_from_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As in gunicorn: ``-c python:module`` and a config file importing its project's
    module find them in the working directory, which the console script does not put
    on sys.path."""
    (tmp_path / "fh_conf_cwd_b.py").write_text("workers = 7\n")
    (tmp_path / "fh_conf_sibling_c.py").write_text("WORKERS = 3\n")
    (tmp_path / "importing.conf.py").write_text(
        "from fh_conf_sibling_c import WORKERS\nworkers = WORKERS\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    for name in ("fh_conf_cwd_b", "fh_conf_sibling_c"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    assert load_config(["-c", "python:fh_conf_cwd_b"], {}).workers == 7
    assert load_config(["-c", "importing.conf.py"], {}).workers == 3


def test_config_file_errors_are_one_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^config file /nope\.py not found$"):
        load_config(["-c", "/nope.py"], {})
    path = write_config(tmp_path / "broken.py", "workers = 2\nx = undefined_name\n")
    with pytest.raises(ConfigError) as info:
        load_config(["-c", path], {})
    assert str(info.value) == (
        f"config file {path} failed: NameError: name 'undefined_name' is not defined (line 2)"
    )
    assert isinstance(info.value.__cause__, NameError)
    path = write_config(tmp_path / "syntax.py", "workers = (\n")
    with pytest.raises(ConfigError, match=rf"^config file {path} failed: SyntaxError: ") as info:
        load_config(["-c", path], {})
    assert "\n" not in str(info.value)


def test_a_gunicorn_tls_config_stops_the_start(tmp_path: Path) -> None:
    """gunicorn serves HTTPS from certfile/keyfile; forkhorn has no TLS yet and must not
    quietly serve plain HTTP instead."""
    path = write_config(
        tmp_path / "gunicorn.conf.py", 'certfile = "/etc/ssl/site.pem"\nkeyfile = "k.pem"\n'
    )
    with pytest.raises(ConfigError, match=r"^certfile \(from config file .*\): TLS is not") as info:
        load_config(["-c", path], {})
    assert "\n" not in str(info.value)
    # Empty values (a template's placeholders) ask for nothing.
    path = write_config(tmp_path / "plain.py", "certfile = None\nkeyfile = ''\n")
    assert load_config(["-c", path], {}).workers >= 1


def test_ssl_context_and_ca_certs_without_a_certificate_are_warned(tmp_path: Path) -> None:
    """gunicorn uses them only with certfile and keyfile: a template that defines the hook
    and no certificate serves plain HTTP there, so it starts here too, with a warning."""
    hook = "def ssl_context(config, factory):\n    return factory()\n"
    path = write_config(tmp_path / "template.py", hook + 'ca_certs = "/etc/ssl/ca.pem"\n')
    notes = load_config(["-c", path], {}).no_effect()
    assert [line.split(" (from")[0] for line in notes] == ["ssl_context", "ca_certs"], notes
    assert all("has no effect: gunicorn uses it only with certfile" in n for n in notes)
    # With a certificate, HTTPS is asked for: refused as before.
    path = write_config(tmp_path / "tls.py", hook + 'certfile = "c.pem"\nkeyfile = "k.pem"\n')
    with pytest.raises(ConfigError, match=r"^certfile \(from config file .*\): TLS is not"):
        load_config(["-c", path], {})


@pytest.mark.parametrize(
    ("source", "ok"),
    [
        ("def post_fork(server, worker): pass", True),
        ("def post_fork(server): pass", False),
        ("def post_fork(server, worker, extra): pass", False),
        ("def post_fork(server, worker, extra=None): pass", True),
        ("def post_fork(*args): pass", True),
        ("post_fork = lambda s, w: None", True),
        ("post_fork = 3", False),
        ("post_fork = 'os.path.join'", True),
        ("post_fork = 'os.path.nope'", False),
    ],
)
def test_hook_arity_is_checked_at_load(tmp_path: Path, source: str, ok: bool) -> None:
    path = write_config(tmp_path / "conf.py", source + "\n")
    if ok:
        assert callable(load_config(["-c", path], {}).post_fork)
    else:
        with pytest.raises(ConfigError, match=r"^post_fork = .* \(from config file .*\): "):
            load_config(["-c", path], {})


def test_hook_arities_match_gunicorn() -> None:
    expected = {
        "on_starting": 1,
        "on_reload": 1,
        "when_ready": 1,
        "pre_fork": 2,
        "post_fork": 2,
        "post_worker_init": 1,
        "worker_int": 1,
        "worker_abort": 1,
        "pre_exec": 1,
        "pre_request": 2,
        "post_request": 4,
        "child_exit": 2,
        "worker_exit": 2,
        "nworkers_changed": 3,
        "on_exit": 1,
    }
    hooks = {name: s.arity for name, s in SETTINGS.items() if s.arity is not None}
    assert hooks == expected


def test_reload_rereads_the_config_file(tmp_path: Path) -> None:
    conf = tmp_path / "conf.py"
    conf.write_text("workers = 2\n")
    cfg = load_config(["-c", str(conf), "--timeout", "9"], {"PORT": "9100"})
    conf.write_text("workers = 5\ntimeout = 1\n")
    fresh = cfg.reload()
    assert isinstance(fresh, Config)
    assert fresh.workers == 5
    assert fresh.timeout == 9  # the command line still wins
    assert fresh.bind == ["0.0.0.0:9100"]  # the same environ
    assert cfg.workers == 2  # the old config is untouched


def test_print_config_text_lists_every_setting_with_source(tmp_path: Path) -> None:
    path = write_config(tmp_path / "conf.py", "workers = 2\n")
    text = load_config(["-c", path, "app:x"], {}).print_config_text()
    lines = text.splitlines()
    assert len(lines) == len(SETTINGS)
    assert any(
        line.startswith("workers") and f"= 2  # config file {path}" in line for line in lines
    )
    assert any(line.startswith("wsgi_app") and "# command line" in line for line in lines)


def test_print_config_survives_a_repr_that_raises(tmp_path: Path) -> None:
    """--print-config and --log-level debug's dump show every value; a config file's own
    object whose repr() raises must not stop them (or the start)."""
    path = write_config(
        tmp_path / "conf.py",
        "class Hook:\n"
        "    def __call__(self, worker, req):\n        pass\n"
        "    def __repr__(self):\n        raise RuntimeError('no repr')\n"
        "class Env(str):\n"
        "    def __repr__(self):\n        raise RuntimeError('no repr')\n"
        "pre_request = Hook()\n"
        "proc_name = Env('web')\n",
    )
    text = load_config(["-c", path, "app:x"], {}).print_config_text()
    assert "pre_request" in text and "Hook>" in text
    assert "repr() failed: no repr" in text


def test_config_package_imports_nothing_else_from_forkhorn() -> None:
    import forkhorn.config

    root = Path(forkhorn.config.__file__).parent
    for source in root.rglob("*.py"):
        tree = ast.parse(source.read_text())
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                if name.startswith("forkhorn"):
                    assert name.startswith(("forkhorn.config", "forkhorn.errors")), (source, name)


def test_gunicorns_config_attributes_for_hooks() -> None:
    """What gunicorn's hooks and config files read from ``server.cfg``."""
    cfg = load_config(
        ["-b", "127.0.0.1:9000", "-b", "unix:/tmp/x.sock", "-e", "A=1=2", "-w", "3",
         "--threads", "4", "app:app"],
        {},
    )  # fmt: skip
    assert cfg.settings["workers"].value == 3
    assert cfg.settings["workers"].get() == 3
    assert cfg.settings["bind"].name == "bind"
    assert set(cfg.settings) == set(SETTINGS)
    assert cfg.address == [("127.0.0.1", 9000), "/tmp/x.sock"]
    assert cfg.env == {"A": "1=2"}
    assert cfg.worker_class_str == "gthread"  # sync with threads, gunicorn's rule
    assert cfg.is_ssl is False
