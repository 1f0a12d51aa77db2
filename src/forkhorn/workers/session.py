"""Serving requests on a blocking socket: what the sync, gthread, gevent and eventlet
workers share once a request head has arrived.

``serve_request`` runs the request cycle for one parsed request and decides whether the
connection may carry another; ``read_request`` waits for the next head on a blocking
socket (greenlet workers, one greenlet per connection). Neither parses HTTP: both drive
``forkhorn.http.ServerConnection``.

Rules kept:
- A protocol error is answered with its status (if nothing was sent yet) and the
  connection is closed; a client that went away is closed quietly.
- An unread request body is drained only when it is small (the core decided that when the
  response head was framed); otherwise the connection is closed, lingering while the rest
  still arrives (``ServerConnection.body_still_coming``; each class reads and drops it for
  ``LINGER_TIME`` at most), so that a reset does not destroy the response.
- The access log, ``pre_request``/``post_request`` and the scoreboard see every request
  that reached the app, whatever happened to it.

Runs in: the worker process, in the thread or greenlet serving the connection.
"""

from __future__ import annotations

import fcntl
import os
import socket
import sys
import termios
import time
from typing import TYPE_CHECKING, Any

from forkhorn.errors import RequestHungError
from forkhorn.http import (
    CLOSED,
    NEED_DATA,
    BodyNotStoredError,
    IncompleteBodyError,
    IncompleteHeadError,
    ProtocolError,
    Request,
    RequestTimeoutError,
    ServerConnection,
)
from forkhorn.http.writer import server_line
from forkhorn.wsgi.cycle import (
    ClientGoneError,
    ConnectionTakenOver,
    Exchange,
    HookRequest,
    app_failed,
    error_body,
    protocol_error_answer,
    raw_error_response,
    run_app,
)
from forkhorn.wsgi.environ import build_environ, refused_environ
from forkhorn.wsgi.input import RECV_SIZE, InputStream

from .watchdog import request_limit, timeout_response, timeout_status

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from .base import Worker
    from .watchdog import InFlight


def bytes_waiting(fd: int) -> bool:
    """Has the peer sent bytes this process has not read yet (``FIONREAD``)?

    Asked before closing a connection that looks idle: one that holds an unread request
    would be reset by the close (the kernel sends RST when unread data is discarded), and
    the client would see an error for a request it sent in time.
    """
    try:
        waiting = fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0")
    except (OSError, ValueError):
        return False
    return int.from_bytes(waiting, sys.byteorder) > 0


def output_waiting(sock: Any) -> int:
    """Bytes sent on ``sock`` that its peer has not taken yet (0 where unknown)."""
    try:
        return bytes_unsent(sock.fileno())
    except (OSError, AttributeError, ValueError):
        return 0


def bytes_written(sock: Any) -> int | None:
    """All the bytes written on a TCP connection so far, by anyone holding its socket: those
    the peer acknowledged (``tcpi_bytes_acked``) and those still queued (``TIOCOUTQ``).
    Read until the count holds still, so that an acknowledgement between the two readings
    is not counted twice. None for other sockets, or where it cannot be read."""
    if getattr(sock, "family", None) not in (socket.AF_INET, socket.AF_INET6):
        return None
    acked = output_taken(sock)
    for _ in range(3):
        if acked is None:
            return None
        queued = bytes_unsent(sock.fileno())
        again = output_taken(sock)
        if again == acked:
            return acked + queued
        acked = again
    return None


class _Handshake:
    """A request with ``Upgrade: websocket`` on a class with a watchdog (gthread, gevent,
    eventlet): did the app take the connection over? It did if, with no response head of
    the server's sent, bytes went out on the socket since the request began: the app's
    own 101. The watchdog asks at the request's limit, and lets such a request go on."""

    __slots__ = ("exchange", "mark", "sock")

    def __init__(self, sock: Any, mark: int, exchange: Exchange) -> None:
        self.sock = sock
        self.mark = mark
        self.exchange = exchange

    def taken_over(self) -> bool:
        if self.exchange.head_sent:
            return False  # answered through WSGI: a plain response, bounded as any
        written = bytes_written(self.sock)
        return written is None or written > self.mark


def _app_wrote(websocket: bool, handshake: _Handshake | None) -> bool:
    """May the app have written on the socket itself (a WebSocket it took)? Then nothing
    of the server's may follow. Unknown (no count) counts as yes."""
    return websocket and (handshake is None or handshake.taken_over())


