"""Reports whether app code sees a running asyncio event loop: ``loopcheck:app``.

Under every worker class it must not: Django refuses ORM calls "from an async context",
and ``asyncio.run()`` or asgiref's ``async_to_sync`` refuse to start, when one is running
in the thread.

- ``/call``: what the app call sees.
- ``/run``: ``asyncio.run()`` inside the app (sync code calling an async library).
- ``/stream?n=N``: N chunks, each saying what the iteration that made it saw; the
  iterable's ``close()`` records what it saw, reported by ``/closed``.
"""

import asyncio

closed_saw = "never closed"


def _seen():
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return "no loop"
    return "a running loop"


async def _work():
    await asyncio.sleep(0)
    return "asyncio.run worked"


class _Stream:
    def __init__(self, n):
        self.n = n

    def __iter__(self):
        for i in range(self.n):
            yield f"{i} {_seen()}\n".encode() + b"." * 65536 + b"\n"

    def close(self):
        global closed_saw
        closed_saw = _seen()


def app(environ, start_response):
    path = environ["PATH_INFO"]
    if path == "/stream":
        n = int(environ["QUERY_STRING"].partition("=")[2] or "3")
        start_response("200 OK", [("Content-Type", "text/plain")])
        return _Stream(n)
    if path == "/run":
        body = asyncio.run(_work())
    elif path == "/closed":
        body = closed_saw
    else:
        body = _seen()
    data = body.encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(data)))])
    return [data]
