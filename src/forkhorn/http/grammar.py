"""RFC 9110 / RFC 9112 grammar: byte classes and compiled patterns.

Everything here is compiled once at import time and shared by the head parser, the body
readers and the response writer. Patterns are written so that they cannot backtrack
catastrophically: every repetition is over disjoint byte classes.

Sections cited are from RFC 9110 (HTTP semantics) and RFC 9112 (HTTP/1.1).
"""

from __future__ import annotations

import re

# RFC 9110 §5.6.2: tchar = "!" / "#" / "$" / "%" / "&" / "'" / "*" / "+" / "-" / "." /
# "^" / "_" / "`" / "|" / "~" / DIGIT / ALPHA
TCHAR = rb"!#$%&'*+\-.^_`|~0-9A-Za-z"
TOKEN = rb"[" + TCHAR + rb"]+"
TOKEN_RE = re.compile(TOKEN)
# The token characters at the start of a head still arriving: its method, so far.
TOKEN_PREFIX_RE = re.compile(rb"[" + TCHAR + rb"]*")

# RFC 9110 §5.5: field-vchar = VCHAR / obs-text; field-value may hold SP/HTAB between
# visible characters, never at its ends (those are OWS and are trimmed, §5.6.3).
# RFC 9112 §5: field-line = field-name ":" OWS field-value OWS. No whitespace is allowed
# between the name and the colon (§5.1: a server MUST reject such a message with 400).
# For matching, the value and its OWS are one run of SP/HTAB/VCHAR/obs-text; the leading
# OWS is consumed by the greedy [ \t]* and the trailing OWS is stripped by the caller. This
# accepts exactly the same lines as the ABNF and is several times faster than a pattern
# that trims inside the regex (measured in bench/parser_bench.py).
FIELD_TEXT = rb"[\t \x21-\x7e\x80-\xff]*"
FIELD_LINE = TOKEN + rb":" + FIELD_TEXT + rb"\r\n"
FIELD_LINE_RE = re.compile(rb"(" + TOKEN + rb"):[ \t]*(" + FIELD_TEXT + rb")\r\n")
# The whole header block (every field line, each ending in CRLF) in one match, for
# trailers and for diagnosing.
FIELD_BLOCK_RE = re.compile(rb"(?:" + FIELD_LINE + rb")*")

# RFC 9112 §3: request-line = method SP request-target SP HTTP-version. Exactly one SP
# between the parts; the target is visible ASCII only (obs-text is not allowed in a URI).
# The version is matched loosely here so that a well-formed but unsupported version can
# get 505 while a malformed one gets 400. "#" is left out: a fragment is never part of a
# request-target (RFC 9112 §3.2; RFC 9110 §4.2.5), so a target holding one is refused.
REQUEST_LINE = rb"(" + TOKEN + rb") ([\x21\x22\x24-\x7e]+) HTTP/([0-9])\.([0-9])"
REQUEST_LINE_RE = re.compile(REQUEST_LINE)
# A whole head (request line and field block) validated by one C-level match; group 5 is
# the field block for FIELD_LINE_RE.findall().
HEAD_RE = re.compile(REQUEST_LINE + rb"\r\n((?:" + FIELD_LINE + rb")*)")

# RFC 9112 §3.2.2: the absolute-form is what proxies send, with an authority; an HTTP
# server serves the http and https schemes only (RFC 9110 §4.2), any other is refused.
# "host:port" without a scheme is authority-form and belongs to CONNECT alone.
# RFC 9110 §4.2.1: an http(s) URI with an empty host is invalid and MUST be rejected;
# §4.2.4: a recipient SHOULD treat userinfo ("user:pass@host") as an error, and we do
# (the authority may hold no "@"; the path and query after it may).
# The authority must name a host: RFC 9110 §4.2.1 makes an http(s) URI with an empty one
# invalid, so it cannot start with the port's ":" ("http://:80/").
ABSOLUTE_FORM_RE = re.compile(
    rb"[Hh][Tt][Tt][Pp][Ss]?://[^/?#@:\x00-\x20\x7f-\xff][^/?#@\x00-\x20\x7f-\xff]*"
    rb"(?:[/?][\x21-\x7e]*)?"
)
# RFC 9110 §7.2 / RFC 3986 §3.2.2: Host = uri-host [ ":" port ]; uri-host is an IP literal
# in brackets or a reg-name (unreserved, pct-encoded, sub-delims). Empty is allowed (§7.2).
HOST_RE = re.compile(rb"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-._~%!$&'()*+,;=]*)(?::[0-9]*)?")
# RFC 9112 §3.2.3: authority-form = uri-host ":" port, used only by CONNECT.
AUTHORITY_FORM_RE = re.compile(rb"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-._~%!$&'()*+,;=]+):[0-9]+")

# RFC 9112 §6.3 / RFC 9110 §8.6: Content-Length = 1*DIGIT. Python's int() accepts "+5",
# " 5", "5_0" and other forms, so the raw value is matched first.
DIGITS_RE = re.compile(rb"[0-9]+")

# RFC 9112 §7.1: chunk = chunk-size [ chunk-ext ] CRLF chunk-data CRLF, chunk-size =
# 1*HEXDIG; §7.1.1: chunk-ext = *( BWS ";" BWS chunk-ext-name [ BWS "=" BWS chunk-ext-val ] ).
# The size is capped at 16 hex digits (2**64 - 1) before int() ever sees it.
QUOTED_STRING = rb'"(?:[\t \x21\x23-\x5b\x5d-\x7e\x80-\xff]|\\[\t \x21-\x7e\x80-\xff])*"'
CHUNK_EXT = (
    rb"(?:[ \t]*;[ \t]*"
    + TOKEN
    + rb"(?:[ \t]*=[ \t]*(?:"
    + TOKEN
    + rb"|"
    + QUOTED_STRING
    + rb"))?)*"
)
CHUNK_LINE_RE = re.compile(rb"([0-9A-Fa-f]{1,16})(" + CHUNK_EXT + rb")")

# Bytes that may never appear in a field value: CTLs other than HTAB, and DEL.
CTL_RE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
# A CR that is not followed by LF, or an LF that is not preceded by CR (RFC 9112 §2.2:
# a bare CR must be rejected or replaced; we reject, as we do bare LF line endings).
BARE_CR_RE = re.compile(rb"\r(?!\n)")
BARE_LF_RE = re.compile(rb"(?<!\r)\n")

# Response side, on str (PEP 3333 hands the server native strings).
STATUS_RE = re.compile(r"([1-9][0-9]{2}) [\t \x21-\x7e\x80-\xff]*")
TOKEN_STR_RE = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
FIELD_VALUE_STR_RE = re.compile(r"[\t \x21-\x7e\x80-\xff]*")