def output_taken(sock: Any) -> int | None:
    """A reading that changes while the peer takes what was sent: the request watchdog's
    probe of a response's progress. For TCP, the bytes the peer acknowledged (Linux's
    ``tcpi_bytes_acked``, a count that only grows); for a unix socket, the bytes still
    queued (``TIOCOUTQ``: it falls as the peer reads, and rises only when a send it
    unblocked refills it). None where neither can be read."""
    try:
        if sock.family == socket.AF_UNIX:
            return bytes_unsent(sock.fileno())
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCP_INFO_SIZE)
    except (OSError, AttributeError, ValueError):
        return None
    if len(info) < _TCPI_BYTES_ACKED + 8:
        return None
    return int.from_bytes(info[_TCPI_BYTES_ACKED : _TCPI_BYTES_ACKED + 8], sys.byteorder)


# struct tcp_info (linux/tcp.h): tcpi_bytes_acked, a __u64 after 104 bytes of fields and
# the two pacing rates; there since Linux 4.1.
_TCPI_BYTES_ACKED = 120
_TCP_INFO_SIZE = 232


#: After the answer to a refused request, or a response to a request whose body the app
#: left unread, how long what the client still sends is read and dropped before the
#: connection closes (a lingering close, RFC 9112 §9.6; Apache
#: lingers up to 2 s too).
LINGER_TIME = 2.0
#: How much sooner than ``timeout`` a request body that stopped coming is answered 408
#: (a tenth of ``timeout`` when that is shorter): the hang watchdogs then never see it.
STALL_MARGIN = 1.0
#: How often a stopping worker looks at its lingering connections' send queues
#: (``still_sending``): nothing wakes it when one empties.
LINGER_POLL = 0.05


def _stall_bound(limit: float) -> float:
    """How long a body may go without a byte before it is answered 408: a little under the
    limit a hang is judged by (STALL_MARGIN, or a tenth of a short limit)."""
    return limit - min(STALL_MARGIN, limit / 10)


def close_must_linger(conn: ServerConnection, sock: Any) -> bool:
    """Closing after a response: must the close linger (our FIN, then what the client
    still sends read and dropped until it closes, LINGER_TIME at most) rather than happen
    at once? A socket closed with input unread, or that input arrives on, is reset, and
    the reset throws away what of the response the kernel still holds for the client
    (RFC 9112 §9.6): a 300 kB answer arrived as 113-160 kB. So it lingers when the app
    left some of the body unread and more may come, when the client already sent more (a
    pipelined request, in the parser's buffer or the kernel's), and while the client has
    not acknowledged all of the response: a request it sends meanwhile (pipelined, or
    despite its own ``Connection: close``) would reset it. Once everything is
    acknowledged a reset costs a Linux client nothing (it reads what it has, then sees
    the reset), so a small response on a fast network closes at once."""
    if conn.peer_closed:
        return False
    if conn.body_still_coming or conn.has_buffered:
        return True
    try:
        fd = sock.fileno()
    except (OSError, AttributeError):
        return False
    if fd < 0:
        return False
    return bytes_waiting(fd) or bytes_unsent(fd) > 0


def still_sending(socks: Iterable[Any]) -> bool:
    """Does one of these lingering connections still hold response bytes its client has
    not acknowledged? A worker that exits closes them all, and a socket closed with
    unread input resets its connection, which throws away what its send queue holds:
    the end of the response. So a stop waits for those (bounded by LINGER_TIME and the
    graceful deadline), not for a client that goes on sending after it has everything."""
    for sock in socks:
        fd = sock.fileno()
        if fd >= 0 and bytes_unsent(fd):
            return True
    return False


def refuse_overloaded(sock: Any, server_line: bytes) -> None:
    """A connection past ``worker_connections``: a 503 the client can read, our FIN, and
    what its request had sent by then read first (closed with it unread, the socket would
    be reset, and the reset can destroy the answer), then close. Never waits on the
    client. ``sock``: the standard library's socket or the C type (not a green one: the
    green workers' acceptor may not switch here)."""
    try:
        sock.setblocking(False)
        sock.send(raw_error_response(503, "Service Unavailable", server_line))
        sock.shutdown(socket.SHUT_WR)
        for _ in range(16):
            if not sock.recv(RECV_SIZE):
                break
    except OSError:
        pass
    finally:
        sock.close()


def bytes_unsent(fd: int) -> int:
    """Bytes in the socket's send queue that the peer has not acknowledged yet
    (``TIOCOUTQ``; 0 where it cannot be asked): they go down as the client reads."""
    try:
        queued = fcntl.ioctl(fd, termios.TIOCOUTQ, b"\0\0\0\0")
    except (OSError, ValueError, AttributeError):
        return 0
    return int.from_bytes(queued, sys.byteorder)


def new_connection(worker: Worker) -> ServerConnection:
    """A ServerConnection with the worker's limits."""
    return ServerConnection(*worker.http_limits)


