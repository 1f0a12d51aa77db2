"""An app that takes its connection over through ``environ["gunicorn.socket"]``, as
WebSocket libraries do (simple-websocket, so Flask-Sock): ``/echo`` answers 101 itself (a
stand-in for a WebSocket handshake), reports the socket's timeout, echoes lines until
``bye`` and ends with ``StopIteration`` (gunicorn's convention for "the connection is
mine"); ``/big`` answers BIG bytes as a plain response; ``/strict`` reads the socket as
Flask-Sock does, failing where there is none (fast); ``/sleep`` sleeps the seconds its query
says and answers plainly, whatever the request asked for; ``/`` answers normally."""

import time

BIG = 32 * 1024 * 1024


def app(environ, start_response):
    if environ["PATH_INFO"] == "/strict":
        _ = environ["gunicorn.socket"]  # a KeyError where there is no socket
    sock = environ.get("gunicorn.socket")
    if environ["PATH_INFO"] == "/sleep":
        time.sleep(float(environ["QUERY_STRING"] or 0))
        start_response("200 OK", [("Content-Length", "6")])
        return [b"slept\n"]
    if environ["PATH_INFO"] == "/big":
        body = b"x" * BIG
        start_response("200 OK", [("Content-Length", str(len(body)))])
        return [body]
    if environ["PATH_INFO"] != "/echo" or sock is None:
        body = b"no socket\n" if sock is None else b"plain\n"
        start_response("200 OK", [("Content-Length", str(len(body)))])
        return [body]
    sock.sendall(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
    )
    sock.sendall(f"timeout={sock.gettimeout()}\n".encode())
    buffered = b""
    while True:
        data = sock.recv(1024)
        if not data:
            break
        buffered += data
        if buffered.endswith(b"bye\n"):
            break
        sock.sendall(data)
    raise StopIteration
