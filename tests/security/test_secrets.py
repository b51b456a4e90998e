"""Secrets: provider and caller keys never leave the gateway, in any artifact.

A real `llmgate serve` process (request log on, debug logging, stderr captured)
sits in front of a fake upstream that echoes the credentials it was sent into
its error messages (401, 400, 500, mid-stream errors, Anthropic errors). Every
response body and header, `/metrics`, `/health`, `/health/ready`,
`/openapi.json`, `/v1/models`, the usage table and the process's whole log
output are searched for the provider keys, the master key and the caller keys.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import anthropic
import httpx
import openai
import orjson
import pytest
from sqlalchemy import create_engine, text

from tests.harness import FakeUpstream, Received, Step, json_response, sse_response
from tests.security.conftest import ANTHROPIC_SECRET, MASTER, PROVIDER_SECRET, ServeProcess, free_port

STATIC_SECRET = "sk-static-caller-SECRET-789"
WRONG_KEY = "sk-lg-caller-typo-SECRET-999"


def _echo(req: Received) -> list[Step]:
    """Answers that quote the credential the upstream received, as careless upstreams do."""
    sent = req.headers.get("authorization") or req.headers.get("x-api-key") or ""
    if req.path.endswith("/v1/messages"):
        return json_response(
            {"type": "error", "error": {"type": "authentication_error", "message": f"invalid x-api-key: {sent}"}}, 401
        )
    model = orjson.loads(req.body).get("model") if req.body else None
    if model == "echo-400":
        return json_response({"error": {"message": f"bad request from {sent}", "type": "invalid_request_error"}}, 400)
    if model == "echo-500":
        return json_response({"error": {"message": f"internal: header was {sent}"}}, 500)
    if model == "echo-stream":
        chunk = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": model}
        first = {**chunk, "choices": [{"index": 0, "delta": {"role": "assistant", "content": "hi"}}]}
        error = {"error": {"message": f"stream aborted for key {sent}", "type": "server_error"}}
        return sse_response([b"data: " + orjson.dumps(first) + b"\n\n", b"data: " + orjson.dumps(error) + b"\n\n"])
    if model == "ok":
        return json_response(
            {
                "id": "x",
                "object": "chat.completion",
                "created": 1,
                "model": "ok",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "fine"}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
            }
        )
    return json_response({"error": {"message": f"Incorrect API key provided: {sent}", "code": "invalid_api_key"}}, 401)


_OPENAI_MODELS = "".join(
    f'[[models]]\nname = "{name}"\nprovider = "up"\n'
    for name in ("echo-401", "echo-400", "echo-500", "echo-stream", "ok")
)


def _config(upstream: str, tmp: Path, port: int) -> str:
    return f"""
[gateway]
master_key = "{MASTER}"
port = {port}
database_url = "sqlite:///{tmp}/gateway.db"
usage_spill_path = "{tmp}/spill.jsonl"
log_requests = true
usage_flush_interval_s = 0.05

[providers.up]
type = "openai"
base_url = "{upstream}/v1"
api_key = "{PROVIDER_SECRET}"

[providers.ant]
type = "anthropic"
base_url = "{upstream}"
api_key = "{ANTHROPIC_SECRET}"

[routing]
num_retries = 0

{_OPENAI_MODELS}
[[models]]
name = "claude-echo"
provider = "ant"

