"""SSRF: no request field or header can move a call away from the upstream named in config.

Every field that would choose an upstream URL, its headers or its credentials is
refused with 400 naming it, before anything is sent upstream; headers such as
`Host` and `X-Forwarded-Host` never change where the call goes (checked at the
fake upstream, which records every request it gets).
"""

from __future__ import annotations

import anthropic
import httpx
import openai
import pytest

from tests.harness import FakeUpstream, GatewayServer
from tests.security.conftest import MASTER

EVIL = "http://169.254.169.254/latest/meta-data"
# Each field with the value an attacker would send.
REDIRECTING_FIELDS = {
    "api_base": EVIL,
    "base_url": EVIL,
    "api_key": "sk-attacker",
    "api_version": "2099-01-01",
    "extra_headers": {"Host": "169.254.169.254"},
    "extra_query": {"api-version": "x", "url": EVIL},
    "extra_body": {"api_base": EVIL},
    "litellm_params": {"api_base": EVIL, "api_key": "sk-attacker"},
    "azure_endpoint": "https://evil.openai.azure.com",
    "custom_llm_provider": "openai",
    "deployment_id": "evil",
    "organization": "org-evil",
}
CHAT = {"model": "gpt", "messages": [{"role": "user", "content": "hi"}]}
EMBEDDINGS = {"model": "emb", "input": "hi"}
MESSAGES = {"model": "claude", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}
PROMPT_DOC = {
    "model": "gpt",
    "inputs": {"text": {"type": "string"}},
    "messages": [{"role": "user", "content": "Say {{ text }}"}],
}


def _refused(response: httpx.Response, field: str, anthropic_shape: bool = False) -> None:
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert field in error["message"]
    if anthropic_shape:
        assert response.json()["type"] == "error" and error["type"] == "invalid_request_error"
    else:
        assert error["param"] == field


@pytest.mark.parametrize("field", sorted(REDIRECTING_FIELDS))
@pytest.mark.parametrize(
    ("path", "body", "anthropic_shape"),
    [("/v1/chat/completions", CHAT, False), ("/v1/embeddings", EMBEDDINGS, False), ("/v1/messages", MESSAGES, True)],
)
def test_redirecting_field_is_refused_before_any_upstream_call(
    gateway: GatewayServer,
    upstream: FakeUpstream,
    master_headers: dict[str, str],
    field: str,
    path: str,
    body: dict,
    anthropic_shape: bool,
) -> None:
    before = len(upstream.requests)
    response = httpx.post(gateway.url + path, headers=master_headers, json={**body, field: REDIRECTING_FIELDS[field]})
    _refused(response, field, anthropic_shape)
    assert len(upstream.requests) == before


def test_openai_sdk_extra_body_cannot_redirect(gateway: GatewayServer, upstream: FakeUpstream) -> None:
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=MASTER, max_retries=0)
    before = len(upstream.requests)
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model="gpt", messages=[{"role": "user", "content": "hi"}], extra_body={"api_base": EVIL}
        )
    assert caught.value.body["param"] == "api_base"
    with pytest.raises(openai.BadRequestError) as caught:
        client.embeddings.create(model="emb", input="hi", extra_body={"litellm_params": {"api_base": EVIL}})
    assert caught.value.body["param"] == "litellm_params"
    assert len(upstream.requests) == before


def test_anthropic_sdk_extra_body_cannot_redirect(gateway: GatewayServer, upstream: FakeUpstream) -> None:
    client = anthropic.Anthropic(base_url=gateway.url, api_key=MASTER, max_retries=0)
    before = len(upstream.requests)
    with pytest.raises(anthropic.BadRequestError) as caught:
        client.messages.create(
            model="claude",
            max_tokens=10,
            messages=[{"role": "user", "content": "hi"}],
            extra_body={"base_url": EVIL},
        )
    assert "base_url" in caught.value.body["error"]["message"]
    assert len(upstream.requests) == before


SPOOFED_HEADERS = {
    "host": "169.254.169.254",
    "x-forwarded-host": "evil.example",
    "x-forwarded-proto": "https",
    "x-forwarded-port": "8443",
    "forwarded": "host=evil.example;proto=https",
    "x-original-url": EVIL,
    "x-rewrite-url": EVIL,
}


