"""Worker classes, looked up by the name users pass to ``-k`` / ``--worker-class``.

Holds ``load_worker_class(name)`` and ``effective_worker_class(name, threads)``.  The base
class lives in ``base.py``; each built-in worker has one module named as users type it
(``sync.py``, ``gthread.py``, ``gevent.py``, ``eventlet.py``, ``fast.py``).

Rules it keeps:

1. Worker modules are imported lazily, only the one asked for: importing ``gevent.py``
   monkey-patches the process, so nothing here may import it by accident.
2. A worker that needs an extra that is not installed is one ``ConfigError`` line naming
   the extra to install (``pip install 'forkhorn[gevent]'``), not an ImportError traceback.
3. Custom workers (``pkg.mod:Class`` or ``pkg.mod.Class``) must subclass ``Worker``.
4. ``--threads N`` (N > 1) with the default ``sync`` class means ``gthread``, as in
   gunicorn; the master logs the switch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from forkhorn.errors import ConfigError

if TYPE_CHECKING:
    from forkhorn.workers.base import Worker

__all__ = [
    "BUILTIN_WORKERS",
    "effective_worker_class",
    "gunicorn_methods_warning",
    "load_worker_class",
]

#: gunicorn's per-request worker methods. forkhorn's classes have none (the shared HTTP
#: core and request cycle do that work), so a class ported from gunicorn that overrides
#: one would load and serve with the override never called.
_GUNICORN_ONLY_METHODS = ("handle", "handle_request", "handle_error", "accept", "run_for_one")

# name -> (module, class)
BUILTIN_WORKERS: dict[str, tuple[str, str]] = {
    "sync": ("forkhorn.workers.sync", "SyncWorker"),
    "gthread": ("forkhorn.workers.gthread", "ThreadWorker"),
    "gevent": ("forkhorn.workers.gevent", "GeventWorker"),
    "eventlet": ("forkhorn.workers.eventlet", "EventletWorker"),
    "fast": ("forkhorn.workers.fast", "FastWorker"),
}

# Third-party packages a worker module may need -> the extra that installs them.
_EXTRAS: dict[str, str] = {
    "gevent": "gevent",
    "greenlet": "gevent",
    "eventlet": "eventlet",
    "uvloop": "fast",
    "setproctitle": "setproctitle",
}

# gunicorn accepts "gunicorn.workers.sync.SyncWorker" and "egg:gunicorn#sync"; a
# migrating config file may name the class that way.
_GUNICORN_ALIASES: dict[str, str] = {
    "gunicorn.workers.sync.SyncWorker": "sync",
    "gunicorn.workers.gthread.ThreadWorker": "gthread",
    "gunicorn.workers.ggevent.GeventWorker": "gevent",
    "gunicorn.workers.geventlet.EventletWorker": "eventlet",
}


#: Worker classes of other projects that a gunicorn config names, by module prefix: each
#: gets one line that says what to do instead, not an import error about gunicorn.
_FOREIGN_WORKERS: dict[str, str] = {
    "uvicorn": (
        "is uvicorn's worker for ASGI apps, and forkhorn serves WSGI apps only (ASGI is "
        "planned): run an ASGI app with uvicorn itself, or a WSGI app with -k fast"
    ),
    "meinheld": (
        "is meinheld's worker; forkhorn's own -k fast replaces it (an event loop that "
        "calls the app inline, as meinheld's does)"
    ),
    "gunicorn": "is one of gunicorn's classes that forkhorn does not have",
}


def gunicorn_methods_warning(name: str, cls: type) -> str:
    """The warning for a custom worker class that defines gunicorn's per-request methods,
    which forkhorn never calls ("" when it defines none): the master logs it and
    ``--check-config`` prints it."""
    found: set[str] = set()
    for base in cls.__mro__:
        if base.__module__.startswith("forkhorn."):
            break
        found.update(method for method in _GUNICORN_ONLY_METHODS if method in vars(base))
    if not found:
        return ""
    return (
        f"Worker class {name} defines {', '.join(sorted(found))}, gunicorn's per-request "
        "method(s), which forkhorn never calls: wrap the app in load_wsgi() or use the "
        "pre_request and post_request hooks instead (docs/extending.md)"
    )


def effective_worker_class(name: str, threads: int) -> str:
    """The class name to use: ``sync`` with ``threads > 1`` becomes ``gthread`` (rule 4)."""
    if name == "sync" and threads > 1:
        return "gthread"
    return name


def _split(name: str) -> tuple[str, str]:
    if ":" in name:
        module, _, attr = name.partition(":")
    else:
        module, _, attr = name.rpartition(".")
    if not module or not attr:
        raise ConfigError(
            f"worker_class {name!r}: expected one of {', '.join(BUILTIN_WORKERS)} "
            "or a dotted path such as 'pkg.mod:MyWorker'"
        )
    return module, attr


def _import_failure(name: str, module_name: str, builtin: bool, exc: Exception) -> ConfigError:
    """The one line for a worker class module that would not import."""
    if isinstance(exc, ImportError):
        missing = (exc.name or "").split(".")[0]
        if missing in _EXTRAS:
            return ConfigError(
                f"worker_class {name!r} needs {missing}, which is not installed: "
                f"pip install 'forkhorn[{_EXTRAS[missing]}]'"
            )
        if builtin and exc.name == module_name:
            return ConfigError(f"worker_class {name!r} is not available in this build")
        if exc.name and (module_name == exc.name or module_name.startswith(exc.name + ".")):
            return ConfigError(f"worker_class {name!r}: cannot import {module_name}: {exc}")
    from forkhorn.wsgi.loader import where_raised

    # The module itself fails, or its own import of something else: say what and where.
    return ConfigError(
        f"worker_class {name!r}: importing {module_name} raised "
        f"{type(exc).__name__}: {exc}{where_raised(exc)}"
    )


def load_worker_class(name: str) -> type[Worker]:
    """Import and return the worker class for ``name``.  Raises ``ConfigError`` (one line).

    Runs in: master, at start-up and on HUP (before forking, so the class is shared).
    """
    from forkhorn.workers.base import Worker

    key = name.strip()
    if key.startswith("egg:gunicorn#"):
        key = key[len("egg:gunicorn#") :]
    # Another project's entry point (meinheld's docs: egg:meinheld#gunicorn_worker).
    entry_point = key.startswith("egg:") and "#" in key
    key = _GUNICORN_ALIASES.get(key, key)
    builtin = key.lower() in BUILTIN_WORKERS
    if not builtin:
        if entry_point:
            project = key[len("egg:") :].partition("#")[0]
        else:
            project = key.partition(":")[0].split(".")[0]
        advice = _FOREIGN_WORKERS.get("uvicorn" if project == "uvicorn_worker" else project)
        if advice is not None:
            raise ConfigError(
                f"worker_class {name!r} {advice}; forkhorn's classes: {', '.join(BUILTIN_WORKERS)}"
            )
        if entry_point:
            raise ConfigError(
                f"worker_class {name!r}: forkhorn reads no entry points but gunicorn's "
                "(egg:gunicorn#sync); name the class by its path, as in 'pkg.mod:MyWorker'"
            )
    if key.lower() in ("asgi", "uvicorn"):  # gunicorn 27's built-in ASGI class, uvicorn's
        raise ConfigError(
            f"worker_class {name!r} names an ASGI worker, and forkhorn serves WSGI apps only "
            "(ASGI is planned): run an ASGI app with uvicorn, or a WSGI app with -k fast; "
            f"forkhorn's classes: {', '.join(BUILTIN_WORKERS)}"
        )
    module_name, attr = BUILTIN_WORKERS[key.lower()] if builtin else _split(key)
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise _import_failure(name, module_name, builtin, exc) from exc
    cls = getattr(module, attr, None)
    if cls is None:
        raise ConfigError(f"worker_class {name!r}: {module_name} has no attribute {attr!r}")
    if not isinstance(cls, type) or not issubclass(cls, Worker):
        raise ConfigError(
            f"worker_class {name!r} is not a subclass of forkhorn.workers.base.Worker"
        )
    return cls
