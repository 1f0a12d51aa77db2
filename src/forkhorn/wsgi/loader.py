"""Load the WSGI application named by an app URI.

Forms accepted (gunicorn's)::

    module              the ``application`` attribute of ``module``
    pkg.mod:app         an attribute
    pkg.mod:obj.attr    an attribute path
    pkg.mod:make_app()  a factory call; arguments must be Python literals
    pkg.mod:make_app("x", debug=True)

Rules kept here:
- Every failure is an ``AppImportError`` whose ``str()`` is one line, and the failures an
  operator must tell apart say so: the module itself is missing (a wrong name or path), an
  exception was raised inside the app's own import (a bug or a missing dependency, with
  the file and line), a missing attribute, a factory that failed, and an object that is not
  callable. The original exception, with its traceback, stays on ``__cause__`` for the
  debug log.
- The expression after ``:`` is parsed with ``ast`` and never evaluated as code: only
  names, attribute access and one call with literal arguments.

``AppHandle`` is what hooks written for gunicorn reach as ``server.app`` and
``worker.app`` (gunicorn's application object): the config and the app, loaded on first
use.

Runs in: the worker after fork (or the master with ``--preload`` / ``--check-config``, or
when a master hook asks ``server.app.wsgi()``).
"""

from __future__ import annotations

import ast
import importlib
import inspect
import os
import site
import traceback
from collections.abc import Callable
from typing import Any

from forkhorn.errors import AppImportError, WorkerExit

DEFAULT_ATTRIBUTE = "application"


def load_app(uri: str) -> Callable[..., Any]:
    """Import and return the WSGI callable named by ``uri``; raise AppImportError."""
    module_name, expression = _split(uri)
    module = _import_module(module_name)
    target, call = _parse_expression(expression, uri)
    obj = _resolve(module, module_name, target)
    if call is not None:
        args, kwargs = call
        try:
            obj = obj(*args, **kwargs)
        except Exception as exc:
            raise AppImportError(
                f"Failed to call {expression!r} in {module_name!r}: "
                f"{type(exc).__name__}: {exc}{where_raised(exc)}"
            ) from exc
        if not callable(obj):
            raise AppImportError(
                f"Application object returned by {uri!r} must be callable, got {type(obj).__name__}"
            )
    elif not callable(obj):
        raise AppImportError(
            f"Application object {uri!r} must be callable, got {type(obj).__name__}"
        )
    if _is_asgi(obj):
        # It would load, pass the check and answer every request with a 500 and a
        # TypeError traceback: say what it is instead (FastAPI, Starlette, Quart, Django's
        # ASGIHandler are all async callables).
        raise AppImportError(
            f"Application object {uri!r} is an ASGI app ({type(obj).__name__}, an async "
            "callable); forkhorn serves WSGI apps only for now. Serve its WSGI side (Django's "
            "wsgi.py, Flask), or wrap it with a2wsgi's ASGIMiddleware"
        )
    app: Callable[..., Any] = obj
    return app


def _is_asgi(obj: object) -> bool:
    """An ``async def`` app, or an object whose ``__call__`` is one: never WSGI."""
    if inspect.iscoroutinefunction(obj):
        return True
    if inspect.isfunction(obj) or inspect.ismethod(obj) or inspect.isclass(obj):
        return False
    # The __call__ an instance would run: the first class in the MRO that defines one.
    for base in type(obj).__mro__:
        if "__call__" in vars(base):
            return inspect.iscoroutinefunction(vars(base)["__call__"])
    return False


class AppHandle:
    """``server.app`` / ``worker.app`` for hooks written for gunicorn: its application
    object's ``cfg``, ``callable`` (the app, None until loaded) and ``wsgi()`` (the app,
    loaded on first use). Loaded in the master by a hook, the app is then the workers'
    too, as in gunicorn (``server.app.wsgi()`` in ``on_starting`` preloads it)."""

    __slots__ = ("_owner",)

    def __init__(self, owner: Any) -> None:
        self._owner = owner  # the Arbiter or a Worker: has cfg and wsgi

    @property
    def cfg(self) -> Any:
        return self._owner.cfg

    @property
    def callable(self) -> Callable[..., Any] | None:
        app: Callable[..., Any] | None = self._owner.wsgi
        return app

    def wsgi(self) -> Callable[..., Any]:
        app: Callable[..., Any] | None = self._owner.wsgi
        if app is None:
            owner = self._owner
            app = load_app(getattr(owner, "app_uri", None) or owner.cfg.wsgi_app)
            owner.wsgi = app
        return app


def _split(uri: str) -> tuple[str, str]:
    text = uri.strip()
    if text.startswith(("paste:", "config:")) and text.partition("#")[0].endswith(
        (".ini", ".cfg")
    ):  # paste:development.ini, paste:site.ini#main (a named app in the file)
        # gunicorn's PasteDeploy form: without this, "no module named 'paste'" sent users
        # looking for a package to install.
        raise AppImportError(
            f"App {uri!r} is a PasteDeploy config (gunicorn's paste: form), which forkhorn "
            "does not load: name the WSGI app as MODULE:ATTRIBUTE (a small module that calls "
            "paste.deploy.loadapp works)"
        )
    module_name, _, expression = text.partition(":")
    module_name, expression = module_name.strip(), expression.strip()
    if not module_name or not all(part.isidentifier() for part in module_name.split(".")):
        raise AppImportError(
            f"Invalid app {uri!r}: expected MODULE or MODULE:ATTRIBUTE, e.g. 'myapp.wsgi:app'"
        )
    return module_name, expression or DEFAULT_ATTRIBUTE