def peer_of(addr: Any) -> tuple[str, str]:
    """REMOTE_ADDR and REMOTE_PORT for an accepted socket's address."""
    if isinstance(addr, tuple):
        return str(addr[0]), str(addr[1])
    return "", ""  # Unix socket: no peer address


def send_protocol_error(
    worker: Worker,
    sock: socket.socket,
    conn: ServerConnection,
    exc: ProtocolError,
    peer: tuple[str, str],
    access: bool = True,
) -> int:
    """Answer a refused request with its status, if nothing was sent yet, log it, and give
    up. ``access=False`` where the caller's own access-log line covers the request.
    Returns the bytes sent."""
    answer = protocol_error_answer(conn, exc)
    answered = False
    if answer:
        try:
            sock.sendall(answer)
            answered = True
        except (OSError, ValueError):
            pass
    return log_refused(worker, conn, exc, peer, answered, access)


def log_refused(
    worker: Worker,
    conn: ServerConnection,
    exc: ProtocolError,
    peer: tuple[str, str],
    answered: bool = False,
    access: bool = True,
) -> int:
    """Leave a trace of a request the HTTP core refused, in every worker class; return the
    body bytes of the answer, if ``answered`` (what ``%(b)s`` counts).

    The error log gets one line naming the client, the reason and the answer. Its words
    are gunicorn's ("Invalid request from ip=..."), which log scrapers and fail2ban rules
    match; a smuggling probe must not pass unseen. A request that came too slowly (408) or
    whose client left mid-head or mid-body is the client's doing and routine behind a
    proxy: INFO, the rest WARNING. When the request's head had been read, the access log
    gets its line too, with the status it was refused with, as gunicorn writes it.
    """
    log = worker.log
    # Unknown when the client reset the connection before the worker asked for its
    # address (the fast worker's transport then has none).
    ip = peer[0] or "unknown"
    if isinstance(exc, (IncompleteBodyError, IncompleteHeadError)):
        log.info("Incomplete request from ip=%s: %s", ip, exc.detail)
    elif isinstance(exc, RequestTimeoutError):
        log.info("Request timeout from ip=%s: %s (%d)", ip, exc.detail, exc.status)
    elif isinstance(exc, BodyNotStoredError):
        log.error("Request body from ip=%s not stored: %s (%d)", ip, exc.detail, exc.status)
    else:
        log.warning("Invalid request from ip=%s: %s (%d)", ip, exc.detail, exc.status)
    sent = len(error_body(exc.status, exc.reason)) if answered else 0
    request = conn.request or exc.request
    if access and request is not None and worker.access_enabled:
        environ = refused_environ(worker.base_environ, request, peer[0], peer[1], worker.header_map)
        log.access(environ, f"{exc.status} {exc.reason}", [], sent, 0.0)
    return sent


def read_request(
    sock: socket.socket,
    conn: ServerConnection,
    idle_timeout: float,
    head_timeout: float,
    head_due: float = 0.0,
) -> Request | None:
    """Wait on a blocking socket for the next request head.

    ``idle_timeout`` bounds the wait for its first byte (keep-alive), ``head_timeout`` the
    whole head once it started (never reset by a trickling client). ``head_due``, when
    given, is when the head must be complete however late its first byte comes: a new
    connection's first head is due ``header_timeout`` after it was accepted, so silence
    before a trickle does not double the time. Returns None when the client closed or
    stayed idle (sent nothing); raises ProtocolError (408 for a late head).
    """
    deadline = head_due
    while True:
        event = conn.next_event()
        if event is NEED_DATA:
            # The head began once the parser holds some of it: the one empty line it
            # skips before a request line (RFC 9112 §2.2) leaves the connection idle, as
            # on the other classes (a lone CRLF then silence got 408 here only).
            begun = conn.has_buffered
            if begun and not deadline:
                deadline = time.monotonic() + head_timeout
            if deadline:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    if begun:
                        raise RequestTimeoutError("request head not received in time")
                    if not bytes_waiting(sock.fileno()):
                        return None  # nothing was sent: close quietly
                    remaining = 0.001  # it arrived as the wait ended: read it
                if not begun and idle_timeout > 0:
                    remaining = min(remaining, idle_timeout)
                sock.settimeout(remaining)
            else:
                sock.settimeout(idle_timeout if idle_timeout > 0 else None)
            try:
                data = sock.recv(RECV_SIZE)
            except TimeoutError:
                if begun:
                    raise RequestTimeoutError("request head not received in time") from None
                if bytes_waiting(sock.fileno()):
                    continue  # it arrived as the wait ended: read it, do not reset it
                return None  # idle keep-alive connection: close quietly
            conn.receive_data(data)
            continue
        if event is CLOSED:
            return None
        if isinstance(event, Request):
            return event
        raise ProtocolError(f"unexpected event {event!r}")  # pragma: no cover


