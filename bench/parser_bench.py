"""Parser micro-benchmark: forkhorn.http next to h11 and httptools, same run, same inputs.

Usage:  python bench/parser_bench.py [--repeat N] [--quick]

Inputs are realistic requests: the minimal GET that wrk sends, a 12-header browser GET, a
POST with a 1 KiB body and a chunked upload of four 256-byte chunks. Two measurements:

- "parse": one request on a fresh connection object (constructor included), read to its
  end: ``receive_data`` then ``next_event`` until ``EndOfMessage`` (forkhorn, h11);
  ``feed_data`` with callbacks collecting url, headers and body (httptools), like a server.
- "keep-alive": one connection reused for every request, as a server does under wrk:
  parse the request, write a minimal response head (``Content-Length: 0``) and start the
  next cycle. h11 and forkhorn need the response before the next cycle; httptools has no
  writer, so its column is the same loop without one (it flatters httptools).

``--slow-client BYTES`` adds a third table: an incomplete head trickled in one byte per
``receive_data``, which must cost time linear in its size (a slow client must not be able to
burn a worker's CPU).

Each number is requests per second, the best of N repeats (timeit-style, auto-sized so a
repeat takes ~0.2 s). Ratios are forkhorn/h11 and forkhorn/httptools: above 1 means
forkhorn is faster. Nothing here is asserted by the test suite.
"""

from __future__ import annotations

import argparse
import platform
import sys
import timeit
from collections.abc import Callable
from pathlib import Path

try:
    import forkhorn.http as fh
except ImportError:  # running from a checkout without an install
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    import forkhorn.http as fh

import h11
import httptools

BROWSER_HEADERS = (
    b"Host: www.example.com\r\n"
    b"User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:120.0) Gecko/20100101 Firefox/120.0\r\n"
    b"Accept: text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8\r\n"
    b"Accept-Language: en-US,en;q=0.5\r\n"
    b"Accept-Encoding: gzip, deflate, br\r\n"
    b"Connection: keep-alive\r\n"
    b"Upgrade-Insecure-Requests: 1\r\n"
    b"Sec-Fetch-Dest: document\r\n"
    b"Sec-Fetch-Mode: navigate\r\n"
    b"Sec-Fetch-Site: none\r\n"
    b"Sec-Fetch-User: ?1\r\n"
    b"Cookie: session=abc123; theme=dark\r\n"
)
INPUTS: dict[str, bytes] = {
    "wrk GET": b"GET / HTTP/1.1\r\nHost: 127.0.0.1:8000\r\n\r\n",
    "browser GET (12 hdr)": b"GET /search?q=forkhorn&lang=en HTTP/1.1\r\n"
    + BROWSER_HEADERS
    + b"\r\n",
    "POST 1 KiB": (
        b"POST /submit HTTP/1.1\r\nHost: example.com\r\nContent-Type: application/json\r\n"
        b"Content-Length: 1024\r\n\r\n" + b"x" * 1024
    ),
    "chunked 4x256 B": (
        b"POST /upload HTTP/1.1\r\nHost: example.com\r\nTransfer-Encoding: chunked\r\n\r\n"
        + b"".join(b"100\r\n" + bytes([c]) * 256 + b"\r\n" for c in b"abcd")
        + b"0\r\n\r\n"
    ),
}
EXPECTED_BODY = {name: len(raw.partition(b"\r\n\r\n")[2]) for name, raw in INPUTS.items()}
EXPECTED_BODY["chunked 4x256 B"] = 1024
RESPONSE_HEADERS = [("Content-Length", "0")]


# --- forkhorn ------------------------------------------------------------------------------
def forkhorn_parse(data: bytes) -> int:
    conn = fh.ServerConnection()
    conn.receive_data(data)
    body = 0
    event = conn.next_event()
    end = fh.EndOfMessage
    while event.__class__ is not end:
        if event.__class__ is fh.Data:
            body += len(event.data)
        event = conn.next_event()
    return body


def forkhorn_keep_alive() -> Callable[[bytes], int]:
    conn = fh.ServerConnection()

    def cycle(data: bytes) -> int:
        conn.receive_data(data)
        body = 0
        event = conn.next_event()
        end = fh.EndOfMessage
        while event.__class__ is not end:
            if event.__class__ is fh.Data:
                body += len(event.data)
            event = conn.next_event()
        conn.send_response("200 OK", RESPONSE_HEADERS)
        conn.send_end()
        conn.start_next_cycle()
        return body

    return cycle


# --- h11 -----------------------------------------------------------------------------------
def h11_parse(data: bytes) -> int:
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(data)
    body = 0
    event = conn.next_event()
    while type(event) is not h11.EndOfMessage:
        if type(event) is h11.Data:
            body += len(event.data)
        event = conn.next_event()
    return body


def h11_keep_alive() -> Callable[[bytes], int]:
    conn = h11.Connection(h11.SERVER)
    response = h11.Response(status_code=200, headers=RESPONSE_HEADERS)
    eom = h11.EndOfMessage()

    def cycle(data: bytes) -> int:
        conn.receive_data(data)
        body = 0
        event = conn.next_event()
        while type(event) is not h11.EndOfMessage:
            if type(event) is h11.Data:
                body += len(event.data)
            event = conn.next_event()
        conn.send(response)
        conn.send(eom)
        conn.start_next_cycle()
        return body

    return cycle


