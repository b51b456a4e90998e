"""Calls through the real openai SDK leave exact usage records, and reports add them up."""

from __future__ import annotations

import time
from decimal import Decimal

import httpx
import openai
import pytest

from tests.harness import FakeUpstream, GatewayServer, Received, body, head, make_settings, reset

MASTER = "sk-master-usage-e2e"


def _cut_stream(req: Received):
    """One content chunk, then the connection is reset: a stream cut short upstream."""
    first = (
        b'data: {"id":"c1","object":"chat.completion.chunk","created":1,"model":"m",'
        b'"choices":[{"index":0,"delta":{"role":"assistant","content":"partial answer"},"finish_reason":null}]}\n\n'
    )
    return [head(200, {"content-type": "text/event-stream"}, chunked=True), body(first), reset()]


@pytest.fixture(scope="module")
def server():
    with FakeUpstream(_cut_stream) as upstream:
        doc = {
            "gateway": {"master_key": MASTER},
            "providers": {"mock": {"type": "mock"}, "cut": {"type": "openai", "base_url": upstream.url + "/v1",
                                                             "api_key": "sk-cut-upstream"}},
            "models": [
                {"name": "priced", "provider": "mock", "price": {"input": 1.25, "output": 10}},
                {"name": "cut", "provider": "cut", "price": {"input": 1, "output": 2}},
            ],
            "routing": {"num_retries": 0},
        }
        with GatewayServer(make_settings(doc)) as gw:
            yield gw


def _admin(server: GatewayServer) -> httpx.Client:
    return httpx.Client(base_url=server.url, headers={"authorization": f"Bearer {MASTER}"})


def _wait_for_rows(server: GatewayServer, key_id: str, count: int) -> list[dict]:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        rows = server.gw.store.cost_report(["key"], None, None, key_id=key_id)
        if rows and rows[0]["requests"] >= count:
            return rows
        time.sleep(0.1)
    raise AssertionError(f"usage rows for {key_id} did not reach {count}")


def test_calls_are_recorded_exactly(server: GatewayServer) -> None:
    admin = _admin(server)
    created = admin.post("/admin/keys", json={"name": "reporter", "team": "blue"}).json()
    client = openai.OpenAI(base_url=server.url + "/v1", api_key=created["key"], max_retries=0)
    costs = []
    for text in ("one", "two two", "three three three"):
        raw = client.chat.completions.with_raw_response.create(
            model="priced", messages=[{"role": "user", "content": text}]
        )
        costs.append(Decimal(raw.headers["x-llmgate-cost-usd"]))
        resp = raw.parse()
        expected = (Decimal(resp.usage.prompt_tokens) * Decimal("1.25") + resp.usage.completion_tokens * 10) / 10**6
        assert costs[-1] == expected
    chunks = list(client.chat.completions.create(model="priced", messages=[{"role": "user", "content": "s"}],
                                                 stream=True, stream_options={"include_usage": True}))
    usage = chunks[-1].usage
    costs.append((Decimal(usage.prompt_tokens) * Decimal("1.25") + usage.completion_tokens * 10) / 10**6)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    rows = _wait_for_rows(server, created["id"], 5)
    assert rows[0]["requests"] == 5 and rows[0]["errors"] == 1
    assert Decimal(rows[0]["cost_usd"]) == sum(costs)
    report = admin.get("/admin/reports/cost", params={"group_by": "key,model"}).json()
    mine = [r for r in report["data"] if r["key_id"] == created["id"]]
    assert {r["model"] for r in mine} == {"priced", "nope"}
    own = httpx.get(server.url + "/v1/usage", headers={"authorization": f"Bearer {created['key']}"}).json()
    assert Decimal(own["total"]["cost_usd"]) == sum(costs)


def test_cut_short_stream_is_recorded_as_estimated(server: GatewayServer) -> None:
    admin = _admin(server)
    created = admin.post("/admin/keys", json={"name": "cutter"}).json()
    client = openai.OpenAI(base_url=server.url + "/v1", api_key=created["key"], max_retries=0)
    with pytest.raises(openai.APIError):
        for _ in client.chat.completions.create(model="cut", messages=[{"role": "user", "content": "x"}],
                                                stream=True):
            pass
    _wait_for_rows(server, created["id"], 1)
    with server.gw.store.engine.connect() as conn:
        from sqlalchemy import text

        row = conn.execute(text("select status, estimated, output_tokens, input_tokens from usage "
                                "where key_id = :k"), {"k": created["id"]}).one()
    assert row.status == 502 and row.estimated and row.output_tokens == 2 and row.input_tokens > 0
