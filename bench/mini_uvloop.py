"""A minimal pre-fork uvloop WSGI server: the floor for any server built on uvloop.

    python bench/mini_uvloop.py MODULE:ATTR PORT WORKERS

No validation, no limits, no keep-alive bookkeeping, no supervision: a protocol that
splits the head at CRLFs, builds a bare environ, calls the app inline and writes its
response. Not a server to run; a yardstick. Compared with ``-k fast`` under the classic
load (9 workers, unpinned, ``wrk -t12 -c100``), it says how much of the fast worker's
cost there is forkhorn's own code and how much is uvloop, the app and nine processes
sharing two cores (eleventh session: fast / mini 1.00x). Use it through ``rotate.py``:

    --spec "mini={python} $PWD/bench/mini_uvloop.py {app} {port} {workers}"
"""

from __future__ import annotations

import asyncio
import gc
import importlib
import io
import socket
import sys
from typing import Any

import prefork  # bench/prefork.py, beside this script


class MiniProtocol(asyncio.Protocol):
    app: Any = None
    port = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: Any = transport
        self.buffer = b""

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while b"\r\n\r\n" in self.buffer:
            head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
            self.transport.write(self.respond(head))

    def respond(self, head: bytes) -> bytes:
        lines = head.decode("latin-1").split("\r\n")
        method, target, version = lines[0].split(" ")
        path, _, query = target.partition("?")
        environ: dict[str, Any] = {
            "REQUEST_METHOD": method,
            "PATH_INFO": path,
            "QUERY_STRING": query,
            "SCRIPT_NAME": "",
            "SERVER_NAME": "127.0.0.1",
            "SERVER_PORT": str(self.port),
            "SERVER_PROTOCOL": version,
            "wsgi.input": io.BytesIO(),
            "wsgi.errors": sys.stderr,
            "wsgi.url_scheme": "http",
            "wsgi.version": (1, 0),
            "wsgi.multithread": False,
            "wsgi.multiprocess": True,
            "wsgi.run_once": False,
        }
        for line in lines[1:]:
            name, _, value = line.partition(":")
            environ["HTTP_" + name.upper().replace("-", "_")] = value.strip()
        status: list[Any] = []

        def start_response(s: str, headers: list[tuple[str, str]], exc: Any = None) -> None:
            status[:] = [s, headers]

        body = b"".join(self.app(environ, start_response))
        fields = "".join(f"{k}: {v}\r\n" for k, v in status[1])
        return f"HTTP/1.1 {status[0]}\r\n{fields}\r\n".encode("latin-1") + body


def serve(target: str, sock: socket.socket) -> None:
    import uvloop

    module, _, attr = target.partition(":")
    # staticmethod: a plain function app must not become a bound method of the protocol.
    MiniProtocol.app = staticmethod(getattr(importlib.import_module(module), attr or "app"))
    MiniProtocol.port = sock.getsockname()[1]
    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, 10, 10)  # as the fast worker does
    loop = uvloop.new_event_loop()
    loop.run_until_complete(loop.create_server(MiniProtocol, sock=sock))
    loop.run_forever()


if __name__ == "__main__":
    sys.exit(prefork.main(serve))