@pytest.mark.parametrize(
    ("path", "body", "upstream_path"),
    [
        ("/v1/chat/completions", CHAT, "/v1/chat/completions"),
        ("/v1/embeddings", EMBEDDINGS, "/v1/embeddings"),
        ("/v1/messages", MESSAGES, "/v1/messages"),
    ],
)
def test_spoofed_host_headers_do_not_change_the_upstream(
    gateway: GatewayServer,
    upstream: FakeUpstream,
    master_headers: dict[str, str],
    path: str,
    body: dict,
    upstream_path: str,
) -> None:
    before = len(upstream.requests)
    response = httpx.post(gateway.url + path, headers={**master_headers, **SPOOFED_HEADERS}, json=body)
    assert response.status_code == 200, response.text
    assert len(upstream.requests) == before + 1
    received = upstream.requests[-1]
    assert received.path == upstream_path
    assert received.headers["host"] == f"127.0.0.1:{upstream.port}"
    for name in SPOOFED_HEADERS:
        if name != "host":
            assert name not in received.headers


def test_sdk_extra_headers_do_not_reach_the_upstream(gateway: GatewayServer, upstream: FakeUpstream) -> None:
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=MASTER, max_retries=0)
    client.chat.completions.create(
        model="gpt", messages=[{"role": "user", "content": "hi"}], extra_headers=SPOOFED_HEADERS
    )
    received = upstream.requests[-1]
    assert received.headers["host"] == f"127.0.0.1:{upstream.port}"
    assert received.headers["authorization"] != f"Bearer {MASTER}"  # the provider's key, not the caller's
    assert not set(SPOOFED_HEADERS) - {"host"} & set(received.headers)


@pytest.fixture(scope="module")
def prompt_saved(gateway: GatewayServer) -> str:
    response = httpx.put(
        gateway.url + "/admin/prompts/ssrf-check", headers={"authorization": f"Bearer {MASTER}"}, json=PROMPT_DOC
    )
    assert response.status_code == 200, response.text
    return "ssrf-check"


@pytest.mark.parametrize("field", sorted(REDIRECTING_FIELDS))
def test_prompt_call_refuses_redirecting_fields(
    gateway: GatewayServer, upstream: FakeUpstream, master_headers: dict[str, str], prompt_saved: str, field: str
) -> None:
    before = len(upstream.requests)
    response = httpx.post(
        f"{gateway.url}/prompts/{prompt_saved}",
        headers=master_headers,
        json={"text": "hi", field: REDIRECTING_FIELDS[field]},
    )
    _refused(response, field)
    assert len(upstream.requests) == before


def test_prompt_call_goes_to_the_configured_upstream(
    gateway: GatewayServer, upstream: FakeUpstream, master_headers: dict[str, str], prompt_saved: str
) -> None:
    response = httpx.post(
        f"{gateway.url}/prompts/{prompt_saved}", headers={**master_headers, **SPOOFED_HEADERS}, json={"text": "hi"}
    )
    assert response.status_code == 200, response.text
    received = upstream.requests[-1]
    assert received.path == "/v1/chat/completions" and received.headers["host"] == f"127.0.0.1:{upstream.port}"
    assert not {"api_base", "base_url"} & set(received.json())


@pytest.mark.parametrize("field", ["api_base", "base_url", "extra_headers", "litellm_params", "azure_endpoint"])
def test_prompt_document_cannot_carry_redirecting_parameters(
    gateway: GatewayServer, master_headers: dict[str, str], field: str
) -> None:
    document = {**PROMPT_DOC, "parameters": {field: REDIRECTING_FIELDS[field]}}
    response = httpx.put(gateway.url + "/admin/prompts/ssrf-param", headers=master_headers, json=document)
    assert response.status_code == 422, response.text
    assert field in response.json()["error"]["message"]
    assert response.json()["error"]["param"] == "parameters"


@pytest.mark.parametrize(
    "model",
    [EVIL, "http://127.0.0.1:1/v1", "openai/gpt-4o", "azure/evil", "gpt@169.254.169.254", "../gpt", "gpt\r\nHost: x"],
)
def test_model_names_cannot_point_at_an_upstream(
    gateway: GatewayServer, upstream: FakeUpstream, master_headers: dict[str, str], model: str
) -> None:
    before = len(upstream.requests)
    for path, body in (("/v1/chat/completions", CHAT), ("/v1/embeddings", EMBEDDINGS), ("/v1/messages", MESSAGES)):
        response = httpx.post(gateway.url + path, headers=master_headers, json={**body, "model": model})
        assert response.status_code in (400, 404), response.text
    assert len(upstream.requests) == before
