"""The worker base class: the life cycle every worker class shares, and nothing else.

A worker class (``sync.py``, ``gthread.py`` ...) subclasses ``Worker`` and implements
``run()``: how it waits, accepts and runs the app.  Everything around that lives here:

- ``__init__`` runs in the master *before* the fork and touches no process state.
- ``init_process()`` runs in the child after the fork: reseeds ``random``, sets the process
  title, applies ``raw_env``, drops privileges, installs the signal handlers and the
  faulthandler stack dump, loads the app (unless preloaded), calls ``post_worker_init``,
  marks its scoreboard slot READY, then calls ``run()``.
- The scoreboard slot is the heartbeat: ``notify()`` is one store into shared memory.
  ``request_started(line)`` / ``request_finished()`` keep the slot and ``max_requests``.
- Recycling: ``max_requests`` (+ jitter), ``max_worker_lifetime`` (+ jitter) and
  ``max_worker_memory`` (RSS from /proc/self/statm) each end in ``retire(reason)``.

Signals in a worker (after ``init_process``):

- TERM (and HUP): graceful.  ``alive`` turns False and this process's copies of the
  listening sockets are closed at once, inside the handler, so that once every process
  has done so, new connections are refused instead of queued and later reset.  The run
  loop finishes what it holds, then returns.
- INT, QUIT: immediate exit (``worker_int`` hook first).
- ABRT: the master's timeout.  ``faulthandler`` writes every thread's stack from C (its
  output starts "Fatal Python error: Aborted"), which works even when the worker is stuck
  inside C code, into the master's ``stack_file``, which the master logs once the worker
  is gone; then, if Python code runs again, ``worker_abort`` is called and the worker
  exits.  A worker stuck in C is SIGKILLed by the master.
- USR1: reopen log files, done at the next ``notify()`` (not in the handler: a logging
  lock may be held by the interrupted code).  WINCH, USR2: ignored.

The contract for ``run()`` implementations:

1. Call ``self.tick()`` at least every ``self.timeout / 2`` seconds while idle (heartbeat,
   parent check, USR1, lifetime and memory recycling); return when ``self.alive`` is False.
2. Wrap each request in ``request_started(request_line)`` / ``request_finished()``.
3. A loop that sleeps in a selector registers ``self.wakeup_fd``: it turns readable on
   TERM or retirement, so the worker stops at once rather than at its next tick.
4. After TERM the listening sockets are closed (their ``fileno()`` is -1): an ``OSError``
   or ``ValueError`` from ``accept``/``select`` on them when ``not self.alive`` means
   "stop", not a bug.  A worker that registers listeners with a selector or epoll
   overrides ``unregister_listeners()`` (called in the handler before the close).

Runs in: master (``__init__`` only) and the worker process (everything else).
"""

from __future__ import annotations

import abc
import errno
import faulthandler
import gc
import os
import posix
import random
import selectors
import signal
import sys
import time
import traceback
from collections.abc import Callable
from types import FrameType
from typing import TYPE_CHECKING, Any, ClassVar

from forkhorn.arbiter.scoreboard import HOLD_FAILING, ScoreboardSlot, WorkerState
from forkhorn.errors import APP_LOAD_ERROR, WORKER_BOOT_ERROR, AppImportError, WorkerExit

if TYPE_CHECKING:
    from forkhorn.arbiter.listeners import Listener
    from forkhorn.wsgi.proxies import FrontEnds

__all__ = ["ACCEPT_BACKOFF", "DRAIN_IDLE", "Worker", "listener_was_shut", "unselect"]

WSGIApp = Callable[..., Any]

# At a graceful stop, how long a keep-alive connection that has sent nothing may still
# send a request, answered with Connection: close. Our last response to it may have gone
# out before the stop without announcing a close, so its client may be sending the next
# request right now: cutting it off would fail that request. Every worker class gives the
# same window; a shutdown waits at most this long for idle clients.
DRAIN_IDLE = 1.0
# /proc is read at most this often for max_worker_memory: RSS moves slowly, and a read per
# request would cost more than the check is worth.
MEMORY_CHECK_INTERVAL = 1.0
# While recycling is held (new workers fail to boot, or half of the others are booting or
# leaving: Worker._recycling_held), a worker past max_requests looks again after this many
# more requests.
HELD_RECYCLE_STEP = 10
#: Connections refused with 503 (worker_connections in use) are logged at most once per
#: this many seconds, with their count: overload shows in the log without a line per client.
OVERLOAD_LOG_EVERY = 10.0
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>