def serve_request(
    worker: Worker,
    sock: socket.socket,
    conn: ServerConnection,
    request: Request,
    peer: tuple[str, str],
    io_timeout: float | None,
    watch: InFlight[Any] | None = None,
) -> bool:
    """Run the app for ``request`` and send the response. True: the connection may be
    reused (``conn`` is ready for the next request).

    ``watch``: the request's watchdog entry (gthread, gevent, eventlet), whose progress
    each completed send records; a ``RequestHungError`` (the watchdog, or a stop's
    deadline) is answered here, 504 or 500 if nothing was sent yet, so that the access
    log has the status, and then re-raised for the caller to close the connection."""
    sock.settimeout(io_timeout)
    send = _sending(sock)
    # With header_timeout off, the body's allowance is the plain I/O timeout; with neither,
    # there is no deadline to start from and the minimum rate is not enforced.
    allowance = worker.body_allowance or io_timeout or 0.0
    recv = sock.recv if watch is None else _receiving(sock, watch, worker.watch_limit)
    if worker.cooperate is not None:
        recv = _cooperating_recv(recv, worker.cooperate)
    # A body that stops coming gets 408 before the hang watchdogs act: where a watchdog
    # bounds the request, each wait for more ends a little before its limit
    # (``_receiving``); where the master bounds the whole request (sync, no watchdog), the
    # body must be in a little before it would kill the worker (wsgi/input.py).
    limit_at = 0.0
    if watch is None and io_timeout:
        limit_at = time.monotonic() + _stall_bound(io_timeout)
    body = InputStream(
        conn,
        recv,
        send,
        sock.settimeout,
        io_timeout,
        allowance,
        worker.body_min_rate if allowance else 0.0,
        limit_at,
    )
    try:
        front_ends = worker.front_ends
        environ = build_environ(
            worker.base_environ
            if worker.base_environs is None
            else base_environ_for(worker, sock.getsockname()),
            request,
            peer[0],
            peer[1],
            body,
            worker.header_map,
            None if front_ends is None else front_ends.scheme_headers_for(peer[0]),
        )
    except ProtocolError as exc:
        send_protocol_error(worker, sock, conn, exc, peer)
        return False
    # The connection's socket, under gunicorn's key: WebSocket libraries (simple-websocket,
    # so Flask-Sock) take the connection over with it and end the app call with
    # StopIteration (wsgi/cycle.py). As in gunicorn, a WebSocket handshake's socket has no
    # timeout, and a WebSocket the app took may idle longer than --timeout.
    environ["gunicorn.socket"] = sock
    websocket = (
        "HTTP_UPGRADE" in environ
        and request.content_length == 0
        and "websocket" in environ["HTTP_UPGRADE"].lower()
    )
    if websocket:
        sock.settimeout(None)
        # An app that answers it as a plain request (no takeover) writes through the
        # exchange: with the timeout back, so that adding "Upgrade: websocket" to a request
        # and then not reading the response cannot hold this thread forever.
        send = _bounded_send(sock, io_timeout)
    if watch is not None:
        send = _progressing(send, watch, sock)
    cooperate = worker.cooperate
    if cooperate is not None:
        send = _cooperating(send, cooperate)
    if not worker.alive:
        conn.close_after_response = True
    exchange = Exchange(conn, send, worker.request_started(request.request_line))
    handshake = None
    if websocket:
        # The header alone does not lift the watchdog (any client can send it): the
        # request stays bounded until the app has written on the socket itself, its 101.
        # Where that cannot be counted (no watchdog: sync, bounded by the master; a unix
        # socket), the header lifts it, as before.
        mark = None if watch is None else bytes_written(sock)
        if mark is None:
            worker.unbound_request()  # after request_started, which marks the worker busy
        else:
            handshake = _Handshake(sock, mark, exchange)
            watch.taken_over = handshake.taken_over  # type: ignore[union-attr]
    if watch is not None:
        watch.cycle = (request, environ, exchange)
    ok = False
    taken = False
    claimed = False  # this thread took the request's ending (watchdog.py, rule 3)
    try:
        try:
            if worker.hook_pre_request:
                worker.cfg.pre_request(worker, HookRequest(request, environ))
        except Exception:
            # As gunicorn: a hook that raises gets the app's treatment (500, logged).
            ok = app_failed(exchange, environ, worker.log, sys.exc_info())
        else:
            ok = run_app(
                worker.wsgi,  # type: ignore[arg-type]
                environ,
                exchange,
                _sendfile_for(sock, watch, cooperate)
                if worker.use_sendfile
                else _copy_for(sock, watch, cooperate),
                worker.log,
            )
    except ProtocolError as exc:
        # finish_request writes its access line, with the answer's bytes
        exchange.sent += send_protocol_error(worker, sock, conn, exc, peer, access=False)
        exchange.status = f"{exc.status} {exc.reason}"
    except ConnectionTakenOver:
        taken = True
        worker.log.debug("Closing connection: the app took it over (%s)", peer[0])
    except ClientGoneError as exc:
        if isinstance(exc.__cause__, TimeoutError):  # (a client that left is routine)
            worker.log.info(
                "Dropped a client that read nothing more of its response for %gs: %s",
                io_timeout,
                request.request_line.decode("latin-1"),
            )
    except OSError:
        pass  # the client went away (reading the body)
    except RequestHungError:
        # Past its limit (or the stop's deadline): answered if nothing went out yet. Not
        # on a WebSocket handshake: the app may have answered 101 on the socket itself,
        # and a 500 would land inside the WebSocket's frames.
        # The main loop may have ended it already (watchdog.py, rule 3): one ending.
        claimed = watch is None or watch.claim()
        if not exchange.head_sent:
            if not _app_wrote(websocket, handshake):
                if claimed:
                    answer_timeout(exchange, sock, worker.answer_504)
            else:
                # A WebSocket the app took, cut by a stop's deadline: no access line, as
                # at its normal end (it has no response of the server's to log).
                taken = True
        raise
    except SystemExit:
        # The master aborted this worker for a hang (SIGABRT, raised here on the sync
        # worker's only thread): as gunicorn's sync worker, tell the client with a 500
        # rather than drop it (a proxy would report 502) when no head went out yet.
        # Not on a WebSocket handshake: the app may have answered 101 on the socket itself.
        if worker.aborted and not exchange.head_sent and not _app_wrote(websocket, handshake):
            answer_timeout(exchange, sock, request_timeout=False)
        raise
    finally:
        # A taken-over connection has no response of the server's to log (gunicorn
        # writes no access line either); it still counts, and post_request runs. A
        # request the worker gave up on while it was stuck in C was logged then: the
        # claim (under the watchdog's lock) says which of the two ends it.
        if claimed or watch is None or watch.claim():
            finish_request(worker, request, environ, exchange, access=not taken)
    if not ok or not conn.keep_alive:
        if conn.body_mismatch:
            log_body_mismatch(worker, environ, conn.body_mismatch)
        return False
    if conn.body_mismatch:  # cut at its Content-Length: the framing held, it goes on
        log_body_mismatch(worker, environ, conn.body_mismatch)
        conn.body_mismatch = ""
    if conn.must_drain:
        try:
            if not body.drain(conn.max_drain_size):
                return False
        except ProtocolError as exc:  # the body the app left unread, read to keep the connection
            log_refused(worker, conn, exc, peer, access=False)
            return False
        except OSError:
            return False
    conn.start_next_cycle()
    return True


