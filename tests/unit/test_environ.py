"""The base environ a connection gets from the listener it came in on."""

from __future__ import annotations


def test_a_connection_finds_its_listeners_environ_by_family_too() -> None:
    """``0.0.0.0:P`` and ``[::]:P`` can both be bound (v6 sockets are v6-only): a
    request without Host on the IPv6 one got the IPv4 one's SERVER_NAME, both wildcards
    sharing one key."""
    import types

    from forkhorn.workers.session import _listener_key, base_environ_for

    names = [("0.0.0.0", 8000), ("::", 8000, 0, 0), ("127.0.0.2", 8001), "/run/app.sock"]
    environs = {
        _listener_key(name): {"SERVER_NAME": str(name[0] if isinstance(name, tuple) else name)}
        for name in names
    }
    worker = types.SimpleNamespace(base_environs=environs, base_environ={"SERVER_NAME": "first"})

    def name_for(local: object) -> str:
        return str(base_environ_for(worker, local)["SERVER_NAME"])  # type: ignore[arg-type]

    assert name_for(("127.0.0.1", 8000)) == "0.0.0.0"
    assert name_for(("::1", 8000, 0, 0)) == "::"
    assert name_for(("127.0.0.2", 8001)) == "127.0.0.2"
    assert name_for("/run/app.sock") == "/run/app.sock"
    assert name_for(("127.0.0.1", 9999)) == "first"  # not a listener's: the first one's