[[keys]]
key = "{STATIC_SECRET}"
name = "static"
"""


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServeProcess, Path]]:
    tmp = tmp_path_factory.mktemp("secrets")
    with FakeUpstream(_echo) as upstream:
        config, port = tmp / "config.toml", free_port()
        config.write_text(_config(upstream.url, tmp, port))
        server = ServeProcess(config, tmp / "gateway.log", port)
        try:
            yield server, tmp
        finally:
            server.stop()


def _exchange(response: httpx.Response) -> str:
    return "\n".join([str(response.status_code), *(f"{k}: {v}" for k, v in response.headers.items()), response.text])


def test_no_secret_in_any_artifact(served: tuple[ServeProcess, Path]) -> None:
    server, tmp = served
    url = server.url
    master = {"authorization": f"Bearer {MASTER}"}
    created = httpx.post(url + "/admin/keys", headers=master, json={"name": "caller"}).json()
    caller_secret = created["key"]
    secrets = [PROVIDER_SECRET, ANTHROPIC_SECRET, MASTER, STATIC_SECRET, caller_secret, WRONG_KEY]
    artifacts: list[str] = [orjson.dumps({k: v for k, v in created.items() if k != "key"}).decode()]
    chat = {"messages": [{"role": "user", "content": "hi"}]}
    for key in (caller_secret, STATIC_SECRET, MASTER):
        headers = {"authorization": f"Bearer {key}"}
        for model in ("echo-401", "echo-400", "echo-500", "ok"):
            response = httpx.post(url + "/v1/chat/completions", headers=headers, json={**chat, "model": model})
            assert response.status_code == (200 if model == "ok" else response.status_code)
            artifacts.append(_exchange(response))
        streamed = httpx.post(
            url + "/v1/chat/completions", headers=headers, json={**chat, "model": "echo-stream", "stream": True}
        )
        assert streamed.status_code == 200 and "stream aborted" in streamed.text
        artifacts.append(_exchange(streamed))
        messages = {"model": "claude-echo", "max_tokens": 5, **chat}
        for stream in (False, True):
            response = httpx.post(url + "/v1/messages", headers={"x-api-key": key}, json={**messages, "stream": stream})
            assert response.status_code >= 400
            artifacts.append(_exchange(response))
        artifacts.append(
            _exchange(httpx.post(url + "/v1/embeddings", headers=headers, json={"model": "echo-401", "input": "x"}))
        )
    sdk = openai.OpenAI(base_url=url + "/v1", api_key=caller_secret, max_retries=0)
    with pytest.raises(openai.APIStatusError) as caught:
        sdk.chat.completions.create(model="echo-401", **chat)
    artifacts.append(str(caught.value) + orjson.dumps(caught.value.body).decode())
    ant = anthropic.Anthropic(base_url=url, api_key=caller_secret, max_retries=0)
    with pytest.raises(anthropic.APIStatusError) as caught_ant:
        ant.messages.create(model="claude-echo", max_tokens=5, messages=chat["messages"])
    artifacts.append(str(caught_ant.value))
    wrong = httpx.post(
        url + "/v1/chat/completions", headers={"authorization": f"Bearer {WRONG_KEY}"}, json={**chat, "model": "ok"}
    )
    assert wrong.status_code == 401
    artifacts.append(_exchange(wrong))
    for path in ("/metrics", "/health", "/health/ready", "/openapi.json", "/v1/models", "/admin/keys", "/v1/usage"):
        response = httpx.get(url + path, headers=master)
        assert response.status_code == 200, path
        artifacts.append(_exchange(response))
    artifacts.append(_exchange(httpx.get(url + "/admin/reports/cost?group_by=key,model&format=csv", headers=master)))
    log = server.stop()
    assert log.count('"status":') >= 20, log[-2000:]  # the request log really was written
    assert "upstream" in log or "Incorrect API key" in log or "failed" in log
    artifacts.append(log)
    engine = create_engine(f"sqlite:///{tmp}/gateway.db")
    with engine.connect() as conn:
        for table in ("usage", "usage_daily", "keys"):
            artifacts.append(str(conn.execute(text(f"SELECT * FROM {table}")).all()))
    engine.dispose()
    spill = tmp / "spill.jsonl"
    if spill.exists():
        artifacts.append(spill.read_text())
    upstream_echo = [a for a in artifacts if "Incorrect API key provided" in a or "invalid x-api-key" in a]
    assert upstream_echo, "the upstream's echoing errors must have reached the caller (masked)"
    for secret in secrets:
        leaks = [a[max(0, a.find(secret) - 200) : a.find(secret) + 100] for a in artifacts if secret in a]
        assert leaks == [], f"{secret} leaked: {leaks[:2]}"


def test_public_errors_keep_their_meaning() -> None:
    """The masking keeps the message useful: the provider, the status and the upstream's words stay."""
    from llmgate.errors import UpstreamError
    from llmgate.logs import register_secret
    from llmgate.surfaces.http import public_error

    register_secret(PROVIDER_SECRET)
    err = public_error(UpstreamError(f"provider 'up' rejected the gateway's credentials (401): key {PROVIDER_SECRET}"))
    assert PROVIDER_SECRET not in err.message
    assert err.message.startswith("provider 'up' rejected the gateway's credentials (401): key ")
    assert orjson.loads(err.openai_body())["error"]["message"] == err.message


@pytest.mark.parametrize("stream", [False, True])
def test_prompt_calls_mask_echoed_credentials(stream: bool) -> None:
    from tests.harness import GatewayServer, make_settings
    from tests.security.conftest import gateway_doc

    auth = {"authorization": f"Bearer {MASTER}"}
    with FakeUpstream(_echo) as upstream, GatewayServer(make_settings(gateway_doc(upstream.url))) as server:
        prompt = {"model": "gpt", "messages": [{"role": "user", "content": "hi"}]}
        assert httpx.put(server.url + "/admin/prompts/leaky", headers=auth, json=prompt).status_code == 200
        response = httpx.post(server.url + f"/prompts/leaky?stream={str(stream).lower()}", headers=auth, json={})
    assert response.status_code >= 400 and "Incorrect API key provided" in response.text
    assert PROVIDER_SECRET not in response.text