def answer_timeout(exchange: Exchange, sock: socket.socket, request_timeout: bool) -> None:
    """Answer a request cut for taking too long, when nothing of its response went out,
    and record the answer for the access log (its status and body bytes)."""
    answer = timeout_response(exchange.conn, request_timeout)
    if not answer:
        return
    status, reason = timeout_status(request_timeout)
    exchange.status = f"{status} {reason}"
    exchange.headers = []
    try:
        sock.settimeout(1.0)  # a small answer; never wait long on this client
        sock.sendall(answer)
        exchange.sent = len(error_body(status, reason))
    except OSError:
        pass


#: The largest piece sent at once when a watchdog follows the request's progress: a body
#: given in one piece (a one-item list of 500 MB) still records progress as it goes out.
#: Between pieces the watchdog sees progress; within one, it asks the kernel what the
#: client took. (The socket's timeout bounds each wait of a send, not the piece: with
#: ``sendall``, which bounds the whole call, 64 KiB in 30 s was a client reading 2.2 KB/s,
#: and a slower one was cut.)
PROGRESS_BLOCK = 64 * 1024


def _progressing(send: Any, watch: InFlight[Any], sock: socket.socket) -> Any:
    """``send``, recording each completed send as the request's progress (watchdog rule
    2): a response its client keeps taking is not cut at the limit. From the first send
    on, the watchdog may also probe the socket (``watch.sock``): before it, what the
    client takes is the previous response's tail, not progress of this one."""

    def send_and_record(data: bytes) -> None:
        watch.sock = sock
        if len(data) <= PROGRESS_BLOCK:
            send(data)
        else:
            view = memoryview(data)
            for start in range(0, len(view), PROGRESS_BLOCK):
                send(view[start : start + PROGRESS_BLOCK])
                watch.progress_at = time.monotonic()
        watch.progress_at = time.monotonic()

    return send_and_record


