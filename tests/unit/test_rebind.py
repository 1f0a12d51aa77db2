"""What a HUP's changed ``bind`` does with the listeners already open (the master's
``_rebind_if_changed``), on real loopback sockets, without forking workers."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from forkhorn.arbiter import arbiter as arbiter_module
from forkhorn.arbiter.arbiter import Arbiter
from forkhorn.arbiter.listeners import bind_one, parse_address
from forkhorn.config import load_config
from forkhorn.errors import BindError


def _serving(bind: str) -> tuple[Arbiter, int]:
    listener = bind_one(parse_address("127.0.0.1:0"), backlog=16)
    port = int(listener.getsockname()[1])
    cfg = load_config(["-b", bind.format(port=port), "x:app"], {})
    arbiter = Arbiter(cfg, logging.getLogger("test"), environ={})
    arbiter.listeners = [listener]
    return arbiter, port


def test_an_open_address_written_differently_is_kept() -> None:
    arbiter, port = _serving("127.0.0.1:{port}")
    (open_listener,) = arbiter.listeners
    try:
        before = arbiter._rebind_if_changed(load_config(["-b", f"localhost:{port}", "x:app"], {}))
        assert before == [open_listener] and arbiter.listeners == [open_listener]
    finally:
        open_listener.close()


def test_a_port_held_by_a_dropped_listener_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    # 0.0.0.0:P to 127.0.0.1:P cannot be bound while the old workers hold 0.0.0.0:P: the
    # bind is made to fail as the kernel would (tests bind loopback addresses only).
    arbiter, port = _serving("127.0.0.1:{port}")
    (open_listener,) = arbiter.listeners

    def in_use(binds: list[str], **_: Any) -> None:
        raise BindError(f"Connection in use: {binds[0]}")

    monkeypatch.setattr(arbiter_module, "create_listeners", in_use)
    try:
        with pytest.raises(BindError, match=rf"held by http://127\.0\.0\.1:{port}, which"):
            arbiter._rebind_if_changed(load_config(["-b", f"127.0.0.2:{port}", "x:app"], {}))
        assert arbiter.listeners == [open_listener]
        with pytest.raises(BindError, match=r"^Connection in use: 127\.0\.0\.2:1$"):
            arbiter._rebind_if_changed(load_config(["-b", "127.0.0.2:1", "x:app"], {}))
    finally:
        open_listener.close()
