"""The traceback token: of the workers that fail to load a bad release, the one that takes
the master's single byte logs the traceback."""

from __future__ import annotations

import os
import select

import pytest

from forkhorn.workers.base import _take_token


def test_one_taker_gets_the_token_without_a_patched_select_or_read(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A gevent-patched select switched to the hub here, which a stop signal pending in the
    failing boot broke; eventlet's os.read parks on an empty pipe. Neither is used."""
    r, w = os.pipe()
    try:
        os.set_blocking(r, False)  # as the master makes it
        os.write(w, b"t")

        def patched(*args: object) -> object:
            raise AssertionError("a patchable function was called")

        monkeypatch.setattr(select, "select", patched)
        monkeypatch.setattr(os, "read", patched)
        assert _take_token(r) is True
        assert _take_token(r) is False  # taken: the next worker stays quiet
    finally:
        os.close(r)
        os.close(w)
    assert _take_token(None) is True  # no pipe: better a traceback twice than never
    assert _take_token(r) is True  # closed (EBADF): the same
