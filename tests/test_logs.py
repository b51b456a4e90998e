"""Structured logs: one JSON line per request, and no secret in any line or exception text."""

from __future__ import annotations

import io
import logging
from types import SimpleNamespace
from typing import Any

import orjson
import pytest

from llmgate.config import parse_settings
from llmgate.errors import AuthError, UpstreamError
from llmgate.logs import (
    JsonFormatter,
    RequestLogger,
    configure_logging,
    redact,
    register_secret,
    register_settings_secrets,
    request_log_line,
    reset_logging,
)
from llmgate.types import KeyInfo, RequestContext, Usage

OPENAI_KEY = "sk-proj-Zx81kLmN0pQrStUvWxYz1234567890ab"
LLMGATE_KEY = "sk-lg-4f9a1c2b3d4e5f60718293a4b5c6d7e8"
ANTHROPIC_KEY = "sk-ant-api03-AbCdEfGhIjKlMnOpQrStUvWxYz0123456789-abcdefAA"
GOOGLE_KEY = "AIzaSyD3xAmPlE_kEy-0123456789abcdefghi"


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        (f"Authorization: Bearer {LLMGATE_KEY}", LLMGATE_KEY),
        ("authorization: bearer eyJhbGciOiJIUzI1NiJ9.payload.sig", "eyJhbGciOiJIUzI1NiJ9.payload.sig"),
        ("Authorization: Basic dXNlcjpwYXNzd29yZA==", "dXNlcjpwYXNzd29yZA=="),
        (f"Incorrect API key provided: {OPENAI_KEY}.", OPENAI_KEY),
        (f"x-api-key: {ANTHROPIC_KEY}", ANTHROPIC_KEY),
        (f"the key {ANTHROPIC_KEY} is invalid", ANTHROPIC_KEY),
        (
            f"POST https://generativelanguage.googleapis.com/v1beta/models/m:generateContent?key={GOOGLE_KEY}",
            GOOGLE_KEY,
        ),
        (f"invalid key {GOOGLE_KEY}", GOOGLE_KEY),
        ('{"x-api-key": "plainvalue123", "model": "m"}', "plainvalue123"),
        ("https://example.openai.azure.com/openai/deployments/d?api-version=1&api-key=azurekey987", "azurekey987"),
        ("api_key=hunter2hunter2", "hunter2hunter2"),
        ("x-goog-api-key: somegooglevalue", "somegooglevalue"),
    ],
)
def test_credential_shapes_are_masked(text: str, secret: str) -> None:
    out = redact(text)
    assert secret not in out
    assert "***" in out


def test_ordinary_text_is_left_alone() -> None:
    text = "model gpt-4o-mini answered 200 in 12 ms; sk-learn is a library; Bearer of bad news"
    assert redact(text) == text


def test_the_key_prefix_stays_readable() -> None:
    assert redact(f"key {LLMGATE_KEY}") == "key sk-lg-***"
    assert redact(f"key {ANTHROPIC_KEY}") == "key sk-ant-***"


def test_registered_secrets_are_masked_even_without_a_known_shape() -> None:
    register_secret("correct-horse-battery-staple")
    register_secret("ab")  # too short to mask safely: ignored
    out = redact("master=correct-horse-battery-staple and ab stays")
    assert "correct-horse-battery-staple" not in out
    assert out.endswith("ab stays")


def test_settings_secrets_are_registered() -> None:
    settings = parse_settings(
        {
            "gateway": {"master_key": "master-of-the-gate-77"},
            "providers": {
                "oa": {"type": "openai", "api_key": "provider-key-no-pattern-1"},
                "custom": {"type": "openai", "headers": {"Authorization": "Token custom-header-token-2"}},
            },
            "keys": [{"key": "static-caller-key-3", "name": "static"}],
        },
        "test.toml",
    )
    register_settings_secrets(settings)
    text = "master-of-the-gate-77 provider-key-no-pattern-1 Token custom-header-token-2 static-caller-key-3 done"
    out = redact(text)
    for secret in (
        "master-of-the-gate-77",
        "provider-key-no-pattern-1",
        "custom-header-token-2",
        "static-caller-key-3",
    ):
        assert secret not in out
    assert out.endswith("done")


# --- the request line ------------------------------------------------------------------


def make_ctx(**overrides: Any) -> RequestContext:
    ctx = RequestContext(request_id="req-42", surface="chat", token=LLMGATE_KEY, body={}, model="gpt-4o-mini")
    ctx.key = KeyInfo(id="key-7", name="alice", team="research")
    ctx.deployment = SimpleNamespace(label="openai/gpt-4o-mini", provider=SimpleNamespace(name="openai"))
    ctx.usage = Usage(input_tokens=12, cached_input_tokens=2, output_tokens=5, reasoning_tokens=1)
    ctx.cost_nusd = 4_500
    ctx.attempts = 1
    ctx.upstream_latency = 0.05
    for name, value in overrides.items():
        setattr(ctx, name, value)
    return ctx