#: A green worker's greenlet gives the others a turn after this much output, a piece
#: counting at least ``TURN_PIECE`` bytes. A send that never blocks never switches
#: greenlets: a stream its client took as fast as it came held the whole worker, and the
#: worker's heartbeat with it, so the master killed it as hung and cut the stream.
TURN_BYTES = 256 * 1024
TURN_PIECE = 1024


def _cooperating(send: Any, cooperate: Callable[[], None]) -> Any:
    left = TURN_BYTES

    def send_and_cooperate(data: bytes) -> None:
        nonlocal left
        send(data)
        left -= len(data) + TURN_PIECE
        if left <= 0:
            left = TURN_BYTES
            cooperate()

    return send_and_cooperate


def _cooperating_recv(recv: Any, cooperate: Callable[[], None]) -> Any:
    """``recv`` for the request body that gives the other greenlets a turn every
    ``TURN_BYTES`` read, as ``_cooperating`` does for output: gevent's recv returns without
    switching while data is waiting, so an upload arriving as fast as it is read (a
    buffering proxy replaying it on loopback) held every other connection of the worker,
    and past ``timeout`` the master killed the worker as hung."""
    left = TURN_BYTES

    def recv_and_cooperate(size: int) -> bytes:
        nonlocal left
        data: bytes = recv(size)
        left -= len(data) + TURN_PIECE
        if left <= 0:
            left = TURN_BYTES
            cooperate()
        return data

    return recv_and_cooperate


def _receiving(sock: Any, watch: InFlight[Any], limit: float) -> Any:
    """``recv`` for the request body, recording each read as progress: a client that
    keeps uploading is not cut at the limit (its pace is the body deadline's business).

    A wait for more ends a little before the watchdog's limit, counted as the watchdog
    counts it (from the last progress, not from this read): an app that worked for a while
    before reading a body that then stops coming gets a 408, not the hang's 500 with a
    stack (STALL_MARGIN). What has arrived is still taken past it. The first read counts as
    progress itself: until the app asks for the body, the client has nothing to send (with
    ``Expect: 100-continue`` it waits for the ``100 Continue`` this read sends), so the
    app's own work before it is not the client's stall (that was a 408 after the 100)."""
    recv = sock.recv
    bound = _stall_bound(limit) if limit else 0.0
    first = True

    def recv_and_record(size: int) -> bytes:
        nonlocal first
        if first:
            first = False
            watch.progress_at = time.monotonic()
        if bound:
            left = max(watch.progress_at + bound - time.monotonic(), 0.001)
            timeout = sock.gettimeout()
            if timeout is None or left < timeout:
                sock.settimeout(left)
                try:
                    data: bytes = recv(size)
                finally:
                    sock.settimeout(timeout)
                watch.progress_at = time.monotonic()
                return data
        data = recv(size)
        watch.progress_at = time.monotonic()
        return data

    return recv_and_record


def _sending(sock: socket.socket) -> Callable[[bytes], None]:
    """The response's send: all of ``data``, as ``sendall``, but a client that keeps
    reading, however slowly, is not cut by the socket's timeout; one that takes nothing
    for it is (after one to two timeouts).

    ``sendall``'s timeout bounds the whole call (since Python 3.5), and even a single
    ``send`` may wait longer than the timeout for a client that reads: the kernel wakes a
    writer only once a third of a large send buffer has drained. So a send that times out
    asks the kernel what the client acknowledged meanwhile (``_Stall``) and goes on while
    that moves. A failure is a ``ClientGoneError``, so that an ``OSError`` of the
    app's own is not taken for the client leaving."""
    raw_send = sock.send

    def send(data: bytes) -> None:
        sent = 0
        stall = None
        view = None
        while True:
            try:
                sent += raw_send(data if view is None else view[sent:])
                if sent >= len(data):
                    return
                if view is None:
                    view = memoryview(data)
            except TimeoutError as exc:
                stall = stall or _Stall(sock)
                if not stall.progressed():
                    raise ClientGoneError(str(exc)) from exc
                if view is None:
                    view = memoryview(data)
            except OSError as exc:
                raise ClientGoneError(str(exc)) from exc

    return send


class _Stall:
    """Asked at each timeout of a send: did the client take anything since the last one?
    ``output_taken`` (for TCP the bytes it acknowledged, a count that only grows) changes
    as it does. At the first timeout there is nothing to compare with: it is given one
    more. Where the kernel cannot tell, a timeout ends the send, as it did."""

    __slots__ = ("last", "sock")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.last: int | None = None

    def progressed(self) -> bool:
        count = output_taken(self.sock)
        if count is None:
            return False
        last, self.last = self.last, count
        return last is None or count != last


