"""h11 as an independent oracle: every valid corpus case parsed by h11 (as a server).

For each valid case we compare method, target, version, headers, body and trailers as h11
reports them with what the corpus expects (and test_corpus.py holds forkhorn to the same
expectation, so this is forkhorn vs h11). Where the two differ on purpose, the case is in
``DIFFERENCES`` with the reason; a listed case that stops differing fails, so the list
stays true.
"""

from __future__ import annotations

import pytest
from corpus_cases import Case, SeenRequest, load_cases

h11 = pytest.importorskip("h11")

VALID = [case for case in load_cases() if case.error is None]

DIFFERENCES = {
    "chunk-ext-bws.toml": (
        "h11's chunk-ext pattern starts at ';', so it refuses '5 ;a = b'; RFC 9112 §7.1.1 "
        "added BWS around ';' and '=', and forkhorn accepts it"
    ),
    "valid-cl-duplicate-equal.toml": (
        "h11 folds two equal Content-Length lines into one header; forkhorn reports the "
        "fields as received (framing uses the merged value)"
    ),
    "valid-cl-list-equal.toml": (
        "h11 rewrites 'Content-Length: 5, 5' to '5'; forkhorn reports the value as received"
    ),
    "valid-chunked-case-insensitive.toml": (
        "h11 lower-cases the Transfer-Encoding value ('Chunked' -> 'chunked'); forkhorn "
        "reports the value as received"
    ),
    "valid-leading-crlf.toml": (
        "h11 refuses an empty line before the request line; RFC 9112 §2.2 says a server "
        "SHOULD ignore at least one, and forkhorn ignores one"
    ),
    "pipeline-crlf-between.toml": (
        "same as valid-leading-crlf: the CRLF a client sends after a POST body is ignored "
        "by forkhorn (RFC 9112 §2.2) and refused by h11"
    ),
    "pipeline-http10-keepalive-then-11.toml": (
        "h11 does not implement HTTP/1.0 keep-alive and closes after the first request; "
        "forkhorn honours 'Connection: keep-alive' on HTTP/1.0 (RFC 9112 §9.3, App. C.2.2)"
    ),
}


def parse_with_h11(raw: bytes) -> list[SeenRequest]:
    """Parse a whole connection's bytes with h11, answering each request like a server."""
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(raw)
    conn.receive_data(b"")
    seen: list[SeenRequest] = []
    request = None
    body: list[bytes] = []
    while True:
        event = conn.next_event()
        if isinstance(event, h11.Request):
            request, body = event, []
        elif isinstance(event, h11.Data):
            body.append(bytes(event.data))
        elif isinstance(event, h11.EndOfMessage):
            assert request is not None
            headers = tuple((bytes(n), bytes(v)) for n, v in request.headers)
            te = dict(headers).get(b"transfer-encoding")
            seen.append(
                SeenRequest(
                    method=bytes(request.method),
                    target=bytes(request.target),
                    version=bytes(request.http_version),
                    headers=headers,
                    body=b"".join(body),
                    trailers=tuple((bytes(n), bytes(v)) for n, v in event.headers),
                    # keep_alive/expect_continue are forkhorn's API, not compared here.
                    keep_alive=True,
                    expect_continue=False,
                    chunked=te is not None,
                    content_length=None if te is not None else len(b"".join(body)),
                )
            )
            # Not a 2xx: a 2xx to CONNECT would switch h11 to a tunnel.
            conn.send(h11.Response(status_code=404, headers=[("Content-Length", "0")]))
            conn.send(h11.EndOfMessage())
            if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
                return seen
            conn.start_next_cycle()
        elif event is h11.NEED_DATA or event is h11.PAUSED:
            raise AssertionError(f"h11 stalled with {event}")
        elif isinstance(event, h11.ConnectionClosed):
            return seen
        else:
            raise AssertionError(f"unexpected h11 event {event!r}")


def comparable(request: SeenRequest) -> tuple[object, ...]:
    return (
        request.method,
        request.target,
        request.version,
        request.headers,
        request.body,
        request.trailers,
    )


def agrees(case: Case) -> tuple[bool, str]:
    assert case.requests is not None
    try:
        got = parse_with_h11(case.raw)
    except h11.RemoteProtocolError as exc:
        return False, f"h11 refused it: {exc}"
    if [comparable(r) for r in got] != [comparable(r) for r in case.requests]:
        return False, f"h11 parsed {got}"
    return True, ""


@pytest.mark.parametrize("case", VALID, ids=[case.name for case in VALID])
def test_h11_agrees_on_valid_case(case: Case) -> None:
    ok, why = agrees(case)
    if case.name in DIFFERENCES:
        assert not ok, f"h11 now agrees; drop {case.name} from DIFFERENCES"
        return
    assert ok, why


def test_differences_name_existing_cases() -> None:
    names = {case.name for case in VALID}
    assert set(DIFFERENCES) <= names
