"""Process settings: daemonising, identity, environment, pid file and process names."""

from __future__ import annotations

from typing import ClassVar

from forkhorn.config.converters import (
    boolean,
    env_assignments,
    group_id,
    optional_string,
    string,
    umask,
    user_id,
)
from forkhorn.config.setting import Setting


class ProcessOptions:
    SECTION: ClassVar[str] = "Process"
    __slots__ = ()

    daemon = Setting(
        default=False,
        convert=boolean,
        flags=("-D", "--daemon"),
        action="flag",
        doc="Detach from the terminal and run in the background.",
    )
    raw_env = Setting[list[str]](
        default=[],
        convert=env_assignments,
        flags=("-e", "--env"),
        metavar="ENV",
        action="append",
        doc="""
        Set ``KEY=VALUE`` in the environment of the master and workers; repeatable.
        ``SCRIPT_NAME`` (set here or in forkhorn's environment) mounts the app under that
        path prefix, as in gunicorn: it becomes the environ's ``SCRIPT_NAME`` and is taken
        off the front of ``PATH_INFO``; a request outside it is answered 404.
        """,
    )
    pidfile = Setting(
        default=None,
        convert=optional_string,
        flags=("-p", "--pid"),
        metavar="FILE",
        doc="Write the master's pid to this file. None writes no file.",
    )
    user = Setting(
        default=None,
        convert=user_id,
        flags=("-u", "--user"),
        metavar="USER",
        default_doc="None (keep the current user)",
        doc="Switch workers to this user (a name or a uid) after binding.",
    )
    group = Setting(
        default=None,
        convert=group_id,
        flags=("-g", "--group"),
        metavar="GROUP",
        default_doc="None (keep the current group)",
        doc="Switch workers to this group (a name or a gid) after binding.",
    )
    umask = Setting(
        default=0,
        convert=umask,
        flags=("-m", "--umask"),
        metavar="INT",
        doc="""
        The umask applied while a unix socket is bound, so it sets the socket's
        permissions (``--umask 007`` with ``--group www-data`` lets only that group
        connect). The processes' own umask is left as inherited (``--daemon`` sets
        0o22), as in gunicorn: files the app writes follow the environment's.
        Accepts ``18``, ``0o22`` and ``0022`` (a leading zero means octal).
        """,
    )
    initgroups = Setting(
        default=False,
        convert=boolean,
        flags=("--initgroups",),
        action="flag",
        doc="Also set the supplementary groups of ``user`` when switching to it.",
    )
    proc_name = Setting(
        default=None,
        convert=optional_string,
        flags=("-n", "--name"),
        metavar="STRING",
        doc="""
        The process title base shown by ``ps`` and ``top`` (needs the ``setproctitle``
        extra). Defaults to ``default_proc_name``.
        """,
    )
    default_proc_name = Setting(
        default="forkhorn",
        convert=string,
        doc="The process title base when ``proc_name`` is unset; the APP argument sets it.",
    )
