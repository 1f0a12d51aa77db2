"""The app loader: the URI forms, and one clear line for each way loading can fail."""

from __future__ import annotations

import itertools
import re
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from forkhorn.errors import AppImportError
from forkhorn.wsgi.loader import load_app

_counter = itertools.count()


@pytest.fixture
def make_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str], str]]:
    """Write a uniquely named module into a directory on sys.path; return its name."""
    monkeypatch.syspath_prepend(str(tmp_path))
    created: list[str] = []

    def make(source: str) -> str:
        name = f"fh_loader_app_{next(_counter)}"
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
        created.append(name)
        return name

    yield make
    for name in created:
        sys.modules.pop(name, None)


HELLO = """
def app(environ, start_response):
    start_response("200 OK", [])
    return [b"hi"]

application = app

class Holder:
    app = staticmethod(app)

holder = Holder()

def create_app(greeting="hi", *, debug=False):
    def inner(environ, start_response):
        start_response("200 OK", [])
        return [greeting.encode(), str(debug).encode()]
    return inner

def broken_factory():
    raise RuntimeError("no database")

def returns_none():
    return None

not_callable = 42
"""


def call(app: Callable[..., object]) -> list[bytes]:
    result = app({}, lambda status, headers: None)
    assert isinstance(result, list)
    return result


@pytest.mark.parametrize(
    ("expression", "body"),
    [
        (":app", [b"hi"]),
        ("", [b"hi"]),  # defaults to `application`
        (":holder.app", [b"hi"]),
        (":create_app()", [b"hi", b"False"]),
        (":create_app('yo', debug=True)", [b"yo", b"True"]),
    ],
)
def test_uri_forms(make_module: Callable[[str], str], expression: str, body: list[bytes]) -> None:
    name = make_module(HELLO)
    assert call(load_app(name + expression)) == body


def test_package_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    package = tmp_path / "fh_loader_pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "web.py").write_text(HELLO)
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        assert call(load_app("fh_loader_pkg.web:app")) == [b"hi"]
        with pytest.raises(AppImportError, match=r"^App module 'fh_loader_pkg\.nope' not found"):
            load_app("fh_loader_pkg.nope:app")
    finally:
        for key in [key for key in sys.modules if key.startswith("fh_loader_pkg")]:
            del sys.modules[key]


def test_missing_module_is_told_apart() -> None:
    with pytest.raises(AppImportError) as info:
        load_app("fh_definitely_missing_module:app")
    message = str(info.value)
    assert message.startswith("App module 'fh_definitely_missing_module' not found")
    assert info.value.exit_code == 4


