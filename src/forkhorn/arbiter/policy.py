"""The master's decisions, as pure functions: worker table, targets and ``now`` in, actions out.

Nothing here reads a clock, sends a signal, forks or logs; the arbiter (``arbiter.py``) feeds
plain values in and carries the actions out.  That keeps every rule below testable with a
fake clock and no processes (``tests/unit/test_policy.py``).

Rules ``decide`` keeps, in the order it applies them:

1. **Stopping.**  While a stop is under way (``stop_deadline`` set) nothing is spawned; a
   worker that has not been told to stop is told (``Retire``); at the deadline every
   worker still alive is killed (``Kill``).
2. **Liveness.**  A worker whose heartbeat is older than ``timeout`` (``boot_timeout``
   while it is still booting) is aborted (``Abort``: SIGABRT, so it dumps its stacks).
   One still alive ``abort_grace`` seconds later is killed.  A retiring worker still
   alive ``graceful_timeout`` after it was told to stop is killed, and so is one that
   reported a failed boot (BOOT_FAILED) and has not exited ``graceful_timeout`` after the
   master saw it (an ``atexit`` handler that hangs).  ``timeout <= 0``
   disables the heartbeat check, as in gunicorn.  ``request_timeout`` (when set) is the
   allowance instead while the worker is in a request, if smaller: for the classes that
   run the app on their only thread or loop, a silent busy worker is a request stuck.
3. **Count.**  Workers of the current generation that are neither retiring nor aborted
   are "active"; so is one aborted while still booting, until it is reaped (its boot
   hung: ``judge_exit`` decides then, rather than a replacement that would hang too).
   Fewer than ``desired``: spawn the difference, unless the boot backoff says wait;
   while the backoff holds failures, spawn one probe at a time and only when no other
   worker of this generation is booting.  More than ``desired``: retire those not serving
   yet first (newest first), then the oldest (gunicorn's TTOU order).
4. **Reload.**  Workers of an older generation (left by HUP) are not replaced when they
   die, and are retired all together only once ``desired`` workers of the current
   generation report that they serve.  Until then, they keep serving: a release that
   cannot boot never takes capacity away.

``judge_exit`` decides what a reaped worker's death means (halt the master at start-up,
abandon a reload, back off, or just replace it) and ``Backoff`` holds the crash-loop delay.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field

from forkhorn.arbiter.scoreboard import WorkerState
from forkhorn.errors import APP_LOAD_ERROR, WORKER_BOOT_ERROR

__all__ = [
    "APP_LOAD_ERROR",
    "WORKER_BOOT_ERROR",
    "Abort",
    "Action",
    "Backoff",
    "Decision",
    "ExitVerdict",
    "Kill",
    "KillReason",
    "Limits",
    "Retire",
    "RetireReason",
    "Spawn",
    "Verdict",
    "WorkerView",
    "decide",
    "judge_exit",
]


@dataclass(frozen=True, slots=True)
class WorkerView:
    """What the policy knows of one worker (built by the arbiter from its table + slot)."""

    pid: int
    age: int  # spawn order: lower is older
    generation: int
    state: WorkerState
    spawned_at: float
    heartbeat: float
    retiring_since: float | None = None  # when it was told to stop
    aborted_at: float | None = None  # when SIGABRT was sent
    killed: bool = False  # SIGKILL sent; only reaping is left
    grace: float | None = None  # its own graceful_timeout (its generation's config)
    # Its own timeout and request_timeout, likewise: a HUP that lowers them must not abort
    # the requests the old generation is finishing (gunicorn's workers keep theirs).
    timeout: float | None = None
    request_timeout: float | None = None
    boot_failed_at: float | None = None  # when the master first saw it BOOT_FAILED
    # A request is in flight: BUSY, or EXITING while it finishes the ones it had accepted
    # (request_timeout applies to those too).
    in_request: bool = False

    @property
    def is_leaving(self) -> bool:
        return self.killed or self.aborted_at is not None or self.retiring_since is not None


@dataclass(frozen=True, slots=True)
class Limits:
    """Durations the policy applies, in seconds."""

    timeout: float = 30.0  # gunicorn's default; <= 0 disables the heartbeat check
    # The heartbeat allowance of a worker in a request (BUSY), when > 0 and smaller than
    # ``timeout``; 0 for the classes that bound each request themselves.
    request_timeout: float = 0.0
    boot_timeout: float = 30.0  # allowance from fork to READY
    # SIGABRT to SIGKILL: faulthandler writes the stacks in well under a second; two leave
    # room for a worker_abort hook and a busy disk without letting a hung worker linger.
    abort_grace: float = 2.0
    graceful_timeout: float = 30.0  # gunicorn's default


@dataclass(frozen=True, slots=True)
class Backoff:
    """Crash-loop delay for respawning workers that fail to boot.

    0.1 s after the first failure, doubling to ``max_delay``: fast enough that a
    transient failure costs nothing visible, slow enough that a bad release on disk does
    not turn the master into a fork bomb.
    """

    failures: int = 0
    not_before: float = 0.0
    initial_delay: float = 0.1
    max_delay: float = 30.0

    def delay_after(self, failures: int) -> float:
        if failures <= 0:
            return 0.0
        return min(self.max_delay, self.initial_delay * 2.0 ** (failures - 1))

    def failed(self, now: float) -> Backoff:
        n = self.failures + 1
        return Backoff(n, now + self.delay_after(n), self.initial_delay, self.max_delay)

    def succeeded(self) -> Backoff:
        return Backoff(0, 0.0, self.initial_delay, self.max_delay)


class RetireReason(enum.Enum):
    EXCESS = "excess"  # more workers than desired (TTOU)
    RELOAD = "reload"  # an older generation after HUP
    STOP = "stop"  # the master is stopping


class KillReason(enum.Enum):
    ABORT_GRACE = "abort_grace"
    GRACEFUL_TIMEOUT = "graceful_timeout"
    STOP_DEADLINE = "stop_deadline"


@dataclass(frozen=True, slots=True)
class Spawn:
    count: int


@dataclass(frozen=True, slots=True)
class Retire:
    pid: int
    reason: RetireReason


@dataclass(frozen=True, slots=True)
class Abort:
    pid: int
    stalled_for: float  # seconds since the last heartbeat
    booting: bool


@dataclass(frozen=True, slots=True)
class Kill:
    pid: int
    reason: KillReason


Action = Spawn | Retire | Abort | Kill


@dataclass(frozen=True, slots=True)
class Decision:
    actions: tuple[Action, ...] = ()
    # The earliest time at which ``decide`` could say something new without any other
    # input changing (a grace period ending, a backoff expiring); None: nothing pending.
    wake_at: float | None = None
    spawn_blocked_by_backoff: bool = field(default=False)


def _earliest(a: float | None, b: float) -> float:
    return b if a is None or b < a else a


def decide(
    workers: Sequence[WorkerView],
    *,
    desired: int,
    generation: int,
    now: float,
    limits: Limits,
    backoff: Backoff | None = None,
    stop_deadline: float | None = None,
) -> Decision:
    """Return what the master should do now.  Pure; see the module docstring for rules.

    Runs in: master, main loop only (but it touches no state, so it runs anywhere).
    """
    actions: list[Action] = []
    wake_at: float | None = None

    # Rule 1: stopping.
    if stop_deadline is not None:
        for w in workers:
            if w.killed:
                continue
            if now >= stop_deadline:
                actions.append(Kill(w.pid, KillReason.STOP_DEADLINE))
            elif w.retiring_since is None:
                actions.append(Retire(w.pid, RetireReason.STOP))
        if any(not w.killed for w in workers) and now < stop_deadline:
            wake_at = stop_deadline
        return Decision(tuple(actions), wake_at)

    # Rule 2: liveness.
    aborted_now: set[int] = set()
    for w in workers:
        if w.killed:
            continue
        if w.aborted_at is not None:
            kill_at = w.aborted_at + limits.abort_grace
            if now >= kill_at:
                actions.append(Kill(w.pid, KillReason.ABORT_GRACE))
            else:
                wake_at = _earliest(wake_at, kill_at)
            continue
        booting = w.state is WorkerState.BOOTING
        timeout = limits.timeout if w.timeout is None else w.timeout
        request_timeout = limits.request_timeout if w.request_timeout is None else w.request_timeout
        allowed = 0.0
        if timeout > 0:
            # Booting: the config's allowance, or the worker's own timeout (the same value
            # when it was forked).
            allowed = limits.boot_timeout if booting and w.timeout is None else timeout
        if request_timeout > 0 and (w.state is WorkerState.BUSY or w.in_request):
            allowed = min(allowed or request_timeout, request_timeout)
        if allowed > 0 and w.state is not WorkerState.BOOT_FAILED:
            stalled = now - w.heartbeat
            if stalled > allowed:
                actions.append(Abort(w.pid, stalled, booting))
                aborted_now.add(w.pid)
                wake_at = _earliest(wake_at, now + limits.abort_grace)
                continue
            wake_at = _earliest(wake_at, w.heartbeat + allowed)
        leaving_since = w.retiring_since
        if leaving_since is None and w.state is WorkerState.BOOT_FAILED:
            leaving_since = w.boot_failed_at
        if leaving_since is not None:
            kill_at = leaving_since + (limits.graceful_timeout if w.grace is None else w.grace)
            if now >= kill_at:
                actions.append(Kill(w.pid, KillReason.GRACEFUL_TIMEOUT))
            else:
                wake_at = _earliest(wake_at, kill_at)

    # Rule 3: count.  Aborted and retiring workers are on their way out; their
    # replacements start now, so capacity returns as soon as possible. Except a worker
    # aborted while still booting: its boot hung, and a replacement forked now would hang
    # the same way (a bad release's extra workers, one more set per timeout). It counts
    # until it is reaped, and judge_exit decides then (back off, or abandon a reload).
    def active(w: WorkerView) -> bool:
        if (
            w.state is WorkerState.BOOTING
            and w.retiring_since is None
            and (w.aborted_at is not None or w.pid in aborted_now)
        ):
            return True
        return not w.is_leaving and w.pid not in aborted_now

    current = sorted(
        (w for w in workers if w.generation == generation and active(w)), key=lambda w: w.age
    )
    older = sorted(
        (w for w in workers if w.generation != generation and active(w)), key=lambda w: w.age
    )
    blocked = False
    missing = desired - len(current)
    if missing > 0:
        bo = backoff or Backoff()
        if bo.failures > 0:
            if now < bo.not_before:
                blocked = True
                wake_at = _earliest(wake_at, bo.not_before)
            elif not any(w.state is WorkerState.BOOTING for w in current):
                actions.append(Spawn(1))  # one probe until a worker boots again
            else:
                blocked = True
        else:
            actions.append(Spawn(missing))
    elif missing < 0:
        # Workers that do not serve yet go first (newest first: they cost no request),
        # then the oldest (gunicorn's TTOU order). Oldest first alone retired the one
        # worker still serving while its replacement booted a bad release, which failed:
        # nothing served until the release was fixed.
        # One that failed to boot, or was aborted, is on its way out already: it counts
        # toward the excess without a Retire (which would make its failure "expected",
        # and a reload's bad release would pass unjudged).
        doomed = [
            w for w in current if w.state is WorkerState.BOOT_FAILED or w.aborted_at is not None
        ]
        doomed_pids = {w.pid for w in doomed}
        waiting = sorted(
            (w for w in current if w.pid not in doomed_pids and not w.state.is_serving),
            key=lambda w: w.age,
            reverse=True,
        )
        in_service = [w for w in current if w.pid not in doomed_pids and w.state.is_serving]
        for w in (doomed + waiting + in_service)[:-missing]:
            if w.pid not in doomed_pids:
                actions.append(Retire(w.pid, RetireReason.EXCESS))

    # Rule 4: reload.
    if older:
        serving = sum(1 for w in current if w.state.is_serving)
        if serving >= desired:
            actions.extend(Retire(w.pid, RetireReason.RELOAD) for w in older)

    return Decision(tuple(actions), wake_at, blocked)


class Verdict(enum.Enum):
    REPLACE = "replace"  # an ordinary death (or one we caused): keep the count
    BACKOFF = "backoff"  # failed to boot while the server is up: retry later
    ABANDON_RELOAD = "abandon_reload"  # the new generation cannot boot: keep the old one
    HALT = "halt"  # nothing has ever booted: stop the master with ``exit_code``


@dataclass(frozen=True, slots=True)
class ExitVerdict:
    verdict: Verdict
    exit_code: int = 0


#: Workers that may die while booting, one after the other, before any worker of this
#: master has served, until the master gives up (exit 3). A worker that exits with a boot
#: error (3, 4) halts at once; this bounds the deaths that say nothing (a crash in a C
#: extension, ``os._exit`` in an import), which would otherwise be retried for ever with
#: nobody serving.
START_FAILURE_LIMIT = 5

#: New workers of one reload that may be killed from outside (SIGKILL the master did not
#: send: the OOM killer, an operator) while booting, each replaced, before the reload is
#: abandoned. Such a death says nothing about the release, and a reload is when both
#: generations use memory at once; a release that the OOM killer stops every time is
#: abandoned after this many.
RELOAD_KILL_LIMIT = 3


def judge_exit(
    *,
    exit_code: int | None,
    reached_serving: bool,
    expected: bool,
    generation: int,
    current_generation: int,
    ever_ready: bool,
    older_generation_serving: bool,
    boot_failures: int = 0,
    killed_outside: bool = False,
    reload_kills: int = 0,
) -> ExitVerdict:
    """Classify a reaped worker.  Pure.

    ``exit_code`` is None when the worker died of a signal.  ``reached_serving``: its slot
    ever said READY/BUSY/IDLE.  ``expected``: the master told it to stop or killed it.
    ``ever_ready``: some worker has served since the master started.  ``boot_failures``:
    workers that died booting since the last one booted, not counting this one.
    ``killed_outside``: it died of a SIGKILL the master did not send; ``reload_kills``:
    new workers of the reload in progress that did so before it.
    """
    if expected or reached_serving:
        return ExitVerdict(Verdict.REPLACE)
    boot_error = exit_code in (APP_LOAD_ERROR, WORKER_BOOT_ERROR)
    if not ever_ready and boot_error and exit_code is not None:
        # At start-up a worker that cannot load the app means none can: stop with the
        # worker's code instead of fork-looping (gunicorn halts here too).
        return ExitVerdict(Verdict.HALT, exit_code)
    if not ever_ready and boot_failures + 1 >= START_FAILURE_LIMIT:
        return ExitVerdict(Verdict.HALT, WORKER_BOOT_ERROR)
    if generation == current_generation and older_generation_serving:
        if killed_outside and reload_kills + 1 < RELOAD_KILL_LIMIT:
            return ExitVerdict(Verdict.REPLACE)  # not the release's doing: another one
        return ExitVerdict(Verdict.ABANDON_RELOAD, exit_code or 0)
    if generation != current_generation:
        return ExitVerdict(Verdict.REPLACE)  # a leftover of an abandoned reload
    return ExitVerdict(Verdict.BACKOFF, exit_code or 0)
