"""Trusted front ends: which peers may tell the app about the original request.

A reverse proxy that ends TLS (nginx, a cloud load balancer, Heroku's router) talks plain
HTTP to the server and says in a header that the client used HTTPS. Only a peer listed in
``forwarded_allow_ips`` (addresses, networks or ``*``) is believed, and only in the headers
of ``secure_scheme_headers``, as under gunicorn: each such header present sets
``wsgi.url_scheme`` to ``https`` when its value is the configured one and to ``http``
otherwise, and two that disagree make the request a 400. A Unix socket peer is on this
host, so it is trusted too (gunicorn's rule).

Here is room for what forwarded headers will add later (``X-Forwarded-For``,
``Forwarded``, the PROXY protocol's addresses): all of it hangs on the same trust.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping

from forkhorn.http import BadRequestError

#: Verdicts kept per peer address (a front end connects from few addresses; a flood of
#: distinct clients only clears the cache).
_VERDICT_LIMIT = 4096


class FrontEnds:
    """``forwarded_allow_ips`` and ``secure_scheme_headers``, ready for the request path."""

    __slots__ = ("_addresses", "_any", "_networks", "_verdicts", "scheme_headers")

    def __init__(self, allow: Iterable[str], scheme_headers: Mapping[str, str]) -> None:
        items = [item.strip() for item in allow if item.strip()]
        self._any = "*" in items
        networks = [ipaddress.ip_network(item, strict=False) for item in items if item != "*"]
        self._addresses = frozenset(
            str(net.network_address) for net in networks if net.num_addresses == 1
        )
        self._networks = tuple(net for net in networks if net.num_addresses > 1)
        self._verdicts: dict[str, bool] = {}
        #: Lower-cased header name -> the value that means HTTPS, as the parser gives
        #: them (bytes).
        self.scheme_headers = {
            name.lower().encode("latin-1"): value.encode("latin-1")
            for name, value in scheme_headers.items()
        }

    @classmethod
    def from_config(cls, cfg: object) -> FrontEnds | None:
        """None when no header would be read (the request path then skips the matter)."""
        allow = getattr(cfg, "forwarded_allow_ips", None) or []
        headers = getattr(cfg, "secure_scheme_headers", None) or {}
        if not headers:
            return None
        return cls(allow, headers)  # no address listed: Unix socket peers still count

    def trusts(self, peer: str) -> bool:
        """Is ``peer`` (REMOTE_ADDR; "" for a Unix socket) a trusted front end?"""
        if self._any or not peer or peer in self._addresses:
            return True
        verdict = self._verdicts.get(peer)
        if verdict is None:
            verdict = self._judge(peer)
            if len(self._verdicts) >= _VERDICT_LIMIT:
                self._verdicts.clear()
            self._verdicts[peer] = verdict
        return verdict

    def _judge(self, peer: str) -> bool:
        try:
            address = ipaddress.ip_address(peer.partition("%")[0])  # no IPv6 zone
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            # A dual-stack listener ([::]) sees IPv4 clients as ::ffff:a.b.c.d.
            address = address.ipv4_mapped
        if str(address) in self._addresses:
            return True
        return any(address in network for network in self._networks)

    def scheme_headers_for(self, peer: str) -> dict[bytes, bytes] | None:
        """The headers to read for ``peer``'s requests, or None (not trusted)."""
        return self.scheme_headers if self.trusts(peer) else None


def forwarded_scheme(
    headers: Iterable[tuple[bytes, bytes]], scheme_headers: Mapping[bytes, bytes]
) -> str | None:
    """``https`` or ``http`` as a trusted front end's headers say, or None (none of them
    present). Raises BadRequestError when two of them disagree."""
    scheme = None
    for name, value in headers:
        expected = scheme_headers.get(name)
        if expected is None:
            continue
        said = "https" if value == expected else "http"
        if scheme is None:
            scheme = said
        elif said != scheme:
            raise BadRequestError("contradictory scheme headers")
    return scheme
