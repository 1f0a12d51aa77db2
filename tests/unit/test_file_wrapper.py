"""``wsgi.file_wrapper``: which file objects may go out through their descriptor."""

from __future__ import annotations

import gzip
import io
import tempfile
from pathlib import Path
from typing import Any

from forkhorn.wsgi.cycle import FileWrapper


class DjangoLikeFile:
    """Django's ``File``: ``read`` and friends are the wrapped file's own (a proxy)."""

    def __init__(self, file: Any) -> None:
        self.file = file

    @property
    def read(self) -> Any:
        return self.file.read


class OwnRead:
    """A wrapper with a ``file`` whose ``read`` changes the bytes."""

    def __init__(self, file: Any) -> None:
        self.file = file

    def read(self, size: int = -1) -> bytes:
        return bytes(self.file.read(size)).upper()


def test_plain_files_and_wrappers_that_read_through_use_the_descriptor(tmp_path: Path) -> None:
    path = tmp_path / "data.bin"
    path.write_bytes(b"x" * 1000)
    with open(path, "rb") as plain:
        plain.read(10)
        assert FileWrapper(plain).regular_file() == (plain.fileno(), 10, 990)
    with open(path, "rb", buffering=0) as raw:
        assert isinstance(raw, io.FileIO)
        assert FileWrapper(raw).regular_file() == (raw.fileno(), 0, 1000)
    with open(path, "rb") as inner:
        assert FileWrapper(DjangoLikeFile(inner)).regular_file() == (inner.fileno(), 0, 1000)
    with tempfile.NamedTemporaryFile() as named:
        named.write(b"y" * 500)
        named.flush()
        named.seek(0)
        assert FileWrapper(named).regular_file() == (named.fileno(), 0, 500)


def test_files_whose_descriptor_does_not_hold_their_bytes_are_read(tmp_path: Path) -> None:
    """gzip.open's descriptor holds the compressed bytes; /proc files say size 0; a
    wrapper with its own read() changes what is sent."""
    packed = tmp_path / "data.gz"
    packed.write_bytes(gzip.compress(b"plain " * 100))
    with gzip.open(packed, "rb") as unpacking:
        assert FileWrapper(unpacking).regular_file() is None
    with open("/proc/self/status", "rb") as proc:
        assert FileWrapper(proc).regular_file() is None
    path = tmp_path / "data.bin"
    path.write_bytes(b"x" * 1000)
    with open(path, "rb") as inner:
        assert FileWrapper(OwnRead(inner)).regular_file() is None
    assert FileWrapper(io.BytesIO(b"z")).regular_file() is None
