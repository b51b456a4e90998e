"""Server-sent events: an incremental decoder and the encoder for our own streams.

Pure: bytes in, events out. Accepts LF, CRLF and CR line ends (Gemini's captures
use CRLF), multi-line `data:` fields, comments (`: ping`) and split reads.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class SSEEvent:
    data: bytes
    event: str | None = None


class SSEDecoder:
    """Feed raw body bytes as they arrive; get back every event completed so far."""

    __slots__ = ("_buf", "_data", "_event", "max_line")

    def __init__(self, max_line: int = 8 * 1024 * 1024) -> None:
        self._buf = b""
        self._data: list[bytes] = []
        self._event: str | None = None
        self.max_line = max_line

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        buf = self._buf + chunk if self._buf else chunk
        if b"\r" in buf:
            # A lone trailing CR may be the first half of a CRLF: keep it for the next read.
            keep_cr = buf.endswith(b"\r")
            buf = buf.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
            if keep_cr:
                buf = buf[:-1]
        else:
            keep_cr = False
        events: list[SSEEvent] = []
        start = 0
        while True:
            end = buf.find(b"\n", start)
            if end < 0:
                break
            line = buf[start:end]
            start = end + 1
            if not line:
                if self._data:
                    events.append(SSEEvent(b"\n".join(self._data), self._event))
                self._data = []
                self._event = None
                continue
            if line[0] == 0x3A:  # ':' comment
                continue
            field, _, value = line.partition(b":")
            if value[:1] == b" ":
                value = value[1:]
            if field == b"data":
                self._data.append(value)
            elif field == b"event":
                self._event = value.decode("utf-8", "replace")
        rest = buf[start:]
        if len(rest) > self.max_line:
            raise ValueError(f"SSE line longer than {self.max_line} bytes")
        self._buf = rest + b"\r" if keep_cr else rest
        return events

    def close(self) -> list[SSEEvent]:
        """End of body: a final event without its blank line still counts."""
        events = self.feed(b"\n\n") if (self._buf or self._data) else []
        self._buf = b""
        return events


def encode_event(data: bytes, event: str | None = None) -> bytes:
    if event is None:
        return b"data: " + data + b"\n\n"
    return b"event: " + event.encode() + b"\ndata: " + data + b"\n\n"


DONE = b"data: [DONE]\n\n"
