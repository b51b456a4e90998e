"""Prompt endpoints over HTTP: calls through the real pipeline and mock provider, admin, catalog, OpenAPI."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import httpx
import openai
import orjson
import pytest
from fastapi import FastAPI

from llmgate.config import parse_settings
from llmgate.errors import AuthError
from llmgate.gateway import Gateway
from llmgate.prompting import start_prompt_service
from llmgate.routing import Router, build_providers
from llmgate.storage import create_store
from llmgate.surfaces.admin import install_error_handlers
from llmgate.surfaces.prompts import install_prompt_surface
from llmgate.types import KeyInfo, RequestContext
from llmgate.usage import UsageWriter
from providers.base import WireRequest, WireResponse
from providers.mock import MockProvider

ROOT = Path(__file__).resolve().parents[2]
MASTER = {"Authorization": "Bearer sk-master"}
TEAM_A = {"Authorization": "Bearer sk-a"}
TEAM_B = {"x-api-key": "sk-b"}
ONLY_SUMMARIZE = {"Authorization": "Bearer sk-only-summarize"}
NO_MOCK_MODEL = {"Authorization": "Bearer sk-other-models"}


class StaticKeys:
    """Caller keys for the tests (the master key, two teams, restricted keys)."""

    def __init__(self) -> None:
        self.keys = {
            "sk-master": KeyInfo(id="master", name="master", is_master=True),
            "sk-a": KeyInfo(id="a", name="a", team="a"),
            "sk-b": KeyInfo(id="b", name="b", team="b"),
            "sk-only-summarize": KeyInfo(id="s", name="s", team="a", prompts=("summarize",)),
            "sk-other-models": KeyInfo(id="o", name="o", team="a", models=("something-else",)),
        }

    async def authenticate(self, token: str | None) -> KeyInfo:
        if token not in self.keys:
            raise AuthError("Invalid API key.")
        return self.keys[token]


class RecordingSink:
    def __init__(self) -> None:
        self.records: list[RequestContext] = []

    def record(self, ctx: RequestContext) -> None:
        self.records.append(ctx)


class BadJsonMock(MockProvider):
    """Answers JSON that ignores the requested schema."""

    async def send(self, client: Any, request: WireRequest, timeouts: Any) -> WireResponse:
        response = await super().send(client, request, timeouts)
        body = orjson.loads(response.body)
        body["choices"][0]["message"]["content"] = '{"label": 42}'
        return WireResponse(200, orjson.dumps(body), response.headers)


def build_gateway(prompts_dir: Path) -> Gateway:
    settings = parse_settings(
        {
            "gateway": {"master_key": "sk-master", "prompts_dir": str(prompts_dir), "key_cache_ttl_s": 60},
            "providers": {"mock": {"type": "mock"}, "badjson": {"type": "mock"}},
            "models": [
                {"name": "mock-gpt", "provider": "mock", "price": {"input": 1, "output": 2}},
                {"name": "bad-json", "provider": "badjson"},
            ],
        },
        "test",
    )
    providers = build_providers(settings)
    providers["badjson"] = BadJsonMock("badjson", settings.providers["badjson"])
    return Gateway(settings=settings, client=None, router=Router(settings, providers), auth=StaticKeys())


def build_app(gw: Gateway) -> FastAPI:
    app = FastAPI(title="test", version="0")
    app.state.gateway = gw
    install_prompt_surface(app)
    install_error_handlers(app)
    return app


@pytest.fixture
async def gw() -> Gateway:
    gateway = build_gateway(ROOT / "prompts")
    gateway.usage = RecordingSink()
    await start_prompt_service(gateway)
    return gateway


@pytest.fixture
async def client(gw: Gateway) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=build_app(gw))
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as c:
        yield c


def error_of(response: httpx.Response) -> dict[str, Any]:
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]


def sse_events(text: str) -> list[Any]:
    out: list[Any] = []
    for block in text.split("\n\n"):
        if block.startswith("data: "):
            data = block[len("data: ") :]
            out.append(data if data == "[DONE]" else orjson.loads(data))
    return out


GREET = {
    "description": "Greets someone",
    "model": "mock-gpt",
    "inputs": {"who": {"type": "string", "description": "Whom to greet"}},
    "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hello to {{ who }}"}],
}


# -- calling -------------------------------------------------------------------------


async def test_call_renders_calls_the_model_and_reports_usage_and_cost(client: httpx.AsyncClient, gw: Gateway) -> None:
    r = await client.post("/prompts/translate", json={"text": "Bonjour", "target_language": "English"}, headers=TEAM_A)
    assert r.status_code == 200, r.text
    reply = r.json()
    assert reply["output"] == "Mock answer from mock-gpt. You said: Bonjour"
    assert reply["model"] == "mock-gpt"
    assert reply["prompt"]["name"] == "translate" and reply["prompt"]["version"] == 1
    usage = reply["usage"]
    assert usage["prompt_tokens"] > 0 and usage["completion_tokens"] > 0
    expected_nusd = (usage["prompt_tokens"] * 1 + usage["completion_tokens"] * 2) * 1000
    assert reply["cost_usd"] == f"{expected_nusd / 1e9:.9f}"
    assert r.headers["x-llmgate-cost-usd"] == reply["cost_usd"]
    assert r.headers["x-llmgate-deployment"] == "mock/mock-gpt"
    record = gw.usage.records[-1]  # type: ignore[attr-defined]
    assert (record.surface, record.prompt_name, record.prompt_version, record.key.id) == ("prompt", "translate", 1, "a")
    assert record.body["temperature"] == 0.1
    assert record.body["messages"][-1] == {"role": "user", "content": "Bonjour"}


async def test_input_that_looks_like_template_code_reaches_the_model_literally(client: httpx.AsyncClient) -> None:
    sneaky = "{{ ''.__class__.__mro__ }} {{ cycler.__init__.__globals__ }} {% print 1 %}"
    r = await client.post("/prompts/translate", json={"text": sneaky, "target_language": "German"}, headers=TEAM_A)
    assert r.status_code == 200
    assert r.json()["output"].endswith(f"You said: {sneaky}")


async def test_callers_messages_continue_the_conversation(client: httpx.AsyncClient, gw: Gateway) -> None:
    extra = [{"role": "assistant", "content": "Hello."}, {"role": "user", "content": "And in French?"}]
    body = {"text": "Hi", "target_language": "English", "messages": extra}
    r = await client.post("/prompts/translate", json=body, headers=TEAM_A)
    assert r.json()["output"].endswith("You said: And in French?")
    assert gw.usage.records[-1].body["messages"][-2:] == extra  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"target_language": "English"}, "text"),
        ({"text": 5, "target_language": "English"}, "text"),
        ({"text": "x", "target_language": "English", "formality": "rude"}, "formality"),
        ({"text": "x", "target_language": "English", "extra": 1}, "extra"),
    ],
)
async def test_bad_input_is_422_naming_the_field(
    client: httpx.AsyncClient, gw: Gateway, body: dict[str, Any], param: str
) -> None:
    r = await client.post("/prompts/translate", json=body, headers={**TEAM_A, "x-request-id": "req-422"})
    assert r.status_code == 422
    error = error_of(r)
    assert error["param"] == param
    assert f"`{param}`" in error["message"]
    assert r.headers["x-request-id"] == "req-422"
    record = gw.usage.records[-1]  # type: ignore[attr-defined]
    assert (record.request_id, record.status, record.prompt_name, record.deployment) == (
        "req-422",
        422,
        "translate",
        None,
    )


async def test_body_must_be_a_json_object(client: httpx.AsyncClient) -> None:
    r = await client.post("/prompts/translate", content=b"[1]", headers={**TEAM_A, "content-type": "application/json"})
    assert r.status_code == 400
    assert "JSON object" in error_of(r)["message"]


async def test_unknown_prompt_version_and_bad_key(client: httpx.AsyncClient) -> None:
    assert (await client.post("/prompts/nope", json={}, headers=TEAM_A)).status_code == 404
    r = await client.post("/prompts/summarize/versions/9", json={"text": "x"}, headers=TEAM_A)
    assert r.status_code == 404 and error_of(r)["code"] == "prompt_not_found"
    assert (await client.post("/prompts/summarize/versions/abc", json={}, headers=TEAM_A)).status_code == 404
    assert (await client.post("/prompts/summarize?label=nope", json={"text": "x"}, headers=TEAM_A)).status_code == 404
    r = await client.post("/prompts/summarize", json={"text": "x"}, headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 401
    assert (await client.post("/prompts/summarize", json={"text": "x"})).status_code == 401


async def test_key_limited_to_prompts_and_models(client: httpx.AsyncClient) -> None:
    ok = await client.post("/prompts/summarize", json={"text": "x"}, headers=ONLY_SUMMARIZE)
    assert ok.status_code == 200
    r = await client.post("/prompts/translate", json={"text": "x", "target_language": "de"}, headers=ONLY_SUMMARIZE)
    assert r.status_code == 403 and error_of(r)["code"] == "prompt_not_allowed"
    r = await client.post("/prompts/summarize", json={"text": "x"}, headers=NO_MOCK_MODEL)
    assert r.status_code == 403 and error_of(r)["param"] == "model"


async def test_output_schema_gives_parsed_json(client: httpx.AsyncClient, gw: Gateway) -> None:
    body = {"text": "My invoice is wrong", "labels": ["billing", "bug"]}
    r = await client.post("/prompts/classify", json=body, headers=TEAM_A)
    assert r.status_code == 200, r.text
    output = r.json()["output"]
    assert set(output) == {"label", "confidence", "reason"}
    assert 0 <= output["confidence"] <= 1
    sent = gw.usage.records[-1].body  # type: ignore[attr-defined]
    assert sent["response_format"]["type"] == "json_schema"
    assert sent["response_format"]["json_schema"]["schema"]["required"] == ["label", "confidence", "reason"]


async def test_output_that_breaks_the_schema_is_502_naming_the_mismatch(client: httpx.AsyncClient, gw: Gateway) -> None:
    document = {
        "model": "bad-json",
        "inputs": {"text": {"type": "string"}},
        "messages": [{"role": "user", "content": "{{ text }}"}],
        "output_schema": {"type": "object", "properties": {"label": {"type": "string"}}, "required": ["label"]},
    }
    assert (await client.put("/admin/prompts/labeler", json=document, headers=MASTER)).status_code == 200
    r = await client.post("/prompts/labeler", json={"text": "x"}, headers=TEAM_A)
    assert r.status_code == 502
    error = error_of(r)
    assert error["code"] == "output_schema_mismatch"
    assert "$.label" in error["message"] and "42" in error["message"]
    record = gw.usage.records[-1]  # type: ignore[attr-defined]
    assert record.status == 502 and record.prompt_name == "labeler"


async def test_stream_sends_chunks_then_done_and_records_usage(client: httpx.AsyncClient, gw: Gateway) -> None:
    r = await client.post(
        "/prompts/translate?stream=true", json={"text": "eins zwei drei", "target_language": "en"}, headers=TEAM_A
    )
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    events = sse_events(r.text)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    text = "".join((c["choices"][0]["delta"].get("content") or "") for c in chunks if c["choices"])
    assert text == "Mock answer from mock-gpt. You said: eins zwei drei"
    assert chunks[-1]["usage"]["completion_tokens"] > 0
    record = gw.usage.records[-1]  # type: ignore[attr-defined]
    assert record.prompt_name == "translate" and record.stream and record.cost_nusd > 0


async def test_stream_flag_must_be_boolean(client: httpx.AsyncClient) -> None:
    r = await client.post("/prompts/summarize?stream=maybe", json={"text": "x"}, headers=TEAM_A)
    assert r.status_code == 400 and error_of(r)["param"] == "stream"


async def test_render_is_a_dry_run(client: httpx.AsyncClient, gw: Gateway) -> None:
    before = len(gw.usage.records)  # type: ignore[attr-defined]
    body = {"text": "A long story", "style": "bullets", "max_words": 20}
    r = await client.post("/prompts/summarize/render", json=body, headers=TEAM_A)
    assert r.status_code == 200
    payload = r.json()
    assert payload["prompt"] == {"name": "summarize", "version": 1}
    user = payload["messages"][-1]
    assert user["role"] == "user"
    assert "at most 20 words, as 3 to 7 short bullet points" in user["content"]
    assert "<text>\nA long story\n</text>" in user["content"]
    assert payload["request"]["max_tokens"] == 400
    assert len(gw.usage.records) == before  # type: ignore[attr-defined]
    bad = await client.post("/prompts/summarize/render", json={"max_words": 5}, headers=TEAM_A)
    assert bad.status_code == 422


# -- admin, versions, labels, lifecycle ------------------------------------------------------


async def test_admin_needs_the_master_key(client: httpx.AsyncClient) -> None:
    r = await client.put("/admin/prompts/greet", json=GREET, headers=TEAM_A)
    assert r.status_code == 403 and error_of(r)["code"] == "admin_only"
    assert (await client.get("/admin/prompts", headers=TEAM_A)).status_code == 403
    assert (await client.get("/admin/prompts")).status_code == 401


async def test_admin_versions_labels_and_calls(client: httpx.AsyncClient) -> None:
    r = await client.put("/admin/prompts/greet", json=GREET, headers=MASTER)
    assert r.json() == {"name": "greet", "version": 1, "state": "published", "source": "api"}
    second = {**GREET, "messages": [{"role": "user", "content": "Wave at {{ who }}"}]}
    assert (await client.put("/admin/prompts/greet", json=second, headers=MASTER)).json()["version"] == 2
    assert (await client.put("/admin/prompts/greet", json=second, headers=MASTER)).json()["version"] == 2

    async def said(path: str) -> str:
        r = await client.post(path, json={"who": "Ada"}, headers=TEAM_A)
        assert r.status_code == 200, r.text
        return r.json()["output"].split("You said: ")[1]

    assert await said("/prompts/greet") == "Wave at Ada"
    assert await said("/prompts/greet/versions/1") == "Say hello to Ada"
    r = await client.put("/admin/prompts/greet/labels/prod", json={"version": 1}, headers=MASTER)
    assert r.json() == {"name": "greet", "label": "prod", "version": 1}
    await client.put("/admin/prompts/greet/labels/staging", json={"version": 2}, headers=MASTER)
    assert await said("/prompts/greet") == "Say hello to Ada"
    assert await said("/prompts/greet?label=staging") == "Wave at Ada"

    versions = (await client.get("/admin/prompts/greet/versions", headers=MASTER)).json()
    assert versions["labels"] == {"prod": 1, "staging": 2}
    assert [(v["version"], v["labels"]) for v in versions["versions"]] == [(1, ["prod"]), (2, ["staging"])]
    record = (await client.get("/admin/prompts/greet", headers=MASTER)).json()
    assert record["version"] == 2 and record["default_version"] == 1
    assert record["document"]["messages"][0]["content"] == "Wave at {{ who }}"
    old = (await client.get("/admin/prompts/greet?version=1", headers=MASTER)).json()
    assert old["document"]["messages"][1]["content"] == "Say hello to {{ who }}"
    bad_label = await client.put("/admin/prompts/greet/labels/prod", json={"version": 7}, headers=MASTER)
    assert bad_label.status_code == 404
    bad_body = await client.put("/admin/prompts/greet/labels/prod", json={"version": "1"}, headers=MASTER)
    assert bad_body.status_code == 400

    listing = (await client.get("/admin/prompts", headers=MASTER)).json()["data"]
    assert {row["name"] for row in listing} >= {"greet", "summarize", "classify", "translate"}

    assert (await client.delete("/admin/prompts/greet", headers=MASTER)).json() == {"name": "greet", "deleted": True}
    assert (await client.post("/prompts/greet", json={"who": "x"}, headers=TEAM_A)).status_code == 404
    assert (await client.delete("/admin/prompts/greet", headers=MASTER)).status_code == 404


@pytest.mark.parametrize(
    ("content", "where"),
    [
        ("Hi {{ who }}\n{{ ''.__class__.__mro__[1].__subclasses__() }}", "line 2"),
        ("{{ cycler.__init__.__globals__.os }}", "line 1"),
        ("ok\n\n{{ whom }}", "line 3"),
        ("{% for %}", "line 1"),
    ],
)
async def test_admin_refuses_unsafe_or_broken_templates(client: httpx.AsyncClient, content: str, where: str) -> None:
    document = {**GREET, "messages": [{"role": "user", "content": content}]}
    r = await client.put("/admin/prompts/greet", json=document, headers=MASTER)
    assert r.status_code == 422
    error = error_of(r)
    assert error["param"] == "messages[0].content"
    assert f"messages[0].content {where}" in error["message"]
    assert (await client.get("/admin/prompts/greet", headers=MASTER)).status_code == 404


async def test_admin_document_errors_name_the_field(client: httpx.AsyncClient) -> None:
    r = await client.put("/admin/prompts/greet", json={**GREET, "inputs": {"who": {"type": "str"}}}, headers=MASTER)
    assert r.status_code == 422 and error_of(r)["param"] == "inputs.who.type"
    r = await client.put("/admin/prompts/greet", json={**GREET, "version": 4}, headers=MASTER)
    assert r.status_code == 422 and error_of(r)["param"] == "version"


async def test_lifecycle_draft_deprecated_retired(client: httpx.AsyncClient) -> None:
    draft = {**GREET, "state": "draft", "team": "a"}
    await client.put("/admin/prompts/greet", json=draft, headers=MASTER)
    assert (await client.post("/prompts/greet", json={"who": "x"}, headers=TEAM_A)).status_code == 200
    assert (await client.post("/prompts/greet", json={"who": "x"}, headers=MASTER)).status_code == 200
    r = await client.post("/prompts/greet", json={"who": "x"}, headers=TEAM_B)
    assert r.status_code == 404
    assert (await client.post("/prompts/greet/render", json={"who": "x"}, headers=TEAM_B)).status_code == 404

    sunset = date.today() + timedelta(days=60)
    deprecated = {**GREET, "state": "deprecated", "sunset": sunset.isoformat()}
    await client.put("/admin/prompts/greet", json=deprecated, headers=MASTER)
    r = await client.post("/prompts/greet", json={"who": "x"}, headers=TEAM_B)
    assert r.status_code == 200
    midnight = datetime.combine(sunset, datetime.min.time(), tzinfo=UTC)
    assert r.headers["sunset"] == format_datetime(midnight, usegmt=True)
    assert r.headers["deprecation"].startswith("@")

    await client.put("/admin/prompts/greet", json={**GREET, "state": "retired"}, headers=MASTER)
    r = await client.post("/prompts/greet", json={"who": "x"}, headers=TEAM_B)
    assert r.status_code == 410 and error_of(r)["code"] == "prompt_retired"
    assert (await client.post("/prompts/greet/versions/2", json={"who": "x"}, headers=TEAM_B)).status_code == 200


async def test_catalog_shows_the_prompts_a_key_may_call(client: httpx.AsyncClient) -> None:
    await client.put("/admin/prompts/a-draft", json={**GREET, "state": "draft", "team": "a"}, headers=MASTER)
    await client.put("/admin/prompts/b-only", json={**GREET, "team": "b", "visibility": ["b"]}, headers=MASTER)
    await client.put("/admin/prompts/old", json={**GREET, "state": "retired"}, headers=MASTER)

    async def names(headers: dict[str, str]) -> list[str]:
        r = await client.get("/prompts", headers=headers)
        assert r.status_code == 200
        return [entry["name"] for entry in r.json()["data"]]

    assert await names(TEAM_A) == ["classify", "summarize", "translate"]
    assert await names(TEAM_B) == ["b-only", "classify", "summarize", "translate"]
    assert await names(ONLY_SUMMARIZE) == ["summarize"]
    entry = next(e for e in (await client.get("/prompts", headers=TEAM_A)).json()["data"] if e["name"] == "classify")
    assert entry["endpoint"] == "/prompts/classify"
    assert entry["description"].startswith("Classify a text")
    assert entry["input_schema"]["required"] == ["text", "labels"]
    assert entry["output_schema"]["required"] == ["label", "confidence", "reason"]
    assert (await client.get("/prompts")).status_code == 401


async def test_reload_endpoint_picks_up_file_changes(tmp_path: Path) -> None:
    (tmp_path / "hello.toml").write_text(
        'model = "mock-gpt"\n[inputs.who]\ntype = "string"\n[[messages]]\nrole = "user"\ncontent = "Hello {{ who }}"\n'
    )
    gateway = build_gateway(tmp_path)
    await start_prompt_service(gateway)
    transport = httpx.ASGITransport(app=build_app(gateway))
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as c:
        r = await c.post("/prompts/hello/render", json={"who": "x"}, headers=TEAM_A)
        assert r.json()["messages"][0]["content"] == "Hello x"
        (tmp_path / "hello.toml").write_text((tmp_path / "hello.toml").read_text().replace("Hello", "Bye"))
        (tmp_path / "broken.toml").write_text("model = 1\n")
        assert (await c.post("/admin/prompts/reload", headers=TEAM_A)).status_code == 403
        result = (await c.post("/admin/prompts/reload", headers=MASTER)).json()
        assert result["loaded"] == [
            {"name": "hello", "version": 2, "source": f"file:{tmp_path / 'hello.toml'}", "changed": True}
        ]
        assert any(line.startswith(f"{tmp_path / 'broken.toml'}: model:") for line in result["errors"])
        r = await c.post("/prompts/hello/render", json={"who": "x"}, headers=TEAM_A)
        assert r.json()["messages"][0]["content"] == "Bye x"
        assert r.json()["prompt"]["version"] == 2


# -- OpenAPI ------------------------------------------------------------------------------------


async def test_openapi_has_one_operation_per_prompt_and_follows_changes(client: httpx.AsyncClient) -> None:
    spec = (await client.get("/openapi.json")).json()
    op = spec["paths"]["/prompts/classify"]["post"]
    assert op["operationId"] == "prompt_classify"
    assert op["description"].startswith("Classify a text")
    ref = op["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    schema = spec["components"]["schemas"][ref.rsplit("/", 1)[1]]
    assert schema["required"] == ["text", "labels"]
    assert schema["properties"]["labels"] == {
        "type": "array",
        "description": "The allowed labels (2 to 50 strings).",
        "minItems": 2,
        "maxItems": 50,
    }
    reply_ref = op["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]
    reply = spec["components"]["schemas"][reply_ref.rsplit("/", 1)[1]]
    assert reply["properties"]["output"]["required"] == ["label", "confidence", "reason"]
    assert {"/prompts/summarize", "/prompts/translate", "/prompts/{name}", "/admin/prompts/{name}"} <= set(
        spec["paths"]
    )
    assert "/prompts/greet" not in spec["paths"]

    await client.put("/admin/prompts/greet", json={**GREET, "state": "deprecated"}, headers=MASTER)
    await client.put("/admin/prompts/wip", json={**GREET, "state": "draft"}, headers=MASTER)
    spec = (await client.get("/openapi.json")).json()
    greet = spec["paths"]["/prompts/greet"]["post"]
    assert greet["deprecated"] is True
    assert spec["components"]["schemas"]["PromptInput_greet"]["properties"]["who"]["description"] == "Whom to greet"
    assert "/prompts/wip" not in spec["paths"]

    await client.delete("/admin/prompts/greet", headers=MASTER)
    spec = (await client.get("/openapi.json")).json()
    assert "/prompts/greet" not in spec["paths"]
    docs = await client.get("/docs")
    assert docs.status_code == 200 and "openapi.json" in docs.text


async def test_the_openai_sdk_calls_prompt_endpoints_and_maps_their_errors(gw: Gateway) -> None:
    transport = httpx.ASGITransport(app=build_app(gw))
    async with httpx.AsyncClient(transport=transport) as http:
        sdk = openai.AsyncOpenAI(base_url="http://gateway", api_key="sk-a", http_client=http, max_retries=0)
        reply = await sdk.post("/prompts/summarize", cast_to=object, body={"text": "Short text", "max_words": 10})
        assert reply["prompt"] == {"name": "summarize", "version": 1}  # type: ignore[index]
        assert "Short text" in reply["output"]  # type: ignore[index]
        with pytest.raises(openai.UnprocessableEntityError) as info:
            await sdk.post("/prompts/summarize", cast_to=object, body={"text": "x", "max_words": 5})
        assert info.value.body["param"] == "max_words"  # type: ignore[index]
        with pytest.raises(openai.NotFoundError):
            await sdk.post("/prompts/nope", cast_to=object, body={})


async def test_streamed_output_is_checked_against_the_schema_at_the_end(client: httpx.AsyncClient, gw: Gateway) -> None:
    r = await client.post("/prompts/classify?stream=true", json={"text": "x", "labels": ["a", "b"]}, headers=TEAM_A)
    events = sse_events(r.text)
    assert events[-1] == "[DONE]" and not any("error" in e for e in events[:-1])
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in events[:-1] if c["choices"])
    assert set(orjson.loads(text)) == {"label", "confidence", "reason"}

    strict = {
        "model": "mock-gpt",
        "messages": [{"role": "user", "content": "Give a two-letter code"}],
        "output_schema": {"type": "object", "properties": {"code": {"type": "string", "maxLength": 2}}},
    }
    await client.put("/admin/prompts/code", json=strict, headers=MASTER)
    r = await client.post("/prompts/code?stream=true", json={}, headers=TEAM_A)
    events = sse_events(r.text)
    assert events[-1] == "[DONE]"
    error = events[-2]["error"]
    assert error["code"] == "output_schema_mismatch" and "$.code" in error["message"]
    assert gw.usage.records[-1].status == 502  # type: ignore[attr-defined]


async def test_a_deprecated_prompt_past_its_sunset_is_retired(client: httpx.AsyncClient) -> None:
    past = {**GREET, "state": "deprecated", "sunset": "2020-01-01"}
    await client.put("/admin/prompts/greet", json=past, headers=MASTER)
    r = await client.post("/prompts/greet", json={"who": "x"}, headers=TEAM_A)
    assert r.status_code == 410 and error_of(r)["code"] == "prompt_retired"
    names = [e["name"] for e in (await client.get("/prompts", headers=TEAM_A)).json()["data"]]
    assert "greet" not in names


async def test_usage_records_reach_the_cost_report_grouped_by_prompt(tmp_path: Path) -> None:
    store = create_store(f"sqlite:///{tmp_path / 'gate.db'}")
    store.upgrade()
    gateway = build_gateway(ROOT / "prompts")
    gateway.store = store
    writer = UsageWriter(store.insert_usage, spill_path=tmp_path / "spill.jsonl", flush_interval_s=0.01)
    writer.start()
    gateway.usage = writer
    await start_prompt_service(gateway)
    transport = httpx.ASGITransport(app=build_app(gateway))
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as c:
        costs = []
        for text in ("one", "two words"):
            r = await c.post("/prompts/summarize", json={"text": text}, headers=TEAM_A)
            costs.append(r.json()["cost_usd"])
        await c.post("/prompts/translate", json={"text": "x", "target_language": "de"}, headers=TEAM_A)
        await c.post("/prompts/translate", json={"text": 5, "target_language": "de"}, headers=TEAM_A)
    await writer.aclose()
    rows = {row["prompt_name"]: row for row in store.cost_report(["prompt"], None, None)}
    assert set(rows) == {"summarize", "translate"}
    assert (rows["summarize"]["requests"], rows["summarize"]["errors"]) == (2, 0)
    assert (rows["translate"]["requests"], rows["translate"]["errors"]) == (2, 1)
    assert Decimal(rows["summarize"]["cost_usd"]) == sum(Decimal(c) for c in costs)
    store.close()
