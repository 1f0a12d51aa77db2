"""The request head: request line and header fields, validated and turned into ``Request``.

Rules kept (RFC 9112 §2-§6, RFC 9110 §5 and §8.6):
- ``method SP request-target SP HTTP/x.y`` with a token method; the target is origin-form,
  absolute-form with an authority, ``*`` (OPTIONS only) or authority-form (CONNECT only).
  A well-formed version other than 1.0/1.1 is 505; anything malformed is 400.
- Field names are tokens with no whitespace before the colon; values are trimmed of SP/HTAB
  only; CTLs, bare CR, bare LF and obs-fold are 400; obs-text is kept.
- Limits: request line over ``max_line_size`` is 414; a field line over ``max_field_size``
  or more than ``max_fields`` fields is 431. They are enforced on incomplete input too
  (``check_partial_head``), so an endless line is refused, never buffered.
- HTTP/1.1 needs exactly one Host (RFC 9112 §3.2). Framing is decided here: a valid
  ``Content-Length`` (equal duplicates merged), or ``Transfer-Encoding`` ending in a single
  ``chunked`` (HTTP/1.1 only, never together with Content-Length: RFC 9112 §6.1 lets a
  server reject that, and we do, since it is the request-smuggling vector).

How it works: the caller finds the end of the head with one ``bytes.find``; the whole
field block is validated with one regex ``fullmatch`` and split with one ``findall``. Only
when that fails does ``_diagnose_fields`` walk the lines to name the precise error.
"""

from __future__ import annotations

from typing import NoReturn

from .errors import (
    BadRequestError,
    BodyTooLargeError,
    ExpectationFailedError,
    HeaderFieldsTooLargeError,
    ProtocolError,
    UnsupportedTransferCodingError,
    UnsupportedVersionError,
    UriTooLongError,
)
from .events import Request
from .grammar import (
    ABSOLUTE_FORM_RE,
    AUTHORITY_FORM_RE,
    BARE_CR_RE,
    BARE_LF_RE,
    CTL_RE,
    DIGITS_RE,
    FIELD_BLOCK_RE,
    FIELD_LINE_RE,
    HEAD_RE,
    HOST_RE,
    REQUEST_LINE_RE,
    TOKEN_PREFIX_RE,
    TOKEN_RE,
)

# Fields whose presence changes how the request is framed or routed; everything else is
# passed through untouched.
_FRAMING_FIELDS = frozenset(
    (b"content-length", b"transfer-encoding", b"host", b"connection", b"expect")
)


def check_partial_head(
    buf: bytes | bytearray,
    start: int,
    new: int,
    max_line_size: int,
    max_field_size: int,
    max_head_size: int,
) -> None:
    """Refuse an incomplete head as soon as it can no longer become valid.

    Called when ``buf[start:]`` holds no head terminator yet; bytes before ``new`` were
    checked by an earlier call (so a trickling client costs linear time, not quadratic).
    Raises for an over-long request line (414) or field line (431), a head over
    ``max_head_size`` (431), bare CR/LF (400), so that a peer cannot make us buffer
    without bound, and a first byte past the method that is not the space after it
    (400): a TLS handshake or another protocol sent to this port is answered at once
    instead of holding the connection until ``header_timeout``.
    """
    if not _starts_with_method(buf, start):
        raise BadRequestError(_NO_METHOD)
    # A bare CR or LF in the new bytes is refused first when it comes before where a
    # size limit was passed: the status then follows the stream, not how it was split
    # into reads (all at once, a bare LF followed by a long line was a 414).
    bare = None
    lf = BARE_LF_RE.search(buf, new)
    if lf is not None:
        bare = (lf.start(), "bare LF in request head")
    cr = BARE_CR_RE.search(buf, new)
    if cr is not None and cr.end() < len(buf) and (bare is None or cr.start() < bare[0]):
        bare = (cr.start(), "bare CR in request head")
    size = len(buf) - start
    first_eol = buf.find(b"\r\n", start)
    if first_eol < 0:
        if size > max_line_size + 1:  # +1: the CR of the CRLF may already be here
            _refuse_first(bare, start + max_line_size, UriTooLongError("request line too long"))
    elif first_eol - start > max_line_size:
        _refuse_first(bare, start + max_line_size, UriTooLongError("request line too long"))
    if size > max_head_size:
        _refuse_first(
            bare, start + max_head_size, HeaderFieldsTooLargeError("request head too large")
        )
    if first_eol >= 0:
        last_eol = buf.rfind(b"\n", start)
        if len(buf) - last_eol - 1 > max_field_size + 1:
            _refuse_first(
                bare,
                last_eol + max_field_size + 1,
                HeaderFieldsTooLargeError("header field line too long"),
            )
    if bare is not None:
        raise BadRequestError(bare[1])


