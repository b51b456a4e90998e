"""The fault matrix: every upstream fault, through the real `openai` and `anthropic` SDKs.

One gateway sits in front of one FaultUpstream that serves a case per
(fault, surface, stream). For each case the test checks what the caller sees
(status and error shape of its own wire format, or an error event inside a
stream that had started), how many attempts were made (at the upstream and in
`x-llmgate-attempts`), and that exactly one usage record exists for the call
(each case calls with a key of its own).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import anthropic
import httpx
import openai
import pytest
from sqlalchemy import text

from tests.harness import GatewayServer, make_settings
from tests.reliability.conftest import FULL, free_port, wait_for
from tests.reliability.wire import TEXT, FaultUpstream

MASTER = "sk-master-fault-matrix"
NUM_RETRIES = 2
HI = [{"role": "user", "content": "hi"}]


@dataclass(frozen=True)
class Expect:
    """What the caller sees: HTTP status, attempts, requests reaching the fault upstream,
    whether a started stream ends with an error event, and the status recorded."""

    status: int
    attempts: int
    upstream_calls: int
    stream_error: bool = False
    recorded: int | None = None

    @property
    def recorded_status(self) -> int:
        return self.recorded if self.recorded is not None else self.status


ALL = 1 + NUM_RETRIES
# fault -> (non-streaming call, streaming call)
MATRIX: dict[str, tuple[Expect, Expect]] = {
    # the first deployment's port is closed; the second deployment answers
    "refused": (Expect(200, 2, 1), Expect(200, 2, 1)),
    # the only deployment's port is closed
    "refused_all": (Expect(502, ALL, 0), Expect(502, ALL, 0)),
    "reset_before_headers": (Expect(502, ALL, ALL), Expect(502, ALL, ALL)),
    "reset_mid_stream": (Expect(502, ALL, ALL), Expect(200, 1, 1, stream_error=True, recorded=502)),
    "hang": (Expect(504, ALL, ALL), Expect(504, ALL, ALL)),
    "slow_drip": (Expect(200, 1, 1), Expect(200, 1, 1)),
    "malformed_json": (Expect(502, ALL, ALL), Expect(200, 1, 1, stream_error=True, recorded=502)),
    "truncated": (Expect(502, ALL, ALL), Expect(200, 1, 1, stream_error=True, recorded=502)),
    # both deployments of the group answer 429 with Retry-After: 30 (past the deadline)
    "429_storm": (Expect(429, 2, 2), Expect(429, 2, 2)),
    # the first two calls answer 500, then the upstream recovers
    "5xx_burst": (Expect(200, 3, 3), Expect(200, 3, 3)),
}
# caller surface -> upstream wire format: the native pairs always; the translated pairs for the
# stream faults (their parsers differ from the pass-through relays), or for everything in full mode.
ROUTES = {"openai": "openai", "anthropic": "anthropic", "openai2anthropic": "anthropic", "anthropic2openai": "openai"}
TRANSLATED_FAULTS = ("reset_mid_stream", "malformed_json", "truncated")
CASES = [
    (fault, surface, stream)
    for fault in MATRIX
    for surface in ROUTES
    for stream in (False, True)
    if surface in ("openai", "anthropic") or FULL or fault in TRANSLATED_FAULTS
]


def caller(surface: str) -> str:
    return surface.split("2")[0]


def params() -> list[Any]:
    out = []
    for case in CASES:
        out.append(pytest.param(*case, id=model_name(*case)))
    return out


def model_name(fault: str, surface: str, stream: bool) -> str:
    return f"{fault}-{surface}-{'stream' if stream else 'plain'}"


@dataclass
class Matrix:
    server: GatewayServer
    upstream: FaultUpstream
    fault_urls: dict[str, str]  # model -> base URL of the faulty deployment


def provider(wire: str, base_url: str, **extra: Any) -> dict[str, Any]:
    return {"type": wire, "base_url": base_url, "api_key": "sk-upstream-fault", **extra}


def build_config(upstream: FaultUpstream, state: str) -> tuple[dict[str, Any], dict[str, str]]:
    providers: dict[str, Any] = {}
    models: list[dict[str, Any]] = []
    fault_urls: dict[str, str] = {}
    closed = f"http://127.0.0.1:{free_port()}"
    for fault, surface, stream in CASES:
        name = model_name(fault, surface, stream)
        wire = ROUTES[surface]
        closed_url = closed + ("/v1" if wire == "openai" else "")
        if fault in ("refused", "refused_all"):
            entries = [("down", provider(wire, closed_url), None)]
            if fault == "refused":
                url = upstream.add("ok", wire)
                entries.append(("ok", provider(wire, url), url))
        elif fault == "hang":
            url = upstream.add(fault, wire)
            entries = [("f", provider(wire, url, timeouts={"connect": 1, "first_byte": 0.2, "total": 0.3}), url)]
        elif fault == "429_storm":
            a, b = upstream.add(fault, wire), upstream.add(fault, wire)
            entries = [("a", provider(wire, a), a), ("b", provider(wire, b), b)]
        else:
            url = upstream.add(fault, wire)
            entries = [("f", provider(wire, url), url)]
        for order, (suffix, settings, url) in enumerate(entries):
            pname = f"{name}-{suffix}"
            providers[pname] = settings
            entry: dict[str, Any] = {"name": name, "provider": pname, "upstream": "up-model", "order": order}
            if order == 0:
                entry["strategy"] = "priority"
            models.append(entry)
            if url is not None:
                fault_urls[name] = fault_urls.get(name, "") + ("," if name in fault_urls else "") + url
    doc = {
        "gateway": {
            "master_key": MASTER,
            "database_url": f"sqlite:///{state}/gateway.db",
            "usage_spill_path": f"{state}/spill.jsonl",
            "usage_flush_interval_s": 0.05,
        },
        "providers": providers,
        "models": models,
        "routing": {
            "num_retries": NUM_RETRIES,
            "backoff_base_s": 0.01,
            "backoff_max_s": 0.05,
            "deadline_s": 10,
            "cooldown_failures": 1000,
        },
    }
    return doc, fault_urls


@pytest.fixture(scope="module")
def matrix(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Matrix]:
    state = tmp_path_factory.mktemp("fault-matrix")
    with FaultUpstream() as upstream:
        doc, fault_urls = build_config(upstream, str(state))
        with GatewayServer(make_settings(doc)) as server:
            yield Matrix(server, upstream, fault_urls)


@dataclass
class Seen:
    status: int
    headers: httpx.Headers
    text: str = ""
    error_body: Any = None
    stream_error: Any = None


def call_openai(client: openai.OpenAI, model: str, stream: bool) -> Seen:
    try:
        raw = client.chat.completions.with_raw_response.create(model=model, messages=HI, stream=stream)
    except openai.APIStatusError as exc:
        return Seen(exc.status_code, exc.response.headers, error_body=exc.response.json())
    seen = Seen(raw.status_code, raw.headers)
    if not stream:
        seen.text = raw.parse().choices[0].message.content or ""
        return seen
    try:
        for chunk in raw.parse():
            seen.text += "".join(c.delta.content or "" for c in chunk.choices)
    except openai.APIError as exc:
        seen.stream_error = {"error": exc.body}  # the SDK hands over the event's `error` object
    return seen


def call_anthropic(client: anthropic.Anthropic, model: str, stream: bool) -> Seen:
    try:
        raw = client.messages.with_raw_response.create(model=model, max_tokens=50, messages=HI, stream=stream)
    except anthropic.APIStatusError as exc:
        return Seen(exc.status_code, exc.response.headers, error_body=exc.response.json())
    seen = Seen(raw.status_code, raw.headers)
    if not stream:
        seen.text = "".join(b.text for b in raw.parse().content if b.type == "text")
        return seen
    try:
        for event in raw.parse():
            if event.type == "content_block_delta" and event.delta.type == "text_delta":
                seen.text += event.delta.text
    except anthropic.APIError as exc:
        seen.stream_error = exc.body
    return seen


def new_key(server: GatewayServer, name: str) -> dict[str, Any]:
    resp = httpx.post(server.url + "/admin/keys", json={"name": name}, headers={"authorization": f"Bearer {MASTER}"})
    resp.raise_for_status()
    return resp.json()


def usage_rows(server: GatewayServer, key_id: str) -> list[Any]:
    with server.gw.store.engine.connect() as conn:
        query = text("select status, model, estimated, output_tokens from usage where key_id = :k")
        return list(conn.execute(query, {"k": key_id}))


def settled_rows(server: GatewayServer, key_id: str) -> list[Any]:
    """The key's usage rows once the writer has flushed (and a little longer, to catch a second row)."""
    writer = server.gw.extras["usage_writer"]
    wait_for(lambda: len(usage_rows(server, key_id)) >= 1, 10)
    wait_for(lambda: writer.queue_depth == 0, 5)
    time.sleep(0.05)
    return usage_rows(server, key_id)


