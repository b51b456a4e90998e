"""Fuzzing: the documented API (schemathesis over /openapi.json) and the hot-path routes (hypothesis JSON).

Bounded to run in `make test`: a few examples per operation, no example database.
Every answer must be below 500 and every error must have the documented shape:
`{"error": {"message", "type", "param", "code"}}`, or Anthropic's
`{"type": "error", "error": {"type", "message"}}` on `/v1/messages`.

The raw hot-path routes (/v1/chat/completions, /v1/embeddings, /v1/models,
/v1/messages) are not FastAPI routes and are missing from /openapi.json, so they
are fuzzed here with generated bodies posted by httpx.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable

from tests.harness import FakeUpstream, GatewayServer, make_settings
from tests.security.conftest import MASTER, answer_upstream, gateway_doc

AUTH = {"authorization": f"Bearer {MASTER}"}
FUZZED_PREFIXES = ("/admin", "/prompts", "/v1")
# Short by default so it fits in `make test`; LLMGATE_FUZZ_EXAMPLES=200 for a deep run.
EXAMPLES_PER_OPERATION = int(os.environ.get("LLMGATE_FUZZ_EXAMPLES", "6"))
PROMPT = {
    "model": "mock-gpt",
    "inputs": {"text": {"type": "string", "max_length": 50}, "count": {"type": "integer", "default": 1}},
    "messages": [{"role": "user", "content": "{{ text }} x{{ count }}"}],
}


@pytest.fixture(scope="module")
def fuzzed() -> Iterator[GatewayServer]:
    with FakeUpstream(answer_upstream) as upstream, GatewayServer(make_settings(gateway_doc(upstream.url))) as server:
        assert httpx.put(server.url + "/admin/prompts/fuzzed", headers=AUTH, json=PROMPT).status_code == 200
        assert httpx.post(server.url + "/admin/teams", headers=AUTH, json={"name": "fuzz"}).status_code == 201
        yield server


def check_openai_error(response: Any) -> list[str]:
    """What is wrong with an error answer's body, as a list of problems (empty when well formed)."""
    try:
        payload = response.json()
    except ValueError:
        return [f"{response.status_code}: body is not JSON: {response.text[:200]!r}"]
    error = payload.get("error") if isinstance(payload, dict) else None
    if not isinstance(error, dict) or not {"message", "type", "param", "code"} <= set(error):
        return [f"{response.status_code}: not the OpenAI error shape: {payload!r:.300}"]
    if not isinstance(error["message"], str) or not error["message"]:
        return [f"{response.status_code}: empty error message"]
    return []


def check_anthropic_error(response: Any) -> list[str]:
    try:
        payload = response.json()
    except ValueError:
        return [f"{response.status_code}: body is not JSON: {response.text[:200]!r}"]
    error = payload.get("error") if isinstance(payload, dict) else None
    if payload.get("type") != "error" or not isinstance(error, dict) or not {"type", "message"} <= set(error):
        return [f"{response.status_code}: not the Anthropic error shape: {payload!r:.300}"]
    return []


def _check(label: str, response: Any, anthropic_shape: bool = False) -> list[str]:
    problems = []
    if response.status_code >= 500:
        problems.append(f"{label}: {response.status_code} {response.text[:300]!r}")
    elif response.status_code >= 400:
        found = check_anthropic_error(response) if anthropic_shape else check_openai_error(response)
        problems.extend(f"{label}: {p}" for p in found)
    return problems


@pytest.mark.parametrize(
    ("path", "body"), [("/admin/keys", {"name": "big", "rpm": 2**63}), ("/admin/teams", {"name": "big", "tpm": 2**64})]
)
def test_admin_limits_beyond_int64_are_refused(fuzzed: GatewayServer, path: str, body: dict) -> None:
    response = httpx.post(fuzzed.url + path, headers=AUTH, json=body)
    assert response.status_code == 422 and response.json()["error"]["param"] in ("rpm", "tpm")


FUZZ_SETTINGS = settings(
    max_examples=EXAMPLES_PER_OPERATION,
    deadline=None,
    database=None,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=list(HealthCheck),
)


