"""The master's main loop: thin code that acts on what ``policy.py`` decides.

How it works: ``Arbiter.run()`` starts up (listeners, pid file, scoreboard, optional
preload), then loops:

1. sleep on the signal wake-up pipe (1 s at most, less when a deadline is nearer);
2. handle the queued signals in arrival order (``signals.py`` only queued them);
3. reap every exited child (``waitpid(-1, WNOHANG)``) and judge each death
   (``policy.judge_exit``: replace, back off, abandon a reload, or halt at start-up);
4. read the scoreboard (who is ready, last heartbeats);
5. ask ``policy.decide`` what to do and do it (fork, TERM, ABRT, KILL).

Rules it keeps:

- Signal handlers only queue; everything happens here, in the main loop.
- Every duration is ``time.monotonic()``; the loop never blocks in ``sleep`` after
  start-up, so a kill-9'd worker is replaced as soon as SIGCHLD wakes the loop.
- A forked child never returns into master code: it leaves through ``os._exit``.
- The master never runs app code (unless ``preload_app``) and never imports
  ``forkhorn.http`` (the worker class module it loads does, at run time).

Every method of ``Arbiter`` runs in: master, main loop only, unless it says otherwise.
"""

from __future__ import annotations

import atexit
import contextlib
import gc
import logging
import os
import select
import signal
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass
from typing import Any, NoReturn

from forkhorn import __version__
from forkhorn.arbiter import systemd
from forkhorn.arbiter.listeners import (
    FD_ENV,
    Listener,
    create_listeners,
    export_fds,
    parse_address,
    refuse_same_address_twice,
)
from forkhorn.arbiter.pidfile import Pidfile
from forkhorn.arbiter.policy import (
    RELOAD_KILL_LIMIT,
    Abort,
    Backoff,
    Decision,
    Kill,
    KillReason,
    Limits,
    Retire,
    RetireReason,
    Spawn,
    Verdict,
    WorkerView,
    decide,
    judge_exit,
)
from forkhorn.arbiter.scoreboard import (
    HOLD_FAILING,
    Scoreboard,
    ScoreboardSlot,
    WorkerState,
)
from forkhorn.arbiter.signals import (
    SignalQueue,
    blocked_across_fork,
    signal_full_name,
    signal_name,
)
from forkhorn.errors import (
    APP_LOAD_ERROR,
    WORKER_BOOT_ERROR,
    BindError,
    ConfigError,
    ForkhornError,
)
from forkhorn.workers import effective_worker_class, gunicorn_methods_warning, load_worker_class
from forkhorn.workers.base import Worker

__all__ = ["Arbiter"]

PID_ENV = "FORKHORN_PID"  # set for a re-executed master: the old master's pid (USR2)
LOOP_INTERVAL = 1.0  # the longest the loop sleeps: heartbeats are checked at this rate
# INT/QUIT: workers exit from their handler at once; a worker that does not within this
# is stuck (in C) and is killed.
QUICK_STOP_TIMEOUT = 2.0
# A start-up halt (no worker could load the app): the others are booting the same bad app.
HALT_STOP_TIMEOUT = 5.0
# How long the master waits, once it told the kernel to refuse new connections on a stop,
# for handshakes already under way to land in the queue the workers then drain: one
# client round trip (well under a millisecond on loopback, a few on a LAN; a client
# farther away than this can still, rarely, see its handshake reset).
HANDSHAKE_GRACE = 0.02
# With --reload (development), the longest wait between boots of a release that fails.
RELOAD_MAX_BACKOFF = 2.0
# The most of a worker's stack dump that is logged: every thread of a gthread worker with
# hundreds of threads, still one readable record.
STACK_DUMP_LIMIT = 1 << 20
# A worker that dies unexpectedly this soon after reporting READY, before it completed a
# request, failed to boot as far as respawning goes: the backoff applies, where it was
# replaced at once, again and again (a crash right after boot forked 70 workers a second).
# The backoff is reset only by a worker that lasted this long, or served a request.
EARLY_CRASH = 5.0


@dataclass(slots=True)
class WorkerRecord:
    """The master's row for one live worker process."""

    worker: Worker
    pid: int
    age: int
    generation: int
    slot: ScoreboardSlot
    spawned_at: float
    state: WorkerState = WorkerState.BOOTING
    heartbeat: float = 0.0
    in_request: bool = False  # a request is in flight (BUSY, or EXITING and finishing one)
    reached_serving: bool = False
    ready_at: float | None = None  # when it first reported READY
    proven: bool = False  # it served a request, or lasted EARLY_CRASH after READY
    retiring_since: float | None = None
    retired_itself: bool = False  # retiring_since came from its slot, not our Retire
    aborted_at: float | None = None
    abort_reason: str = ""  # why a booting worker was aborted, for its boot failure's line
    killed: bool = False
    kill_reason: KillReason | None = None  # why the master sent SIGKILL
    # The graceful_timeout of the config it was started with: a reload that lowers it
    # does not cut the requests the old generation is finishing (as in gunicorn). Its
    # timeout and request_timeout likewise.
    grace: float | None = None
    timeout: float | None = None
    request_timeout: float | None = None
    boot_failed_at: float | None = None

    def view(self) -> WorkerView:
        return WorkerView(
            pid=self.pid,
            age=self.age,
            generation=self.generation,
            state=self.state,
            spawned_at=self.spawned_at,
            heartbeat=self.heartbeat,
            retiring_since=self.retiring_since,
            aborted_at=self.aborted_at,
            killed=self.killed,
            grace=self.grace,
            timeout=self.timeout,
            request_timeout=self.request_timeout,
            boot_failed_at=self.boot_failed_at,
            in_request=self.in_request,
        )


@dataclass(slots=True)
class _Release:
    """What a HUP replaces, kept so a reload whose workers cannot boot can be undone."""

    cfg: Any
    worker_class: type[Worker]
    worker_class_name: str
    wsgi: Any
    generation: int
    num_workers: int
    # The listeners before the reload, when it changed them: the ones it added are
    # closed if it is abandoned, the ones it dropped once it completes.
    listeners: list[Listener] | None = None
    # The directory the master was in (resolved), to go back to if it is abandoned: the
    # start directory may lead elsewhere by then (a ``current`` symlink moved to the
    # release that failed). None when it was gone already.
    directory: str | None = None
    # New workers of this reload killed from outside while booting, each replaced
    # (policy.RELOAD_KILL_LIMIT).
    kills: int = 0
    # The logging set-up before the reload (Logger.snapshot): what its config files
    # held then, since a refused or abandoned reload finds the new ones on disk.
    logging: Any = None


def _close_quietly(file: Any) -> None:
    if file is not None:
        with contextlib.suppress(OSError):
            file.close()


def _python_path(cfg: Any) -> list[str]:
    """``pythonpath``'s entries: a comma-separated string, as gunicorn takes it."""
    value = getattr(cfg, "pythonpath", None) or ""
    items = value.split(",") if isinstance(value, str) else list(value)
    return [item.strip() for item in items if item.strip()]


def _once(action: Callable[[], None]) -> Callable[[], None]:
    """``action``, run by the first call only."""
    done = False

    def run() -> None:
        nonlocal done
        if not done:
            done = True
            action()

    return run


def _hook(cfg: Any, name: str) -> Callable[..., Any] | None:
    fn = getattr(cfg, name, None)
    return fn if callable(fn) else None


def _tell_lost_log_lines(log: Any) -> None:
    # A log that cannot be written says so once a minute; what it lost since then is told
    # as the process ends (a Logger stand-in of the tests may not have the method).
    tell = getattr(log, "tell_lost_lines", None)
    if callable(tell):
        tell()


def _exit_code_of(code: object) -> int:
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    return 1


def daemonize() -> None:
    """Detach from the terminal (double fork, new session, stdio to /dev/null).

    Runs in: the process that ran ``forkhorn``, before anything else starts.
    """
    if os.fork():
        os._exit(0)
    os.setsid()
    if os.fork():
        os._exit(0)
    os.umask(0o22)
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    if devnull > 2:
        os.close(devnull)


