"""Trusted front ends and the scheme their headers set (wsgi/proxies.py)."""

from __future__ import annotations

import pytest

from forkhorn.http import BadRequestError
from forkhorn.wsgi.proxies import FrontEnds, forwarded_scheme

GUNICORN_HEADERS = {
    "X-FORWARDED-PROTOCOL": "ssl",
    "X-FORWARDED-PROTO": "https",
    "X-FORWARDED-SSL": "on",
}


def test_trust_by_address_network_and_star() -> None:
    front = FrontEnds(["127.0.0.1", "::1", "10.1.0.0/16"], GUNICORN_HEADERS)
    assert front.trusts("127.0.0.1") and front.trusts("::1")
    assert front.trusts("10.1.200.3")
    assert not front.trusts("10.2.0.1")
    assert not front.trusts("127.0.0.2")
    assert not front.trusts("not-an-address")
    # A dual-stack listener's view of an IPv4 peer, and an IPv6 zone.
    assert front.trusts("::ffff:127.0.0.1") and front.trusts("::ffff:10.1.0.9")
    assert not front.trusts("::ffff:10.2.0.9")
    assert FrontEnds(["fe80::/10"], GUNICORN_HEADERS).trusts("fe80::1%eth0")
    assert FrontEnds(["*"], GUNICORN_HEADERS).trusts("203.0.113.7")
    # A Unix socket peer (no address) is on this host: trusted, as in gunicorn.
    assert front.trusts("")


def test_verdicts_are_remembered_within_a_bound() -> None:
    front = FrontEnds(["10.0.0.0/8"], GUNICORN_HEADERS)
    for i in range(5000):
        assert front.trusts(f"10.0.{i // 256}.{i % 256}")
    assert len(front._verdicts) <= 4096


def test_from_config_is_none_when_nothing_would_be_read() -> None:
    from types import SimpleNamespace

    cfg = SimpleNamespace(forwarded_allow_ips=["127.0.0.1"], secure_scheme_headers={})
    assert FrontEnds.from_config(cfg) is None
    cfg.secure_scheme_headers = {"X-Scheme": "https"}
    front = FrontEnds.from_config(cfg)
    assert front is not None and front.scheme_headers == {b"x-scheme": b"https"}
    # No address listed: a Unix socket peer still counts (gunicorn trusts it always).
    cfg.forwarded_allow_ips = []
    front = FrontEnds.from_config(cfg)
    assert front is not None and front.trusts("") and not front.trusts("127.0.0.1")
    cfg.secure_scheme_headers = {}
    assert FrontEnds.from_config(cfg) is None


def test_scheme_headers_for() -> None:
    front = FrontEnds(["127.0.0.1"], GUNICORN_HEADERS)
    assert front.scheme_headers_for("192.0.2.1") is None
    assert front.scheme_headers_for("127.0.0.1") == {
        b"x-forwarded-protocol": b"ssl",
        b"x-forwarded-proto": b"https",
        b"x-forwarded-ssl": b"on",
    }


@pytest.mark.parametrize(
    ("headers", "scheme"),
    [
        ([], None),
        ([(b"host", b"t")], None),
        ([(b"x-forwarded-proto", b"https")], "https"),
        ([(b"x-forwarded-proto", b"http")], "http"),
        ([(b"x-forwarded-proto", b"HTTPS")], "http"),  # exact, as gunicorn compares
        ([(b"x-forwarded-ssl", b"on"), (b"x-forwarded-proto", b"https")], "https"),
        ([(b"x-forwarded-proto", b"https"), (b"x-forwarded-proto", b"https")], "https"),
        ([(b"x-forwarded-proto", b"http"), (b"x-forwarded-ssl", b"off")], "http"),
    ],
)
def test_forwarded_scheme(headers: list[tuple[bytes, bytes]], scheme: str | None) -> None:
    rule = FrontEnds(["*"], GUNICORN_HEADERS).scheme_headers
    assert forwarded_scheme(headers, rule) == scheme


@pytest.mark.parametrize(
    "headers",
    [
        [(b"x-forwarded-proto", b"https"), (b"x-forwarded-ssl", b"off")],
        [(b"x-forwarded-proto", b"https"), (b"x-forwarded-proto", b"http")],
    ],
)
def test_contradictory_scheme_headers_are_a_bad_request(
    headers: list[tuple[bytes, bytes]],
) -> None:
    rule = FrontEnds(["*"], GUNICORN_HEADERS).scheme_headers
    with pytest.raises(BadRequestError, match="contradictory scheme headers"):
        forwarded_scheme(headers, rule)