def _import_module(module_name: str) -> Any:
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        # Missing when the name not found is the module itself or one of its parents;
        # any other missing name was imported *by* the app (a missing dependency).
        parts = module_name.split(".")
        own_names = {".".join(parts[: index + 1]) for index in range(len(parts))}
        if exc.name in own_names:
            cwd = os.getcwd()
            # A worker that dropped to --user may not be allowed to look in the directory
            # at all: then "not found" is the wrong lead.
            access = (
                ""
                if os.access(cwd, os.R_OK | os.X_OK)
                else f", which this process (uid {os.getuid()}) is not allowed to read"
            )
            raise AppImportError(
                f"App module {module_name!r} not found: no module named {exc.name!r} on "
                f"the Python path (working directory {cwd}{access})"
            ) from exc
        raise _import_failed(module_name, exc) from exc
    except WorkerExit:
        # The worker's own stop (QUIT, or the stack dump of an import that hung past the
        # timeout) landed in the import: not the app's failure to load.
        raise
    except (Exception, SystemExit) as exc:
        raise _import_failed(module_name, exc) from exc


def _import_failed(module_name: str, exc: BaseException) -> AppImportError:
    where = where_raised(exc)
    return AppImportError(
        f"Failed to import {module_name!r}: {type(exc).__name__}: {exc}{where}",
        f"Failed to import {module_name!r}: {_brief(exc)}{where}",
    )


#: In the brief form, the exception's own words are cut to this, so that the file and line
#: after them stay in the master's one line (a worker passes it a reason of 200 bytes).
_BRIEF_CHARS = 100


def _brief(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= _BRIEF_CHARS else text[: _BRIEF_CHARS - 3] + "..."


def where_raised(exc: BaseException) -> str:
    """`` (file.py, line N)``: the innermost frame of the app's own code, the line to fix,
    and where the error was raised when that is deeper, in the standard library or an
    installed package (``json/decoder.py`` for a bad ``json.loads`` at import)."""
    if isinstance(exc, SyntaxError):
        return ""  # its message already names the file and line
    frames = [
        frame
        for frame in traceback.extract_tb(exc.__traceback__)
        if not frame.filename.startswith("<frozen ") and frame.filename != __file__
    ]
    if not frames:
        return ""
    library = _library_dirs()
    own = [frame for frame in frames if not frame.filename.startswith(library)]
    innermost = frames[-1]
    if not own or own[-1] is innermost:
        return f" ({_shown(innermost, library)})"
    return f" ({_shown(own[-1], library)}; raised in {_shown(innermost, library)})"


def _library_dirs() -> tuple[str, ...]:
    """The standard library's and the installed packages' directories."""
    # Not sysconfig: a worker that dropped to --user may not be able to import anything
    # new from the interpreter's directory, and site is imported at every start.
    found = {os.path.join(os.path.dirname(os.__file__), "")}
    found.update(os.path.join(path, "") for path in site.getsitepackages())
    found.add(os.path.join(site.getusersitepackages(), ""))
    return tuple(sorted(found, key=len, reverse=True))  # the longest match first


def _shown(frame: traceback.FrameSummary, library: tuple[str, ...]) -> str:
    """The frame's file as the reader knows it: relative to the working directory, or for
    the standard library and packages, to their directory (``json/decoder.py``)."""
    filename = frame.filename
    for directory in library:
        if filename.startswith(directory):
            return f"{filename[len(directory) :]}, line {frame.lineno}"
    try:
        relative = os.path.relpath(filename)
        if not relative.startswith(".."):
            filename = relative
    except ValueError:
        pass
    return f"{filename}, line {frame.lineno}"


Call = tuple[list[Any], dict[str, Any]]


def _parse_expression(expression: str, uri: str) -> tuple[list[str], Call | None]:
    """``obj.attr`` -> (["obj", "attr"], None); ``f(1, x=2)`` -> (["f"], ([1], {"x": 2}))."""
    invalid = AppImportError(
        f"Failed to parse {expression!r} in {uri!r} as an attribute name or a function call"
    )
    try:
        node = ast.parse(expression, mode="eval").body
    except SyntaxError:
        raise invalid from None
    call: Call | None = None
    if isinstance(node, ast.Call):
        try:
            args = [ast.literal_eval(arg) for arg in node.args]
            kwargs = {}
            for keyword in node.keywords:
                if keyword.arg is None:  # **mapping
                    raise ValueError("** arguments are not literals")
                kwargs[keyword.arg] = ast.literal_eval(keyword.value)
        except ValueError:
            raise AppImportError(
                f"Failed to parse arguments of {expression!r} in {uri!r}: "
                "only Python literals are allowed"
            ) from None
        call = (args, kwargs)
        node = node.func
    names: list[str] = []
    while isinstance(node, ast.Attribute):
        names.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        raise invalid
    names.append(node.id)
    return names[::-1], call


def _resolve(module: Any, module_name: str, names: list[str]) -> Any:
    obj = module
    for index, name in enumerate(names):
        try:
            obj = getattr(obj, name)
        except AttributeError as exc:
            raise AppImportError(
                f"Failed to find attribute {'.'.join(names[: index + 1])!r} in {module_name!r}"
            ) from exc
        except Exception as exc:
            raise AppImportError(
                f"Failed to get attribute {'.'.join(names[: index + 1])!r} in "
                f"{module_name!r}: {type(exc).__name__}: {exc}"
            ) from exc
    return obj