def assert_error_shape(surface: str, body: Any, status: int) -> None:
    if surface == "openai":
        assert set(body) == {"error"}, body
        assert isinstance(body["error"]["message"], str) and body["error"]["message"]
        assert "type" in body["error"] and "code" in body["error"]
    else:
        assert body["type"] == "error", body
        assert isinstance(body["error"]["type"], str) and body["error"]["message"]
    assert "sk-upstream-fault" not in str(body) and MASTER not in str(body)


@pytest.mark.parametrize(("fault", "surface", "stream"), params())
def test_fault(matrix: Matrix, fault: str, surface: str, stream: bool) -> None:
    expect = MATRIX[fault][1 if stream else 0]
    server = matrix.server
    model = model_name(fault, surface, stream)
    key = new_key(server, model)
    if caller(surface) == "openai":
        seen = call_openai(
            openai.OpenAI(base_url=server.url + "/v1", api_key=key["key"], max_retries=0, timeout=20), model, stream
        )
    else:
        seen = call_anthropic(
            anthropic.Anthropic(base_url=server.url, api_key=key["key"], max_retries=0, timeout=20), model, stream
        )

    assert seen.status == expect.status, (seen.status, seen.error_body)
    assert seen.headers["x-llmgate-attempts"] == str(expect.attempts)
    urls = matrix.fault_urls.get(model, "")
    reached = sum(matrix.upstream.calls_of(u) for u in urls.split(",") if u)
    assert reached == expect.upstream_calls
    if expect.status >= 400:
        assert_error_shape(caller(surface), seen.error_body, expect.status)
        if expect.status == 429:
            assert seen.headers["retry-after"] == "30"
    elif expect.stream_error:
        assert seen.stream_error is not None, "a started stream must end with an error event"
        assert_error_shape(caller(surface), seen.stream_error, 502)
        assert seen.text and "".join(TEXT).startswith(seen.text)
    else:
        assert seen.text == "".join(TEXT) and seen.stream_error is None

    rows = settled_rows(server, key["id"])
    assert len(rows) == 1, rows
    assert rows[0].status == expect.recorded_status and rows[0].model == model
    if expect.stream_error:
        assert rows[0].estimated and rows[0].output_tokens > 0