class Arbiter:
    """The master process.  ``Arbiter(cfg).run()`` serves until stopped; returns the exit code.

    Attributes hooks may use (gunicorn's names): ``cfg``, ``log``, ``pid``, ``num_workers``,
    ``WORKERS`` (pid -> worker), ``LISTENERS``, ``proc_name``, ``app`` (``cfg``,
    ``callable``, ``wsgi()``).
    """

    def __init__(
        self, cfg: Any, log: Any = None, *, environ: MutableMapping[str, str] | None = None
    ) -> None:
        if log is None:
            from forkhorn.logs import Logger

            log = Logger(cfg)
        self.cfg = cfg
        self.log = log
        self._environ: MutableMapping[str, str] = os.environ if environ is None else environ
        self.pid = os.getpid()
        self.listeners: list[Listener] = []
        self.workers: dict[int, WorkerRecord] = {}
        self.num_workers = int(cfg.workers)
        self.generation = 0
        self.backoff = self._new_backoff()
        self.ever_ready = False
        self._boots_failing = False  # recycling held until a worker boots (_hold_recycling)
        self._hold_said = False  # the hold was logged, so its end is too
        # One failed-load traceback per reload or respawn, not one per worker: a pipe
        # holding one byte, which the first worker that fails to load takes (an atomic
        # read) before it logs the traceback. Refilled by a new generation and by a worker
        # that boots (_refill_traceback_token).
        self._traceback_token: tuple[int, int] | None = None
        self.exit_code = 0
        self.halt_reason = ""
        self.stop_deadline: float | None = None
        self.stop_graceful = True
        self.signals = SignalQueue()
        self.scoreboard: Scoreboard | None = None
        self.worker_class: type[Worker] | None = None
        self.worker_class_name = ""
        self.pidfile: Pidfile | None = None
        self.wsgi: Any = None  # the preloaded app, when preload_app
        self.reexec_pid = 0  # our child that exec'd a new master (USR2)
        self.master_pid = 0  # the old master, when we are the re-executed one
        self.master_name = "Master"
        self._inherited_sockets = False  # from systemd or a re-exec: never unlink them
        self._systemd_sockets = False
        self._age = 0
        self._pending_reload: _Release | None = None
        # TTIN/TTOU applied so far (+1/-1 each), and that count when the pending reload
        # started and when a HUP was queued: the signals an operator sent after a HUP
        # still count once that HUP's reload has set the configured number.
        self._resizes = 0
        self._resizes_at_reload = 0
        self._resizes_at_queued_hup = 0
        # A HUP that arrived while a reload was in flight: run one more reload when the
        # current one completes or is abandoned, so the last HUP's code and config win
        # (a deploy that HUPs after each step must not be left on a half-updated tree).
        self._reload_again = False
        self._when_ready_called = False
        self._watchdog_interval: float | None = None
        self._next_watchdog = 0.0
        # Where the command line was read (Config.start_directory): a USR2 upgrade
        # re-reads it from there, not from where --chdir moved this process.
        self._start_cwd = getattr(cfg, "start_directory", None) or os.getcwd()
        self._start_argv = list(sys.argv)
        self._signal_handlers: dict[int, Callable[[], None]] = {
            signal.SIGTERM: self.handle_term,
            signal.SIGINT: self.handle_quick_stop,
            signal.SIGQUIT: self.handle_quick_stop,
            signal.SIGHUP: self.handle_hup,
            signal.SIGTTIN: self.handle_ttin,
            signal.SIGTTOU: self.handle_ttou,
            signal.SIGUSR1: self.handle_usr1,
            signal.SIGUSR2: self.handle_usr2,
            signal.SIGWINCH: self.handle_winch,
        }

    # -- gunicorn-compatible views -----------------------------------------------------
    @property
    def WORKERS(self) -> dict[int, Worker]:
        return {pid: rec.worker for pid, rec in self.workers.items()}

    @property
    def LISTENERS(self) -> list[Listener]:
        return self.listeners

    @property
    def address(self) -> list[Any]:
        """gunicorn's: the bound addresses, (host, port) or a Unix socket's path (hooks
        log it in when_ready)."""
        return [listener.getsockname() for listener in self.listeners]

    @property
    def timeout(self) -> float:
        return float(self.cfg.timeout or 0)

    @property
    def app(self) -> Any:
        from forkhorn.wsgi.loader import AppHandle

        return AppHandle(self)

    @property
    def proc_name(self) -> str:
        name = getattr(self.cfg, "proc_name", None) or getattr(
            self.cfg, "default_proc_name", "forkhorn"
        )
        return f"{name}.2" if self.master_pid else str(name)

    @property
    def limits(self) -> Limits:
        timeout = float(self.cfg.timeout or 0)
        watched = self.worker_class is not None and self.worker_class.watches_requests
        # Booting gets the same allowance as gunicorn gives it: ``timeout`` from the fork.
        return Limits(
            timeout=timeout,
            boot_timeout=timeout,
            graceful_timeout=float(self.cfg.graceful_timeout),
            request_timeout=0.0 if watched else float(self.cfg.request_timeout or 0),
        )

    # -- run ---------------------------------------------------------------------------
    def run(self) -> int:
        """Start, serve until stopped, clean up.  Returns the process exit code.

        Start-up errors (``BindError``, ``ConfigError``, ``AppImportError`` on preload,
        pid file) propagate as ``ForkhornError`` after cleanup, for ``cli.main`` to print.
        """
        try:
            self.start()
            self._main_loop()
        except BaseException as exc:
            if isinstance(exc, Exception) and not isinstance(exc, ForkhornError):
                # A defect of ours (or of a hook or worker class): said in the error log,
                # which may be all an operator sees (under --daemon stderr is /dev/null).
                self.log.critical(
                    "Unhandled exception in the master; stopping every worker", exc_info=True
                )
            elif isinstance(exc, ForkhornError) and self._error_log_elsewhere():
                # cli.main prints it on stderr; an error log kept elsewhere (a file, syslog,
                # the user's logging config) must say why the server is not running too,
                # the more so under --daemon, whose stderr is /dev/null.
                self.log.error("%s", exc)
            self._kill_all_now()
            self._cleanup()
            raise
        self._cleanup()
        # At ERROR when the exit is a failure, as gunicorn does: alerts on ERROR lines
        # must see a master that halted.
        say = self.log.info if self.exit_code == 0 else self.log.error
        say("Shutting down: %s", self.master_name)
        if self.halt_reason:
            say("Reason: %s", self.halt_reason)
        self._call_hook("on_exit", self)
        _tell_lost_log_lines(self.log)
        return self.exit_code

    def _error_log_elsewhere(self) -> bool:
        cfg = self.cfg
        return bool(
            (getattr(cfg, "errorlog", None) or "-") != "-"
            or getattr(cfg, "syslog", False)
            or getattr(cfg, "logconfig", None)
            or getattr(cfg, "logconfig_dict", None)
            or getattr(cfg, "logconfig_json", None)
        )

    def start(self) -> None:
        """Everything before the first fork."""
        if getattr(self.cfg, "daemon", False) and PID_ENV not in self._environ:
            daemonize()
        self.pid = os.getpid()
        if PID_ENV in self._environ:
            try:
                self.master_pid = int(self._environ.pop(PID_ENV))
            except ValueError:
                self.master_pid = 0
            self.master_name = "Master.2"
        self.log.info("Starting forkhorn %s", __version__)
        self._log_configuration()
        self._apply_paths(self.cfg)
        # As gunicorn does when its arbiter is made: the count goes from None to workers.
        self._call_hook("nworkers_changed", self, self.num_workers, None)
        if callable(getattr(self.cfg, "on_starting", None)):
            try:
                self.cfg.on_starting(self)
            except Exception as exc:  # it stops the start, as gunicorn's: in one line
                from forkhorn.wsgi.loader import where_raised

                raise ConfigError(
                    f"hook on_starting raised {type(exc).__name__}: {exc}{where_raised(exc)}"
                ) from exc
        self.signals.install()
        self.worker_class_name, self.worker_class = self._resolve_worker_class(self.cfg)
        self._bind()
        self.log.info("Using worker: %s", self.worker_class_name)
        self._advise_on_cpus()
        self._warn_unimplemented()
        self._set_master_title()
        pidfile = getattr(self.cfg, "pidfile", None)
        if pidfile:
            self.pidfile = Pidfile(f"{pidfile}.2" if self.master_pid else pidfile)
            self.pidfile.create(self.pid)
        self.scoreboard = Scoreboard(max(64, 4 * self.num_workers))
        if getattr(self.cfg, "preload_app", False):
            self.wsgi = self._load_app(self.cfg)
            hazard = self.worker_class.preload_hazard()
            if hazard:
                self.log.warning(hazard)
        self._watchdog_interval = systemd.watchdog_interval(self._environ)

    def _warn_unimplemented(self) -> None:
        """Say once at start-up what the config asks for that forkhorn does not do
        (``Config.no_effect``): never ignore it silently."""
        no_effect = getattr(self.cfg, "no_effect", None)
        for line in no_effect() if no_effect is not None else ():
            self.log.warning("%s", line)

    def _advise_on_cpus(self) -> None:
        """gunicorn's 2 x CPUs + 1 is for workers that wait on I/O; an event-loop worker
        that runs the app inline keeps one CPU busy, and more of them only take turns
        (bench/README.md, the "cores" and "classic" runs)."""
        if not self.worker_class or not self.worker_class.one_cpu_each:
            return
        try:
            cpus = len(os.sched_getaffinity(0))
        except (AttributeError, OSError):
            cpus = os.cpu_count() or 1
        if self.num_workers > cpus:
            self.log.info(
                "%d %s workers on %d CPUs: each keeps one CPU busy, so more workers than "
                "CPUs only take turns; --workers %d is usually faster",
                self.num_workers,
                self.worker_class_name,
                cpus,
                cpus,
            )

    def _apply_paths(self, cfg: Any, directory: str | None = None) -> None:
        """``chdir`` and ``pythonpath``, for the workers to inherit. At start-up the
        command line applied them already; a reload's new ``chdir`` (a deploy's new
        release directory) takes the old directory's place first on ``sys.path``.

        Without ``chdir`` the directory forkhorn started in is entered again, by the path
        it was reached through, as gunicorn's default ``chdir`` is: a deploy that points
        a ``current`` symlink at a new release and sends HUP gets the new release.
        ``directory``, if given, is entered instead (an abandoned reload's way back)."""
        before = _current_directory()  # None: it was deleted (an old release's)
        chdir = directory or getattr(cfg, "chdir", None)
        implicit = not chdir
        if implicit:
            chdir = getattr(cfg, "start_directory", None)
        if chdir and (before is None or os.path.realpath(chdir) != before):
            try:
                os.chdir(chdir)
            except OSError as exc:
                if not implicit:  # a start directory since deleted: stay where we are
                    self.log.error("Cannot change to %s: %s", chdir, exc.strerror)
            else:
                sys.path[:] = [os.getcwd() if entry == before else entry for entry in sys.path]
                if os.getcwd() not in sys.path:
                    sys.path.insert(0, os.getcwd())
        for entry in reversed(_python_path(cfg)):
            if entry not in sys.path:
                sys.path.insert(0, entry)

    def _resolve_worker_class(self, cfg: Any) -> tuple[str, type[Worker]]:
        requested = str(getattr(cfg, "worker_class", "sync") or "sync")
        threads = int(getattr(cfg, "threads", 1) or 1)
        name = effective_worker_class(requested, threads)
        if name != requested:
            self.log.info(
                "Switching worker class from %s to %s because threads is %d",
                requested,
                name,
                threads,
            )
        cls = load_worker_class(name)
        warning = gunicorn_methods_warning(name, cls)
        if warning:
            self.log.warning(warning)
        return name, cls

    def _bind(self) -> None:
        inherited = FD_ENV in self._environ or (
            "LISTEN_FDS" in self._environ and "LISTEN_PID" in self._environ
        )
        self.listeners = create_listeners(
            list(self.cfg.bind),
            backlog=int(getattr(self.cfg, "backlog", 2048)),
            reuse_port=bool(getattr(self.cfg, "reuse_port", False)),
            umask=getattr(self.cfg, "umask", None),
            owner=(getattr(self.cfg, "user", None), getattr(self.cfg, "group", None)),
            environ=self._environ,
            # The wait is said once; a failure is the BindError's one line at the end.
            warn=self.log.info,
        )
        if inherited:
            self._inherited_sockets = True
            self._systemd_sockets = FD_ENV not in self._environ
            source = getattr(self.cfg, "source", None)
            if self._systemd_sockets and callable(source) and source("bind") != "default":
                # As in gunicorn, but said: an operator may wonder why --bind has no effect.
                self.log.info(
                    "Using the %d socket(s) systemd passed (LISTEN_FDS); bind %s is not used",
                    len(self.listeners),
                    ", ".join(self.cfg.bind),
                )
            # Consumed: our workers and a later USR2 must not see stale values.
            for key in (FD_ENV, "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"):
                self._environ.pop(key, None)
            unbound, unnamed = self._bind_mismatch()
            if unbound or unnamed:
                # A USR2 after the config's bind changed: the sockets are the old master's
                # (as in gunicorn). Said, and a HUP applies the bind list.
                self.log.warning(
                    "The sockets inherited from the previous master are not this config's "
                    "bind list (%s); send HUP to apply it",
                    "; ".join(
                        [f"not bound: {', '.join(unbound)}"] * bool(unbound)
                        + [f"not in bind: {', '.join(map(str, unnamed))}"] * bool(unnamed)
                    ),
                )
        for listener in self.listeners:
            self.log.info("Listening at: %s (%s)", listener, self.pid)

    def _load_app(self, cfg: Any) -> Any:
        from forkhorn.wsgi.loader import load_app

        return load_app(cfg.wsgi_app)

    def _set_master_title(self) -> None:
        try:
            import setproctitle
        except ImportError:
            return
        setproctitle.setproctitle(f"forkhorn: master [{self.proc_name}]")

    # -- main loop ---------------------------------------------------------------------
    def _main_loop(self) -> None:
        while True:
            self._observe()  # first: a signal's handling may depend on who serves
            self._handle_signals()
            self._reap()
            self._observe()
            if not self._when_ready_called and self.stop_deadline is None:
                # Before the first workers are forked, as gunicorn calls it: what the hook
                # sets up in the master (a metrics server, shared state) is theirs too.
                self._when_ready_called = True
                self._call_hook("when_ready", self)
            now = time.monotonic()
            decision = decide(
                [rec.view() for rec in self.workers.values()],
                desired=self.num_workers,
                generation=self.generation,
                now=now,
                limits=self.limits,
                backoff=self.backoff,
                stop_deadline=self.stop_deadline,
            )
            self._apply(decision, now)
            if self.stop_deadline is not None and not self.workers:
                return
            self._maybe_promote()
            self._maybe_watchdog(now)
            timeout = LOOP_INTERVAL
            if decision.wake_at is not None:
                timeout = min(timeout, max(0.0, decision.wake_at - time.monotonic()))
            if any(isinstance(a, Spawn) for a in decision.actions):
                timeout = min(timeout, 0.05)  # look at the new workers' slots soon
            self.signals.wait(timeout)

    def _handle_signals(self) -> None:
        while True:
            signum = self.signals.pop()
            if signum is None:
                return
            self.log.info("Handling signal: %s", signal_name(signum))
            handler = self._signal_handlers.get(signum)
            if handler is not None:
                handler()

    # -- signal actions ----------------------------------------------------------------
    def handle_term(self) -> None:
        self.begin_stop(graceful=True)

    def handle_quick_stop(self) -> None:
        self.begin_stop(graceful=False)

    def handle_hup(self) -> None:
        if self.stop_deadline is not None:
            return
        self.log.info("Hang up: %s", self.master_name)
        self.reload()

    def handle_ttin(self) -> None:
        if self.stop_deadline is None:
            self._resizes += 1
            self._set_num_workers(self.num_workers + 1)

    def handle_ttou(self) -> None:
        if self.stop_deadline is not None:
            return
        if self.num_workers > 1:
            self._resizes -= 1
            self._set_num_workers(self.num_workers - 1)
        elif self._pending_reload is not None:
            # The reload asks for one worker already, but the previous settings, which
            # come back if it is abandoned, may have more: the TTOU counts for those.
            self._resizes -= 1
            self.log.info("TTOU: the reload's workers are 1, the least; kept should it fail")
        else:
            self.log.info("TTOU ignored: the number of workers is 1, the least")

    def handle_usr1(self) -> None:
        self.log.reopen_files()
        self._signal_workers(signal.SIGUSR1)

    def handle_usr2(self) -> None:
        if self.stop_deadline is None:
            self.reexec()

    def handle_winch(self) -> None:
        # gunicorn: with a daemonized master, WINCH stops the workers and keeps the master
        # (the first step of a binary upgrade); in a terminal it is just a window resize.
        if getattr(self.cfg, "daemon", False):
            self.log.info("graceful stop of workers")
            self._set_num_workers(0, notify=False)
        else:
            self.log.debug("SIGWINCH ignored. Not daemonized")

    def _set_num_workers(self, new: int, notify: bool = True) -> None:
        old = self.num_workers
        self.num_workers = new
        if notify:  # on every reload too, count changed or not, as gunicorn calls it
            self._call_hook("nworkers_changed", self, new, old)

    # -- stopping ----------------------------------------------------------------------
    def begin_stop(self, graceful: bool, timeout: float | None = None) -> None:
        """Tell every worker to stop and close the master's listeners; the loop then kills
        what is left at the deadline and returns once every worker is reaped."""
        now = time.monotonic()
        if timeout is None:
            graceful_timeout = float(self.cfg.graceful_timeout)
            timeout = graceful_timeout if graceful else min(graceful_timeout, QUICK_STOP_TIMEOUT)
        if self.stop_deadline is not None:
            if self.stop_graceful and not graceful:  # INT after TERM: hurry up
                self.stop_graceful = False
                self.stop_deadline = min(self.stop_deadline, now + timeout)
                self._signal_workers(signal.SIGQUIT)
            return
        self.stop_graceful = graceful
        self.stop_deadline = now + timeout
        systemd.stopping(self._environ)
        # Close ours first: with every worker closing its copy in its TERM handler, the
        # kernel socket goes away and new connections are refused instead of queued. And
        # before that, stop the kernel queueing new ones at all: each worker drains the
        # queue before it closes its copy, and from here on nothing can land behind the
        # last drain (see Listener.refuse_new).
        if self._sole_owner() and [lst for lst in self.listeners if lst.refuse_new()]:
            # A handshake whose SYN came before the filter may still be completing (the
            # client already counts itself connected); give it a moment to reach the
            # queue, or the workers' drain could miss it and their shutdown reset it.
            time.sleep(HANDSHAKE_GRACE)
        self._close_listeners()
        sig = signal.SIGTERM if graceful else signal.SIGQUIT
        for rec in self.workers.values():
            self._send(rec.pid, sig)
            if rec.retiring_since is None:
                rec.retiring_since = now

    def _sole_owner(self) -> bool:
        """True when no process but ours serves from these sockets: not systemd's (it keeps
        them to start us again), not a supervisor's (``fd://``), not shared with another
        master during a USR2 upgrade."""
        return (
            self.reexec_pid == 0
            and self.master_pid == 0
            and not self._systemd_sockets
            and all(listener.address.kind != "fd" for listener in self.listeners)
        )

    def _may_unlink(self) -> bool:
        # Never while another master uses the same socket files (USR2), nor files that
        # systemd or a supervisor (fd://) made. A master promoted by a USR2 upgrade
        # inherited its sockets from the old one and owns them now, files included.
        return (
            self.reexec_pid == 0
            and self.master_pid == 0
            and not self._systemd_sockets
            and not any(str(bind).startswith("fd://") for bind in self.cfg.bind)
        )

    def _close_listeners(self) -> None:
        unlink = self._may_unlink()
        pending = self._pending_reload
        dropped = pending.listeners if pending is not None and pending.listeners else []
        for listener in [*self.listeners, *(x for x in dropped if x not in self.listeners)]:
            listener.close(unlink=unlink)

    def _halt(self, code: int, reason: str) -> None:
        if self.stop_deadline is None:
            self.exit_code = code
            self.halt_reason = reason
            self.begin_stop(graceful=True, timeout=HALT_STOP_TIMEOUT)

    def _kill_all_now(self) -> None:
        """Start-up failed or the loop raised: no worker may outlive the master."""
        for rec in list(self.workers.values()):
            self._send(rec.pid, signal.SIGKILL)
        deadline = time.monotonic() + HALT_STOP_TIMEOUT
        while self.workers and time.monotonic() < deadline:
            try:
                pid, _ = os.waitpid(-1, 0)
            except ChildProcessError:
                break
            self.workers.pop(pid, None)

    def _cleanup(self) -> None:
        self._close_listeners()
        if self.pidfile is not None:
            self.pidfile.unlink()
        self.signals.uninstall()
        if self.scoreboard is not None and not self.workers:
            self.scoreboard.close()

    # -- reloading (HUP) ---------------------------------------------------------------
    def reload(self, resizes_since: int | None = None) -> None:
        """Re-read the config, start a full new generation of workers; the policy retires
        the old one once the new one serves.  On any failure the old one keeps serving.

        ``resizes_since``: for a queued HUP, the TTIN/TTOU count when it arrived; those
        received after it are added to the configured number of workers."""
        if self._pending_reload is not None:
            self._reload_again = True
            self._resizes_at_queued_hup = self._resizes
            self.log.warning(
                "Reload already in progress; another reload will follow it (HUP queued)"
            )
            return
        systemd.reloading(self._environ)
        old = _Release(
            self.cfg,
            self.worker_class or Worker,
            self.worker_class_name,
            self.wsgi,
            self.generation,
            self.num_workers,
            directory=_current_directory(),
        )
        new_cfg = self.cfg
        # Reading the new config puts its directory (a new release's) first on sys.path,
        # as gunicorn does; a refused reload must take it back, or the next worker forked
        # (a crash, a recycle, TTIN) imports the refused release's code.
        saved_path = list(sys.path)
        reload_cfg = getattr(self.cfg, "reload", None)
        if callable(reload_cfg):
            try:
                new_cfg = reload_cfg()
            except ForkhornError as exc:
                # Not half a deploy: the current workers, their config and code, go on.
                sys.path[:] = saved_path
                self.log.error("Reload failed; the current workers keep serving: %s", exc)
                systemd.ready(environ=self._environ)
                return
        snapshot = getattr(self.log, "snapshot", None)
        old.logging = snapshot() if callable(snapshot) else None
        try:
            old.listeners = self._rebind_if_changed(new_cfg)
            self._apply_logging(new_cfg)
            name, worker_class = self._resolve_worker_class(new_cfg)
            wsgi = self.wsgi
            if getattr(new_cfg, "preload_app", False) and (
                wsgi is None or new_cfg.wsgi_app != getattr(self.cfg, "wsgi_app", None)
            ):
                wsgi = self._load_app(new_cfg)
            elif wsgi is not None:
                # As in gunicorn: the master cannot import its modules a second time, so
                # the new workers get the code it loaded at start-up. Deploys that expect
                # HUP to pick up new code serve the old code; say so every time.
                self.log.warning(
                    "Reload: the app was loaded in the master (--preload), so the new "
                    "workers run the code loaded at start-up; send USR2 (then TERM to the "
                    "old master) to load new code"
                )
        except ForkhornError as exc:
            sys.path[:] = saved_path
            if old.listeners is not None:
                self._restore_listeners(old.listeners)
            if self.cfg is not new_cfg:  # (first: the line below goes to the current logs)
                self._restore_logging(old, self.cfg)
            self.log.error("Reload failed; the current workers keep serving: %s", exc)
            systemd.ready(environ=self._environ)
            return
        self._repidfile_if_changed(new_cfg)
        self._switch_environment(self.cfg, new_cfg)
        self.cfg = new_cfg
        self._set_master_title()  # proc_name may have changed (the new workers' is new)
        self._log_configuration()
        self.worker_class_name, self.worker_class, self.wsgi = name, worker_class, wsgi
        count = int(new_cfg.workers)
        if resizes_since is not None and self._resizes != resizes_since:
            count = max(1, count + self._resizes - resizes_since)
            self.log.info("Keeping the TTIN/TTOU received after the queued HUP: %d workers", count)
        self._set_num_workers(count)
        self._resizes_at_reload = self._resizes
        self._call_hook("on_reload", self)
        self._pending_reload = old
        self.generation += 1
        self.backoff = self._new_backoff()
        self._refill_traceback_token()
        self.log.info(
            "Reloading: booting %d new workers; %s",
            self.num_workers,
            "the current ones serve until they are ready"
            if self._any_serving()
            else "no worker is serving meanwhile",
        )

    def _shows_debug(self) -> bool:
        error_log = getattr(self.log, "error_log", None)
        return error_log is not None and bool(error_log.isEnabledFor(logging.DEBUG))

    def _log_configuration(self) -> None:
        # gunicorn's debug start-up shows every setting; ours says where each came from
        # (--print-config's lines). Built only when debug lines are shown.
        text = getattr(self.cfg, "print_config_text", None)
        if text is None or not self._shows_debug():
            return
        shown = text(hide_secrets=True)
        self.log.debug("Current configuration:\n%s", textwrap.indent(shown.rstrip("\n"), "  "))

    def _apply_logging(self, new_cfg: Any) -> None:
        """Set the logs up for ``new_cfg``; raises ``ForkhornError`` (the reload is then
        refused, and its caller sets the current settings up again: a failed set-up has
        closed the old handlers)."""
        setup = getattr(self.log, "setup", None)
        try:
            if callable(setup):
                setup(new_cfg)
            else:
                self.log.reopen_files()
        except ForkhornError:
            raise
        except Exception as exc:
            raise ForkhornError(f"the new logging settings: {exc}") from exc

    def _restore_logging(self, old: _Release, cfg: Any) -> None:
        """The logging set-up from before the reload ``old`` again, from the config files'
        contents it had read (``Logger.restore``): read again, a log config file the
        deploy replaced with a broken one would fail the restore too, and leave the
        master's lines off their log and the next workers without an access log."""
        restore = getattr(self.log, "restore", None)
        try:
            if old.logging is not None and callable(restore):
                restore(old.logging)
            else:
                self._apply_logging(cfg)
        except Exception as exc:  # said wherever the logs now go, not swallowed
            self.log.error("Could not set the previous logging up again: %s", exc)

    def _switch_environment(self, old_cfg: Any, new_cfg: Any, directory: str | None = None) -> None:
        """What the master applied of the old config for its workers to inherit: the
        paths (``_apply_paths``) and ``raw_env`` (a key the new config drops is unset, as
        gunicorn does). ``directory``: as for ``_apply_paths``."""
        self._apply_paths(new_cfg, directory)
        old_env = dict(getattr(old_cfg, "env", None) or {})
        new_env = dict(getattr(new_cfg, "env", None) or {})
        _unset_raw_env(os.environ, old_env.keys() - new_env.keys(), new_cfg)
        os.environ.update(new_env)

    def _rebind_if_changed(self, new_cfg: Any) -> list[Listener] | None:
        """Bind what the new ``bind`` adds and keep what it still names (binding an
        address that stays would fail: it is ours, and open). Returns the listeners as
        they were, or None when ``bind`` did not change; raises ``BindError`` (the reload
        is refused, nothing changed) when an address cannot be bound. The dropped
        listeners stay open until the reload completes (``_drop_old_listeners``): an
        abandoned reload puts everything back."""
        if self._systemd_sockets:
            return None  # (systemd's sockets are its own: their bind is its unit's)
        if list(new_cfg.bind) == list(self.cfg.bind) and self._bind_mismatch() == ([], []):
            return None  # (the same list, and served as it says: unlike after a USR2)
        refuse_same_address_twice(new_cfg.bind)
        current = self._listeners_by_bind()
        wanted: dict[Any, str] = {}  # each address once, as first written, in order
        for bind in new_cfg.bind:
            wanted.setdefault(parse_address(bind), str(bind))
        # An address written differently (localhost:8000 for 127.0.0.1:8000) is still the
        # open listener: binding it again would fail "in use".
        kept = [current[address] for address in wanted if address in current]
        unclaimed = [each for each in current.values() if each not in kept]
        for address in wanted:
            if address not in current:
                match = next((each for each in unclaimed if each.serves(address)), None)
                if match is not None:
                    current[address] = match
                    unclaimed.remove(match)
        made: dict[Any, Listener] = {}
        try:
            for address, bind in wanted.items():
                if address not in current:
                    (made[address],) = create_listeners(
                        [bind],
                        backlog=int(getattr(new_cfg, "backlog", 2048)),
                        reuse_port=bool(getattr(new_cfg, "reuse_port", False)),
                        umask=getattr(new_cfg, "umask", None),
                        owner=(getattr(new_cfg, "user", None), getattr(new_cfg, "group", None)),
                        environ={},
                        attempts=1,
                    )
        except ForkhornError as exc:
            for listener in made.values():
                listener.close(unlink=True)
            holder = next(
                (
                    each
                    for each in unclaimed
                    if address.kind == "tcp"
                    and not each.is_unix
                    and each.getsockname()[1] == address.port
                ),
                None,
            )
            if holder is None:
                raise
            # Its port is held by a listener this reload drops, which the old workers keep
            # open until they leave: the two cannot be bound at once (gunicorn closes
            # first and drops what arrives meanwhile).
            raise BindError(
                f"{exc}: the port is held by {holder}, which this bind drops but the "
                "old workers keep open until they leave; a restart moves it"
            ) from None
        before = list(self.listeners)
        self.listeners = [current.get(address) or made[address] for address in wanted]
        for listener in made.values():
            self.log.info("Listening at: %s (%s)", listener, self.pid)
        return before

    def _bind_mismatch(self) -> tuple[list[str], list[Listener]]:
        """The bind entries no listener serves, and the listeners no entry names: both
        empty unless the sockets were inherited (USR2) from a master whose bind list was
        different. Never for systemd's sockets, whose bind is their unit's."""
        if not self._inherited_sockets or self._systemd_sockets:
            return [], []
        current = self._listeners_by_bind()
        unbound = [str(b) for b in self.cfg.bind if parse_address(b) not in current]
        named = list(current.values())
        return unbound, [each for each in self.listeners if each not in named]

    def _listeners_by_bind(self) -> dict[Any, Listener]:
        """The listeners by the address of the ``bind`` entry each serves, as written
        (``localhost:8000``), not as bound (127.0.0.1)."""
        if not self._inherited_sockets:
            # Made from the current bind list, one each, in its order.
            return {
                parse_address(bind): listener
                for bind, listener in zip(self.cfg.bind, self.listeners, strict=False)
            }
        # Inherited from the master before a USR2, in its bind list's order, which this
        # config's may not follow: each entry takes the listener bound to it, if any.
        current: dict[Any, Listener] = {}
        free = list(self.listeners)
        for bind in self.cfg.bind:
            address = parse_address(bind)
            for listener in free:
                if listener.serves(address):
                    current[address] = listener
                    free.remove(listener)
                    break
        return current

    def _restore_listeners(self, before: list[Listener]) -> None:
        """Undo ``_rebind_if_changed``: close what it added, serve what was there."""
        unlink = self._may_unlink()
        for listener in self.listeners:
            if listener not in before:
                listener.close(unlink=unlink)
        self.listeners = before

    def _refuse_dropped(self, before: list[Listener]) -> None:
        """The reload completes: before the old workers are told to stop, the sockets the
        new ``bind`` dropped stop taking connections (as at a stop: ``refuse_new``, or a
        Unix socket's file removed), so the old workers, their last holders, take and
        serve what is queued on them instead of resetting it (``Listener.going_away``)."""
        if not self._sole_owner():
            return
        unlink = self._may_unlink()
        refused = False
        for listener in before:
            if listener in self.listeners:
                continue
            if listener.is_unix:
                if unlink:
                    listener.unlink()
            elif listener.refuse_new():
                refused = True
        if refused:
            time.sleep(HANDSHAKE_GRACE)  # as in begin_stop: let late handshakes land

    def _drop_old_listeners(self, before: list[Listener]) -> None:
        """The reload completed: close the listeners the new ``bind`` no longer names (the
        old workers, now retiring, closed theirs as they stopped)."""
        unlink = self._may_unlink()
        for listener in before:
            if listener not in self.listeners:
                self.log.info("No longer listening at: %s", listener)
                listener.close(unlink=unlink)

    def _repidfile_if_changed(self, new_cfg: Any) -> None:
        path = getattr(new_cfg, "pidfile", None)
        if path == getattr(self.cfg, "pidfile", None):
            return
        if self.pidfile is not None:
            self.pidfile.unlink()
            self.pidfile = None
        if path:
            self.pidfile = Pidfile(f"{path}.2" if self.master_pid else path)
            try:
                self.pidfile.create(self.pid)
            except ForkhornError as exc:
                self.log.error("Reload: %s", exc)
                self.pidfile = None

    def _abandon_reload(self, reason: str) -> None:
        old = self._pending_reload
        if old is None:
            return
        failed_generation = self.generation
        previous_serve = any(
            r.reached_serving and r.retiring_since is None and r.generation != failed_generation
            for r in self.workers.values()
        )
        self.log.error(
            "Reload abandoned: the new workers failed to boot (%s); %s",
            reason,
            "the previous workers keep serving"
            if previous_serve
            else "no previous worker is left to serve: starting them again, one at a time",
        )
        self._pending_reload = None
        self._hold_recycling(True)
        if old.listeners is not None:
            self._restore_listeners(old.listeners)
        self._switch_environment(self.cfg, old.cfg, old.directory)
        self._restore_logging(old, old.cfg)
        self.cfg = old.cfg
        self._set_master_title()
        self.worker_class = old.worker_class
        self.worker_class_name = old.worker_class_name
        self.wsgi = old.wsgi
        self.generation = old.generation
        # TTIN and TTOU received during the reload still count: the operator asked for
        # them after the HUP, and the log said so ("Handling signal: ttin").
        resized = self._resizes - self._resizes_at_reload
        self.num_workers = max(1, old.num_workers + resized)
        if self.num_workers != old.num_workers:
            self.log.info(
                "Keeping the TTIN/TTOU received during the reload: %d workers, not %d",
                self.num_workers,
                old.num_workers,
            )
        for rec in self.workers.values():
            if rec.generation == old.generation and rec.reached_serving:
                # They served before the HUP: their lasting 5 s now says nothing of the
                # release on disk, which must not reset the backoff below.
                rec.proven = True
        # As after a failed boot: the previous workers that are missing (killed, crashed,
        # TTIN) start one at a time, since they load the app from the same disk the new
        # ones just failed on (all of them at once made a burst of failing imports).
        self.backoff = self._new_backoff().failed(time.monotonic())
        # The token is not refilled here: the failed generation's slower workers are
        # still failing, and one of them would log the same traceback again.
        now = time.monotonic()
        for rec in self.workers.values():
            if rec.generation == failed_generation and rec.retiring_since is None:
                self._send(rec.pid, signal.SIGTERM)
                rec.retiring_since = now
        systemd.ready(environ=self._environ)
        self._run_queued_reload()

    def _run_queued_reload(self) -> None:
        if self._reload_again and self._pending_reload is None and self.stop_deadline is None:
            self._reload_again = False
            self.log.info("Running the reload queued by a HUP received during the last one")
            self.reload(resizes_since=self._resizes_at_queued_hup)

    # -- re-exec (USR2) ----------------------------------------------------------------
    def reexec_argv(self) -> list[str]:
        """The command line of the new master: the same one that started us."""
        argv = self._start_argv
        script = argv[0] if argv else ""
        if script.endswith("__main__.py") and os.path.basename(os.path.dirname(script)) == (
            "forkhorn"
        ):
            # Started as ``python -m forkhorn``: running __main__.py as a script would put
            # the package directory first on sys.path (and shadow the stdlib's ``http``).
            return [sys.executable, "-m", "forkhorn", *argv[1:]]
        return [sys.executable, *argv]

    def reexec(self) -> None:
        """Fork a child that execs a new master inheriting the listeners (USR2)."""
        if self.reexec_pid:
            self.log.warning("USR2 signal ignored. Child exists.")
            return
        if self.master_pid:
            self.log.warning("USR2 signal ignored. Parent exists.")
            return
        if os.getpid() == 1:
            # The new master would be this one's child in its PID namespace (a container
            # without an init), which the kernel kills with everything else once PID 1
            # exits: the upgrade's last step, TERM to the old master, would stop the server.
            self.log.warning(
                "USR2 signal ignored: this master is PID 1, and the new one would die with "
                "it. Reload with HUP, or run forkhorn under an init (tini, dumb-init, "
                "docker run --init) to upgrade with USR2"
            )
            return
        master_pid = os.getpid()
        argv = self.reexec_argv()
        try:
            pid = os.fork()
        except OSError as exc:
            self.log.error("USR2 failed: cannot start the new master: %s", exc.strerror or exc)
            return
        if pid:
            self.reexec_pid = pid
            self.log.info("Re-executing a new master (pid: %s): %s", pid, " ".join(argv))
            return
        # Child: becomes the new master.  Never returns into this loop.
        try:
            self.signals.uninstall()
            self._call_hook("pre_exec", self)
            # The environment as it was before raw_env: the new master applies its own
            # config's, and a key that config dropped must not live on through this one.
            environ = dict(os.environ)
            _unset_raw_env(environ, (getattr(self.cfg, "env", None) or {}).keys(), self.cfg)
            environ[PID_ENV] = str(master_pid)
            if self._systemd_sockets:
                environ["LISTEN_PID"] = str(os.getpid())
                environ["LISTEN_FDS"] = str(len(self.listeners))
                export_fds(self.listeners)
            else:
                environ[FD_ENV] = export_fds(self.listeners)
            os.chdir(self._start_cwd)
            environ["PWD"] = self._start_cwd  # the path, maybe a symlink, not where it led
            os.execve(argv[0], argv, environ)
        except BaseException:
            self.log.exception("Re-exec failed")
        finally:
            os._exit(1)

    def _maybe_promote(self) -> None:
        if self.master_pid and os.getppid() != self.master_pid:
            self.master_name = "Master"
            self.master_pid = 0
            path = getattr(self.cfg, "pidfile", None)
            if self.pidfile is not None and path:
                try:
                    self.pidfile.rename(path)
                except ForkhornError as exc:
                    # The server goes on without one, as on HUP: a pid file it cannot
                    # write (its directory gone) took the promoted master down, with its
                    # workers, just after the old one had been stopped.
                    self.log.error("Promotion: %s", exc)
            self._set_master_title()
            # Said once the pidfile is in place: whoever waits for this line may read it.
            self.log.info("Master has been promoted.")

    def _maybe_watchdog(self, now: float) -> None:
        if self._watchdog_interval is not None and now >= self._next_watchdog:
            self._next_watchdog = now + self._watchdog_interval
            systemd.watchdog(self._environ)

    # -- workers -----------------------------------------------------------------------
    def spawn_worker(self) -> int:
        """Fork one worker of the current generation; returns its pid (in the master)."""
        assert self.scoreboard is not None and self.worker_class is not None
        self._age += 1
        now = time.monotonic()
        limits = self.limits
        slot = self.scoreboard.allocate(self.generation, now)
        worker = self.worker_class(
            self._age,
            self.pid,
            self.listeners,
            self.cfg.wsgi_app,
            float(self.cfg.timeout or 0),
            self.cfg,
            self.log,
            slot,
            wsgi_app=self.wsgi,
        )
        # At first start-up one clear line is enough; later (a reload, a respawn) the
        # operator needs the traceback, once, not on every backoff retry.
        worker.log_boot_traceback = self.ever_ready and self.backoff.failures == 0
        if self._traceback_token is not None:
            worker.traceback_token = self._traceback_token[0]
        self._call_hook("pre_fork", self, worker)
        try:
            worker.stack_file = self._new_stack_file()
            with blocked_across_fork() as mask:
                pid = os.fork()
                if not pid:
                    self._run_child(worker, mask)  # never returns
        except BaseException:
            _close_quietly(worker.stack_file)
            self.scoreboard.free(slot)
            raise
        worker.pid = pid
        self.workers[pid] = WorkerRecord(
            worker,
            pid,
            self._age,
            self.generation,
            slot,
            now,
            heartbeat=now,
            grace=float(self.cfg.graceful_timeout),
            timeout=limits.timeout,
            request_timeout=limits.request_timeout,
        )
        return pid

    def _spawn_or_back_off(self) -> bool:
        """``spawn_worker``, where a failed fork (EAGAIN at a container's pids limit,
        ENOMEM) or a failed scoreboard map counts as a worker that failed to boot: logged,
        retried after the boot backoff, while the workers there are keep serving. It took
        the master down, and every worker with it."""
        try:
            self.spawn_worker()
        except OSError as exc:
            self._back_off(f"Cannot start a worker: {exc.strerror or exc}")
            return False
        return True

    def _run_child(self, worker: Worker, mask: set[int | signal.Signals]) -> NoReturn:
        """Runs in: the newly forked worker process.  Leaves only through ``os._exit``."""
        # Everything the master made (modules, settings, a preloaded app) is frozen here,
        # before the child allocates anything: its collections then never write to those
        # objects' GC headers, which would copy every page they sit on into each worker.
        # Frozen in the child, not in the master around the fork: unfreezing puts every
        # object straight into the master's oldest generation, uncounted, so the garbage
        # of each reload (the old settings) waited there for a full collection that the
        # master's few allocations never set off: about 70 kB more per HUP, for ever.
        # (Freezing is a splice of the GC's lists, so it touches only a few objects.)
        gc.freeze()
        for rec in self.workers.values():  # the other workers' dump files are not ours
            _close_quietly(rec.worker.stack_file)
        # Nor the listeners a reload in progress drops: held open here, a dropped port
        # stayed bound in the new workers, with clients queued on it that nobody served.
        pending = self._pending_reload
        if pending is not None and pending.listeners is not None:
            for listener in pending.listeners:
                if listener not in self.listeners:
                    listener.close(unlink=False)
        code = 0
        # "Worker exiting" and worker_exit, once: here at the end, or from a worker that
        # must end the process itself (the fast worker aborted for a hang: uvloop would
        # swallow the exit raised in its callback).
        worker.leaving = _once(lambda: self._worker_leaving(worker))
        try:
            self.signals.reset_in_child(mask)
            worker.pid = os.getpid()
            self.log.info("Booting worker with pid: %s", worker.pid)
            hook = _hook(self.cfg, "post_fork")
            if hook is not None:
                hook(self, worker)
            worker.init_process()
        except SystemExit as exc:
            code = _exit_code_of(exc.code)
        except BaseException as exc:
            self.log.exception("Exception in worker process")
            if not worker.booted:
                worker.slot.boot_failed(f"{type(exc).__name__}: {exc}")
                code = WORKER_BOOT_ERROR
            else:
                code = 1
        finally:
            worker.leaving()
            try:
                # The app's atexit handlers (a tracer's or an error reporter's last flush,
                # a temporary directory's removal) run as they would at a normal
                # interpreter exit, and as gunicorn's workers run them: os._exit alone
                # skips them. A handler that raises is reported on stderr by atexit itself.
                # Not after a hang (SIGABRT): the stuck thread may hold a lock a handler
                # needs, and the master's SIGKILL follows in seconds.
                if not worker.aborted:
                    atexit._run_exitfuncs()
            except BaseException:
                self.log.exception("Exception in an atexit handler")
            try:
                sys.stdout.flush()
                sys.stderr.flush()
                _tell_lost_log_lines(self.log)
                logging.shutdown()
            finally:
                os._exit(code)

    def _worker_leaving(self, worker: Worker) -> None:
        try:
            self.log.info("Worker exiting (pid: %s)", worker.pid)
            hook = _hook(self.cfg, "worker_exit")
            if hook is not None:
                hook(self, worker)
        except BaseException:
            self.log.exception("Exception during worker exit")

    def _send(self, pid: int, sig: int) -> None:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass  # already gone; the reap will tell

    def _signal_workers(self, sig: int) -> None:
        for pid in list(self.workers):
            self._send(pid, sig)

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if pid == self.reexec_pid:
                self.reexec_pid = 0
                self.log.warning("The re-executed master (pid: %s) exited", pid)
                continue
            rec = self.workers.pop(pid, None)
            if rec is not None:
                self._on_worker_exit(rec, os.waitstatus_to_exitcode(status))

    def _on_worker_exit(self, rec: WorkerRecord, code: int) -> None:
        snap = rec.slot.snapshot()
        reached = rec.reached_serving or snap.state.is_serving or snap.requests > 0
        if snap.requests > 0 and not self.ever_ready:
            # It served and left between two looks of the master (a small max_requests):
            # the server has served, and a replacement that fails to boot must back off,
            # not halt the master as at start-up.
            self.ever_ready = True
            systemd.ready(environ=self._environ)
        reason = snap.request_line.decode("utf-8", "replace") or rec.abort_reason
        killed_outside = code == -signal.SIGKILL and not rec.killed
        early_kill = False
        if (
            reached
            and code != 0
            and snap.requests == 0
            and rec.retiring_since is None
            and not rec.killed
            and rec.aborted_at is None
            and time.monotonic() - (rec.ready_at or rec.spawned_at) < EARLY_CRASH
        ):
            reached = False  # it died right after booting (EARLY_CRASH): backoff
            how = f"exit code {code}" if code >= 0 else signal_full_name(-code)
            reason = reason or f"it died right after booting, before its first request ({how})"
            # A SIGKILL from outside (the OOM killer, an operator) says nothing of the
            # release: not a failed boot, and recycling goes on. The respawn still backs
            # off: something that kills every new worker must not make a fork loop.
            early_kill = killed_outside
        if code < 0:
            sig = -code
            if sig == signal.SIGKILL and not rec.killed:
                self.log.error("Worker (pid:%s) was sent SIGKILL! Perhaps out of memory?", rec.pid)
            elif sig == signal.SIGKILL and rec.boot_failed_at is not None:
                self.log.warning(
                    "Worker (pid:%s) failed to boot and did not exit (an atexit handler that "
                    "hangs?); killed (SIGKILL) after graceful_timeout",
                    rec.pid,
                )
            elif sig == signal.SIGKILL and snap.request_start > 0.0:
                # Cut mid-request (graceful_timeout ran out, or an abort did not end it):
                # name the request, as the timeout's own lines do, so it can be found.
                self.log.warning(
                    "Worker (pid:%s) was killed (SIGKILL) by the master while serving %r "
                    "for %.1fs%s",
                    rec.pid,
                    snap.request_line.decode("latin-1"),
                    max(0.0, time.monotonic() - snap.request_start),
                    self._kill_why(rec),
                )
            elif sig == signal.SIGKILL:
                self.log.warning(
                    "Worker (pid:%s) was killed (SIGKILL) by the master%s",
                    rec.pid,
                    self._kill_why(rec),
                )
            elif (rec.retiring_since is None or rec.retired_itself) and rec.aborted_at is None:
                # (Not told to stop by the master: a signal from elsewhere, or a crash.)
                self.log.error("Worker (pid:%s) was sent %s!", rec.pid, signal_full_name(sig))
        elif code != 0 and snap.state is not WorkerState.BOOT_FAILED:
            # (A boot failure gets its own line below, with the reason.)
            self.log.error("Worker (pid:%s) exited with code %s.", rec.pid, code)
        self._log_stacks(rec)
        self._call_hook("child_exit", self, rec.worker)
        assert self.scoreboard is not None
        self.scoreboard.free(rec.slot)
        if self.stop_deadline is not None:
            return
        if code < 0 and rec.boot_failed_at is not None and rec.killed:
            # It reported a failed boot, then hung on its way out (an atexit handler) and
            # was killed for it: judged as the boot failure it reported.
            code = WORKER_BOOT_ERROR
        pending = self._pending_reload
        verdict = judge_exit(
            exit_code=code if code >= 0 else None,
            reached_serving=reached,
            expected=rec.retiring_since is not None
            or (rec.killed and rec.aborted_at is None and rec.boot_failed_at is None),
            generation=rec.generation,
            current_generation=self.generation,
            ever_ready=self.ever_ready,
            older_generation_serving=pending is not None,
            boot_failures=self.backoff.failures,
            killed_outside=killed_outside,
            reload_kills=pending.kills if pending is not None else 0,
        )
        if (
            killed_outside
            and pending is not None
            and not reached
            and rec.generation == self.generation
        ):
            pending.kills += 1
            if verdict.verdict is Verdict.REPLACE:
                self.log.warning(
                    "A new worker of the reload was killed while booting, not by the "
                    "master; booting another (%d so far; the reload is abandoned at %d)",
                    pending.kills,
                    RELOAD_KILL_LIMIT,
                )
            else:
                reason = f"{pending.kills} of them were killed (SIGKILL) while booting"
        if verdict.verdict is Verdict.HALT:
            if verdict.exit_code == APP_LOAD_ERROR:
                # The worker logged the traceback at debug level; say where it is.
                hint = "" if self._shows_debug() else " (--log-level debug shows its traceback)"
                self.log.error("App failed to load: %s%s", reason or "see the errors above", hint)
                self._halt(APP_LOAD_ERROR, "App failed to load.")
            else:
                if not reason and code != WORKER_BOOT_ERROR:
                    # It died without saying why, again and again, before any worker served.
                    how = f"with exit code {code}" if code >= 0 else f"of {signal_full_name(-code)}"
                    reason = (
                        f"{self.backoff.failures + 1} workers died while booting, the last "
                        f"{how}, and none has booted"
                    )
                self.log.error("Worker failed to boot.%s", f" {reason}" if reason else "")
                self._halt(WORKER_BOOT_ERROR, "Worker failed to boot.")
        elif verdict.verdict is Verdict.ABANDON_RELOAD:
            self._abandon_reload(reason or f"exit code {code}")
        elif verdict.verdict is Verdict.BACKOFF and early_kill:
            self._back_off(
                f"Worker (pid:{rec.pid}) was killed (SIGKILL) from outside right after "
                "booting, before its first request",
                failing=False,
            )
        elif verdict.verdict is Verdict.BACKOFF:
            why = reason or (f"exit code {code}" if code >= 0 else signal_full_name(-code))
            self._back_off(f"Worker (pid:{rec.pid}) failed to boot ({why})")

    def _kill_why(self, rec: WorkerRecord) -> str:
        """Why the master killed ``rec``, for its exit line ("" when it does not know)."""
        grace = rec.grace if rec.grace is not None else self.cfg.graceful_timeout
        if rec.kill_reason is KillReason.GRACEFUL_TIMEOUT:
            return f": graceful_timeout ({grace:g}s) ran out before it finished its requests"
        if rec.kill_reason is KillReason.STOP_DEADLINE:
            return f": the stop's graceful_timeout ({grace:g}s) ran out"
        if rec.kill_reason is KillReason.ABORT_GRACE:
            return ": it did not exit after its stacks were dumped (SIGABRT)"
        return ""

    def _hold_recycling(self, failing: bool) -> None:
        """While new workers fail to boot (a bad release on disk, a refused reload), the
        workers serving must not recycle themselves: each replacement would fail too, and
        max_requests alone would take the server down worker by worker. Held from a boot
        failure until a worker of the current generation is ready; said when it starts
        and ends."""
        if failing == self._boots_failing:
            return
        self._boots_failing = failing
        # The scoreboard's notice to the workers. (That no more than half of them recycle
        # at once, each worker sees in the scoreboard itself: ``too_many_changing``.)
        if self.scoreboard is not None:
            self.scoreboard.hold_recycling(HOLD_FAILING if failing else 0)
        cfg = self.cfg
        recycles = [
            name
            for name in ("max_requests", "max_worker_lifetime", "max_worker_memory")
            if float(getattr(cfg, name, 0) or 0) > 0
        ]
        if not recycles:
            return
        if failing and self.ever_ready:  # (at start-up a failed boot halts, or backs off)
            self._hold_said = True
            self.log.warning(
                "Holding worker recycling (%s) until a new worker boots: its replacement "
                "would fail to boot too (a fixed release needs a HUP, unless a worker is "
                "being respawned)",
                ", ".join(recycles),
            )
        elif not failing and self._hold_said:
            self._hold_said = False
            self.log.info("A new worker booted: worker recycling resumes")

    def _back_off(self, what: str, failing: bool = True) -> None:
        """A worker failed to boot, or could not be started: count it in the boot
        backoff, and say so with when the next one will be tried. ``failing``: hold
        recycling too (its replacement would fail the same way)."""
        self.backoff = self.backoff.failed(time.monotonic())
        if failing:
            self._hold_recycling(True)
        if self._any_serving():
            others = "the other workers keep serving"
        elif self.ever_ready:
            # (One worker restarted by --reload, say: connections wait in the queue.)
            others = "no worker is serving meanwhile"
        else:
            others = "no worker has booted yet"
        self.log.error(
            "%s; retrying in %.1fs (failure %d); %s",
            what,
            self.backoff.delay_after(self.backoff.failures),
            self.backoff.failures,
            others,
        )

    def _observe(self) -> None:
        """Copy the scoreboard into the table; note workers that became ready."""
        current_ready = False
        current_proven = False
        now = time.monotonic()
        for rec in self.workers.values():
            snap = rec.slot.snapshot()
            rec.state = snap.state
            rec.heartbeat = snap.heartbeat
            rec.in_request = snap.request_start > 0.0
            if snap.state is WorkerState.BOOT_FAILED and rec.boot_failed_at is None:
                rec.boot_failed_at = now  # it must now exit (policy rule 2)
                self._hold_recycling(True)  # before its slot is freed (too_many_changing)
            if snap.state is WorkerState.EXITING and rec.retiring_since is None:
                # It retired itself (max_requests, lifetime, memory): no longer active,
                # so its replacement starts now, and graceful_timeout bounds its exit.
                rec.retiring_since = now
                rec.retired_itself = True
            if snap.state.is_serving and not rec.reached_serving:
                rec.reached_serving = True
                rec.ready_at = now
                current_ready = current_ready or rec.generation == self.generation
                if not self.ever_ready:  # any generation: the server has served
                    self.ever_ready = True
                    systemd.ready(environ=self._environ)
            if (
                rec.reached_serving
                and not rec.proven
                and rec.generation == self.generation
                and (snap.requests > 0 or now - (rec.ready_at or now) >= EARLY_CRASH)
            ):
                rec.proven = True
                current_proven = True
        if current_ready:
            self._refill_traceback_token()
            self._hold_recycling(False)
        if current_proven and self.backoff.failures:
            self.log.info("A worker booted and stayed up; boot backoff reset")
            self.backoff = self.backoff.succeeded()

    def _refill_traceback_token(self) -> None:
        """Put the one byte back (see ``_traceback_token``), dropping any left over."""
        if self._traceback_token is None:
            try:
                r, w = os.pipe()
            except OSError as exc:
                # Out of file descriptors (EMFILE): the token is a nicety (one traceback
                # of a bad release), not worth the master; the next ready worker retries.
                self.log.warning("Could not make the traceback token pipe: %s", exc)
                return
            os.set_blocking(r, False)
            os.set_blocking(w, False)
            self._traceback_token = (r, w)
        r, w = self._traceback_token
        # Read only what select says is there: under eventlet's monkey_patch (a config
        # file or a preloaded app may patch the master) os.read on an empty pipe parks
        # the caller instead of raising EAGAIN (as in SignalQueue._drain).
        with contextlib.suppress(OSError):
            while select.select([r], [], [], 0)[0] and os.read(r, 64):
                pass
            os.write(w, b"t")

    def _apply(self, decision: Decision, now: float) -> None:
        retired_for_reload = 0
        pending = self._pending_reload
        if (
            pending is not None
            and pending.listeners is not None
            and any(
                isinstance(action, Retire) and action.reason is RetireReason.RELOAD
                for action in decision.actions
            )
        ):
            self._refuse_dropped(pending.listeners)
        for action in decision.actions:
            if isinstance(action, Spawn):
                for _ in range(action.count):
                    if not self._spawn_or_back_off():
                        break
            elif isinstance(action, Retire):
                rec = self.workers.get(action.pid)
                if rec is None:
                    continue
                fast = action.reason is RetireReason.STOP and not self.stop_graceful
                self._send(rec.pid, signal.SIGQUIT if fast else signal.SIGTERM)
                rec.retiring_since = now
                if action.reason is RetireReason.RELOAD:
                    retired_for_reload += 1
            elif isinstance(action, Abort):
                self._abort(action, now)
            elif isinstance(action, Kill):
                rec = self.workers.get(action.pid)
                if rec is None:
                    continue
                self._send(rec.pid, signal.SIGKILL)
                rec.killed = True
                rec.kill_reason = action.reason
        if self._pending_reload is not None and (
            retired_for_reload or self._new_generation_alone_serves()
        ):
            if self._pending_reload.listeners is not None:
                self._drop_old_listeners(self._pending_reload.listeners)
            self._pending_reload = None
            self.log.info(
                "Reload complete: %d new workers serving; retiring %d previous workers",
                self.num_workers,
                retired_for_reload,
            )
            systemd.ready(environ=self._environ)
            self._run_queued_reload()

    def _any_serving(self) -> bool:
        return any(r.reached_serving and r.retiring_since is None for r in self.workers.values())

    def _new_generation_alone_serves(self) -> bool:
        """A reload with no previous worker left to retire (they had all crashed, say,
        a crash-looping release being replaced) is complete once the new generation
        serves in full. It used to stay pending for ever: later HUPs were only queued, and
        the next boot failure of any worker "abandoned" it, stopping the healthy new
        workers and putting back the broken release."""
        serving = 0
        for rec in self.workers.values():
            if rec.retiring_since is not None:
                continue
            if rec.generation != self.generation:
                return False  # the policy retires it once the new ones serve
            serving += rec.reached_serving
        return serving >= self.num_workers

    def _abort(self, action: Abort, now: float) -> None:
        rec = self.workers.get(action.pid)
        if rec is None:
            return
        snap = rec.slot.snapshot()
        self.log.critical("WORKER TIMEOUT (pid:%s)", rec.pid)
        age = snap.request_age(now)
        if action.booting:
            self.log.error(
                "Worker (pid:%s) still booting after %.1fs; dumping its stacks (SIGABRT)",
                rec.pid,
                action.stalled_for,
            )
            rec.abort_reason = f"still booting after {action.stalled_for:.1f}s, the timeout"
        elif age is not None:
            self.log.error(
                "Worker (pid:%s) stuck on %r for %.1fs; dumping its stacks (SIGABRT)",
                rec.pid,
                snap.request_line.decode("latin-1"),
                age,
            )
        else:
            self.log.error(
                "Worker (pid:%s) silent for %.1fs; dumping its stacks (SIGABRT)",
                rec.pid,
                action.stalled_for,
            )
        self._send(rec.pid, signal.SIGABRT)
        rec.aborted_at = now

    def _new_backoff(self) -> Backoff:
        """The respawn backoff; with ``--reload`` it stops growing at RELOAD_MAX_BACKOFF,
        so that a broken edit's fix is served within seconds, not after up to 30."""
        if getattr(self.cfg, "reload_enabled", False) is True:  # (cfg.reload is a method)
            return Backoff(max_delay=RELOAD_MAX_BACKOFF)
        return Backoff()

    def _new_stack_file(self) -> Any:
        """An anonymous file for a worker's stack dump (``Worker.stack_file``), in memory
        where the system can (and named for what it holds in /proc/PID/fd); None if none
        can be made (out of descriptors, say): the dump then goes to the error log."""
        try:
            if hasattr(os, "memfd_create"):
                return os.fdopen(os.memfd_create("forkhorn-stacks"), "w+b")
            return tempfile.TemporaryFile(
                prefix="forkhorn-stacks-", dir=getattr(self.cfg, "worker_tmp_dir", None) or None
            )
        except OSError:
            return None

    def _log_stacks(self, rec: WorkerRecord) -> None:
        """Log, in one record, what the exited worker's fatal-signal handler dumped."""
        file = rec.worker.stack_file
        if file is None:
            return
        rec.worker.stack_file = None
        try:
            file.seek(0)
            dump = file.read(STACK_DUMP_LIMIT).decode("utf-8", "replace").rstrip()
        except (OSError, ValueError):
            dump = ""
        finally:
            _close_quietly(file)
        if dump:
            self.log.error("Stacks of worker (pid:%s), dumped as it died:\n%s", rec.pid, dump)

    def _call_hook(self, name: str, *args: Any) -> None:
        hook = _hook(self.cfg, name)
        if hook is None:
            return
        try:
            hook(*args)
        except Exception:
            self.log.exception("Exception in %s hook", name)


def _unset_raw_env(environ: MutableMapping[str, str], keys: Any, cfg: Any) -> None:
    """Take ``raw_env``'s ``keys`` out of ``environ``: back to the value the process
    started with, or unset when it had none."""
    start = getattr(cfg, "start_environ", None) or {}
    for key in keys:
        if key in start:
            environ[key] = start[key]
        else:
            environ.pop(key, None)


def _current_directory() -> str | None:
    """``os.getcwd()``, or None when the directory we are in was deleted (a deploy that
    removed the old release the master was started in)."""
    try:
        return os.getcwd()
    except OSError:
        return None
