"""Shipped prompt files become endpoints of the running gateway (real app, real store)."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import openai

from tests.harness import GatewayServer, make_settings

MASTER = "sk-master-prompts-e2e"
PROMPTS = Path(__file__).resolve().parents[2] / "prompts"


def test_shipped_prompts_are_endpoints() -> None:
    doc = {
        "gateway": {"master_key": MASTER, "prompts_dir": str(PROMPTS)},
        "providers": {"mock": {"type": "mock"}},
        "models": [{"name": "mock-gpt", "provider": "mock", "price": {"input": 1, "output": 1}}],
    }
    with GatewayServer(make_settings(doc)) as server:
        auth = {"authorization": f"Bearer {MASTER}"}
        spec = httpx.get(server.url + "/openapi.json").json()
        assert {"/prompts/summarize", "/prompts/classify", "/prompts/translate"} <= set(spec["paths"])
        client = openai.OpenAI(base_url=server.url, api_key=MASTER, max_retries=0)
        reply = client.post("/prompts/summarize", cast_to=object, body={"text": "A long text about rain."})
        assert reply["prompt"]["name"] == "summarize" and reply["prompt"]["version"] >= 1
        assert reply["usage"]["prompt_tokens"] > 0 and "rain" in reply["output"]
        classified = httpx.post(
            server.url + "/prompts/classify",
            headers=auth,
            json={"text": "I love it", "labels": ["positive", "negative"]},
        ).json()
        assert isinstance(classified["output"], dict)
        missing = httpx.post(server.url + "/prompts/translate", headers=auth, json={"text": "hola"})
        assert missing.status_code == 422 and missing.json()["error"]["param"] == "target_language"
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            rows = server.gw.store.cost_report(["prompt"], None, None)
            if {r["prompt_name"] for r in rows} >= {"summarize", "classify"}:
                break
            time.sleep(0.1)
        by_prompt = {r["prompt_name"]: r for r in rows}
        assert by_prompt["summarize"]["requests"] == 1 and by_prompt["classify"]["requests"] == 1