def test_a_request_line_carries_the_call_and_not_the_secret() -> None:
    ctx = make_ctx(stream=True)
    ctx.first_token_at = ctx.started + 0.02
    line = request_log_line(ctx)
    assert b"\n" not in line
    record = orjson.loads(line)
    assert record["request_id"] == "req-42" and record["key_id"] == "key-7"
    assert record["model"] == "gpt-4o-mini" and record["deployment"] == "openai/gpt-4o-mini"
    assert record["status"] == 200 and record["level"] == "info"
    assert (record["input_tokens"], record["output_tokens"]) == (12, 5)
    assert record["cost_usd"] == pytest.approx(0.0000045)
    assert record["attempts"] == 1
    assert record["ttft_ms"] == pytest.approx(20, abs=0.01)
    assert record["latency_ms"] >= 0 and record["ts"].endswith("Z")
    assert record["error_code"] is None
    assert LLMGATE_KEY.encode() not in line


def test_an_error_message_echoing_a_provider_key_is_redacted() -> None:
    error = UpstreamError(f"Incorrect API key provided: {OPENAI_KEY}. You can find your API key at ...")
    line = request_log_line(make_ctx(error=error, status=502))
    record = orjson.loads(line)
    assert record["error_code"] == "upstream_error" and record["level"] == "error"
    assert OPENAI_KEY not in record["error_message"]
    assert OPENAI_KEY.encode() not in line


def test_a_secret_sent_as_the_model_name_is_masked() -> None:
    line = request_log_line(make_ctx(model=ANTHROPIC_KEY, status=404, deployment=None))
    assert ANTHROPIC_KEY.encode() not in line
    assert orjson.loads(line)["level"] == "warning"


async def test_request_logger_writes_one_line_per_call_off_the_hot_path() -> None:
    stream = io.BytesIO()
    logger = RequestLogger(stream, flush_interval_s=0.01)
    logger.start()
    for i in range(25):
        logger.record(
            make_ctx(request_id=f"req-{i}", error=AuthError(f"bad key {LLMGATE_KEY}") if i % 5 == 0 else None)
        )
    assert stream.getvalue() == b""  # nothing written synchronously by record()
    await logger.aclose()
    lines = stream.getvalue().splitlines()
    assert [orjson.loads(line)["request_id"] for line in lines] == [f"req-{i}" for i in range(25)]
    assert LLMGATE_KEY.encode() not in stream.getvalue()
    assert logger.written_total == 25 and logger.dropped_total == 0


def test_request_logger_bounds_its_backlog() -> None:
    logger = RequestLogger(io.BytesIO(), max_pending=3)
    for i in range(5):
        logger.record(make_ctx(request_id=f"req-{i}"))
    assert logger.dropped_total == 2


# --- application logs ------------------------------------------------------------------


def format_record(logger_name: str, emit: Any) -> dict[str, Any]:
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    logger = logging.getLogger(logger_name)
    handler = Keep()
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        emit(logger)
    finally:
        logger.removeHandler(handler)
    return orjson.loads(JsonFormatter().format(records[0]))


def test_the_formatter_redacts_the_message_its_arguments_and_extras() -> None:
    out = format_record(
        "llmgate.test.fmt",
        lambda log: log.warning("calling with %s", f"Bearer {LLMGATE_KEY}", extra={"upstream_key": GOOGLE_KEY}),
    )
    assert out["level"] == "warning" and out["logger"] == "llmgate.test.fmt"
    assert out["msg"] == "calling with Bearer ***"
    assert out["upstream_key"] == "AIza***"


def test_the_formatter_redacts_exception_text() -> None:
    def emit(log: logging.Logger) -> None:
        try:
            raise RuntimeError(f"upstream said: invalid x-api-key: {ANTHROPIC_KEY}")
        except RuntimeError:
            log.exception("call failed")

    out = format_record("llmgate.test.exc", emit)
    assert "RuntimeError" in out["exc"] and "Traceback" in out["exc"]
    assert ANTHROPIC_KEY not in orjson.dumps(out).decode()


def test_configure_logging_writes_redacted_json_lines() -> None:
    stream = io.StringIO()
    register_secret("configured-provider-key-xyz")
    configure_logging("INFO", stream=stream)
    try:
        log = logging.getLogger("llmgate.test.configured")
        log.info("provider key is configured-provider-key-xyz")
        log.debug("not shown at INFO")
        try:
            raise ValueError(f"auth failed for {OPENAI_KEY}")
        except ValueError:
            log.exception("boom %s", GOOGLE_KEY)
        logging.getLogger("providers.openai").error("from a provider module: %s", OPENAI_KEY)
    finally:
        reset_logging()  # stops the listener, flushing the queue
    text = stream.getvalue()
    lines = [orjson.loads(line) for line in text.splitlines()]
    assert [line["logger"] for line in lines] == [
        "llmgate.test.configured",
        "llmgate.test.configured",
        "providers.openai",
    ]
    assert lines[0]["msg"] == "provider key is ***"
    assert "ValueError" in lines[1]["exc"]
    for secret in ("configured-provider-key-xyz", OPENAI_KEY, GOOGLE_KEY):
        assert secret not in text
    assert logging.getLogger("llmgate").handlers == []
