"""The SSE decoder: line ends, split reads, multi-line data, comments."""

from __future__ import annotations

from providers.sse import SSEDecoder, encode_event


def _all(decoder: SSEDecoder, pieces: list[bytes]) -> list[tuple[str | None, bytes]]:
    out = []
    for piece in pieces:
        out.extend((e.event, e.data) for e in decoder.feed(piece))
    out.extend((e.event, e.data) for e in decoder.close())
    return out


def test_lf_crlf_and_cr_line_ends() -> None:
    for sep in (b"\n", b"\r\n", b"\r"):
        raw = b"event: a" + sep + b"data: 1" + sep + sep + b"data: 2" + sep + sep
        assert _all(SSEDecoder(), [raw]) == [("a", b"1"), (None, b"2")]


def test_split_anywhere_including_inside_crlf() -> None:
    raw = b"data: {\"x\": 1}\r\n\r\n: ping\r\n\r\nevent: done\r\ndata: [DONE]\r\n\r\n"
    expected = [(None, b'{"x": 1}'), ("done", b"[DONE]")]
    for cut in range(1, len(raw)):
        assert _all(SSEDecoder(), [raw[:cut], raw[cut:]]) == expected, cut
    assert _all(SSEDecoder(), [bytes([b]) for b in raw]) == expected


def test_multiline_data_and_unterminated_last_event() -> None:
    assert _all(SSEDecoder(), [b"data: a\ndata: b\n\ndata: tail"]) == [(None, b"a\nb"), (None, b"tail")]


def test_encode_round_trip() -> None:
    raw = encode_event(b'{"a":1}', "message_start") + encode_event(b"x")
    assert _all(SSEDecoder(), [raw]) == [("message_start", b'{"a":1}'), (None, b"x")]