def _refuse_first(bare: tuple[int, str] | None, at: int, error: ProtocolError) -> NoReturn:
    """Raise ``error`` (a limit passed at offset ``at``), or the bare CR/LF refusal if that
    comes earlier in the stream."""
    if bare is not None and bare[0] <= at:
        raise BadRequestError(bare[1])
    raise error


_NO_METHOD = (
    "the request does not start with a method (TLS or another protocol sent to this plain "
    "HTTP port?)"
)


def _starts_with_method(buf: bytes | bytearray, start: int = 0) -> bool:
    """Can ``buf[start:]`` still be a request line: a token, then a space (or nothing
    yet)?"""
    method_end = TOKEN_PREFIX_RE.match(buf, start).end()  # type: ignore[union-attr]
    return method_end >= len(buf) or buf[method_end] == 0x20


def _overlong_line(head: bytes) -> BadRequestError | UriTooLongError:
    """An over-long request line: 414, unless it does not even start with a method (the
    400 that an incomplete head gets for that first, so the status does not depend on
    how the head was split into reads)."""
    if not _starts_with_method(head):
        return BadRequestError(_NO_METHOD)
    return UriTooLongError("request line too long")


def parse_head(
    head: bytes, max_line_size: int, max_fields: int, max_field_size: int, max_body_size: int
) -> Request:
    """Parse a complete head: the request line and field lines, each ending in CRLF.

    ``head`` excludes the empty line that ends it. Raises a ``ProtocolError``.
    """
    eol = head.find(b"\r\n")
    if len(head) - eol > _LONG_BLOCK:
        # Many fields: one regex split both validates the block (every separator must be
        # empty) and extracts the pairs, instead of a fullmatch and a findall; for a short
        # block the two calls cost less than the split's bookkeeping (bench/README.md).
        if eol > max_line_size:
            raise _overlong_line(head)
        m = REQUEST_LINE_RE.fullmatch(head, 0, eol)
        if m is None:
            raise _diagnose_request_line(head[:eol])
        method, target, major, minor = m.groups()
        block = head[eol + 2 :]
        # A valid block splits into ["", name, value, "", name, value, ..., ""]: any
        # non-empty separator is an invalid line.
        parts = FIELD_LINE_RE.split(block)
        if any(parts[::3]):
            raise _diagnose_fields(block, max_field_size)
        names = parts[1::3]
        if len(names) > max_fields:
            raise HeaderFieldsTooLargeError("too many header fields")
        if len(block) > max_field_size:
            _check_field_sizes(block, max_field_size)
        values = parts[2::3]
        if _has_trailing_ows(block):
            values = [value.rstrip(b" \t") for value in values]
        headers = list(zip(map(bytes.lower, names), values, strict=True))
    else:
        m = HEAD_RE.fullmatch(head)
        if m is None:
            raise _diagnose_head(head, max_line_size, max_field_size)
        method, target, major, minor, block = m.groups()
        if m.end(4) > max_line_size:
            raise _overlong_line(head)
        headers = _fields(block, max_fields, max_field_size) if block else []
    if major != b"1" or (minor != b"1" and minor != b"0"):
        raise UnsupportedVersionError(f"HTTP/{major.decode()}.{minor.decode()} is not supported")
    http11 = minor == b"1"
    if target[0] != 0x2F or method == b"CONNECT":  # not origin-form ("/...")
        _check_target_form(method, target)

    # Host is checked here; the fields that change the framing are rare enough (most
    # requests have none, a browser sends Connection) to be decided in _frame().
    host = None
    framing = None
    for name, value in headers:
        if name not in _FRAMING_FIELDS:
            continue
        if name == b"host":
            if host is not None:
                raise BadRequestError("duplicate Host")
            host = value
        elif framing is None:
            framing = [(name, value)]
        else:
            framing.append((name, value))
    if host is None:
        if http11:
            raise BadRequestError("missing Host header")
    elif host not in _valid_hosts:
        # RFC 9112 §3.2: a server MUST respond 400 to a request with an invalid Host.
        if HOST_RE.fullmatch(host) is None:
            raise BadRequestError("invalid Host header")
        if len(_valid_hosts) < _VALID_HOSTS_LIMIT:
            _valid_hosts.add(host)
    if framing is None:
        # No body, no Connection, no Expect: HTTP/1.1 persists, HTTP/1.0 does not.
        return Request(
            method,
            target,
            b"1.1" if http11 else b"1.0",
            headers,
            0,
            False,
            False,
            http11,
            head[:eol],
        )
    return _frame(method, target, http11, headers, framing, max_body_size, head[:eol])


