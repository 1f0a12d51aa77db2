"""The scoreboard: what every worker is doing right now, in shared memory.

Holds one fixed-size slot per live worker in anonymous shared memory (``mmap.mmap(-1, n)``)
made by the master *before* it forks, so every child sees the same pages.  A slot says:
the worker's pid, its state (booting, ready, busy, idle, exiting, boot-failed), its last
heartbeat, how many requests it served, when the request in flight started, and the first
bytes of that request's line (or, for a boot failure, the reason).

Rules it keeps:

1. A slot is written only by the worker that owns it (the master writes it only while no
   process owns it: when it hands the slot out and after it reaped the owner).  The master
   only reads.  (The one exception goes the other way: a single byte outside the slots
   that the master writes and the workers read, ``hold_recycling``.)  So there is no
   lock on the slots (the one lock here is between workers, around a claim to leave:
   ``claim_leaving``): a read may be torn between fields, which at worst pairs a request
   line with the previous request's start time in a log line.  The heartbeat, the one
   field decisions hang on, is stored and loaded as one aligned 8-byte double (never
   through ``struct``, which zeroes a range before it fills it; see
   ``ScoreboardSlot.snapshot``), which Linux and every CPU we run on perform at once.
2. Every time in a slot is ``time.monotonic()``; it is shared across processes on one host.
3. Slots never move.  When the master runs out it maps one more segment; only workers
   forked afterwards see it, and they only ever touch their own slot.  Start-up allocates
   ``max(64, 4 * workers)`` slots so that HUP (twice the workers for a moment) and TTIN
   rarely need that.

How a worker uses it: ``slot.heartbeat()`` on every tick (one 8-byte store; no syscall,
no file), ``slot.request_started(line)`` / ``slot.request_finished()`` around a request.
The master calls ``scoreboard.allocate()`` before forking, ``slot.snapshot()`` each loop,
and ``scoreboard.free(slot)`` after reaping.
"""

from __future__ import annotations

import enum
import errno
import fcntl
import mmap
import os
import struct
import tempfile
import time
import weakref
from dataclasses import dataclass

__all__ = [
    "HOLD_FAILING",
    "MAX_REQUEST_LINE_BYTES",
    "Scoreboard",
    "ScoreboardSlot",
    "SlotSnapshot",
    "WorkerState",
]

# Long enough for the method, a typical path and query, and the version; the full line is in
# the access log.  Apache keeps 64 bytes of it in its scoreboard; 200 shows more of a query.
MAX_REQUEST_LINE_BYTES = 200


class WorkerState(enum.IntEnum):
    """What a worker is doing; stored as one byte in its slot."""

    FREE = 0  # slot not in use
    BOOTING = 1  # forked, loading the app
    READY = 2  # app loaded, waiting for its first request
    BUSY = 3  # a request is in flight
    IDLE = 4  # between requests
    EXITING = 5  # told to stop (graceful), finishing in-flight work
    BOOT_FAILED = 6  # could not load the app; the reason is in the request-line field

    @property
    def is_serving(self) -> bool:
        """True once the worker has loaded the app and has not begun to exit."""
        return self in (WorkerState.READY, WorkerState.BUSY, WorkerState.IDLE)


# Layout, little-endian, no implicit padding; doubles stay 8-byte aligned. What a request
# changes comes first and in one run, so that each hot-path store is one pack_into after
# the heartbeat plus the heartbeat's own store:
#   heartbeat d | request_start d | requests Q | state B | pad 1 | line_len H | pad 4 |
#   line 200s | spawned_at d | pid i | generation I
_LAYOUT = struct.Struct(f"<ddQBxH4x{MAX_REQUEST_LINE_BYTES}sdiI")
SLOT_SIZE = (_LAYOUT.size + 7) // 8 * 8
_STATE = struct.Struct("<B")  # offset 24
_LINE = struct.Struct(f"<H4x{MAX_REQUEST_LINE_BYTES}s")  # offset 26
_PID = struct.Struct("<i")  # offset 240
_OFF_STATE = 24
_OFF_LINE = 26
_OFF_PID = 240
# The two hot-path packs, each from offset 8, after the heartbeat (stored on its own, see
# ScoreboardSlot.snapshot): request_started writes start, count (unchanged: pad bytes
# would be written as zeros, so it cannot be skipped), state and line; request_finished
# writes start (0.0: no request in flight), count and state.
_STARTED = struct.Struct(f"<dQBxH4x{MAX_REQUEST_LINE_BYTES}s")  # offset 8
_FINISHED = struct.Struct("<dQB")  # offset 8
_OFF_START = 8
_monotonic = time.monotonic
_BUSY = int(WorkerState.BUSY)
_IDLE = int(WorkerState.IDLE)
_EXITING = int(WorkerState.EXITING)
_FREE = int(WorkerState.FREE)
# A worker booting, leaving, or whose boot just failed (until the master, holding
# recycling for it, reaps it): another one at its recycling limit waits.
_CHANGING = (int(WorkerState.BOOTING), _EXITING, int(WorkerState.BOOT_FAILED))
# The master's notice to the workers (Scoreboard.hold_recycling): new workers fail to boot,
# so none may recycle itself.
HOLD_FAILING = 1
# Reads of a slot caught in the middle of its owner's store (see snapshot) before giving up.
_TORN_READ_RETRIES = 3


