"""``--no-sendfile`` in the blocking workers: a file body is read and sent in blocks,
still framed by the file's size."""

from __future__ import annotations

import os
import socket
import threading
from pathlib import Path

from forkhorn.workers import session


def receive_all(sock: socket.socket, into: list[bytes]) -> None:
    while data := sock.recv(65536):
        into.append(data)


def test_copy_sends_the_range_exactly(tmp_path: Path) -> None:
    content = os.urandom(2 * session.COPY_BLOCK + 123)
    path = tmp_path / "body.bin"
    path.write_bytes(content)
    ours, theirs = socket.socketpair()
    got: list[bytes] = []
    reader = threading.Thread(target=receive_all, args=(theirs, got))
    reader.start()
    fd = os.open(path, os.O_RDONLY)
    try:
        sent = session._copy_for(ours)(fd, 7, len(content) - 7)
        ours.close()
        reader.join(10)
        assert sent == len(content) - 7
        assert b"".join(got) == content[7:]
    finally:
        os.close(fd)
        theirs.close()


def test_copy_of_a_file_that_shrank_reports_what_it_sent(tmp_path: Path) -> None:
    path = tmp_path / "body.bin"
    path.write_bytes(b"x" * 1000)
    ours, theirs = socket.socketpair()
    fd = os.open(path, os.O_RDONLY)
    try:
        # 5000 bytes announced, 1000 on disk: the caller sees 1000 and closes.
        assert session._copy_for(ours)(fd, 0, 5000) == 1000
        assert theirs.recv(5000) == b"x" * 1000
    finally:
        os.close(fd)
        ours.close()
        theirs.close()