def _bounded_send(sock: socket.socket, timeout: float | None) -> Any:
    send_all = _sending(sock)

    def send(data: bytes) -> None:
        sock.settimeout(timeout)
        send_all(data)

    return send


#: Bytes handed to sendfile at a time when a watchdog follows the request's progress:
#: each block must go out within the limit (256 KiB in 30 s: a client reading 8.7 KB/s;
#: with 8 MiB blocks a file read steadily at 250 KB/s was cut).
SENDFILE_BLOCK = 256 * 1024


def _block_sent(watch: InFlight[Any] | None, cooperate: Callable[[], None] | None) -> None:
    """After each block of a file: progress for the watchdog, a turn for the others."""
    if watch is not None:
        watch.progress_at = time.monotonic()
    if cooperate is not None:
        cooperate()


def _sendfile_for(
    sock: socket.socket,
    watch: InFlight[Any] | None = None,
    cooperate: Callable[[], None] | None = None,
) -> Any:
    def sendfile(fd: int, offset: int, count: int) -> int:
        if watch is not None:
            watch.sock = sock  # the response has begun: the watchdog may probe it
        stall = None
        sent = 0
        with os.fdopen(os.dup(fd), "rb") as file:
            while sent < count:
                at = offset + sent
                file.seek(at)  # where a timed-out call leaves it says what went
                try:
                    done = sock.sendfile(file, at, min(SENDFILE_BLOCK, count - sent))
                except TimeoutError as exc:
                    # A full buffer that the kernel did not let us write to for the
                    # timeout: fine while the client still takes some (see _sending).
                    sent += max(file.tell() - at, 0)
                    stall = stall or _Stall(sock)
                    if not stall.progressed():
                        raise _gone(exc, sent) from exc
                    continue
                except OSError as exc:
                    raise _gone(exc, sent + max(file.tell() - at, 0)) from exc
                if not done:
                    break  # the file is shorter than it was: the caller closes
                sent += done
                _block_sent(watch, cooperate)
        return sent

    return sendfile


def _gone(exc: OSError, sent: int) -> ClientGoneError:
    """The client left during a file: what went out before, for the access log."""
    gone = ClientGoneError(str(exc))
    gone.sent = sent
    return gone


#: Bytes read and sent at a time when a file is copied rather than sent with sendfile.
COPY_BLOCK = 256 * 1024


def _copy_for(
    sock: socket.socket,
    watch: InFlight[Any] | None = None,
    cooperate: Callable[[], None] | None = None,
) -> Any:
    """``--no-sendfile``: the file's bytes are read here and sent like any body (for file
    systems whose sendfile is broken), still framed by the file's size."""

    send = _sending(sock)

    def copy(fd: int, offset: int, count: int) -> int:
        if watch is not None:
            watch.sock = sock  # the response has begun: the watchdog may probe it
        sent = 0
        while sent < count:
            block = os.pread(fd, min(COPY_BLOCK, count - sent), offset + sent)
            if not block:
                break  # the file is shorter than it was: the caller closes the connection
            try:
                send(block)
            except ClientGoneError as exc:
                exc.sent = sent  # what went out before, for the access log (as sendfile's)
                raise
            sent += len(block)
            _block_sent(watch, cooperate)
        return sent

    return copy


def log_body_mismatch(worker: Worker, environ: dict[str, Any], mismatch: str) -> None:
    """The app's body missed its own Content-Length: the framing cut it or the connection
    closes to end it (``mismatch`` says which), and the operator hears why clients saw
    "transfer closed"."""
    worker.log.warning(
        "Response to %s %s: %s",
        environ.get("REQUEST_METHOD"),
        environ.get("RAW_URI"),
        mismatch,
    )


def finish_request(
    worker: Worker,
    request: Request,
    environ: dict[str, Any],
    exchange: Exchange,
    now: float | None = None,
    access: bool = True,
) -> None:
    """After every response, in every worker class: count it (max_requests, the
    scoreboard), write the access-log line, run the post_request hook. ``now`` is
    ``time.monotonic()`` if the caller has just read it."""
    worker.request_finished(now)
    log = worker.log
    if access and worker.access_enabled:
        log.access(
            environ,
            exchange.status or "000 Unknown",
            exchange.headers,
            exchange.sent,
            (now or time.monotonic()) - exchange.started,
        )
    if worker.hook_post_request:
        try:
            worker.cfg.post_request(worker, HookRequest(request, environ), environ, exchange)
        except Exception:
            log.exception("Exception in post_request hook")