#: accept() errors that mean "out of a resource for now" (file descriptors, buffers): the
#: worker stops accepting for ACCEPT_BACKOFF seconds and tries again, rather than spin on
#: a listener that stays readable, or die and reset every connection it holds.
ACCEPT_TRANSIENT = frozenset((errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM))
ACCEPT_BACKOFF = 0.1


class _Tally:
    """Events logged at most once per ``OVERLOAD_LOG_EVERY`` seconds, with their count:
    a flood shows in the log without a line per event."""

    __slots__ = ("count", "logged_at")

    def __init__(self) -> None:
        self.count = 0
        self.logged_at = -OVERLOAD_LOG_EVERY

    def take(self, now: float, final: bool = False) -> int:
        """The count to log now (then 0 again), or 0 when the last line is too recent
        (``final``: the worker is leaving, whatever is counted is logged)."""
        count = self.count
        if not count or (not final and now - self.logged_at < OVERLOAD_LOG_EVERY):
            return 0
        self.count = 0
        self.logged_at = now
        return count


def _page_size() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):  # pragma: no cover - every Linux has it
        return 4096


def rss_bytes() -> int | None:
    """Resident set size of this process, from /proc/self/statm; None where unavailable."""
    try:
        with open("/proc/self/statm", "rb") as f:
            fields = f.read().split()
        return int(fields[1]) * _page_size()
    except (OSError, IndexError, ValueError):
        return None


def unselect(selector: selectors.BaseSelector, fileobj: Any) -> None:
    """Remove ``fileobj`` from ``selector`` if it is there (a listener, the wake-up fd)."""
    try:
        selector.unregister(fileobj)
    except (KeyError, ValueError):
        pass


def _syntax_error_app(error: SyntaxError) -> Callable[..., Any]:
    """The app a --reload worker serves while the code has a syntax error."""
    text = "".join(traceback.format_exception_only(type(error), error))
    body = f"The app has a syntax error (forkhorn --reload):\n\n{text}".encode("utf-8", "replace")

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        start_response(
            "500 Internal Server Error",
            [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body)))],
        )
        return [body]

    return app


def _take_token(fd: int | None) -> bool:
    """Take the byte from the master's traceback pipe: True for the one that gets it (or
    when there is no pipe, or it cannot be read: better a traceback twice than never)."""
    if fd is None:
        return True
    try:
        # The pipe is non-blocking (the master made it so). posix.read is the C function,
        # which no library patches: eventlet's os.read parks on an empty pipe, and a
        # gevent-patched select switched to the hub here, where a stop signal pending
        # in a failing boot broke it ("Hub.run() takes 1 positional argument").
        return bool(posix.read(fd, 1))
    except BlockingIOError:
        return False
    except Exception:
        return True


def listener_was_shut(exc: OSError) -> bool:
    """``accept()`` failed because another process shut the listening socket down: the
    master is stopping (``Listener.shut_if_refusing``) and this worker's TERM is on its
    way. Stop accepting there, quietly: it is not an error."""
    return exc.errno == errno.EINVAL