@dataclass(frozen=True, slots=True)
class SlotSnapshot:
    """One consistent-enough copy of a slot, as the master reads it."""

    index: int
    pid: int
    generation: int
    state: WorkerState
    spawned_at: float
    heartbeat: float
    requests: int
    request_start: float  # 0.0 when no request is in flight
    request_line: bytes  # the request in flight, or the boot-failure reason

    def request_age(self, now: float) -> float | None:
        """Seconds the request in flight has run, or None when there is none."""
        # EXITING: a leaving worker finishing a request it had accepted (set_state).
        if self.state not in (WorkerState.BUSY, WorkerState.EXITING) or self.request_start <= 0:
            return None
        return max(0.0, now - self.request_start)


class ScoreboardSlot:
    """One worker's slot.  Created by the master; written by the worker that owns it.

    Runs in: the owning worker (every write method) and the master (``snapshot``, and
    ``reset`` before the slot is handed out).
    """

    __slots__ = (
        "_base", "_beat", "_beats", "_buf", "_busy", "_claims", "_idle", "_notice", "_served",
        "index",
    )  # fmt: skip

    def __init__(
        self,
        buf: mmap.mmap,
        beats: memoryview[float],
        base: int,
        index: int,
        notice: mmap.mmap | None = None,
        claims: ClaimsLock | None = None,
    ) -> None:
        self._buf = buf
        # The lock every worker shares around ``claim_leaving`` (None: none).
        self._claims = claims
        # The master's notice to every worker (``Scoreboard.hold_recycling``): the one
        # thing the master writes that workers read.
        self._notice = notice
        self._base = base
        # The heartbeat as one aligned 8-byte double of the segment seen as doubles: an
        # item store or load through the view is a single machine store or load.
        self._beats = beats
        self._beat = base // 8
        self.index = index
        self._served = 0  # the owner's count, mirrored into the slot
        # The states the request stores write; both EXITING once the worker is leaving
        # (set_state), so a request it still serves (one already accepted) does not hide
        # that from the master, which starts its replacement when it reads EXITING.
        self._busy = _BUSY
        self._idle = _IDLE

    # -- master side -------------------------------------------------------------------
    def reset(self, generation: int, now: float) -> None:
        """Clear the slot for a worker about to be forked (master only)."""
        self._served = 0
        self._busy = _BUSY
        self._idle = _IDLE
        _LAYOUT.pack_into(
            self._buf, self._base, now, 0.0, 0, WorkerState.BOOTING, 0, b"", now, 0, generation
        )

    def release(self) -> None:
        """Mark the slot free after its owner was reaped (master only)."""
        _LAYOUT.pack_into(self._buf, self._base, 0.0, 0.0, 0, WorkerState.FREE, 0, b"", 0.0, 0, 0)

    def snapshot(self) -> SlotSnapshot:
        """Copy the slot out.  Unlocked; see the module docstring, rule 1.

        ``struct.pack_into`` zeroes the whole range it packs before it writes the fields, so
        a read can land between the two: a live worker's heartbeat then reads 0.0 (silent
        since boot, so the master would abort it for a timeout; a HUP test under wrk caught
        it) and its state FREE, and a double read while its bytes are being written one by
        one is nonsense too. A busy worker stores twice per request, and such reads came
        to about 0.8 % of all reads in a test here. So the heartbeat is never packed: the
        owner stores it, and the master loads it, as one aligned 8-byte double. The other
        fields are packed after offset 8; a slot whose owner is known (the pid lies outside
        those stores) and that reads FREE is read again, and read as BUSY if the owner
        stays in the middle of its store (descheduled there).
        """
        buf, base = self._buf, self._base
        for _ in range(_TORN_READ_RETRIES):
            _, rs, reqs, state, n, line, spawned, pid, gen = _LAYOUT.unpack_from(buf, base)
            if not pid or state != _FREE:
                break  # a free slot, or the owner's store is not half-done
        else:
            # The owner was descheduled in the middle of a store: it is serving requests
            # (the hot-path stores) or changing state; BUSY is the safe reading of both.
            state = _BUSY
        hb = self._beats[self._beat]
        try:
            st = WorkerState(state)
        except ValueError:  # a torn or scribbled byte; treat as still booting
            st = WorkerState.BOOTING
        return SlotSnapshot(
            index=self.index,
            pid=pid,
            generation=gen,
            state=st,
            spawned_at=spawned,
            heartbeat=hb,
            requests=reqs,
            request_start=rs,
            request_line=line[: min(n, MAX_REQUEST_LINE_BYTES)],
        )

    # -- worker side -------------------------------------------------------------------
    def set_pid(self, pid: int) -> None:
        _PID.pack_into(self._buf, self._base + _OFF_PID, pid)

    def set_state(self, state: WorkerState) -> None:
        if state is WorkerState.EXITING:
            self._busy = self._idle = _EXITING  # for good: see __init__
        elif self._idle == _EXITING and state.is_serving:
            state = WorkerState.EXITING
        _STATE.pack_into(self._buf, self._base + _OFF_STATE, state)

    def heartbeat(self, now: float | None = None) -> None:
        """Record that the worker is alive: one 8-byte store, no syscall beyond the clock."""
        self._beats[self._beat] = time.monotonic() if now is None else now

    def _set_line(self, line: bytes) -> None:
        raw = line[:MAX_REQUEST_LINE_BYTES]
        _LINE.pack_into(self._buf, self._base + _OFF_LINE, len(raw), raw)

    def request_started(self, request_line: bytes, now: float | None = None) -> None:
        """A request began: store its line and start, mark BUSY, heartbeat.

        One store: this runs once per request on every worker's hot path.
        """
        t = _monotonic() if now is None else now
        # struct's "s" truncates a longer line to MAX_REQUEST_LINE_BYTES by itself.
        _STARTED.pack_into(
            self._buf,
            self._base + _OFF_START,
            t,
            self._served,
            self._busy,
            min(len(request_line), MAX_REQUEST_LINE_BYTES),
            request_line,
        )
        self._beats[self._beat] = t

    def request_unbound(self) -> None:
        """The request became a connection the app keeps (a WebSocket): no request in
        flight any more, as far as the master's ``request_timeout`` is concerned."""
        _FINISHED.pack_into(self._buf, self._base + _OFF_START, 0.0, self._served, self._idle)

    def request_finished(self, now: float | None = None) -> int:
        """The request ended: count it, mark IDLE, heartbeat.  Returns requests served.
        One store, like request_started."""
        self._served = served = self._served + 1
        _FINISHED.pack_into(self._buf, self._base + _OFF_START, 0.0, served, self._idle)
        self._beats[self._beat] = _monotonic() if now is None else now
        return served

    def recycling_held(self) -> int:
        """Has the master asked workers not to recycle themselves (max_requests, lifetime,
        memory) for now? 0: no; ``HOLD_FAILING``: new workers fail to boot. One byte
        read."""
        notice = self._notice
        return 0 if notice is None else notice[0]

    def too_many_changing(self) -> bool:
        """Are as many of the other workers of this segment booting, leaving, or just
        failed to boot as may be at once (half of the workers, at least one)? A worker at
        its recycling limit waits then, seeing it here at once, where the master's notice
        comes a loop later: two workers that reached their limits together both left
        before the master saw either, and one left as a reload's new workers failed,
        before the master held recycling, so a bad release could take every worker. A
        read of one byte per slot."""
        buf = self._buf
        own = self._base
        changing = in_use = 0
        for base in range(0, len(buf), SLOT_SIZE):
            state = buf[base + _OFF_STATE]
            if state != _FREE:
                in_use += 1
                if base != own and state in _CHANGING:
                    changing += 1
        return changing >= max(1, in_use // 2)

    def claim_leaving(self) -> bool:
        """Mark this worker EXITING unless too many others are changing already
        (``too_many_changing``). The look and the claim are one step under a lock every
        worker shares (a POSIX record lock, per process): two workers that reached their
        recycling limits in the same instant both saw the other still serving, and both
        left. A worker that finds the lock taken does not wait for it (its owner may be
        stopped by a signal, or a debugger): it is told no, and looks again later."""
        fd = -1 if self._claims is None else self._claims.fd
        if fd >= 0:
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                if exc.errno in (errno.EACCES, errno.EAGAIN):
                    return False  # taken: another worker is deciding
                # Not ours any more (an app that closed every descriptor): unlocked, as
                # before the lock, rather than never recycling.
                fd = -1
        try:
            if self.too_many_changing():
                return False
            self.set_state(WorkerState.EXITING)
            return True
        finally:
            if fd >= 0:
                fcntl.lockf(fd, fcntl.LOCK_UN)

    def boot_failed(self, reason: str) -> None:
        """Record why the app could not load, for the master to log after reaping."""
        self._set_line(reason.encode("utf-8", "replace"))
        self.set_state(WorkerState.BOOT_FAILED)

    def __repr__(self) -> str:
        return f"<ScoreboardSlot {self.index}>"


class ClaimsLock:
    """The file ``ScoreboardSlot.claim_leaving`` locks, shared by every worker forked after
    it was made. Open for writing (a POSIX write lock needs that), in memory where Linux
    allows: a read-only or full temporary directory does not stop the master. Every slot
    holds it, so its descriptor lives as long as any of them."""

    __slots__ = ("__weakref__", "close", "fd")

    def __init__(self) -> None:
        if hasattr(os, "memfd_create"):
            self.fd = os.memfd_create("forkhorn-claims")
        else:
            self.fd, path = tempfile.mkstemp(prefix="forkhorn-claims-")
            os.unlink(path)
        self.close = weakref.finalize(self, os.close, self.fd)


class Scoreboard:
    """All slots, in one or more shared segments.  Allocation is master-only.

    Runs in: master, main loop only (``allocate``, ``free``, ``snapshots``).
    """

    def __init__(self, nslots: int = 64) -> None:
        self._segment_slots = max(1, nslots)
        self._segments: list[mmap.mmap] = []
        self._beat_views: list[memoryview[float]] = []
        self._slots: list[ScoreboardSlot] = []
        self._free: list[int] = []
        self._in_use: set[int] = set()
        # One byte the master writes and every worker reads (rule 1's exception, a single
        # byte store): while set, workers do not recycle themselves. Mapped before any
        # fork, like the first segment, so every worker shares it.
        self._notice = mmap.mmap(-1, mmap.PAGESIZE)
        # The file ScoreboardSlot.claim_leaving locks; in memory where Linux allows it.
        self._claims = ClaimsLock()
        self._add_segment()

    def _add_segment(self) -> None:
        buf = mmap.mmap(-1, SLOT_SIZE * self._segment_slots)
        beats: memoryview[float] = memoryview(buf).cast("d")
        self._segments.append(buf)
        self._beat_views.append(beats)
        first = len(self._slots)
        for i in range(self._segment_slots):
            self._slots.append(
                ScoreboardSlot(buf, beats, i * SLOT_SIZE, first + i, self._notice, self._claims)
            )
        # Hand out low indexes first: pop() takes from the end.
        self._free.extend(range(len(self._slots) - 1, first - 1, -1))

    def hold_recycling(self, why: int) -> None:
        """Ask every worker not to recycle itself (``why``: ``HOLD_FAILING``), or let them
        again (0). A worker that retires for max_requests, max_worker_lifetime or
        max_worker_memory while its replacement would fail to boot takes the server's
        capacity down with it (master only)."""
        self._notice[0] = why

    @property
    def recycling_held(self) -> int:
        return self._notice[0]

    @property
    def capacity(self) -> int:
        return len(self._slots)

    def allocate(self, generation: int = 0, now: float | None = None) -> ScoreboardSlot:
        """Take a free slot (mapping a new segment when none is left) and reset it."""
        if not self._free:
            self._add_segment()
        index = self._free.pop()
        self._in_use.add(index)
        slot = self._slots[index]
        slot.reset(generation, time.monotonic() if now is None else now)
        return slot

    def free(self, slot: ScoreboardSlot) -> None:
        """Give a slot back once its worker has been reaped."""
        if slot.index in self._in_use:
            self._in_use.discard(slot.index)
            slot.release()
            self._free.append(slot.index)

    def slot(self, index: int) -> ScoreboardSlot:
        return self._slots[index]

    def snapshots(self) -> list[SlotSnapshot]:
        """Snapshots of every slot in use, lowest index first."""
        return [self._slots[i].snapshot() for i in sorted(self._in_use)]

    def close(self) -> None:
        for view in self._beat_views:
            view.release()  # an mmap with a live view cannot be closed
        self._beat_views.clear()
        for buf in self._segments:
            buf.close()
        self._segments.clear()
        self._notice.close()
        self._claims.close()