def prepare_http(worker: Worker, multithread: bool) -> None:
    """Set what every request of this worker shares: the core's limits, the base environ.

    Runs in: the worker, once, at the start of ``run()``.
    """
    import logging
    import sys

    from forkhorn import __version__
    from forkhorn.config import SETTINGS
    from forkhorn.config.options.security import (
        DEFAULT_MAX_FIELD_SIZE,
        MAX_HEADERS,
        MAX_REQUEST_LINE,
    )
    from forkhorn.logs.logger import WSGIErrors
    from forkhorn.wsgi.cycle import FileWrapper
    from forkhorn.wsgi.environ import make_base_environ
    from forkhorn.wsgi.proxies import FrontEnds

    cfg = worker.cfg
    # The hooks that ran before this (post_fork, post_worker_init) may have given the
    # access log a formatter that reads the atoms (Logger.check_access_handlers).
    check = getattr(worker.log, "check_access_handlers", None)
    if callable(check):
        check()
    # Read once: the request path tests these flags instead of calling a default no-op
    # hook or asking the logger on every request.
    worker.access_enabled = bool(worker.log.access_enabled)
    # The default pre_request logs each request at the debug level: called only then.
    error_log = getattr(worker.log, "error_log", None)
    worker.hook_pre_request = cfg.pre_request is not SETTINGS["pre_request"].default or (
        error_log is not None and error_log.isEnabledFor(logging.DEBUG)
    )
    worker.hook_post_request = cfg.post_request is not SETTINGS["post_request"].default
    # 0 means each limit's documented maximum or default, never "refuse everything".
    worker.http_limits = (
        min(cfg.limit_request_line or MAX_REQUEST_LINE, MAX_REQUEST_LINE),
        min(cfg.limit_request_fields or MAX_HEADERS, MAX_HEADERS),
        cfg.limit_request_field_size or DEFAULT_MAX_FIELD_SIZE,
        cfg.limit_request_body,
        cfg.server_header.encode("latin-1"),
    )
    worker.server_line = server_line(worker.http_limits[4])
    worker.header_map = cfg.header_map
    worker.front_ends = FrontEnds.from_config(cfg)
    # The body's minimum-rate deadline starts with header_timeout of allowance (the
    # setting's documented rule); see wsgi/input.py.
    worker.body_min_rate = float(cfg.body_min_rate or 0)
    worker.body_allowance = float(cfg.header_timeout or 0)
    worker.use_sendfile = cfg.sendfile is not False
    worker.watch_limit = request_limit(cfg)  # the watchdog's, where there is one
    error_log = getattr(worker.log, "error_log", None)
    base = make_base_environ(
        "",
        "",
        "http",
        WSGIErrors(error_log) if isinstance(error_log, logging.Logger) else sys.stderr,
        FileWrapper,
        multithread,
        f"forkhorn/{__version__}",
        # gunicorn's rule: the app is mounted at $SCRIPT_NAME (from the environment or
        # raw_env, applied before this runs), which is taken off the front of PATH_INFO.
        script_name=os.environ.get("SCRIPT_NAME", ""),
        multiprocess=int(cfg.workers) > 1,  # gunicorn's rule
    )
    # SERVER_NAME and SERVER_PORT, where a request has no Host to take them from, are
    # those of the listener it came in on, as in gunicorn: one base environ per listener.
    environs: dict[Any, dict[str, Any]] = {}
    for listener in worker.sockets:
        address = listener.getsockname()
        environ = dict(base)
        if isinstance(address, tuple):
            environ["SERVER_NAME"], environ["SERVER_PORT"] = str(address[0]), str(address[1])
        else:
            environ["SERVER_NAME"] = str(address)
        environs.setdefault(_listener_key(address), environ)
    worker.base_environ = next(iter(environs.values()), base)
    worker.base_environs = environs if len(environs) > 1 else None


def _listener_key(address: Any) -> Any:
    """A listener's address as ``base_environ_for`` finds it from a connection's local
    address: a TCP listener on every interface by its port and family (``0.0.0.0:P`` and
    ``[::]:P`` can both be bound)."""
    if isinstance(address, tuple):
        host = address[0]
        if host in ("0.0.0.0", "::"):
            return ("", address[1], ":" in host)
        return (host, address[1])
    return address


def base_environ_for(worker: Worker, local: Any) -> dict[str, Any]:
    """The base environ of the listener a connection came in on, from the connection's
    own address (``getsockname()``; a Unix socket's names its listener's path). Asked only
    when the worker has several listeners (``worker.base_environs``)."""
    environs = worker.base_environs
    if environs is None:
        return worker.base_environ
    if isinstance(local, tuple):
        v6 = ":" in local[0]
        found = (
            environs.get((local[0], local[1]))
            or environs.get(("", local[1], v6))
            or environs.get(("", local[1], not v6))  # a dual-stack socket (fd://)
        )
    else:
        found = environs.get(local)
    return found if found is not None else worker.base_environ
