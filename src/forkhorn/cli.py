"""The ``forkhorn`` command: argv -> Config -> serve, with one-line errors and exit codes.

Flow: ``--version``/``--help`` are answered first (they work even with a broken config
file); then ``load_config(argv, os.environ)``; ``--print-config`` prints every value with
its source; ``--check-config`` loads the app and exits 0 or 1; otherwise the arbiter runs
and its exit code is ours.

Rules kept here:
- A ``ForkhornError`` is printed as ``Error: <message>`` on one line of stderr and exits
  with the error's code (``errors.py``: config 2, boot 3, app 4, bind 1); the traceback is
  printed only with ``--log-level debug``.
- Ctrl-C exits 130 without a traceback.
- This is the only module that reads ``os.environ`` for settings, and only by passing it
  to ``load_config``.

Runs in: the master process, before anything is bound or forked.
"""

from __future__ import annotations

import os
import sys
import traceback

from forkhorn import __version__
from forkhorn.config import Config, help_text, load_config, peek_command_line
from forkhorn.errors import AppImportError, ConfigError, ForkhornError

EXIT_OK = 0
EXIT_CHECK_FAILED = 1
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what shells report for Ctrl-C


def main(argv: list[str] | None = None) -> int:
    """Run the command line ``argv`` (without the program name); return the exit code."""
    _open_closed_stdio()
    args = sys.argv[1:] if argv is None else list(argv)
    request = peek_command_line(args)
    debug = request.debug
    try:
        if request.version:
            print(f"forkhorn {__version__}")
            return EXIT_OK
        if request.help:
            sys.stdout.write(help_text())
            return EXIT_OK
        cfg = load_config(args, os.environ)
        debug = cfg.loglevel == "debug"
        if cfg.print_config:
            sys.stdout.write(cfg.print_config_text())
            if not cfg.check_config:
                return EXIT_OK
        if cfg.check_config:
            return _check_config(cfg)
        return _serve(cfg)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except ForkhornError as exc:
        _report(exc, debug)
        return exc.exit_code


def _open_closed_stdio() -> None:
    """Put /dev/null where a standard stream was closed (``forkhorn ... 2>&-``, as some
    init scripts start daemons). Python then has no ``sys.stderr`` at all, which stopped
    the start at its first log line; and the first file opened later (a log, a pipe)
    would take the free descriptor and receive what the app's children print."""
    for fd, name in ((0, "stdin"), (1, "stdout"), (2, "stderr")):
        try:
            os.fstat(fd)
            continue
        except OSError:
            pass
        null = os.open(os.devnull, os.O_RDWR)
        if null != fd:
            os.dup2(null, fd)
            os.close(null)
        if getattr(sys, name) is None:
            mode = "r" if fd == 0 else "w"
            setattr(sys, name, open(fd, mode, closefd=False))  # noqa: SIM115 - process-long


def _report(exc: BaseException, debug: bool) -> None:
    if debug:
        traceback.print_exception(exc)
    # An app that fails at import has a traceback worth seeing: say where it is.
    hint = (
        ""
        if debug or exc.__cause__ is None or not isinstance(exc, AppImportError)
        else (" (--log-level debug shows its traceback)")
    )
    print(f"Error: {exc}{hint}", file=sys.stderr)


def prepare_app_environment(cfg: Config) -> None:
    """Apply ``chdir``, the import path and ``raw_env`` before the app is imported.

    gunicorn's order: change directory, put it first on ``sys.path`` (the ``forkhorn``
    console script does not have the working directory there), then ``pythonpath``
    entries in front of it. Idempotent, so a later caller may apply it again.
    """
    if cfg.chdir:
        try:
            os.chdir(cfg.chdir)
        except OSError as exc:
            raise ConfigError(f"chdir = {cfg.chdir!r}: {exc.strerror}") from exc
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    if cfg.pythonpath:
        for entry in reversed([item.strip() for item in cfg.pythonpath.split(",")]):
            if entry and entry not in sys.path:
                sys.path.insert(0, entry)
    os.environ.update(cfg.env)


def _require_app(cfg: Config) -> str:
    if not cfg.wsgi_app:
        raise ConfigError("No application module specified (give APP, e.g. myapp:app)")
    return cfg.wsgi_app


def _check_config(cfg: Config) -> int:
    """--check-config: the config already loaded; now the worker class and the app must
    load too (a misspelt ``-k`` would otherwise pass the check and fail the start)."""
    from forkhorn.workers import effective_worker_class, gunicorn_methods_warning, load_worker_class
    from forkhorn.wsgi.loader import load_app

    # A bad setting exits 2 here, as at start-up: no APP, a --chdir that does not exist,
    # the logging ones, a pid file's place that cannot be written, an address listed twice.
    uri = _require_app(cfg)
    # The paths first, as the start applies them: a worker class may live beside the app,
    # and relative log, logging config and pid file paths are read from --chdir.
    prepare_app_environment(cfg)
    _check_logging(cfg)
    _check_pidfile(cfg)
    _check_binds(cfg)
    try:
        name = effective_worker_class(str(cfg.worker_class), int(cfg.threads or 1))
        warning = gunicorn_methods_warning(name, load_worker_class(name))
        load_app(uri)
    except ForkhornError as exc:
        _report(exc, cfg.loglevel == "debug")
        return EXIT_CHECK_FAILED
    for line in cfg.no_effect():
        print(f"Warning: {line}", file=sys.stderr)
    if warning:
        print(f"Warning: {warning}", file=sys.stderr)
    print(f"Config OK: app {uri!r} loads")
    return EXIT_OK


def _check_pidfile(cfg: Config) -> None:
    """The pid file's directory must be one this process may write (the start writes the
    file beside it, then renames it). A directory that does not exist yet passes when an
    ``on_starting`` hook is set: it may make it, before the start writes the file."""
    if not cfg.pidfile:
        return
    directory = os.path.dirname(os.path.abspath(cfg.pidfile))
    if not os.path.exists(directory):
        if cfg.source("on_starting") != "default":
            return  # the hook may make it
        reason = f"no directory {directory}"
    elif not os.path.isdir(directory):
        reason = f"{directory} is not a directory"
    elif not os.access(directory, os.W_OK):
        reason = "permission denied"
    else:
        return
    raise ConfigError(f"pidfile = {cfg.pidfile!r}: Cannot write pid file: {reason}")


def _check_binds(cfg: Config) -> None:
    """One address spelt two ways (``127.0.0.1:P`` and ``localhost:P``) stops the start;
    say so here too (nothing is bound)."""
    from forkhorn.arbiter.listeners import refuse_same_address_twice

    refuse_same_address_twice(cfg.bind)


def _check_logging(cfg: Config) -> None:
    """What the logging settings name must exist and parse: a ``--log-config`` file and
    its sections, ``--log-config-json``'s JSON, and the handler, formatter and filter
    classes a logging config names. Nothing is opened: the check must not create (or, in
    mode ``"w"``, empty) a running server's log files."""
    from forkhorn.logs import check_logging_config

    check_logging_config(cfg)


def _serve(cfg: Config) -> int:
    _require_app(cfg)
    prepare_app_environment(cfg)
    try:
        from forkhorn.arbiter import Arbiter
    except ImportError as exc:
        raise ForkhornError(
            f"cannot start the server: forkhorn.arbiter is unusable: {exc}"
        ) from exc
    code = Arbiter(cfg).run()
    return int(code or 0)