# --- httptools -----------------------------------------------------------------------------
class HttptoolsRequest:
    """Callbacks that collect what a server needs: method, url, version, headers, body."""

    __slots__ = ("body", "done", "headers", "method", "parser", "url", "version")

    def __init__(self) -> None:
        self.parser = httptools.HttpRequestParser(self)
        self.reset()

    def reset(self) -> None:
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.body: list[bytes] = []
        self.method = b""
        self.version = ""
        self.done = False

    def on_message_begin(self) -> None:
        self.reset()

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        self.method = self.parser.get_method()
        self.version = self.parser.get_http_version()

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        self.done = True


def httptools_parse(data: bytes) -> int:
    request = HttptoolsRequest()
    request.parser.feed_data(data)
    assert request.done
    return sum(map(len, request.body))


def httptools_keep_alive() -> Callable[[bytes], int]:
    request = HttptoolsRequest()

    def cycle(data: bytes) -> int:
        request.parser.feed_data(data)
        return sum(map(len, request.body))

    return cycle


PARSE = {"forkhorn": forkhorn_parse, "h11": h11_parse, "httptools": httptools_parse}
KEEP_ALIVE = {
    "forkhorn": forkhorn_keep_alive,
    "h11": h11_keep_alive,
    "httptools": httptools_keep_alive,
}


def rate(func: Callable[[bytes], int], data: bytes, repeat: int, target: float) -> float:
    """Requests per second, best of ``repeat`` runs of ~``target`` seconds each."""
    timer = timeit.Timer(lambda: func(data))
    number, elapsed = timer.autorange()
    number = max(1, int(number * target / max(elapsed, 1e-9)))
    best = min(timer.repeat(repeat=repeat, number=number))
    return number / best


def table(
    title: str, funcs: dict[str, Callable[[bytes], int]], repeat: int, target: float, factory: bool
) -> None:
    print(f"\n### {title}\n")
    print(
        "| input | forkhorn req/s | h11 req/s | httptools req/s "
        "| forkhorn/h11 | forkhorn/httptools |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name, data in INPUTS.items():
        rates = {}
        for parser, func in funcs.items():
            run = func() if factory else func  # type: ignore[operator]
            got = run(data)
            assert got == EXPECTED_BODY[name], (parser, name, got)
            rates[parser] = rate(run, data, repeat, target)
        print(
            f"| {name} | {rates['forkhorn']:,.0f} | {rates['h11']:,.0f} | "
            f"{rates['httptools']:,.0f} | {rates['forkhorn'] / rates['h11']:.1f}x | "
            f"{rates['forkhorn'] / rates['httptools']:.2f}x |"
        )


def trickle_seconds(parse_piece: Callable[[bytes], None], head: bytes) -> float:
    start = timeit.default_timer()
    for i in range(len(head)):
        parse_piece(head[i : i + 1])
    return timeit.default_timer() - start


def slow_client(size: int) -> None:
    """A head of ``size`` bytes arriving one byte per recv(): the work must stay linear."""
    head = b"GET / HTTP/1.1\r\nHost: a\r\n" + b"X-Pad: " + b"v" * size
    head = head[:size]
    print(f"\n### slow client: a {size:,}-byte incomplete head fed one byte at a time\n")
    fconn = fh.ServerConnection(max_field_size=10 * size)
    hconn = h11.Connection(h11.SERVER, max_incomplete_event_size=10 * size)

    def forkhorn_piece(piece: bytes) -> None:
        fconn.receive_data(piece)
        assert fconn.next_event() is fh.NEED_DATA

    def h11_piece(piece: bytes) -> None:
        hconn.receive_data(piece)
        assert hconn.next_event() is h11.NEED_DATA

    hparser = httptools.HttpRequestParser(HttptoolsRequest())
    f = trickle_seconds(forkhorn_piece, head)
    h = trickle_seconds(h11_piece, head)
    t = trickle_seconds(hparser.feed_data, head)
    print("| parser | seconds |\n| --- | ---: |")
    print(f"| forkhorn | {f:.3f} |\n| h11 | {h:.3f} |\n| httptools | {t:.3f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7, help="best of N (default 7)")
    parser.add_argument("--quick", action="store_true", help="short runs, for a smoke test")
    parser.add_argument(
        "--slow-client",
        type=int,
        default=0,
        metavar="BYTES",
        help="also time an incomplete head of BYTES fed one byte at a time",
    )
    args = parser.parse_args()
    target = 0.02 if args.quick else 0.2
    repeat = 2 if args.quick else args.repeat
    print(
        f"Python {platform.python_version()} ({platform.python_implementation()}), "
        f"h11 {h11.__version__}, httptools {httptools.__version__}, "
        f"best of {repeat}"
    )
    table("parse: one request on a fresh connection", PARSE, repeat, target, factory=False)
    table(
        "keep-alive: parse + minimal response + next cycle on one connection",
        KEEP_ALIVE,
        repeat,
        target,
        factory=True,
    )
    if args.slow_client:
        slow_client(args.slow_client)


if __name__ == "__main__":
    main()
