"""Security settings: request size limits, read deadlines, proxies and trusted headers.

Default limits, and why:
- ``limit_request_line`` 4094, ``limit_request_fields`` 100 and
  ``limit_request_field_size`` 8190 are gunicorn's, which most proxies in front of it
  also use (nginx's ``large_client_header_buffers`` is 8 KiB).
- ``header_timeout`` 30 s matches gunicorn's ``timeout`` and nginx's 60 s
  ``client_header_timeout`` halved: a real client sends its head in one round trip.
- ``body_min_rate`` 500 B/s is Apache mod_reqtimeout's ``MinRate``: far below any real
  uplink, far above a slowloris trickle.
"""

from __future__ import annotations

from typing import ClassVar

from forkhorn.config.converters import (
    address_list,
    choice,
    header_mapping,
    header_value,
    non_negative_int,
    proxy_protocol,
    seconds,
)
from forkhorn.config.setting import Setting

# The HTTP core's hard ceilings (gunicorn's MAX_REQUEST_LINE and MAX_HEADERS).
MAX_REQUEST_LINE = 8190
MAX_HEADERS = 32768
DEFAULT_MAX_FIELD_SIZE = 8190


class SecurityOptions:
    SECTION: ClassVar[str] = "Security and limits"
    __slots__ = ()

    limit_request_line = Setting(
        default=4094,
        convert=non_negative_int,
        flags=("--limit-request-line",),
        metavar="INT",
        doc=f"""
        The longest request line (method, target and version) in bytes, up to
        {MAX_REQUEST_LINE}; 0, or more than {MAX_REQUEST_LINE}, means {MAX_REQUEST_LINE}
        (both are warned at start-up: gunicorn reads 0 as no limit). Longer lines get
        414.
        """,
    )
    limit_request_fields = Setting(
        default=100,
        convert=non_negative_int,
        flags=("--limit-request-fields",),
        metavar="INT",
        doc=f"""
        The most header fields in a request, up to {MAX_HEADERS}; 0, or more than
        {MAX_HEADERS}, means {MAX_HEADERS} (more is warned at start-up). More get 431.
        """,
    )
    limit_request_field_size = Setting(
        default=DEFAULT_MAX_FIELD_SIZE,
        convert=non_negative_int,
        flags=("--limit-request-field_size", "--limit-request-field-size"),
        metavar="INT",
        doc=f"""
        The largest header field (name, colon and value) in bytes; 0 means the default,
        {DEFAULT_MAX_FIELD_SIZE} (warned at start-up: gunicorn reads 0 as no limit; set
        the size a large cookie or token needs instead). Larger get 431.
        """,
    )
    limit_request_body = Setting(
        default=0,
        convert=non_negative_int,
        flags=("--limit-request-body",),
        metavar="BYTES",
        doc="""
        The largest request body in bytes; a larger declared body (``Content-Length``) gets
        413 without running the app. A chunked body is counted as it is read: on the fast
        worker, which reads bodies before the app runs, before the app; on the others when
        the app reads past the limit (``wsgi.input`` raises, and the answer is 413). 0 means
        unlimited.
        """,
    )
    header_timeout = Setting(
        default=30.0,
        convert=seconds,
        flags=("--header-timeout",),
        metavar="SECONDS",
        doc="""
        The whole request head must arrive within this many seconds of the connection's
        start, or on a keep-alive connection of the next head's first byte (``keepalive``
        bounds the wait for that byte, as nginx's ``client_header_timeout`` works); a
        deadline, not an idle timer that each byte resets. Slow clients are closed with
        408. 0 turns it off. The fast worker checks its deadlines once a second, so they
        end up to a second late.
        """,
    )
    body_min_rate = Setting(
        default=500,
        convert=non_negative_int,
        flags=("--body-min-rate",),
        metavar="BYTES_PER_SECOND",
        doc="""
        The slowest upload accepted. Reading a body starts with ``header_timeout`` seconds
        of allowance and each ``body_min_rate`` bytes received adds one second (Apache
        mod_reqtimeout's ``MinRate``); a client behind that schedule is closed. 0 is off:
        the body then only has to keep coming, a pause as long as ``timeout`` closes it.
        """,
    )
    header_map = Setting(
        default="drop",
        convert=choice("drop", "refuse", "dangerous"),
        flags=("--header-map",),
        metavar="STRING",
        doc="""
        What to do with request headers whose names contain ``_``, which would map to the
        same WSGI environ key as a dashed name (``X-Forwarded_For`` and
        ``X-Forwarded-For`` are both ``HTTP_X_FORWARDED_FOR``): ``drop`` every such
        header (a lone ``X_Api_Key`` too, as gunicorn does), ``refuse`` the request with
        400, or pass them (``dangerous``).
        """,
    )
    server_header = Setting(
        default="forkhorn",
        convert=header_value,
        flags=("--server-header",),
        metavar="STRING",
        doc="The value of the ``Server`` response header; an empty string sends none.",
    )
    forwarded_allow_ips = Setting(
        default=["127.0.0.1", "::1"],
        convert=address_list,
        flags=("--forwarded-allow-ips",),
        metavar="STRING",
        env=("FORWARDED_ALLOW_IPS",),
        env_convert=str,
        default_doc="'127.0.0.1,::1'",
        doc="""
        Front-end addresses (comma separated IPs or networks, or ``*``) trusted to set
        ``wsgi.url_scheme`` with ``secure_scheme_headers``, as in gunicorn; a peer on a
        Unix socket is always trusted. ``FORWARDED_ALLOW_IPS`` in the environment replaces
        the default. An empty value trusts no TCP peer.
        """,
    )
    secure_scheme_headers = Setting(
        default={
            "X-FORWARDED-PROTOCOL": "ssl",
            "X-FORWARDED-PROTO": "https",
            "X-FORWARDED-SSL": "on",
        },
        convert=header_mapping,
        doc="""
        Headers and values that, from a trusted front end (``forwarded_allow_ips``), set
        ``wsgi.url_scheme``: a header present with its value here means ``https``, with any
        other value ``http``; two that disagree make the request a 400. Names are matched
        case-insensitively, values exactly. Config file only; ``{}`` turns it off.
        """,
    )
    proxy_protocol = Setting(
        default=False,
        convert=proxy_protocol,
        flags=("--proxy-protocol",),
        metavar="MODE",
        doc="""
        Not implemented yet: turning it on is refused at start-up (gunicorn reads a PROXY
        protocol header from trusted peers). On (``True``, or gunicorn 27's ``v1``, ``v2``,
        ``auto``), every request from a front end that sends the header would get 400.
        On the command line, gunicorn 27's ``--proxy-protocol off|v1|v2|auto`` and the
        earlier bare ``--proxy-protocol`` (on) are both understood.
        """,
    )
    proxy_allow_ips = Setting(
        default=["127.0.0.1", "::1"],
        convert=address_list,
        flags=("--proxy-allow-from",),
        metavar="STRING",
        default_doc="'127.0.0.1,::1'",
        doc="Front-end addresses allowed to send a PROXY protocol header. Accepted, not yet used.",
    )
