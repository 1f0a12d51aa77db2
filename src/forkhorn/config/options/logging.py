"""Logging settings: error log, access log and its format, logging config, syslog, statsd."""

from __future__ import annotations

from typing import Any, ClassVar

from forkhorn.config.converters import (
    boolean,
    choice,
    logger_class_path,
    mapping,
    optional_string,
    string,
)
from forkhorn.config.setting import Setting

# Apache's "combined" log format, in gunicorn's atoms.
DEFAULT_ACCESS_LOG_FORMAT = '%(h)s %(l)s %(u)s %(t)s "%(r)s" %(s)s %(b)s "%(f)s" "%(a)s"'


class LoggingOptions:
    SECTION: ClassVar[str] = "Logging"
    __slots__ = ()

    accesslog = Setting(
        default=None,
        convert=optional_string,
        flags=("--access-logfile",),
        metavar="FILE",
        doc="Where to write the access log; ``-`` is stdout. None writes no access log.",
    )
    disable_redirect_access_to_syslog = Setting(
        default=False,
        convert=boolean,
        flags=("--disable-redirect-access-to-syslog",),
        action="flag",
        doc="Do not send access log lines to syslog when ``syslog`` is on.",
    )
    access_log_format = Setting(
        default=DEFAULT_ACCESS_LOG_FORMAT,
        convert=string,
        flags=("--access-logformat",),
        metavar="STRING",
        doc="""
        The access log line, in gunicorn's atoms: ``h`` remote address, ``l`` ``-``, ``u``
        user, ``t`` date, ``r`` request line, ``m`` method, ``U`` path, ``q`` query, ``H``
        protocol, ``s`` status, ``B``/``b`` response length, ``f`` referer, ``a`` user
        agent, ``T``/``M``/``D``/``L`` request time in s/ms/us/decimal s, ``p`` pid,
        ``{name}i`` request header, ``{name}o`` response header, ``{name}e`` environ.
        """,
    )
    access_log_escape = Setting(
        default="default",
        convert=choice("default", "json"),
        flags=("--access-log-escape",),
        metavar="STRING",
        doc="""
        How values are escaped in access log lines (forkhorn's; nginx's ``escape=``).
        ``default``: Apache's way, ``"`` and ``\\`` get a backslash, tab, CR and LF are
        ``\\t``, ``\\r`` and ``\\n``, anything else outside printable ASCII is
        ``\\xhh``, so a line is plain ASCII. ``json``: for a format
        that writes JSON (``{"ua": "%(a)s", ...}``), where ``\\xhh`` would make the line
        invalid: ``"``, ``\\`` and control characters are escaped as JSON does
        (``\\u00hh``), and bytes that form UTF-8 are written as the text they encode
        (others as ``\\u00hh``).
        """,
    )
    errorlog = Setting(
        default="-",
        convert=string,
        flags=("--error-logfile", "--log-file"),
        metavar="FILE",
        doc="Where to write the error log; ``-`` is stderr.",
    )
    loglevel = Setting(
        default="info",
        convert=choice("debug", "info", "warning", "error", "critical"),
        flags=("--log-level",),
        metavar="LEVEL",
        doc="""
        The error log level: ``debug``, ``info``, ``warning``, ``error`` or ``critical``.
        At ``debug``, start-up errors also print their traceback, the master logs every
        setting with its source at start-up and on a reload (``raw_env`` values whose
        names look secret, such as ``DB_PASSWORD`` or ``DATABASE_URL``, as ``***``), and
        each request is logged (method and path) by the default ``pre_request`` hook.
        """,
    )
    capture_output = Setting(
        default=False,
        convert=boolean,
        flags=("--capture-output",),
        action="flag",
        doc="Send the app's stdout and stderr to the error log file.",
    )
    logger_class = Setting(
        default="forkhorn.logs.Logger",
        convert=logger_class_path,
        flags=("--logger-class",),
        metavar="STRING",
        doc="""
        The logger class, as a dotted path (gunicorn's). Accepted, not yet used: gunicorn's
        default (``gunicorn.glogging.Logger``) is forkhorn's own logger and is taken
        silently; any other is warned. What a custom class usually does (drop health checks
        from the access log, write JSON) is done with ``logconfig_dict``: a
        ``logging.Filter`` or a formatter on ``forkhorn.access``.
        """,
    )
    logconfig = Setting(
        default=None,
        convert=optional_string,
        flags=("--log-config",),
        metavar="FILE",
        doc="""
        A ``logging.config.fileConfig`` file that configures logging. The error and access
        logs are the loggers ``forkhorn.error`` and ``forkhorn.access``; a file written for
        gunicorn that configures ``gunicorn.error`` or ``gunicorn.access`` configures them
        too, and those names share forkhorn's handler list (so an app that borrows
        ``logging.getLogger("gunicorn.error").handlers`` logs to the error log, and a
        handler an app or a config file adds to ``gunicorn.error`` gets the error lines).
        The logs do
        not propagate to the root logger unless the file says so for the logger it names
        (``propagate=1``, the ini default); then, as in gunicorn, its lines also go to the
        root's handlers, and a logger given ``handlers=`` and ``propagate=1`` logs through
        the root's alone (one formatted handler for every line).
        """,
    )
    logconfig_dict = Setting[dict[str, Any]](
        default={},
        convert=mapping,
        default_doc="{}",
        doc="""
        A ``logging.config.dictConfig`` dict that configures logging, merged over the
        handlers the other settings make. Config file only. The logger names are as for
        ``logconfig``: ``gunicorn.error`` and ``gunicorn.access`` configure forkhorn's, and
        ``"propagate": True`` on one of them (with ``"handlers": []`` to use the root's
        alone) passes its lines to the root logger's handlers, as in gunicorn. An entry for
        one of these loggers merges with the one the settings make, so
        ``{"filters": ["nohealth"]}`` on ``gunicorn.access`` or ``forkhorn.access`` keeps
        the access log's handler and drops the lines the filter refuses. As in gunicorn,
        such a filter finds the access line's atoms in ``record.args``: the one-letter
        ones (``record.args["U"]``) and any request header, response header or environ
        key (``record.args.get("{user-agent}i")``, ``{content-type}o``,
        ``{remote_addr}e``), in any case, whether the format shows them or not.
        """,
    )
    logconfig_json = Setting(
        default=None,
        convert=optional_string,
        flags=("--log-config-json",),
        metavar="FILE",
        doc="""
        A JSON file holding a ``logging.config.dictConfig`` dict, used as
        ``logconfig_dict`` is. When more than one of ``logconfig_dict``,
        ``logconfig_json`` and ``logconfig`` is set, the first of them in that order is
        used, as in gunicorn, and the others are warned at start-up as unused.
        """,
    )
    syslog = Setting(
        default=False,
        convert=boolean,
        flags=("--log-syslog",),
        action="flag",
        doc="Also send log lines to syslog.",
    )
    syslog_addr = Setting(
        default="udp://localhost:514",
        convert=string,
        flags=("--log-syslog-to",),
        metavar="SYSLOG_ADDR",
        doc="""
        The syslog address: ``unix://PATH``, ``udp://HOST:PORT`` or ``tcp://HOST:PORT``.
        A unix socket is tried as a datagram socket, then as a stream one; ``#dgram`` or
        ``#stream`` after the path says which. With ``logconfig_dict``, ``logconfig_json``
        or ``logconfig`` too, the syslog handlers stay on both logs unless the logging
        config replaces a log's handlers.
        """,
    )
    syslog_prefix = Setting(
        default=None,
        convert=optional_string,
        flags=("--log-syslog-prefix",),
        metavar="SYSLOG_PREFIX",
        doc="The program name used in syslog lines; defaults to the process name.",
    )
    syslog_facility = Setting(
        default="user",
        convert=string,
        flags=("--log-syslog-facility",),
        metavar="SYSLOG_FACILITY",
        doc="The syslog facility name.",
    )
    statsd_host = Setting(
        default=None,
        convert=optional_string,
        flags=("--statsd-host",),
        metavar="STATSD_ADDR",
        doc="``HOST:PORT`` of a statsd server to send metrics to. Accepted, not yet used.",
    )
    statsd_prefix = Setting(
        default="",
        convert=string,
        flags=("--statsd-prefix",),
        metavar="STATSD_PREFIX",
        doc="A prefix for the statsd metric names. Accepted, not yet used.",
    )