def refused_head(head: bytes, max_line_size: int) -> Request | None:
    """What the access log can say of a complete head that ``parse_head`` refused: its
    request line (None when that is what is wrong) and the well-formed field lines."""
    eol = head.find(b"\r\n")
    line_end = len(head) if eol < 0 else eol
    if line_end > max_line_size:
        return None
    m = REQUEST_LINE_RE.fullmatch(head, 0, line_end)
    if m is None:
        return None
    method, target, major, minor = m.groups()
    if major != b"1" or (minor != b"1" and minor != b"0"):
        return None
    fields = FIELD_LINE_RE.findall(head[line_end + 2 :]) if eol >= 0 else []
    headers = [(name.lower(), value.rstrip(b" \t")) for name, value in fields]
    version = b"1.1" if minor == b"1" else b"1.0"
    return Request(method, target, version, headers, 0, False, False, False, head[:line_end])


# Field blocks longer than this are split in one pass (see parse_head).
_LONG_BLOCK = 256


def _has_trailing_ows(block: bytes) -> bool:
    """Does some line of a validated field block end in SP or HTAB before its CRLF?

    ``find`` rather than ``in``: on bytes, ``in`` costs twice as much per call (CPython
    goes through the buffer protocol), and this runs for every request.
    """
    return block.find(b" \r") >= 0 or block.find(b"\t\r") >= 0


def _fields(block: bytes, max_fields: int, max_field_size: int) -> list[tuple[bytes, bytes]]:
    """Split a validated field block into (lower-cased name, trimmed value) pairs."""
    pairs = FIELD_LINE_RE.findall(block)
    if len(pairs) > max_fields:
        raise HeaderFieldsTooLargeError("too many header fields")
    if len(block) > max_field_size:
        _check_field_sizes(block, max_field_size)
    # Only trailing OWS is left in the values; strip it only when some line has it.
    if _has_trailing_ows(block):
        return [(name.lower(), value.rstrip(b" \t")) for name, value in pairs]
    # A plain loop: on Python 3.11 a comprehension is a function call of its own, which
    # costs more than the one or two fields of a typical API request (bench/README.md).
    fields: list[tuple[bytes, bytes]] = []
    add = fields.append
    for name, value in pairs:
        add((name.lower(), value))
    return fields


def parse_trailers(block: bytes, max_fields: int, max_field_size: int) -> list[tuple[bytes, bytes]]:
    """Parse a chunked body's trailer section (field lines, each ending in CRLF)."""
    if FIELD_BLOCK_RE.fullmatch(block) is None:
        raise _diagnose_fields(block, max_field_size)
    trailers = _fields(block, max_fields, max_field_size)
    for name, _ in trailers:
        if name in FORBIDDEN_TRAILERS:
            raise BadRequestError(f"field {name.decode()!r} is not allowed in trailers")
    return trailers


# RFC 9110 §6.5.1: a trailer must not carry framing, routing, request modifiers,
# authentication, response control or content-processing fields; a recipient must not
# merge them into the header section, and we refuse them outright so that no layer in
# front of us or behind us can be confused by them.
FORBIDDEN_TRAILERS = frozenset(
    (
        b"transfer-encoding",
        b"content-length",
        b"host",
        b"connection",
        b"keep-alive",
        b"te",
        b"trailer",
        b"upgrade",
        b"expect",
        b"content-type",
        b"content-encoding",
        b"content-range",
        b"range",
        b"authorization",
        b"proxy-authorization",
        b"cookie",
        b"max-forwards",
        b"if-match",
        b"if-none-match",
        b"if-modified-since",
        b"if-unmodified-since",
        b"if-range",
        b"cache-control",
        b"pragma",
    )
)


