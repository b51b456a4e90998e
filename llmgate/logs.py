"""Structured JSON logs: one line per request, JSON for every llmgate logger, secrets masked.

`redact` masks what looks like a credential (OpenAI/llmgate `sk-` keys, Anthropic
`sk-ant-` keys, Google `AIza` keys, `Bearer`/`Basic` tokens, `x-api-key:` and
`api-key=` style headers and query parameters) plus every value handed to
`register_secret` (provider keys, the master key), which need not match any
pattern. Application log lines are redacted whole, so neither a message, an
extra field nor an exception's text can carry a secret out; a request line is
built by the gateway, so only its strings from outside (model, request id,
prompt, error message) are redacted, which keeps it cheap.

`RequestLogger` is a UsageSink: `record(ctx)` only snapshots the call into a
small dict on the event loop; a background task renders, redacts and writes the
lines in batches from a worker thread, so the hot path never waits on stderr.
Application logs go through `configure_logging`: a QueueHandler formats JSON
in the caller and a QueueListener thread does the writing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import logging.handlers
import queue
import re
import sys
import threading
import time
from collections import deque
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import IO, Any

import orjson

from llmgate.types import RequestContext

MASK = "***"
MIN_SECRET_LENGTH = 4  # shorter values would mask ordinary words

# Credential shapes, matched on the lower-cased text (case-insensitive without `(?i)`, which
# would cost the regex engine its fast scan for the first character); the `secret` group is
# the part masked, so readable prefixes such as `sk-lg-` or `Bearer` stay.
_VALUE = r"[^\s\"'&,;}]+"
# The flag marks key shapes that must start a word ("task-..." holds no `sk-` key).
_PATTERNS: tuple[tuple[re.Pattern[str], bool], ...] = (
    # Header- or JSON-style `x-api-key: value`, `"api_key": "value"`, `Authorization: Basic value`.
    (
        re.compile(
            r"(?:x-api-key|x-goog-api-key|api-key|api_key|apikey|authorization|x-llmgate-key|access_token|"
            r"client_secret|password)[\"']?\s*[:=]\s*[\"']?(?:(?:bearer|basic)\s+)?(?P<secret>" + _VALUE + ")"
        ),
        False,
    ),
    # A bearer token anywhere.
    (re.compile(r"bearer\s+(?P<secret>[a-z0-9._~+/=\-]{8,})"), False),
    # OpenAI (sk-, sk-proj-), llmgate (sk-lg-) and Anthropic (sk-ant-) keys.
    (re.compile(r"sk-(?:ant-|lg-|proj-|svcacct-|admin-)?(?P<secret>[a-z0-9_\-]{8,})"), True),
    # Google API keys.
    (re.compile(r"aiza(?P<secret>[0-9a-z_\-]{20,})"), True),
    # Credentials in URL queries: ?key=..., &token=...
    (re.compile(r"[?&](?:key|token|access_token|auth|sig|signature|api-key|api_key)=(?P<secret>[^&\s#\"']+)"), False),
)


class SecretRegistry:
    """Exact values to mask wherever they appear (configured keys that match no pattern)."""

    def __init__(self) -> None:
        self._values: set[str] = set()
        self._pattern: re.Pattern[str] | None = None
        self._lock = threading.Lock()

    def add(self, value: str | None) -> None:
        if not value or len(value) < MIN_SECRET_LENGTH or value in self._values:
            return
        with self._lock:
            self._values.add(value)
            # Longest first, so a secret that contains another is masked whole.
            ordered = sorted(self._values, key=len, reverse=True)
            self._pattern = re.compile("|".join(re.escape(v) for v in ordered))

    def redact(self, text: str) -> str:
        pattern = self._pattern
        return pattern.sub(MASK, text) if pattern is not None else text


SECRETS = SecretRegistry()


def register_secret(value: str | None) -> None:
    """Mask `value` in every log line from now on (ignored when empty or shorter than 4 characters)."""
    SECRETS.add(value)


def register_settings_secrets(settings: Any) -> None:
    """Register the master key, every provider's api_key and every static key of a Settings."""
    register_secret(settings.gateway.master_key)
    for provider in settings.providers.values():
        register_secret(provider.api_key)
        for name, value in provider.headers.items():
            if name.lower() in ("authorization", "x-api-key", "api-key", "x-goog-api-key"):
                register_secret(value)
    for key in settings.keys:
        register_secret(key.key)


