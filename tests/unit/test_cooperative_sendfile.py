"""``green.cooperative_sendfile``: os.sendfile on a non-blocking socket, waiting when full."""

from __future__ import annotations

import select
import socket
import tempfile
import threading

import pytest

from forkhorn.workers.green import cooperative_sendfile


def _file(size: int) -> tempfile._TemporaryFileWrapper[bytes]:
    file = tempfile.NamedTemporaryFile()  # noqa: SIM115 - closed by the caller
    file.write(bytes(range(256)) * (size // 256))
    file.flush()
    return file


def test_a_file_larger_than_the_socket_buffers_goes_whole() -> None:
    size = 8 * 1024 * 1024
    out, into = socket.socketpair()
    out.setblocking(False)
    waits = []

    def wait_writable() -> None:
        waits.append(1)
        if not select.select([], [out], [], 10)[1]:
            raise TimeoutError("timed out")

    received = bytearray()

    def read() -> None:
        while len(received) < size - 10:
            data = into.recv(65536)
            if not data:
                return
            received.extend(data)

    reader = threading.Thread(target=read)
    reader.start()
    with _file(size) as file, out, into:
        sent = cooperative_sendfile(out.fileno(), file, 10, size - 10, wait_writable)
        reader.join(20)
        assert sent == size - 10
        assert file.tell() == size
        with open(file.name, "rb") as check:
            check.seek(10)
            assert bytes(received) == check.read()
    assert waits, "the socket buffer never filled: the wait was not exercised"


def test_a_timeout_leaves_the_file_where_the_send_stopped() -> None:
    out, into = socket.socketpair()
    out.setblocking(False)

    def wait_writable() -> None:
        raise TimeoutError("timed out")

    with _file(8 * 1024 * 1024) as file, out, into:
        with pytest.raises(TimeoutError):
            cooperative_sendfile(out.fileno(), file, 0, None, wait_writable)
        taken = 0
        into.setblocking(False)
        try:
            while chunk := into.recv(1 << 20):
                taken += len(chunk)
        except BlockingIOError:
            pass
        assert 0 < file.tell() == taken