class Worker(abc.ABC):
    """Shared life cycle of every worker class.  Subclasses implement ``run()``."""

    #: Each worker is one busy thread (an event loop running the app inline): with more
    #: workers than CPUs they only take turns, and the master says so at start-up.
    one_cpu_each: ClassVar[bool] = False
    #: The class bounds each request itself (``request_timeout``: a watchdog interrupts
    #: the request and answers 504). Where it does not (sync, fast: the app runs on the
    #: worker's only thread or loop), the master applies ``request_timeout`` to a busy
    #: worker's heartbeat, as it applies ``timeout``.
    watches_requests: ClassVar[bool] = False
    #: Where connections share one thread cooperatively (greenlets): a method that gives
    #: the others a turn, which a response's sends call now and then, since a send that
    #: never blocks never switches. None elsewhere.
    cooperate: Callable[[], None] | None = None

    @classmethod
    def preload_hazard(cls) -> str:
        """Why an app the master preloaded may not work under this class ("" if it will).
        The master logs it after ``--preload`` loaded the app."""
        return ""

    def __init__(
        self,
        age: int,
        ppid: int,
        sockets: list[Listener],
        app_uri: str,
        timeout: float,
        cfg: Any,
        log: Any,
        slot: ScoreboardSlot,
        wsgi_app: WSGIApp | None = None,
    ) -> None:
        # Runs in: master, before fork.  Plain assignments only (no process state).
        self.age = age
        self.ppid = ppid
        self.sockets = sockets
        self.app_uri = app_uri
        self.timeout = timeout
        self.cfg = cfg
        self.log = log
        self.slot = slot
        self.wsgi: WSGIApp | None = wsgi_app
        self.pid = 0  # set in the master right after fork, and in the child
        self.nr = 0  # requests served
        self.alive = True
        self.booted = False
        self.aborted = False
        #: Set by the master's child code: logs "Worker exiting" and runs worker_exit,
        #: once. A worker that must end the process itself calls it first.
        self.leaving: Callable[[], None] = _nothing
        # Set once this worker took what the kernel had queued (drain_queued): only then
        # may it shut the shared socket (refuse_if_stopping) without losing connections.
        self.queue_drained = False
        # sys.maxsize when unlimited, as gunicorn's: a custom worker ported from gunicorn
        # compares its count with it (with 0 it would retire after every request).
        # The jitter is applied after the fork (reseeded random).
        self.max_requests = sys.maxsize
        self.retire_reason = ""
        self._told_held = False  # said once that recycling is held (_recycling_held)
        self._told_waiting = False  # said once that it waits for the others (likewise)
        # When True (the server was up before this worker), a boot failure is logged with
        # its traceback; at first start-up one clear line is enough.
        self.log_boot_traceback = False
        # The master's one-byte pipe: of the workers that fail to load together (a
        # reload), the one that takes the byte logs the traceback; None: always log.
        self.traceback_token: int | None = None
        # A file of the master's for this worker's stack dump on a fatal signal (the
        # master's timeout, a segfault), which the master logs in one piece once the
        # worker is gone; None: the dump goes straight to the error log.
        self.stack_file: Any = None
        self._started_at = 0.0
        self._lifetime_deadline: float | None = None
        self._next_memory_check = 0.0
        self._reopen_requested = False
        self._refused = _Tally()  # 503s not yet logged (refused_overloaded)
        # The master died (handle_term saw it): said once in the log, outside the handler.
        self.orphaned = False
        self._orphan_said = False
        self._accept_failures = _Tally()  # transient accept() errors not yet logged
        self._accept_failure: OSError | None = None
        # Set by workers.session.prepare_http() at the start of run(): what every request
        # of this worker shares (the core's limits, the constant environ keys).
        self.http_limits: tuple[int, int, int, int, bytes] = (4094, 100, 8190, 0, b"forkhorn")
        self.server_line = b"Server: forkhorn\r\n"  # for answers made without a connection
        # A request cut by the worker's watchdog gets 504 when request_timeout is set (the
        # limit the operator gave requests), else 500 (gthread, gevent, eventlet).
        self.answer_504 = float(getattr(cfg, "request_timeout", 0) or 0) > 0
        # Set by prepare_http: whether the request path logs and runs the request hooks.
        self.access_enabled = False
        self.hook_pre_request = False
        self.hook_post_request = False
        self.base_environ: dict[str, Any] = {}
        # One per listener when there are several (SERVER_NAME/PORT: base_environ_for).
        self.base_environs: dict[Any, dict[str, Any]] | None = None
        self.header_map = "drop"
        # Trusted front ends and their secure_scheme_headers (wsgi/proxies.py); None when
        # no header is to be believed.
        self.front_ends: FrontEnds | None = None
        self.body_min_rate = 0.0  # bytes/s; 0: no minimum (see wsgi/input.py)
        self.body_allowance = 0.0  # seconds a body read starts with
        self.use_sendfile = True  # False: --no-sendfile, file bodies are read and written
        self.watch_limit = 0.0  # the request watchdog's limit (gthread, green), 0: none
        self._wake_r = -1
        self._wake_w = -1

    def __str__(self) -> str:
        return f"<Worker {self.pid}>"

    # -- start-up (worker process) -----------------------------------------------------
    def init_process(self) -> None:
        """Boot the worker, then run it.  Returns when ``run()`` returns.

        Raises ``SystemExit(APP_LOAD_ERROR)`` when the app cannot load and
        ``SystemExit(WORKER_BOOT_ERROR)`` on another boot failure.
        Runs in: worker, main thread, right after fork.
        """
        self.pid = os.getpid()
        self._started_at = time.monotonic()
        self.slot.set_pid(self.pid)
        self.slot.heartbeat(self._started_at)
        try:
            self._boot()
        except SystemExit:
            raise
        except AppImportError as exc:
            # This worker is leaving anyway: a stop signal (the master abandoning a failed
            # reload sends TERM) must not cut its last lines short. Its handler raised
            # inside the logging call and left a "--- Logging error ---" dump instead.
            signal.pthread_sigmask(
                signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT, signal.SIGQUIT}
            )
            if self.log_boot_traceback:
                # The server was up (a reload or a respawn): the operator needs the whole
                # story of the bad release, traceback included, once.
                self.log.error("App failed to load: %s", exc)
                if exc.__cause__ is not None and _take_token(self.traceback_token):
                    self.log.error("Traceback of the failed load:", exc_info=exc.__cause__)
            else:
                # At start-up the master prints the one line that explains its exit (the
                # reason travels in the scoreboard slot); the details are for debug level.
                self.log.debug("App failed to load: %s", exc, exc_info=exc)
            self.slot.boot_failed(exc.brief)
            raise SystemExit(APP_LOAD_ERROR) from None
        except Exception as exc:
            self.log.exception("Exception in worker process")
            self.slot.boot_failed(f"{type(exc).__name__}: {exc}")
            raise SystemExit(WORKER_BOOT_ERROR) from None
        self.booted = True
        self.slot.set_state(WorkerState.READY)
        self.slot.heartbeat()
        if self.alive:  # TERM may have arrived while the app was loading
            self.run()
        # What the last seconds counted, before this worker is gone: a burst of 503s
        # just before a stop or a recycle was logged as its first refusal alone.
        self._log_tallies(time.monotonic(), final=True)
        self._say_orphaned()

    def _boot(self) -> None:
        random.seed()  # the master's state was copied; two workers must not share it
        self._apply_recycling_limits()
        self._set_proc_title()
        self._apply_raw_env()
        self._drop_privileges()
        self.init_signals()
        self._stop_with_master()
        reloading = bool(getattr(self.cfg, "reload_enabled", False))
        watch = list(self.cfg.reload_extra_files or []) if reloading else []
        try:
            self.load_wsgi()
        except AppImportError as exc:
            broken = exc.__cause__
            if not reloading or not isinstance(broken, SyntaxError) or not broken.filename:
                raise
            # --reload (development), as gunicorn: a syntax error is answered, 500 with
            # the error, by a worker that watches the broken file, rather than left to
            # crash-loop while requests wait with no answer.
            self.log.error("App failed to load: %s; serving the error until it is fixed", exc)
            self.wsgi = _syntax_error_app(broken)
            watch.append(broken.filename)
        self.tune_gc()
        if reloading:
            from .reloader import Reloader

            Reloader(watch, self._code_changed).start()
        self.cfg.post_worker_init(self)

    def _code_changed(self, path: str) -> None:
        """``--reload``: a watched file changed (the reloader's thread). Leave as on TERM:
        the handler runs in the main thread, and the master replaces this worker."""
        self.log.info("Worker reloading: %s modified", path)
        os.kill(os.getpid(), signal.SIGTERM)

    def tune_gc(self) -> None:
        """After the app is loaded: move everything alive now (modules, the app, the
        server) out of the garbage collector's scans with ``gc.freeze()``. Those objects
        live as long as the process, and a full collection no longer walks them on the
        request path (bench/README.md). A ``post_worker_init`` hook runs after this and may
        tune the collector further."""
        gc.collect()
        gc.freeze()

    def _apply_recycling_limits(self) -> None:
        max_requests = int(getattr(self.cfg, "max_requests", 0) or 0)
        if max_requests > 0:
            jitter = int(getattr(self.cfg, "max_requests_jitter", 0) or 0)
            self.max_requests = max_requests + random.randint(0, max(0, jitter))
        lifetime = float(getattr(self.cfg, "max_worker_lifetime", 0) or 0)
        if lifetime > 0:
            jitter_s = float(getattr(self.cfg, "max_worker_lifetime_jitter", 0) or 0)
            self._lifetime_deadline = (
                self._started_at + lifetime + random.uniform(0, max(0.0, jitter_s))
            )

    def _set_proc_title(self) -> None:
        try:
            import setproctitle
        except ImportError:
            return
        name = getattr(self.cfg, "proc_name", None) or getattr(
            self.cfg, "default_proc_name", "forkhorn"
        )
        setproctitle.setproctitle(f"forkhorn: worker [{name}]")

    def _apply_raw_env(self) -> None:
        os.environ.update(getattr(self.cfg, "env", None) or {})

    def _drop_privileges(self) -> None:
        uid = getattr(self.cfg, "user", None)
        gid = getattr(self.cfg, "group", None)
        if gid is not None and gid != os.getegid():
            os.setgid(gid)
        if uid is not None and uid != os.geteuid():
            if getattr(self.cfg, "initgroups", False):
                import pwd

                os.initgroups(pwd.getpwuid(uid).pw_name, gid if gid is not None else os.getgid())
            os.setuid(uid)

    def _note_orphaned(self) -> None:
        """On TERM: was it the kernel's, the master having died (``_stop_with_master``)?
        Said by ``tick()`` or at exit, not from the signal handler."""
        if not self.is_parent_alive():
            self.orphaned = True
            if self.stack_file is not None:
                # No master will read the stack file now: a dump goes to the error log.
                self.stack_file = None
                self._register_stack_dump()

    def _say_orphaned(self) -> None:
        if self.orphaned and not self._orphan_said:
            self._orphan_said = True
            self.log.info("Parent changed, shutting down: %s", self)

    def _stop_with_master(self) -> None:
        """Have the kernel send TERM the moment the master dies (Linux's
        ``PR_SET_PDEATHSIG``). The parent check in ``tick()`` is not enough on its own: a
        worker held by the app (sync, fast) never reaches it, and an orphan stuck in a
        hung request kept the listening socket, so a new master could not bind."""
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            if libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0) != 0:
                return
        except (OSError, AttributeError):
            return  # not Linux: tick() still notices, between requests
        if not self.is_parent_alive():  # it died before the call
            os.kill(os.getpid(), signal.SIGTERM)

    def init_signals(self) -> None:
        """Install the worker's handlers (see the module docstring).  Subclasses that need
        their own (gevent) call this first and then add theirs."""
        signal.signal(signal.SIGTERM, self.handle_term)
        signal.signal(signal.SIGHUP, self.handle_term)
        signal.signal(signal.SIGINT, self.handle_quit)
        signal.signal(signal.SIGQUIT, self.handle_quit)
        signal.signal(signal.SIGUSR1, self.handle_usr1)
        signal.signal(signal.SIGABRT, self.handle_abort)
        signal.signal(signal.SIGWINCH, signal.SIG_IGN)
        signal.signal(signal.SIGUSR2, signal.SIG_IGN)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(signal.SIGTTIN, signal.SIG_DFL)
        signal.signal(signal.SIGTTOU, signal.SIG_DFL)
        self._register_stack_dump()
        if self._wake_r < 0:
            self._wake_r, self._wake_w = os.pipe()
            os.set_blocking(self._wake_r, False)
            os.set_blocking(self._wake_w, False)

    @property
    def wakeup_fd(self) -> int:
        """A file descriptor that turns readable when the worker must stop (TERM, retire).
        A run loop that sleeps in a selector registers it, so that it wakes at once
        instead of at its next tick.  Never drained: once readable, it stays so."""
        return self._wake_r

    def _wake(self) -> None:
        if self._wake_w >= 0:
            try:
                os.write(self._wake_w, b"\0")
            except OSError:
                pass  # full (already readable) or closed

    def _error_stream(self) -> Any:
        """The stream of the error log's first stream handler, else stderr.  faulthandler
        writes to its file descriptor from C, bypassing logging."""
        error_log = getattr(self.log, "error_log", None)
        for handler in getattr(error_log, "handlers", None) or []:
            stream = getattr(handler, "stream", None)
            try:
                if stream is not None and stream.fileno() >= 0:
                    return stream
            except (OSError, ValueError, AttributeError):
                continue
        return sys.stderr

    def _register_stack_dump(self) -> None:
        # faulthandler.enable covers SIGABRT (register() refuses it) and SIGSEGV/SIGBUS/
        # SIGFPE/SIGILL.  On SIGABRT its C handler writes every thread's stack, restores
        # the previous handler (handle_abort, installed above) and re-raises, so
        # worker_abort still runs when Python code gets control again.  It writes in many
        # small pieces: into the shared error log, two workers' dumps and the master's
        # lines ran together on the same lines, hence the master's file (stack_file).
        target = self.stack_file if self.stack_file is not None else self._error_stream()
        try:
            faulthandler.enable(file=target, all_threads=True)
        except (OSError, ValueError, AttributeError, RuntimeError):
            pass  # stderr without a file descriptor (tests): no dump, still a clean abort

    @property
    def app(self) -> Any:
        """gunicorn's ``worker.app`` for hooks: ``cfg``, ``callable``, ``wsgi()``."""
        from forkhorn.wsgi.loader import AppHandle

        return AppHandle(self)

    def load_wsgi(self) -> None:
        """Load the app into ``self.wsgi`` unless the master preloaded it."""
        if self.wsgi is not None:
            return
        from forkhorn.wsgi.loader import load_app

        self.wsgi = load_app(self.app_uri)

    # -- signal handlers (worker, main thread) -----------------------------------------
    def handle_term(self, signum: int, frame: FrameType | None) -> None:
        self.alive = False
        self.retire_reason = self.retire_reason or "stop"
        self.slot.set_state(WorkerState.EXITING)
        self.stop_accepting()
        self._wake()
        self._note_orphaned()
        if self.orphaned and not self.watches_requests:
            # The master is gone, and with it the SIGKILL at graceful_timeout: a request
            # the app holds (sync, fast) gets that long, then the worker quits as on QUIT.
            signal.signal(signal.SIGALRM, self.handle_quit)
            signal.setitimer(signal.ITIMER_REAL, max(0.1, float(self.cfg.graceful_timeout)))

    def handle_quit(self, signum: int, frame: FrameType | None) -> None:
        self.alive = False
        self._run_exit_hook("worker_int")
        raise WorkerExit(0)

    def handle_usr1(self, signum: int, frame: FrameType | None) -> None:
        self._reopen_requested = True

    def handle_abort(self, signum: int, frame: FrameType | None) -> None:
        self.alive = False
        self.aborted = True
        # Take no new connection from here on, even if the SystemExit below is swallowed by
        # a loop's callback error handling (asyncio/uvloop log it and carry on): until the
        # master's SIGKILL, such a worker would otherwise accept connections and fail them.
        # A plain close, no drain: a worker that drains its accept queue when it stops
        # would take connections that this exiting process can never serve.
        try:
            self.close_listeners()
        except Exception:
            pass
        self._run_exit_hook("worker_abort")
        raise WorkerExit(1)

    def _run_exit_hook(self, name: str) -> None:
        # The WorkerExit raised after it would replace the hook's exception: log it here
        # (gunicorn logs it too), and leave all the same.
        try:
            getattr(self.cfg, name)(self)
        except WorkerExit:
            raise
        except BaseException:
            self.log.exception("Exception in %s hook", name)

    # -- accepting ---------------------------------------------------------------------
    def unregister_listeners(self) -> None:
        """Override to remove the listeners from a selector/epoll before they are closed
        (an epoll set keeps a closed fd whose file is still open in other processes)."""
        return None

    def drain_queued(self, limit: int = 2048) -> list[tuple[Any, Any]]:
        """Accept, without blocking, what the kernel already queued on the listeners.

        Runs in: the TERM (or retire) path, just before the listeners close. The kernel
        completes handshakes on the shared socket until its last copy is closed, and the
        process that closes it last would reset every connection still queued; taking
        them first turns "accepted, then reset" into "served". Only from the sockets that
        are going away (``Listener.going_away``: the master is stopping, or a reload
        dropped them) or when the master is gone: on a reload or a recycle the other
        workers serve the queue, and a stopping worker that took it would make those
        requests wait for it, or drop them at its ``graceful_timeout``. ``limit`` per
        listener (a full default backlog) keeps the handler finite under a flood.
        Returns ``(socket, address)`` pairs.
        """
        drained: list[tuple[Any, Any]] = []
        orphaned = os.getppid() != self.ppid  # the master is gone: no one else serves
        for listener in self.sockets:
            if not orphaned and not listener.going_away():
                continue  # served on by the master's other workers (reload, recycle)
            sock = listener.sock
            try:
                if sock.fileno() < 0:
                    continue
                sock.setblocking(False)
            except (OSError, ValueError):
                continue
            for _ in range(limit):
                try:
                    drained.append(sock.accept())
                except (OSError, ValueError):
                    break  # EAGAIN: the queue is empty
        self.queue_drained = True
        return drained

    def stop_accepting(self) -> None:
        """Close this process's copies of the listening sockets.  Idempotent.

        Subclasses take what the kernel already queued (``drain_queued``) in
        ``unregister_listeners`` or before calling this; then, when the master is
        stopping, the sockets are shut for every process (``refuse_if_stopping``).
        """
        try:
            self.unregister_listeners()
            self.refuse_if_stopping()
        finally:
            self.close_listeners()

    def refuse_if_stopping(self) -> None:
        """See ``Listener.shut_if_refusing``. Only once this worker has drained the queue:
        a worker stopped before it ever accepted (still loading the app) must not shut the
        socket under the connections its siblings are about to drain and serve."""
        if not self.queue_drained:
            return
        for listener in self.sockets:
            listener.shut_if_refusing()

    def close_listeners(self) -> None:
        for listener in self.sockets:
            listener.close(unlink=False)

    # -- run loop helpers (worker) -----------------------------------------------------
    @abc.abstractmethod
    def run(self) -> None:
        """Serve until ``self.alive`` is False.  See the module docstring for the contract."""

    def notify(self) -> None:
        """Heartbeat: one 8-byte store into the scoreboard slot."""
        self.slot.heartbeat()
        if self._reopen_requested:
            self._reopen_requested = False
            self._reopen_logs()

    def _reopen_logs(self) -> None:
        self.log.reopen_files()
        self._register_stack_dump()  # the error log's file descriptor may have changed

    def is_parent_alive(self) -> bool:
        """False once the master is gone (we were re-parented)."""
        return os.getppid() == self.ppid

    def tick(self, now: float | None = None) -> bool:
        """Everything an idle run loop owes per turn: heartbeat, parent check, USR1,
        lifetime and memory recycling.  Returns ``self.alive``."""
        self.notify()
        if self._refused.count or self._accept_failures.count:
            self._log_tallies(time.monotonic() if now is None else now)
        self._say_orphaned()
        if not self.alive:
            return False
        if not self.is_parent_alive():
            # As on TERM: stop taking connections and announce the close on keep-alive
            # ones. Merely leaving the run loop let a busy worker drain for as long as its
            # clients kept sending (an orphan served unsupervised while the load lasted).
            # (The kernel's TERM, _stop_with_master, usually comes first.)
            self.handle_term(signal.SIGTERM, None)
            self._say_orphaned()
            return False
        reason = self.should_retire(time.monotonic() if now is None else now)
        if reason and not self._recycling_held(reason):
            self.retire(reason)
        return self.alive

    def _recycling_held(self, reason: str) -> bool:
        """Not now: the master holds recycling (scoreboard's notice), new workers failing
        to boot (a bad release on disk, a refused reload), so this worker's replacement
        would fail too and its capacity would be lost; or half of the other workers (one of
        two) are booting or leaving already (two that reached their limits together both
        left, and a bad release slow to fail took every worker before the master knew).
        It serves on, and looks again after ``HELD_RECYCLE_STEP`` more requests
        (max_requests) or at the next tick."""
        why = self.slot.recycling_held()
        # Leaving is claimed at once, in the scoreboard the others read: gthread's retire
        # runs later, in its main thread, and its twin at the limit saw none.
        if not why and self.slot.claim_leaving():
            self._told_held = self._told_waiting = False
            return False
        if why == HOLD_FAILING and not self._told_held:
            self._told_held = True
            self.log.warning(
                "Not recycling this worker yet (%s reached): new workers fail to boot, "
                "so it serves on until one boots",
                reason,
            )
        elif not why and not self._told_waiting:
            # Said once: under a high request rate a worker can serve a boot's worth of
            # requests past its limit here, which the operator should not have to guess.
            self._told_waiting = True
            self.log.info(
                "Not recycling this worker yet (%s reached): other workers are booting or "
                "leaving, and at most half of them recycle at once; it serves on meanwhile",
                reason,
            )
        if reason == "max_requests":
            self.max_requests = self.nr + HELD_RECYCLE_STEP
            self.recycling_deferred()
        return True

    def recycling_deferred(self) -> None:
        """``max_requests`` was pushed back (``_recycling_held``): a class that announced
        Connection: close for its last request (``last_request_next``) takes it back."""
        return None

    def refused_overloaded(self) -> None:
        """Count a connection just refused with 503 because ``worker_connections`` are in
        use. The first is logged at once; the rest in one line per ``OVERLOAD_LOG_EVERY``
        seconds, with their count (``tick`` writes out what a burst left)."""
        self._refused.count += 1
        self._log_tallies(time.monotonic())

    def accept_failed(self, exc: OSError) -> bool:
        """accept() raised ``exc``. True when it is transient (``ACCEPT_TRANSIENT``): the
        caller pauses accepting for ``ACCEPT_BACKOFF``. Logged like refusals, the first at
        once and then one line per ``OVERLOAD_LOG_EVERY`` seconds with the count: out of
        file descriptors, a worker would otherwise write one line per retry."""
        if exc.errno not in ACCEPT_TRANSIENT:
            return False
        self._accept_failures.count += 1
        self._accept_failure = exc
        self._log_tallies(time.monotonic())
        return True

    def _log_tallies(self, now: float, final: bool = False) -> None:
        refused = self._refused.take(now, final)
        if refused:
            self.log.warning(
                "Refused %d connection(s) with 503: all %d worker_connections in use",
                refused,
                int(self.cfg.worker_connections),
            )
        failures = self._accept_failures.take(now, final)
        if failures:
            self.log.warning(
                "accept() failed %d time(s), pausing %.1f s each time: %s",
                failures,
                ACCEPT_BACKOFF,
                self._accept_failure,
            )

    def should_retire(self, now: float) -> str:
        """Why this worker should be recycled now ("" for no reason): lifetime or memory."""
        if self._lifetime_deadline is not None and now >= self._lifetime_deadline:
            return "max_worker_lifetime"
        limit_mib = int(getattr(self.cfg, "max_worker_memory", 0) or 0)
        if limit_mib > 0 and now >= self._next_memory_check:
            self._next_memory_check = now + MEMORY_CHECK_INTERVAL
            rss = rss_bytes()
            if rss is not None and rss > limit_mib * 1024 * 1024:
                return "max_worker_memory"
        return ""

    def retire(self, reason: str) -> None:
        """Stop accepting and exit once in-flight work is done (recycling)."""
        if not self.alive:
            return
        if reason == "max_requests":
            self.log.info("Autorestarting worker after current request.")
        else:
            self.log.info("Retiring worker (pid: %s): %s reached", self.pid, reason)
        self.retire_reason = reason
        self.alive = False
        self.slot.set_state(WorkerState.EXITING)
        self.stop_accepting()
        self._wake()
        self.tell_master()

    def tell_master(self) -> None:
        """Wake the master now (SIGCHLD only wakes its loop), so it sees this worker
        leaving in the scoreboard and starts the replacement while this one finishes
        its in-flight requests and idle connections, not after it exits."""
        if os.getppid() != self.ppid:
            return  # the master is gone (the parent check ends this worker): no one to tell
        try:
            os.kill(self.ppid, signal.SIGCHLD)
        except OSError:
            pass

    def unbound_request(self) -> None:
        """The request being served in this thread is a WebSocket handshake: the app may
        take the connection over (``environ["gunicorn.socket"]``) for as long as its
        client stays, so the classes that bound each request (the watchdog) stop bounding
        it. The sync worker keeps the master's ``timeout``, as gunicorn's sync worker does."""
        return None

    def request_started(self, request_line: bytes) -> float:
        """A request began (scoreboard: BUSY, its line and start time). Returns the
        start time (``time.monotonic()``)."""
        now = time.monotonic()
        self.slot.request_started(request_line, now)
        return now

    def request_finished(self, now: float | None = None) -> None:
        """A request ended (at ``now``, ``time.monotonic()``, read here if not given):
        count it; retire when ``max_requests`` is reached."""
        self.nr += 1
        self.slot.request_finished(now)
        if not self.alive:
            self.slot.set_state(WorkerState.EXITING)
        elif self.nr >= self.max_requests - 1:  # one comparison on the hot path
            if self.nr >= self.max_requests:
                if not self._recycling_held("max_requests"):
                    self.retire("max_requests")
            else:
                self.last_request_next()

    def last_request_next(self) -> None:
        """The next request to finish reaches ``max_requests``: a class that cannot tell
        which request that is when it starts one (fast: any connection's) announces
        Connection: close on every response from now on. The others decide per request."""
        return None


def _nothing() -> None:
    return None