def redact(text: str) -> str:
    """`text` with registered secrets and credential-looking strings masked."""
    text = SECRETS.redact(text)
    if len(text) < 8:
        return text
    lowered = text.lower()
    if len(lowered) != len(text):  # a few non-ASCII letters change length when lowered
        return _mask_spans(text, _secret_spans(text.casefold(), text))
    return _mask_spans(text, _secret_spans(lowered, text))


def _secret_spans(lowered: str, original: str) -> list[tuple[int, int]]:
    spans: list[tuple[int, int]] = []
    for pattern, word_start in _PATTERNS:
        for match in pattern.finditer(lowered):
            start = match.start()
            if word_start and start and lowered[start - 1].isalnum():
                continue
            spans.append(match.span("secret"))
    if len(lowered) != len(original):  # offsets would not line up: mask conservatively
        return [(0, len(original))] if spans else []
    return spans


def _mask_spans(text: str, spans: list[tuple[int, int]]) -> str:
    if not spans:
        return text
    out: list[str] = []
    position = 0
    for start, end in sorted(spans):
        if end <= position:
            continue
        out.append(text[position : max(start, position)])
        out.append(MASK)
        position = end
    out.append(text[position:])
    return "".join(out)


def format_ts(wall: float) -> str:
    """Epoch seconds as ISO 8601 UTC with milliseconds: 2026-11-25T18:21:03.123Z."""
    return datetime.fromtimestamp(wall, tz=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def build_request_log_record(
    ctx: RequestContext, now: float | None = None, wall: float | None = None
) -> dict[str, Any]:
    """The fields of one request's log line, taken from a settled context (never the caller's secret).

    Runs on the hot path, so `ts` stays epoch seconds until `render_request_line` formats it.
    """
    end = time.perf_counter() if now is None else now
    key = ctx.key
    dep = ctx.deployment
    usage = ctx.usage
    error = ctx.error
    status = ctx.status
    return {
        "ts": time.time() if wall is None else wall,
        "level": "info" if status < 400 else "warning" if status < 500 else "error",
        "logger": "llmgate.request",
        "msg": "request",
        "request_id": ctx.request_id,
        "surface": ctx.surface,
        "key_id": key.id if key is not None else None,
        "team": key.team if key is not None else None,
        "model": ctx.model,
        "deployment": dep.label if dep is not None else None,
        "stream": ctx.stream,
        "status": status,
        "latency_ms": round((end - ctx.started) * 1000, 3),
        "upstream_ms": round(ctx.upstream_latency * 1000, 3) if ctx.upstream_latency else None,
        "ttft_ms": round((ctx.first_token_at - ctx.started) * 1000, 3) if ctx.first_token_at else None,
        "input_tokens": usage.input_tokens if usage is not None else 0,
        "cached_input_tokens": usage.cached_input_tokens if usage is not None else 0,
        "output_tokens": usage.output_tokens if usage is not None else 0,
        "reasoning_tokens": usage.reasoning_tokens if usage is not None else 0,
        "estimated": usage.estimated if usage is not None else False,
        "cost_usd": ctx.cost_nusd / 1e9,
        "attempts": ctx.attempts,
        "prompt": ctx.prompt_name,
        "error_code": (error.code or str(error.status)) if error is not None else None,
        "error_message": error.message if error is not None else None,
    }


# The request record's strings that come from outside (the caller or the provider); the
# rest are numbers or the gateway's own words, so only these pay for redaction.
_EXTERNAL_FIELDS = ("request_id", "model", "prompt", "error_message")


def render_request_line(record: dict[str, Any]) -> bytes:
    """A request record as one JSON line (no trailing newline), its outside strings redacted."""
    ts = record.get("ts")
    if isinstance(ts, float):
        record["ts"] = format_ts(ts)
    for field in _EXTERNAL_FIELDS:
        value = record.get(field)
        if value:
            record[field] = redact(str(value))
    return orjson.dumps(record, default=str)


def request_log_line(ctx: RequestContext) -> bytes:
    """The JSON log line (no trailing newline) for a settled call."""
    return render_request_line(build_request_log_record(ctx))


class RequestLogger:
    """Writes one JSON line per settled call, in batches, off the event loop."""

    def __init__(
        self, stream: IO[bytes] | None = None, flush_interval_s: float = 0.2, max_pending: int = 100_000
    ) -> None:
        self._stream = stream
        self.flush_interval_s = flush_interval_s
        self.max_pending = max_pending
        self._pending: deque[dict[str, Any]] = deque()
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.written_total = 0
        self.dropped_total = 0

    def record(self, ctx: RequestContext) -> None:
        """Snapshot the call for its log line; never blocks, never raises."""
        try:
            self._pending.append(build_request_log_record(ctx))
        except Exception:
            self.dropped_total += 1
            return
        if len(self._pending) > self.max_pending:
            self._pending.popleft()  # a log line is not worth unbounded memory; usage records are kept
            self.dropped_total += 1

    def start(self) -> None:
        if self._task is None:
            self._stop.clear()
            self._task = asyncio.create_task(self._run(), name="llmgate-request-log")

    async def aclose(self) -> None:
        """Write what is pending and stop."""
        self._stop.set()
        task, self._task = self._task, None
        if task is not None:
            await task
        await self.flush()

    async def flush(self) -> None:
        if not self._pending:
            return
        records = list(self._pending)
        self._pending.clear()
        await asyncio.to_thread(self.write_records, records)

    def write_records(self, records: Iterable[dict[str, Any]]) -> None:
        data = b"".join(render_request_line(record) + b"\n" for record in records)
        stream = self._stream if self._stream is not None else _stderr_bytes()
        try:
            stream.write(data)
            stream.flush()
        except (OSError, ValueError):
            return
        self.written_total += data.count(b"\n")

    async def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self.flush_interval_s)
            try:
                await self.flush()
            except Exception:
                logging.getLogger("llmgate.logs").exception("request log write failed")