def _frame(
    method: bytes,
    target: bytes,
    http11: bool,
    headers: list[tuple[bytes, bytes]],
    framing: list[tuple[bytes, bytes]],
    max_body_size: int,
    line: bytes,
) -> Request:
    """Decide keep-alive, 100-continue and the body framing from the framing fields
    (Content-Length, Transfer-Encoding, Connection, Expect) in arrival order."""
    content_length: int | None = 0
    te_value: bytes | None = None
    cl_value: bytes | None = None
    connection: bytes | None = None
    expect: bytes | None = None
    for name, value in framing:
        if name == b"content-length":
            cl_value = value if cl_value is None else cl_value + b"," + value
        elif name == b"transfer-encoding":
            te_value = value if te_value is None else te_value + b"," + value
        elif name == b"connection":
            connection = value.lower() if connection is None else connection + b"," + value.lower()
        else:  # expect
            expect = value if expect is None else expect + b"," + value

    if te_value is not None:
        if not http11:
            # RFC 9112 §6.1: an HTTP/1.0 message with Transfer-Encoding must be treated as
            # faulty framing; we refuse it.
            raise BadRequestError("Transfer-Encoding in an HTTP/1.0 request")
        if cl_value is not None:
            raise BadRequestError("both Content-Length and Transfer-Encoding")
        _check_transfer_coding(te_value)
        content_length = None
    elif cl_value is not None:
        content_length = _content_length(cl_value)
        if max_body_size and content_length > max_body_size:
            raise BodyTooLargeError(f"Content-Length {content_length} over the limit")

    if connection is None:
        keep_alive = http11
    elif http11:
        keep_alive = not _has_token(connection, b"close")
    else:
        keep_alive = _has_token(connection, b"keep-alive") and not _has_token(connection, b"close")

    expect_continue = False
    if expect is not None:
        # RFC 9110 §10.1.1: 100-continue is the only expectation defined; a server may
        # answer any other with 417. Expect is a list: empty members are ignored (§5.6.1),
        # so "100-continue," or the field twice is still 100-continue, and an empty field
        # expects nothing. HTTP/1.0 clients cannot use it (ignored there).
        members = {m.strip(b" \t") for m in expect.lower().split(b",")} - {b""}
        if members - {b"100-continue"}:
            raise ExpectationFailedError("unsupported expectation")
        expect_continue = http11 and bool(members)
    return Request(
        method,
        target,
        b"1.1" if http11 else b"1.0",
        headers,
        content_length,
        te_value is not None,
        expect_continue,
        keep_alive,
        line,
    )


# Host values already proven valid: a server sees the same few over and over, and the
# regex costs more than the rest of the framing decision. Bounded, never evicted.
_valid_hosts: set[bytes] = set()
_VALID_HOSTS_LIMIT = 1024


def _has_token(value: bytes, token: bytes) -> bool:
    """Does a comma-separated list (already lower-cased) contain ``token``?"""
    if value == token:
        return True
    return any(part.strip(b" \t") == token for part in value.split(b","))


def _content_length(value: bytes) -> int:
    # RFC 9110 §8.6: a list of identical values may be treated as one; anything else that is
    # not 1*DIGIT is invalid. The check precedes int(), which accepts "+1", " 1" and "1_0".
    if DIGITS_RE.fullmatch(value) is None:
        parts = {part.strip(b" \t") for part in value.split(b",")}
        if len(parts) != 1:
            raise BadRequestError("conflicting Content-Length values")
        value = parts.pop()
        if DIGITS_RE.fullmatch(value) is None:
            raise BadRequestError("invalid Content-Length")
    if len(value) > 18:  # past 10**18 bytes is no body we will ever read
        raise BadRequestError("Content-Length too large")
    return int(value)


