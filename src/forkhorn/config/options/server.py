"""Server settings: the app, the config file, where to listen, and start-up modes."""

from __future__ import annotations

from typing import ClassVar

from forkhorn.config.converters import (
    bind_list,
    boolean,
    choice,
    existing_directory,
    non_negative_int,
    optional_boolean,
    optional_string,
    string_list,
)
from forkhorn.config.setting import Setting


def _port_to_bind(port: str) -> object:
    # gunicorn: with PORT set and no bind anywhere, listen on every interface at $PORT
    # (what Heroku-style platforms expect).
    return [f"0.0.0.0:{port.strip()}"]


class ServerOptions:
    SECTION: ClassVar[str] = "Server"
    __slots__ = ()

    wsgi_app = Setting(
        default=None,
        convert=optional_string,
        metavar="APP",
        doc="""
        The WSGI application to serve: ``module:attr``, ``module`` (then ``application``
        is used), ``pkg.mod:obj.attr`` or ``module:factory(literal, args)``. Given as the
        positional ``APP`` argument or in a config file.
        """,
    )
    config = Setting(
        default=None,
        convert=optional_string,
        flags=("-c", "--config"),
        metavar="CONFIG",
        default_doc="./forkhorn.conf.py, else ./gunicorn.conf.py, when it exists; else None",
        doc="""
        The config file: a path to a Python file, or ``python:module.name`` to import a
        module. Its lower-case names that match settings are applied; other names are
        ignored. When no ``-c`` is given, ``./forkhorn.conf.py`` is read if present, else
        ``./gunicorn.conf.py`` (gunicorn's default); a file named with ``-c`` must exist.
        """,
    )
    bind = Setting(
        default=["127.0.0.1:8000"],
        convert=bind_list,
        flags=("-b", "--bind"),
        metavar="ADDRESS",
        action="append",
        env=("PORT",),
        env_convert=_port_to_bind,
        default_doc="['127.0.0.1:8000']",
        doc="""
        Addresses to listen on; repeat the flag for several. Forms: ``HOST:PORT``,
        ``[IPv6]:PORT``, ``HOST`` (port 8000), ``:PORT`` (every interface),
        ``unix:PATH`` and ``fd://N`` (an inherited file descriptor). Port 0 lets the
        kernel choose; the real address is logged. An address listed twice is refused
        at start-up. When ``PORT`` is set in the environment and no bind is given
        anywhere, the default is ``0.0.0.0:$PORT``. On HUP, an address still listed,
        however written (``localhost:8000`` for ``127.0.0.1:8000``), keeps its open
        socket; a new host on a port the old bind holds (``0.0.0.0:8000`` to
        ``127.0.0.1:8000``) is refused, as the old workers keep that socket open
        until they leave: restart to move it.
        """,
    )
    backlog = Setting(
        default=2048,
        convert=non_negative_int,
        flags=("--backlog",),
        metavar="INT",
        doc="""
        The listen queue length: connections the kernel accepts on our behalf before a
        worker takes them. Capped by ``net.core.somaxconn``; 64 to 2048 is usual.
        """,
    )
    reuse_port = Setting(
        default=False,
        convert=boolean,
        flags=("--reuse-port",),
        action="flag",
        doc="Set ``SO_REUSEPORT`` on the listening sockets.",
    )
    preload_app = Setting(
        default=False,
        convert=boolean,
        flags=("--preload",),
        action="flag",
        doc="""
        Load the app in the master before forking, so workers share its memory pages and
        start faster. Each worker freezes what it inherits from the master for the garbage
        collector (``gc.freeze()``, first thing after the fork), so the workers'
        collections do not copy those pages.
        The app is then not re-imported by a worker restart or a reload (HUP, which says
        so in the log), only by an upgrade (USR2), as with gunicorn.
        """,
    )
    chdir = Setting(
        default=None,
        convert=existing_directory,
        flags=("--chdir",),
        metavar="DIR",
        default_doc="the current directory",
        doc="""
        Change to this directory before loading the app; it is also put on sys.path.
        A relative path is read from the directory forkhorn started in, at start-up and
        at each HUP. Unset, a HUP enters that start directory again by the path it was
        started from (``$PWD``), so a ``current`` symlink moved to a new release is
        followed, as gunicorn's default does.
        """,
    )
    pythonpath = Setting(
        default=None,
        convert=optional_string,
        flags=("--pythonpath",),
        metavar="PATHS",
        doc="Comma-separated directories added to the front of sys.path before the app loads.",
    )
    # The attribute is ``reload_enabled`` because ``Config.reload()`` re-reads the config
    # (the architecture contract); the setting, flag and config-file key stay ``reload``.
    reload_enabled = Setting(
        key="reload",
        default=False,
        convert=boolean,
        flags=("--reload",),
        action="flag",
        doc="""
        Restart workers when code changes. For development only. Each worker checks, once
        a second, the files of the modules it imported and ``reload_extra_files``; on a
        change it logs ``Worker reloading: PATH modified`` and leaves as on TERM, and its
        replacement imports the new code. A syntax error is answered, a 500 that shows it,
        by a worker that waits for the file to change (as gunicorn does); an edit that
        fails at import otherwise is retried at most 2 s apart (not up to 30 s, as without
        ``reload``), so its fix shows at once. Not
        with ``preload_app`` (the app stays the master's). In Python code the value is
        ``cfg.reload_enabled`` (``cfg.reload()`` re-reads the configuration).
        """,
    )
    reload_engine = Setting(
        default="auto",
        convert=choice("auto", "poll", "inotify"),
        flags=("--reload-engine",),
        metavar="STRING",
        doc="""
        How ``reload`` watches files: ``auto``, ``poll`` or ``inotify``, gunicorn's values.
        forkhorn polls whatever the value (no extra package; a second's delay).
        """,
    )
    reload_extra_files = Setting[list[str]](
        default=[],
        convert=string_list,
        flags=("--reload-extra-file",),
        metavar="FILES",
        action="append",
        doc="More files to watch with ``reload`` (templates, config); repeatable.",
    )
    sendfile = Setting(
        default=None,
        convert=optional_boolean,
        flags=("--no-sendfile",),
        action="flag_false",
        default_doc="None (use sendfile where the platform has it)",
        doc="""
        Use ``os.sendfile`` for ``wsgi.file_wrapper`` responses; ``--no-sendfile`` (or
        ``sendfile = False``) turns it off, for virtual file systems that break it.
        """,
    )
    check_config = Setting(
        default=False,
        convert=boolean,
        flags=("--check-config",),
        action="flag",
        doc="Load the configuration, check the logging settings (without opening any log) "
        "and load the worker class and the app; exit 0 if all load, 1 if the worker class or "
        "the app does not (a bad setting, logging ones included, exits 2, as at start-up).",
    )
    print_config = Setting(
        default=False,
        convert=boolean,
        flags=("--print-config",),
        action="flag",
        doc="Print every resolved setting with where its value came from, then exit 0.",
    )
    spew = Setting(
        default=False,
        convert=boolean,
        flags=("--spew",),
        action="flag",
        doc="Trace every executed line (gunicorn's ``--spew``). Accepted, not yet used.",
    )
