"""The master's pure policy: plain worker tables and a fake clock in, actions out."""

from __future__ import annotations

from dataclasses import replace

import pytest

from forkhorn.arbiter.policy import (
    START_FAILURE_LIMIT,
    Abort,
    Backoff,
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
from forkhorn.arbiter.scoreboard import WorkerState
from forkhorn.errors import APP_LOAD_ERROR, WORKER_BOOT_ERROR

LIMITS = Limits(timeout=30.0, boot_timeout=30.0, abort_grace=2.0, graceful_timeout=10.0)
READY = WorkerState.READY
BOOTING = WorkerState.BOOTING


def worker(
    pid: int,
    *,
    age: int | None = None,
    generation: int = 0,
    state: WorkerState = READY,
    heartbeat: float = 100.0,
    **kw: object,
) -> WorkerView:
    return WorkerView(
        pid=pid,
        age=pid if age is None else age,
        generation=generation,
        state=state,
        spawned_at=0.0,
        heartbeat=heartbeat,
        **kw,  # type: ignore[arg-type]
    )


def run(workers: list[WorkerView], now: float = 100.0, **kw: object) -> list[object]:
    args: dict[str, object] = {"desired": 3, "generation": 0, "limits": LIMITS}
    args.update(kw)
    return list(decide(workers, now=now, **args).actions)  # type: ignore[arg-type]


def test_spawns_up_to_the_desired_count() -> None:
    assert run([]) == [Spawn(3)]
    assert run([worker(1), worker(2)]) == [Spawn(1)]
    assert run([worker(1), worker(2), worker(3)]) == []


def test_retires_the_oldest_first_when_there_are_too_many() -> None:
    table = [worker(10, age=3), worker(11, age=1), worker(12, age=2), worker(13, age=4)]
    assert run(table, desired=2) == [
        Retire(11, RetireReason.EXCESS),
        Retire(12, RetireReason.EXCESS),
    ]


def test_retires_workers_not_serving_yet_before_the_serving_ones() -> None:
    """TTOU while a replacement boots (a bad release on disk, say): the booting one goes,
    not the oldest worker, which may be the only one serving."""
    table = [worker(10, age=1), worker(11, age=2, state=BOOTING), worker(12, age=3, state=BOOTING)]
    assert run(table, desired=1) == [
        Retire(12, RetireReason.EXCESS),
        Retire(11, RetireReason.EXCESS),
    ]
    table = [worker(10, age=1), worker(11, age=2), worker(12, age=3, state=BOOTING)]
    assert run(table, desired=1) == [
        Retire(12, RetireReason.EXCESS),
        Retire(10, RetireReason.EXCESS),
    ]


def test_a_worker_that_failed_to_boot_counts_toward_the_excess_unretired() -> None:
    """Retired, its exit would be "expected" and its failed boot never judged (a reload
    onto the release that just failed); it is leaving anyway."""
    failed = worker(11, age=2, state=WorkerState.BOOT_FAILED, boot_failed_at=99.0)
    assert run([worker(10, age=1), failed], desired=1) == []
    aborted = worker(11, age=2, state=BOOTING, aborted_at=99.0)
    assert [a for a in run([worker(10, age=1), aborted], desired=1) if isinstance(a, Retire)] == []


def test_leaving_workers_are_replaced_at_once() -> None:
    table = [worker(1, retiring_since=95.0), worker(2, aborted_at=99.0), worker(3)]
    assert run(table) == [Spawn(2)]


def test_a_silent_worker_is_aborted_after_timeout() -> None:
    table = [worker(1, heartbeat=69.0), worker(2, heartbeat=71.0), worker(3, heartbeat=100.0)]
    actions = run(table)
    assert actions == [Abort(1, 31.0, False), Spawn(1)]


def test_a_worker_exactly_at_the_timeout_is_left_alone() -> None:
    assert run([worker(1, heartbeat=70.0), worker(2), worker(3)]) == []


def test_a_booting_worker_gets_the_boot_timeout() -> None:
    limits = replace(LIMITS, boot_timeout=60.0)
    table = [worker(1, state=BOOTING, heartbeat=50.0), worker(2), worker(3)]
    assert run(table, limits=limits) == []
    # No replacement yet: a boot that hung is judged when the worker is reaped (backoff,
    # or abandoning a reload), not answered with another boot that would hang the same way.
    assert run(table, now=111.0, limits=limits) == [Abort(1, 61.0, True)]
    aborted = [replace(table[0], aborted_at=111.0), *table[1:]]
    assert run(aborted, now=112.0, limits=limits) == []
    assert run(aborted, now=113.5, limits=limits) == [Kill(1, KillReason.ABORT_GRACE)]
    # A serving worker that hangs is replaced at once: capacity comes back.
    hung = [worker(1, heartbeat=50.0), worker(2), worker(3)]
    assert run(hung, now=111.0) == [Abort(1, 61.0, False), Spawn(1)]


def test_timeout_zero_disables_the_heartbeat_check() -> None:
    limits = replace(LIMITS, timeout=0.0)
    assert run([worker(1, heartbeat=0.0), worker(2), worker(3)], now=1e6, limits=limits) == []


def test_request_timeout_bounds_a_silent_busy_worker() -> None:
    """sync and fast run the app on their only thread or loop: a worker in a request
    (BUSY) that stops beating past request_timeout is stuck in it, well before timeout."""
    limits = replace(LIMITS, request_timeout=5.0)
    busy = WorkerState.BUSY
    table = [worker(1, state=busy, heartbeat=94.0), worker(2, heartbeat=90.0), worker(3)]
    # 6 s silent: the busy one is past request_timeout; the idle one is within timeout.
    assert run(table, limits=limits) == [Abort(1, 6.0, False), Spawn(1)]
    assert run(table, now=99.0, limits=limits) == []
    # request_timeout above timeout changes nothing; timeout 0 leaves request_timeout on.
    assert run(table, limits=replace(LIMITS, request_timeout=40.0)) == []
    off = replace(LIMITS, timeout=0.0, request_timeout=5.0)
    assert run(table, now=1e6, limits=off) == [Abort(1, 1e6 - 94.0, False), Spawn(1)]


def test_a_worker_keeps_the_timeouts_it_was_started_with() -> None:
    """A HUP that lowers timeout (or request_timeout) aborted the requests the old
    generation was finishing under the old value; each worker keeps its own, as its own
    graceful_timeout."""
    busy = WorkerState.BUSY
    lowered = replace(LIMITS, timeout=3.0, request_timeout=2.0)
    old = worker(1, state=busy, heartbeat=90.0, timeout=30.0, request_timeout=0.0)
    table = [old, worker(2), worker(3)]
    assert run(table, limits=lowered) == []  # 10 s silent: within its own 30 s
    later = [old, worker(2, heartbeat=120.0), worker(3, heartbeat=120.0)]
    assert run(later, now=120.5, limits=lowered) == [Abort(1, 30.5, False), Spawn(1)]
    new = worker(1, state=busy, heartbeat=97.0, timeout=3.0, request_timeout=2.0)
    assert run([new, worker(2), worker(3)], limits=lowered) == [Abort(1, 3.0, False), Spawn(1)]


def test_request_timeout_wakes_the_master_in_time() -> None:
    limits = replace(LIMITS, request_timeout=5.0)
    table = [worker(1, state=WorkerState.BUSY, heartbeat=98.0), worker(2), worker(3)]
    decision = decide(table, desired=3, generation=0, now=100.0, limits=limits)
    assert decision.wake_at == pytest.approx(103.0)


def test_an_aborted_worker_is_killed_after_the_grace() -> None:
    table = [worker(1, heartbeat=0.0, aborted_at=100.0), worker(2), worker(3), worker(4)]
    assert run(table, now=101.9) == []
    assert run(table, now=102.0) == [Kill(1, KillReason.ABORT_GRACE)]


def test_an_aborted_worker_is_not_aborted_twice_and_killed_ones_are_left() -> None:
    table = [
        worker(1, heartbeat=0.0, aborted_at=100.0, killed=True),
        worker(2, heartbeat=500.0),
        worker(3, heartbeat=500.0),
    ]
    assert run(table, now=500.0, desired=2) == []


def test_a_retiring_worker_is_killed_after_graceful_timeout() -> None:
    table = [worker(1, retiring_since=90.0), worker(2), worker(3), worker(4)]
    assert run(table, now=99.0) == []
    assert run(table, now=100.0) == [Kill(1, KillReason.GRACEFUL_TIMEOUT)]


def test_a_worker_that_reported_a_failed_boot_must_exit_within_graceful_timeout() -> None:
    failed = WorkerState.BOOT_FAILED
    table = [worker(1, state=failed, heartbeat=0.0, boot_failed_at=95.0), worker(2), worker(3)]
    assert Kill(1, KillReason.GRACEFUL_TIMEOUT) not in run(table, now=104.9)
    assert Kill(1, KillReason.GRACEFUL_TIMEOUT) in run(table, now=105.0)


def test_wake_at_is_the_next_deadline() -> None:
    table = [worker(1, aborted_at=99.5), worker(2), worker(3), worker(4)]
    decision = decide(table, desired=3, generation=0, now=100.0, limits=LIMITS)
    assert decision.wake_at == pytest.approx(101.5)


def test_stop_retires_everyone_then_kills_at_the_deadline() -> None:
    table = [worker(1), worker(2, retiring_since=99.0), worker(3, killed=True)]
    assert run(table, stop_deadline=110.0) == [Retire(1, RetireReason.STOP)]
    stopping = [worker(1, retiring_since=100.0), worker(2, retiring_since=99.0)]
    assert run(stopping, now=105.0, stop_deadline=110.0) == []
    assert run(stopping, now=110.0, stop_deadline=110.0) == [
        Kill(1, KillReason.STOP_DEADLINE),
        Kill(2, KillReason.STOP_DEADLINE),
    ]


def test_stop_never_spawns() -> None:
    assert run([], stop_deadline=110.0) == []


def test_reload_keeps_the_old_generation_until_the_new_one_serves() -> None:
    old = [worker(1), worker(2)]
    booting = [worker(3, generation=1, state=BOOTING), worker(4, generation=1, state=BOOTING)]
    assert run(old, desired=2, generation=1) == [Spawn(2)]
    assert run(old + booting, desired=2, generation=1) == []
    half = [booting[0], replace(booting[1], state=READY)]
    assert run(old + half, desired=2, generation=1) == []
    ready = [replace(w, state=READY) for w in booting]
    assert run(old + ready, desired=2, generation=1) == [
        Retire(1, RetireReason.RELOAD),
        Retire(2, RetireReason.RELOAD),
    ]


def test_a_dead_old_worker_is_not_replaced_during_reload() -> None:
    table = [worker(2), worker(3, generation=1, state=BOOTING), worker(4, generation=1)]
    assert run(table, desired=2, generation=1) == []


def test_backoff_holds_spawns_until_its_time() -> None:
    backoff = Backoff().failed(now=100.0)
    assert backoff.not_before == pytest.approx(100.1)
    decision = decide(
        [worker(1)], desired=3, generation=0, now=100.05, limits=LIMITS, backoff=backoff
    )
    assert decision.actions == ()
    assert decision.spawn_blocked_by_backoff
    assert decision.wake_at == pytest.approx(100.1)


def test_backoff_spawns_one_probe_at_a_time() -> None:
    backoff = Backoff().failed(now=100.0)
    assert run([worker(1)], now=101.0, backoff=backoff) == [Spawn(1)]
    probing = [worker(1), worker(2, state=BOOTING)]
    assert run(probing, now=101.0, backoff=backoff) == []


def test_backoff_doubles_to_a_ceiling_and_resets() -> None:
    backoff = Backoff()
    delays = []
    for i in range(12):
        backoff = backoff.failed(now=float(i))
        delays.append(backoff.not_before - i)
    assert delays[:4] == pytest.approx([0.1, 0.2, 0.4, 0.8])
    assert delays[-1] == 30.0
    assert backoff.succeeded().failures == 0


def _exit_at_start_up(exit_code: int | None, boot_failures: int = 0) -> tuple[Verdict, int]:
    """judge_exit's verdict and exit code for a booting worker's death before any served."""
    verdict = judge_exit(
        exit_code=exit_code,
        reached_serving=False,
        expected=False,
        generation=0,
        current_generation=0,
        ever_ready=False,
        older_generation_serving=False,
        boot_failures=boot_failures,
    )
    return verdict.verdict, verdict.exit_code


@pytest.mark.parametrize("code", [APP_LOAD_ERROR, WORKER_BOOT_ERROR])
def test_a_boot_error_before_anything_served_halts_with_that_code(code: int) -> None:
    assert _exit_at_start_up(code) == (Verdict.HALT, code)


def _judge(**kw: object) -> Verdict:
    args: dict[str, object] = {
        "exit_code": APP_LOAD_ERROR,
        "reached_serving": False,
        "expected": False,
        "generation": 0,
        "current_generation": 0,
        "ever_ready": True,
        "older_generation_serving": False,
    }
    args.update(kw)
    return judge_exit(**args).verdict  # type: ignore[arg-type]


def test_a_boot_error_after_the_server_was_up_backs_off() -> None:
    assert _judge() is Verdict.BACKOFF
    assert _judge(exit_code=None) is Verdict.BACKOFF  # crashed during boot


def test_a_boot_error_of_the_new_generation_abandons_the_reload() -> None:
    verdict = _judge(generation=1, current_generation=1, older_generation_serving=True)
    assert verdict is Verdict.ABANDON_RELOAD


def test_a_new_worker_killed_from_outside_is_replaced_up_to_the_limit() -> None:
    """A SIGKILL the master did not send (the OOM killer) says nothing of the release:
    replaced, until the reload's RELOAD_KILL_LIMIT-th such death abandons it."""
    from forkhorn.arbiter.policy import RELOAD_KILL_LIMIT

    reload = {"generation": 1, "current_generation": 1, "older_generation_serving": True}
    for kills in range(RELOAD_KILL_LIMIT - 1):
        verdict = _judge(exit_code=None, killed_outside=True, reload_kills=kills, **reload)
        assert verdict is Verdict.REPLACE
    last = _judge(exit_code=None, killed_outside=True, reload_kills=RELOAD_KILL_LIMIT - 1, **reload)
    assert last is Verdict.ABANDON_RELOAD
    # A crash of its own (SIGSEGV in a C extension's import), or a boot error, still abandons.
    assert _judge(exit_code=None, **reload) is Verdict.ABANDON_RELOAD
    # Outside a reload a kill at boot backs off as before.
    assert _judge(exit_code=None, killed_outside=True) is Verdict.BACKOFF


def test_ordinary_and_expected_deaths_are_replaced() -> None:
    assert _judge(exit_code=None, reached_serving=True) is Verdict.REPLACE
    assert _judge(exit_code=0, expected=True, ever_ready=False) is Verdict.REPLACE
    assert _judge(generation=1, current_generation=0) is Verdict.REPLACE


def test_deaths_that_say_nothing_halt_at_start_up_after_a_few() -> None:
    """A worker that dies booting without a boot error's exit code (a crash in a C
    extension, ``os._exit`` in an import) is retried, but not for ever while nobody
    serves: the fifth such death before any worker served halts (exit 3)."""
    for failures in range(START_FAILURE_LIMIT - 1):
        assert _judge(exit_code=1, ever_ready=False, boot_failures=failures) is Verdict.BACKOFF
    assert _exit_at_start_up(None, START_FAILURE_LIMIT - 1) == (Verdict.HALT, WORKER_BOOT_ERROR)
    # Once the server has served, the healthy workers carry on and the backoff retries.
    assert _judge(exit_code=1, boot_failures=50) is Verdict.BACKOFF