def _check_transfer_coding(value: bytes) -> None:
    # RFC 9112 §6.3: chunked must be the final coding of a request; RFC 9112 §7: a sender
    # must not apply chunked more than once. We implement no other coding, so anything
    # besides one final "chunked" is 501 (an unknown coding) or 400 (chunked misplaced).
    codings = [c.strip(b" \t").lower() for c in value.split(b",")]
    for coding in codings:
        if not coding or TOKEN_RE.fullmatch(coding) is None:
            raise BadRequestError("malformed Transfer-Encoding")
    if codings.count(b"chunked") > 1:
        raise BadRequestError("chunked applied more than once")
    if codings[-1] != b"chunked":
        # RFC 9112 §6.3: without chunked as the final coding the body length cannot be
        # determined reliably, and the server MUST respond 400 and close.
        raise BadRequestError("chunked is not the final transfer coding")
    if len(codings) > 1:
        # Framing is sound, but we implement no coding besides chunked (RFC 9112 §6.1).
        raise UnsupportedTransferCodingError("unsupported transfer coding")


def _check_target_form(method: bytes, target: bytes) -> None:
    # RFC 9112 §3.2: origin-form was handled by the caller.
    if target == b"*":
        if method != b"OPTIONS":
            raise BadRequestError("asterisk-form is only allowed with OPTIONS")
    elif method == b"CONNECT":
        if AUTHORITY_FORM_RE.fullmatch(target) is None:
            raise BadRequestError("CONNECT needs an authority-form target")
    elif ABSOLUTE_FORM_RE.fullmatch(target) is None:
        raise BadRequestError("invalid request target")


def _check_field_sizes(block: bytes, max_field_size: int) -> None:
    for line in block.split(b"\r\n"):
        if len(line) > max_field_size:
            raise HeaderFieldsTooLargeError("header field line too long")


def _diagnose_head(
    head: bytes, max_line_size: int, max_field_size: int
) -> BadRequestError | UriTooLongError | HeaderFieldsTooLargeError:
    """Name what is wrong with a head that did not match (slow path)."""
    eol = head.find(b"\r\n")
    if eol > max_line_size:
        return _overlong_line(head)
    line = head[:eol]
    if REQUEST_LINE_RE.fullmatch(line) is None:
        return _diagnose_request_line(line)
    return _diagnose_fields(head[eol + 2 :], max_field_size)


def _diagnose_request_line(line: bytes) -> BadRequestError:
    """Name what is wrong with a request line that did not match (slow path)."""
    if BARE_LF_RE.search(line) is not None:
        return BadRequestError("bare LF in request line")
    if b"\r" in line:
        return BadRequestError("bare CR in request line")
    parts = line.split(b" ")
    if len(parts) != 3:
        return BadRequestError("malformed request line")
    method, _target, version = parts
    if TOKEN_RE.fullmatch(method) is None:
        return BadRequestError("invalid method")
    if not version.startswith(b"HTTP/"):
        return BadRequestError("invalid HTTP version")
    return BadRequestError("malformed request line")


def _diagnose_fields(
    block: bytes, max_field_size: int
) -> BadRequestError | HeaderFieldsTooLargeError:
    """Name what is wrong in a field block that did not match (slow path)."""
    if BARE_LF_RE.search(block) is not None:
        return BadRequestError("bare LF in header section")
    if BARE_CR_RE.search(block) is not None:
        return BadRequestError("bare CR in header section")
    for line in block.split(b"\r\n")[:-1]:
        if len(line) > max_field_size:
            return HeaderFieldsTooLargeError("header field line too long")
        if FIELD_LINE_RE.fullmatch(line + b"\r\n") is not None:
            continue
        if line[:1] in (b" ", b"\t"):
            return BadRequestError("obsolete line folding")
        name, colon, value = line.partition(b":")
        if not colon:
            return BadRequestError("header line without a colon")
        if not name:
            return BadRequestError("empty header name")
        if name[-1:] in (b" ", b"\t"):
            return BadRequestError("whitespace between header name and colon")
        if TOKEN_RE.fullmatch(name) is None:
            return BadRequestError("invalid character in header name")
        if CTL_RE.search(value) is not None:
            return BadRequestError("invalid character in header value")
        return BadRequestError("malformed header line")
    return BadRequestError("malformed header section")
