"""Server hooks: gunicorn's names and call signatures, arity checked when the config loads.

A hook is set in a config file (``def post_fork(server, worker): ...``) or as a dotted
path string. The defaults do nothing. ``server`` is the arbiter, ``worker`` a worker
object, ``req`` the parsed request; which process calls each hook is in its doc.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

from forkhorn.config.converters import hook
from forkhorn.config.setting import Setting


def _ignore(*args: Any) -> None:
    """The default hook: do nothing."""


def log_request(worker: Any, req: Any) -> None:
    """The default ``pre_request``, gunicorn's: the request's method and path at the debug
    level. The workers call it only when the error log shows debug lines."""
    worker.log.debug("%s %s", req.method, req.path)


def _hook(
    arity: int,
    signature: str,
    doc: str,
    default: Callable[..., Any] = _ignore,
    default_body: str = "pass",
) -> Setting[Callable[..., Any]]:
    return Setting(
        default=default,
        convert=hook(arity),
        arity=arity,
        default_doc=f"def {signature}: {default_body}",
        doc=doc,
    )


class HookOptions:
    SECTION: ClassVar[str] = "Server hooks"
    __slots__ = ()

    on_starting = _hook(1, "on_starting(server)", "Called in the master before it binds.")
    on_reload = _hook(1, "on_reload(server)", "Called in the master on a reload (HUP).")
    when_ready = _hook(
        1,
        "when_ready(server)",
        "Called in the master once it listens, before it forks the first workers.",
    )
    pre_fork = _hook(2, "pre_fork(server, worker)", "Called in the master just before a fork.")
    post_fork = _hook(2, "post_fork(server, worker)", "Called in a new worker just after the fork.")
    post_worker_init = _hook(
        1, "post_worker_init(worker)", "Called in a worker once it has loaded the app."
    )
    worker_int = _hook(1, "worker_int(worker)", "Called in a worker on INT or QUIT.")
    worker_abort = _hook(
        1, "worker_abort(worker)", "Called in a worker on ABRT (it timed out), before it dies."
    )
    pre_exec = _hook(
        1, "pre_exec(server)", "Called in the new master before it execs (USR2 upgrade)."
    )
    pre_request = _hook(
        2,
        "pre_request(worker, req)",
        "Called in a worker before the app handles a request. The default logs the "
        "method and path at the debug level (``--log-level debug``), as gunicorn's does.",
        default=log_request,
        default_body='worker.log.debug("%s %s", req.method, req.path)',
    )
    post_request = _hook(
        4,
        "post_request(worker, req, environ, resp)",
        "Called in a worker after the app handled a request.",
    )
    child_exit = _hook(
        2, "child_exit(server, worker)", "Called in the master after a worker exited."
    )
    worker_exit = _hook(
        2, "worker_exit(server, worker)", "Called in a worker just before it exits."
    )
    nworkers_changed = _hook(
        3,
        "nworkers_changed(server, new_value, old_value)",
        "Called in the master when the number of workers is set: at start-up (``old_value``"
        " None), on TTIN and TTOU, and on every reload (HUP), also when the number stays the"
        " same, as in gunicorn.",
    )
    on_exit = _hook(1, "on_exit(server)", "Called in the master just before it exits.")