def test_schemathesis_finds_no_500_and_only_documented_errors(fuzzed: GatewayServer) -> None:
    spec = httpx.get(fuzzed.url + "/openapi.json").json()
    schema = schemathesis.openapi.from_dict(spec)
    problems: list[str] = []
    fuzzed_operations = []
    for result in schema.get_all_operations():
        operation = result.ok()
        if not operation.path.startswith(FUZZED_PREFIXES):
            continue
        fuzzed_operations.append(operation.label)
        for mode in (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE):

            @FUZZ_SETTINGS
            @given(case=operation.as_strategy(generation_mode=mode))
            def run(case: Any) -> None:
                response = case.call(base_url=fuzzed.url, headers=AUTH, timeout=15)
                problems.extend(_check(f"{case.method} {case.formatted_path}", response))

            try:
                run()
            except Unsatisfiable:  # nothing to break in this operation (e.g. no parameters, negative mode)
                continue
    assert len(fuzzed_operations) >= 15, fuzzed_operations
    assert "POST /prompts/fuzzed" in fuzzed_operations
    assert problems == [], "\n".join(sorted(set(problems)))
    assert httpx.get(fuzzed.url + "/health").status_code == 200


# -- the hot path: hypothesis-generated bodies ------------------------------------------------------

_scalar = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
_any_json = st.recursive(
    _scalar,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
_models = st.sampled_from(["mock-gpt", "gpt", "claude", "emb", "nope", "", "mock-gpt\x00"]) | _any_json
_message = st.fixed_dictionaries(
    {"role": st.sampled_from(["user", "assistant", "system", "tool", "developer", "x"]) | _any_json},
    optional={"content": st.text(max_size=30) | _any_json, "tool_calls": _any_json, "name": _any_json},
)
_messages = st.lists(_message, max_size=3) | _any_json
_known_fields = st.fixed_dictionaries(
    {},
    optional={
        "model": _models,
        "messages": _messages,
        "input": st.text(max_size=20) | st.lists(st.integers(0, 100), max_size=3) | _any_json,
        "stream": st.booleans() | _any_json,
        "stream_options": _any_json,
        "n": st.integers(-2, 40) | _any_json,
        "max_tokens": st.integers(-2, 10**7) | _any_json,
        "max_completion_tokens": _any_json,
        "temperature": _any_json,
        "tools": _any_json,
        "tool_choice": _any_json,
        "response_format": _any_json,
        "system": st.text(max_size=20) | _any_json,
        "encoding_format": st.sampled_from(["float", "base64", "x"]) | _any_json,
        "metadata": _any_json,
    },
)
_bodies = st.one_of(
    st.tuples(_known_fields, st.dictionaries(st.text(max_size=10), _any_json, max_size=3)).map(
        lambda p: {**p[1], **p[0]}
    ),
    _any_json,
    st.binary(max_size=60),
)
HOT_SETTINGS = settings(
    max_examples=EXAMPLES_PER_OPERATION * 10,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)
HOT_ROUTES = [
    ("/v1/chat/completions", False),
    ("/v1/embeddings", False),
    ("/v1/messages", True),
    ("/v1/messages/count_tokens", True),
]


@pytest.mark.parametrize(("path", "anthropic_shape"), HOT_ROUTES)
def test_hot_path_routes_survive_generated_bodies(fuzzed: GatewayServer, path: str, anthropic_shape: bool) -> None:
    problems: list[str] = []
    statuses: set[int] = set()
    with httpx.Client(base_url=fuzzed.url, headers=AUTH, timeout=15) as client:

        @HOT_SETTINGS
        @given(body=_bodies)
        def run(body: Any) -> None:
            if isinstance(body, bytes):
                response = client.post(path, content=body, headers={"content-type": "application/json"})
            else:
                response = client.post(path, json=body)
            statuses.add(response.status_code)
            problems.extend(_check(f"POST {path} {body!r:.200}", response, anthropic_shape))

        run()
    assert problems == []
    assert any(400 <= s < 500 for s in statuses)


def test_models_route_survives_odd_paths_and_keys(fuzzed: GatewayServer) -> None:
    problems: list[str] = []
    with httpx.Client(base_url=fuzzed.url, timeout=15) as client:

        @HOT_SETTINGS
        @given(name=st.text(max_size=30), key=st.sampled_from([MASTER, "", "sk-x", "Bearer", "' OR 1=1 --"]))
        def run(name: str, key: str) -> None:
            response = client.get("/v1/models/" + quote(name, safe=""), headers={"x-api-key": key})
            problems.extend(_check(f"GET /v1/models/{name!r}", response))

        run()
    assert problems == []