def _stderr_bytes() -> IO[bytes]:
    return getattr(sys.stderr, "buffer", None) or _TextAsBytes(sys.stderr)


class _TextAsBytes:
    """A text stream (e.g. a captured stderr) that accepts bytes."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream

    def write(self, data: bytes) -> int:
        return self.stream.write(data.decode())

    def flush(self) -> None:
        self.stream.flush()


# Attributes every LogRecord has; anything else was passed as `extra=` and is logged as a field.
_RECORD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One redacted JSON object per log record: ts, level, logger, msg, extras, exception text."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": format_ts(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": redact(record.getMessage()),
        }
        for name, value in record.__dict__.items():
            if name not in _RECORD_ATTRS and not name.startswith("_"):
                out[name] = value
        if record.exc_info:
            out["exc"] = redact(self.formatException(record.exc_info))
        elif record.exc_text:
            out["exc"] = redact(record.exc_text)
        if record.stack_info:
            out["stack"] = redact(self.formatStack(record.stack_info))
        return redact(orjson.dumps(out, default=str).decode())


_installed: list[tuple[logging.Handler, logging.handlers.QueueListener, tuple[str, ...]]] = []


def configure_logging(
    level: str | int = "INFO", stream: IO[str] | None = None, loggers: tuple[str, ...] = ("llmgate", "providers")
) -> logging.handlers.QueueListener:
    """Send the given loggers' records as redacted JSON lines to `stream` (stderr by default).

    Formatting happens in the logging call (so the record is redacted before it
    is queued); a QueueListener thread writes. Calling it again replaces the
    previous set-up. Stop the returned listener at shutdown to flush it.
    """
    reset_logging()
    records: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    handler = logging.handlers.QueueHandler(records)
    handler.setFormatter(JsonFormatter())
    output = logging.StreamHandler(stream if stream is not None else sys.stderr)
    output.setFormatter(logging.Formatter("%(message)s"))
    listener = logging.handlers.QueueListener(records, output)
    listener.start()
    for name in loggers:
        logger = logging.getLogger(name)
        logger.addHandler(handler)
        logger.setLevel(level)
        logger.propagate = False
    _installed.append((handler, listener, loggers))
    return listener


def reset_logging() -> None:
    """Undo `configure_logging` (stops its listener, which flushes what is queued)."""
    while _installed:
        handler, listener, names = _installed.pop()
        listener.stop()
        for name in names:
            logger = logging.getLogger(name)
            logger.removeHandler(handler)
            logger.propagate = True
            logger.setLevel(logging.NOTSET)
