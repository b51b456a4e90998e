"""SQL injection through every admin and report parameter and through the key headers.

Each payload must get a proper 4xx (or, where the value is plain data such as a
key name or a filter, be stored or matched literally), never a 500; afterwards
every table still exists and still holds its rows (checked through the store
and the database itself).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from sqlalchemy import func, inspect, select, text

from llmgate.storage.models import KeyRow, PromptVersionRow, TeamRow, UsageRow
from tests.harness import GatewayServer, make_settings
from tests.security.conftest import MASTER, gateway_doc

PAYLOADS = [
    "' OR 1=1 --",
    "' OR '1'='1",
    '"; DROP TABLE usage; --',
    "'; DROP TABLE keys; --",
    "1; DELETE FROM teams",
    "key_x' UNION SELECT key_hash, key_hash FROM keys --",
    "%' OR name LIKE '%",
    "\\'; --",
    "ключ' OR 1=1 --",
    "🔑' OR 1=1 --",
    "a\x00b' OR 1=1 --",
    "\u202e' OR 1=1",
]
HEADER_PAYLOADS = [p for p in PAYLOADS if "\x00" not in p]
TABLES = ("keys", "teams", "usage", "usage_daily", "prompt_versions", "prompt_labels")
PROMPT = {
    "model": "mock-gpt",
    "inputs": {"text": {"type": "string"}},
    "messages": [{"role": "user", "content": "{{ text }}"}],
}


@pytest.fixture(scope="module")
def seeded(upstream: Any) -> Iterator[tuple[GatewayServer, dict[str, Any]]]:
    """A gateway with a key, a team, a prompt with a label and recorded usage."""
    with GatewayServer(make_settings(gateway_doc(upstream.url))) as server:
        auth = {"authorization": f"Bearer {MASTER}"}
        key = httpx.post(server.url + "/admin/keys", headers=auth, json={"name": "victim", "team": "red"}).json()
        assert httpx.post(server.url + "/admin/teams", headers=auth, json={"name": "red"}).status_code == 201
        assert httpx.put(server.url + "/admin/prompts/victim", headers=auth, json=PROMPT).status_code == 200
        assert (
            httpx.put(server.url + "/admin/prompts/victim/labels/prod", headers=auth, json={"version": 1}).status_code
            == 200
        )
        call = {"model": "mock-gpt", "messages": [{"role": "user", "content": "hi"}]}
        headers = {"authorization": f"Bearer {key['key']}"}
        assert httpx.post(server.url + "/v1/chat/completions", headers=headers, json=call).status_code == 200
        _wait_for_usage(server, 1)
        yield server, key


def _wait_for_usage(server: GatewayServer, rows: int) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if _count(server, UsageRow) >= rows:
            return
        time.sleep(0.05)
    raise AssertionError("usage was not recorded")


def _count(server: GatewayServer, table: Any) -> int:
    with server.gw.store.engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(table)).scalar_one()


def _assert_intact(server: GatewayServer, key_id: str) -> None:
    store = server.gw.store
    assert set(TABLES) <= set(inspect(store.engine).get_table_names())
    assert store.get_key(key_id) is not None and not store.get_key(key_id)["revoked"]
    assert store.get_team("red") is not None
    assert store.latest_prompt_version("victim") == 1 and store.prompt_labels("victim") == {"prod": 1}
    assert _count(server, UsageRow) >= 1 and _count(server, KeyRow) >= 1
    assert _count(server, TeamRow) >= 1 and _count(server, PromptVersionRow) >= 1
    with store.engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM usage_daily")).scalar_one() >= 1


def _quiet(response: httpx.Response, allowed: tuple[int, ...]) -> None:
    assert response.status_code in allowed, (response.status_code, response.text)
    if response.status_code >= 400:
        error = response.json()["error"]
        assert {"message", "type", "param", "code"} <= set(error)
        assert "sqlalchemy" not in response.text.lower() and "syntax error" not in response.text.lower()


@pytest.mark.parametrize("payload", PAYLOADS)
def test_admin_path_and_query_parameters(seeded: tuple[GatewayServer, dict[str, Any]], payload: str) -> None:
    server, key = seeded
    auth = {"authorization": f"Bearer {MASTER}"}
    segment = quote(payload, safe="")
    url = server.url
    with httpx.Client(headers=auth, timeout=10) as client:
        _quiet(client.get(f"{url}/admin/keys/{segment}"), (404,))
        _quiet(client.patch(f"{url}/admin/keys/{segment}", json={"rpm": 1}), (404,))
        _quiet(client.delete(f"{url}/admin/keys/{segment}"), (404,))
        listed = client.get(f"{url}/admin/keys", params={"team": payload})
        _quiet(listed, (200,))
        assert listed.json()["data"] == []
        _quiet(client.get(f"{url}/admin/keys", params={"include_revoked": payload}), (422,))
        _quiet(client.get(f"{url}/admin/teams/{segment}"), (404,))
        _quiet(client.patch(f"{url}/admin/teams/{segment}", json={"rpm": 1}), (404,))
        _quiet(client.delete(f"{url}/admin/teams/{segment}"), (404,))
        for report in ("/admin/reports/cost", "/v1/usage"):
            for param in ("group_by", "start", "end", "format"):
                _quiet(client.get(url + report, params={param: payload}), (400,))
            by_key = client.get(url + report, params={"key_id": payload})
            _quiet(by_key, (200,))
            assert by_key.json()["data"] == [] and by_key.json()["key_id"] == payload
        _quiet(client.get(f"{url}/admin/prompts/{segment}"), (404,))
        _quiet(client.get(f"{url}/admin/prompts/{segment}/versions"), (404,))
        _quiet(client.get(f"{url}/admin/prompts/victim", params={"version": payload}), (404,))
        _quiet(client.put(f"{url}/admin/prompts/{segment}", json=PROMPT), (422,))
        _quiet(client.delete(f"{url}/admin/prompts/{segment}"), (404,))
        _quiet(client.put(f"{url}/admin/prompts/victim/labels/{segment}", json={"version": 1}), (400,))
        _quiet(client.post(f"{url}/prompts/{segment}", json={"text": "x"}), (404,))
        _quiet(client.post(f"{url}/prompts/victim", params={"label": payload}, json={"text": "x"}), (404,))
        _quiet(client.post(f"{url}/prompts/victim/versions/{segment}", json={"text": "x"}), (404,))
        _quiet(client.post(f"{url}/prompts/victim/render", params={"label": payload}, json={"text": "x"}), (404,))
    _assert_intact(server, key["id"])


@pytest.mark.parametrize("payload", PAYLOADS)
def test_admin_bodies_store_payloads_literally(seeded: tuple[GatewayServer, dict[str, Any]], payload: str) -> None:
    server, key = seeded
    auth = {"authorization": f"Bearer {MASTER}"}
    created = httpx.post(
        server.url + "/admin/keys", headers=auth, json={"name": payload, "team": payload, "models": [payload]}
    )
    assert created.status_code == 201, created.text
    stored = server.gw.store.get_key(created.json()["id"])
    assert stored["name"] == payload and stored["team"] == payload and stored["models"] == [payload]
    team = httpx.post(server.url + "/admin/teams", headers=auth, json={"name": payload, "description": payload})
    assert team.status_code in (201, 409), team.text
    assert server.gw.store.get_team(payload)["description"] == payload
    renamed = httpx.patch(f"{server.url}/admin/keys/{key['id']}", headers=auth, json={"metadata": {payload: payload}})
    assert renamed.status_code == 200 and renamed.json()["metadata"] == {payload: payload}
    _assert_intact(server, key["id"])


AUTH_ROUTES = [
    ("POST", "/v1/chat/completions", {"model": "mock-gpt", "messages": [{"role": "user", "content": "x"}]}),
    ("POST", "/v1/embeddings", {"model": "emb", "input": "x"}),
    ("POST", "/v1/messages", {"model": "claude", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}),
    ("GET", "/v1/models", None),
    ("GET", "/v1/usage", None),
    ("GET", "/admin/keys", None),
    ("GET", "/prompts", None),
    ("POST", "/prompts/victim", {"text": "x"}),
    ("PUT", "/admin/prompts/victim", PROMPT),
]


@pytest.mark.parametrize("payload", HEADER_PAYLOADS)
def test_key_headers_carrying_sql(seeded: tuple[GatewayServer, dict[str, Any]], payload: str) -> None:
    server, key = seeded
    value = payload.encode("utf-8")  # non-ASCII payloads go as raw UTF-8 bytes
    with httpx.Client(timeout=10) as client:
        for method, path, body in AUTH_ROUTES:
            for headers in ({"authorization": b"Bearer " + value}, {"x-api-key": value}):
                response = client.request(method, server.url + path, headers=headers, json=body)
                assert response.status_code == 401, (path, headers, response.status_code, response.text)
                error = response.json()["error"]
                assert error["message"] and "sql" not in response.text.lower()
    _assert_intact(server, key["id"])


@pytest.mark.parametrize("raw", [b"Bearer a\x00b", b"Bearer \x01' OR 1=1 --", b"Bearer \r\n' OR 1=1"])
def test_control_bytes_in_the_key_header_are_refused(seeded: tuple[GatewayServer, dict[str, Any]], raw: bytes) -> None:
    server, key = seeded
    import socket

    request = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 2\r\nAuthorization: " + raw + b"\r\n\r\n{}"
    )
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(request)
        status_line = sock.recv(4096).split(b"\r\n", 1)[0]
    assert status_line.split()[1] in (b"400", b"401"), status_line
    _assert_intact(server, key["id"])