def test_a_working_directory_the_worker_cannot_read_is_named(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A worker dropped to --user that may not read the app's directory: "not found"
    alone sent the operator looking at the Python path."""
    monkeypatch.setattr("forkhorn.wsgi.loader.os.access", lambda path, mode: False)
    with pytest.raises(AppImportError, match=r"is not allowed to read\)$"):
        load_app("fh_no_such_module_here:app")


def test_exception_inside_the_app_import(make_module: Callable[[str], str]) -> None:
    name = make_module("x = 1\ny = undefined_thing\n")
    with pytest.raises(AppImportError) as info:
        load_app(f"{name}:app")
    message = str(info.value)
    assert message.startswith(
        f"Failed to import '{name}': NameError: name 'undefined_thing' is not defined"
    )
    assert "line 2" in message
    assert "\n" not in message
    cause = info.value.__cause__
    assert isinstance(cause, NameError)
    assert cause.__traceback__ is not None


def test_an_error_raised_in_the_standard_library_names_the_apps_line(
    make_module: Callable[[str], str],
) -> None:
    """The line to fix is the app's, not ipaddress.py's: both are named, the library's
    relative to its directory, and a long message is cut so that they fit the master's
    one line (a worker's reason is at most 200 bytes)."""
    name = make_module("import ipaddress\nIP = ipaddress.ip_address('x' * 300)\napp = None\n")
    with pytest.raises(AppImportError) as info:
        load_app(f"{name}:app")
    # In full for --preload and --check-config; cut to fit where a worker tells the master.
    assert str(info.value).endswith(
        f"' does not appear to be an IPv4 or IPv6 address ({info.value.brief.rpartition(' (')[2]}"
    )
    message = info.value.brief
    assert message.startswith(f"Failed to import '{name}': ValueError: 'xxx")
    assert re.search(
        rf"\.\.\. \((\S+/)?{name}\.py, line 2; raised in ipaddress\.py, line \d+\)$", message
    ), message
    # Cut at 100 characters: the exception's own words, before the location.
    assert len(message.partition(": ")[2].partition("... (")[0]) == 97, message


def test_missing_dependency_is_an_import_failure_not_a_missing_app(
    make_module: Callable[[str], str],
) -> None:
    name = make_module("import fh_missing_dependency_xyz\n")
    with pytest.raises(AppImportError, match=rf"^Failed to import '{name}': ModuleNotFoundError"):
        load_app(name)


def test_syntax_error_in_app(make_module: Callable[[str], str]) -> None:
    name = make_module("def app(:\n")
    with pytest.raises(AppImportError, match=rf"^Failed to import '{name}': SyntaxError: "):
        load_app(name)


def test_missing_attribute(make_module: Callable[[str], str]) -> None:
    name = make_module(HELLO)
    with pytest.raises(AppImportError, match=rf"^Failed to find attribute 'nope' in '{name}'$"):
        load_app(f"{name}:nope")
    with pytest.raises(AppImportError, match=r"attribute 'holder\.nope'"):
        load_app(f"{name}:holder.nope")
    module_without_application = make_module("app = None\n")
    with pytest.raises(AppImportError, match="attribute 'application'"):
        load_app(module_without_application)


def test_not_callable(make_module: Callable[[str], str]) -> None:
    name = make_module(HELLO)
    with pytest.raises(AppImportError, match=r"must be callable, got int$"):
        load_app(f"{name}:not_callable")
    with pytest.raises(AppImportError, match=r"returned by .* must be callable, got NoneType$"):
        load_app(f"{name}:returns_none()")


ASGI = """
async def asgi_app(scope, receive, send):
    pass

class Starlettish:
    async def __call__(self, scope, receive, send):
        pass

class Wsgiish:
    def __call__(self, environ, start_response):
        start_response("200 OK", [])
        return [b"sync"]

starlettish = Starlettish()
wsgiish = Wsgiish()

def make_asgi():
    return Starlettish()
"""


@pytest.mark.parametrize("expression", ["asgi_app", "starlettish", "make_asgi()"])
def test_an_asgi_app_is_named_as_one(make_module: Callable[[str], str], expression: str) -> None:
    """It loaded, passed --check-config and answered every request with a 500."""
    name = make_module(ASGI)
    with pytest.raises(AppImportError, match=r"is an ASGI app \(\w+, an async callable\)"):
        load_app(f"{name}:{expression}")


def test_a_callable_object_and_a_class_are_not_taken_for_asgi(
    make_module: Callable[[str], str],
) -> None:
    name = make_module(ASGI)
    assert call(load_app(f"{name}:wsgiish")) == [b"sync"]
    assert isinstance(load_app(f"{name}:Wsgiish"), type)  # a class is a callable, as in gunicorn


@pytest.mark.parametrize("uri", ["paste:development.ini", "config:site.ini", "paste:x.ini#main"])
def test_a_paste_deploy_spec_is_named_as_one(uri: str) -> None:
    with pytest.raises(AppImportError, match=r"is a PasteDeploy config .* does not load"):
        load_app(uri)


def test_factory_failure(make_module: Callable[[str], str]) -> None:
    name = make_module(HELLO)
    with pytest.raises(AppImportError) as info:
        load_app(f"{name}:broken_factory()")
    assert str(info.value).startswith(
        f"Failed to call 'broken_factory()' in '{name}': RuntimeError: no database"
    )
    with pytest.raises(AppImportError, match="Failed to call"):
        load_app(f"{name}:create_app(1, 2, 3)")


@pytest.mark.parametrize(
    "uri",
    [
        "",
        ":app",
        "bad-name:app",
        "mod:app(",
        "mod:1 + 2",
        "mod:app()()",
        "mod:app[0]",
    ],
)
def test_invalid_uris(make_module: Callable[[str], str], uri: str) -> None:
    name = make_module(HELLO)
    with pytest.raises(AppImportError):
        load_app(uri.replace("mod", name))


def test_non_literal_arguments_are_refused(make_module: Callable[[str], str]) -> None:
    name = make_module(HELLO)
    with pytest.raises(AppImportError, match="only Python literals"):
        load_app(f"{name}:create_app(__import__('os'))")
