"""Worker settings: how many processes, which class, and when a worker is recycled."""

from __future__ import annotations

from typing import ClassVar

from forkhorn.config.converters import (
    dotted_path,
    non_negative_int,
    optional_string,
    positive_int,
    seconds,
)
from forkhorn.config.setting import Setting


class WorkerOptions:
    SECTION: ClassVar[str] = "Worker processes"
    __slots__ = ()

    workers = Setting(
        default=1,
        convert=positive_int,
        flags=("-w", "--workers"),
        metavar="INT",
        env=("WEB_CONCURRENCY",),
        doc="""
        The number of worker processes. Two to four per CPU core is a common start.
        ``WEB_CONCURRENCY`` in the environment replaces the default, as with gunicorn, so a
        config file or ``-w`` still wins over it.
        """,
    )
    worker_class = Setting(
        default="sync",
        convert=dotted_path,
        flags=("-k", "--worker-class"),
        metavar="STRING",
        doc="""
        The worker type: ``sync``, ``gthread``, ``gevent``, ``eventlet``, ``fast``, or a
        class given as ``pkg.mod:Class`` or ``pkg.mod.Class`` (a subclass of one of
        forkhorn's: docs/extending.md). ``sync`` with ``threads`` above 1 runs ``gthread``,
        as gunicorn does.
        """,
    )
    threads = Setting(
        default=1,
        convert=positive_int,
        flags=("--threads",),
        metavar="INT",
        doc="Threads per worker for the ``gthread`` worker.",
    )
    worker_connections = Setting(
        default=1000,
        convert=positive_int,
        flags=("--worker-connections",),
        metavar="INT",
        doc="""
        The most connections one worker keeps open at once (``gthread``, ``gevent``,
        ``eventlet``, ``fast``, and the sync worker's head-waiting pool). A connection
        beyond it is answered 503 and closed at once, rather than left waiting; the error
        log counts the refusals. A full ``gevent`` or ``eventlet`` worker waits up to 0.5 s
        before it takes a connection, so that a sibling with room takes it instead; on
        the other classes the worker that accepted it decides, even if another has room.
        """,
    )
    max_requests = Setting(
        default=0,
        convert=non_negative_int,
        flags=("--max-requests",),
        metavar="INT",
        doc="""
        Restart a worker after this many requests (a leak bound). 0 turns it off. At most
        half of the workers (one of two) recycle at once, and none while new workers fail
        to boot (a bad release on disk): a worker at its limit then serves on, looking
        again every 10 requests, so with few workers, a small limit and a high request
        rate it can serve many more than this (a boot's worth of requests) before it
        leaves. ``max_worker_lifetime`` and ``max_worker_memory`` wait the same way; in
        gunicorn every worker may leave at once.
        """,
    )
    max_requests_jitter = Setting(
        default=0,
        convert=non_negative_int,
        flags=("--max-requests-jitter",),
        metavar="INT",
        doc="""
        Add a random 0..N to ``max_requests`` per worker so that workers do not all restart
        at once.
        """,
    )
    timeout = Setting(
        default=30,
        convert=non_negative_int,
        flags=("-t", "--timeout"),
        metavar="INT",
        doc="""
        A worker silent for this many seconds is logged with its stack and replaced. On
        gthread, gevent and eventlet it also bounds a request that makes no progress this
        long (no response sent yet, or none of it taken by the client): a stream or a
        download its client keeps reading is not cut. 0 turns it off.
        """,
    )
    graceful_timeout = Setting(
        default=30,
        convert=non_negative_int,
        flags=("--graceful-timeout",),
        metavar="INT",
        doc="""
        On a graceful stop or restart, how long workers may finish in-flight requests
        before they are killed.
        """,
    )
    keepalive = Setting(
        default=2,
        convert=non_negative_int,
        flags=("--keep-alive",),
        metavar="INT",
        doc="""
        Seconds an idle keep-alive connection waits for the next request. The sync worker
        closes after each response regardless. 0 turns keep-alive off. The fast worker
        checks its deadlines once a second: it closes an idle connection up to a second
        later (a proxy's idle timeout set below ``keepalive`` is unaffected).
        """,
    )
    max_worker_memory = Setting(
        default=0,
        convert=non_negative_int,
        flags=("--max-worker-memory",),
        metavar="MIB",
        doc="""
        Retire a worker whose resident memory (RSS) passes this many MiB, after its current
        requests; its replacement starts while it finishes them. 0 turns it off.
        """,
    )
    max_worker_lifetime = Setting(
        default=0.0,
        convert=seconds,
        flags=("--max-worker-lifetime",),
        metavar="SECONDS",
        doc="Retire a worker after it has run this long, without dropping requests. 0 is off.",
    )
    max_worker_lifetime_jitter = Setting(
        default=0.0,
        convert=seconds,
        flags=("--max-worker-lifetime-jitter",),
        metavar="SECONDS",
        doc="""
        Add a random 0..N seconds to ``max_worker_lifetime`` per worker (without
        ``max_worker_lifetime`` it does nothing, which start-up warns).
        """,
    )
    request_timeout = Setting(
        default=0.0,
        convert=seconds,
        flags=("--request-timeout",),
        metavar="SECONDS",
        doc="""
        Per-request limit (like uWSGI's harakiri): a request that makes no progress this
        long (no response yet, or none of it taken by its client) is interrupted, answered
        504 when headers were not sent yet, and logged with its stack (gthread, gevent,
        eventlet); a response its client keeps reading goes on. sync and fast run the app
        on their only thread or loop: there the master aborts (stack dump) and replaces a
        worker stuck in one request this long, as it does at ``timeout``. 0 is off;
        ``timeout`` still bounds every worker, so a value above ``timeout`` (when that is
        not 0) stops start-up.
        """,
    )
    worker_tmp_dir = Setting(
        default=None,
        convert=optional_string,
        flags=("--worker-tmp-dir",),
        metavar="DIR",
        doc="""
        Accepted for gunicorn compatibility and unused: forkhorn's heartbeat lives in
        shared memory, not in a file.
        """,
    )
