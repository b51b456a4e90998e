"""Authentication and authorization: secrets shown once and stored hashed, keys kept in their lane.

A created key's secret appears only in the creation answer; the keys table holds
its sha256 and a short display prefix. A virtual key cannot reach `/admin` (403; 401 on a few routes),
read another key's usage, or change any key; unknown fields in a key update
(`is_master`, `revoked`, `key_hash`, `id`, ...) are refused rather than ignored;
revoked and expired keys are refused at once on this instance; secrets are
compared in constant time (checked in the code).
"""

from __future__ import annotations

import ast
import hashlib
import re
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from sqlalchemy import text

from tests.harness import GatewayServer
from tests.security.conftest import MASTER

ROOT = Path(__file__).resolve().parents[2]
CHAT = {"model": "mock-gpt", "messages": [{"role": "user", "content": "hi"}]}


def _create(gateway: GatewayServer, **fields: Any) -> dict[str, Any]:
    response = httpx.post(
        gateway.url + "/admin/keys", headers={"authorization": f"Bearer {MASTER}"}, json={"name": "k", **fields}
    )
    assert response.status_code == 201, response.text
    return response.json()


def _bearer(secret: str) -> dict[str, str]:
    return {"authorization": f"Bearer {secret}"}


def test_secret_is_shown_once_and_stored_as_a_hash(gateway: GatewayServer, master_headers: dict[str, str]) -> None:
    created = _create(gateway, name="shown-once", team="blue")
    secret, key_id = created["key"], created["id"]
    assert secret.startswith("sk-lg-") and len(secret) > 40
    hidden = secret[len(created["display_prefix"]) :]  # the part after the display prefix
    chat = httpx.post(gateway.url + "/v1/chat/completions", headers=_bearer(secret), json=CHAT)
    assert chat.status_code == 200
    deadline = time.monotonic() + 10  # reports read what the usage writer has flushed
    while not gateway.gw.store.cost_report(["key"], None, None, key_id=key_id) and time.monotonic() < deadline:
        time.sleep(0.05)
    artifacts = [
        httpx.get(gateway.url + "/admin/keys", headers=master_headers).text,
        httpx.get(gateway.url + "/admin/keys?include_revoked=true&team=blue", headers=master_headers).text,
        httpx.get(f"{gateway.url}/admin/keys/{key_id}", headers=master_headers).text,
        httpx.patch(f"{gateway.url}/admin/keys/{key_id}", headers=master_headers, json={"rpm": 5}).text,
        httpx.get(gateway.url + "/admin/reports/cost?group_by=key,team", headers=master_headers).text,
        httpx.get(gateway.url + "/admin/reports/cost?group_by=key&format=csv", headers=master_headers).text,
        httpx.get(gateway.url + "/v1/usage?group_by=key", headers=_bearer(secret)).text,
        httpx.get(gateway.url + "/metrics").text,
        *_dashboard_pages(gateway, key_id),
        *_cli_listings(gateway, key_id),
        httpx.delete(f"{gateway.url}/admin/keys/{key_id}", headers=master_headers).text,
    ]
    for artifact in artifacts:
        assert key_id in artifact or "llmgate" in artifact  # each artifact really is about this gateway
        assert secret not in artifact and hidden not in artifact
    with gateway.gw.store.engine.connect() as conn:
        row = conn.execute(text("SELECT * FROM keys WHERE id = :id"), {"id": key_id}).mappings().one()
    assert row["key_hash"] == hashlib.sha256(secret.encode()).hexdigest()
    assert row["display_prefix"] == secret[:14]
    for value in row.values():
        assert hidden not in str(value)


def _dashboard_pages(gateway: GatewayServer, key_id: str) -> list[str]:
    with httpx.Client(base_url=gateway.url, headers={"origin": gateway.url}) as client:
        signed_in = client.post("/dashboard/login", data={"master_key": MASTER})
        assert signed_in.status_code == 303, signed_in.text
        pages = [client.get(path) for path in ("/dashboard", "/dashboard/keys", "/dashboard/keys.csv")]
        pages.append(client.get(f"/dashboard/keys/{key_id}"))
    assert all(page.status_code == 200 for page in pages)
    return [page.text for page in pages]


def _cli_listings(gateway: GatewayServer, key_id: str) -> list[str]:
    config = Path(gateway.settings.gateway.database_url.removeprefix("sqlite:///")).with_name("cli.toml")
    config.write_text(f'[gateway]\ndatabase_url = "{gateway.settings.gateway.database_url}"\n')
    out = []
    for args in (["keys", "list"], ["keys", "show", key_id]):
        done = subprocess.run(
            [sys.executable, "-m", "llmgate.cli", *args, "--config", str(config)],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=ROOT,
        )
        assert done.returncode == 0, done.stderr
        out.append(done.stdout + done.stderr)
    return out


ADMIN_ROUTES = [
    ("GET", "/admin/keys", None),
    ("POST", "/admin/keys", {"name": "escalated"}),
    ("GET", "/admin/keys/{own}", None),
    ("PATCH", "/admin/keys/{own}", {"rpm": 1_000_000}),
    ("DELETE", "/admin/keys/{other}", None),
    ("GET", "/admin/teams", None),
    ("POST", "/admin/teams", {"name": "mine"}),
    ("GET", "/admin/reports/cost", None),
    ("GET", "/admin/prompts", None),
    ("PUT", "/admin/prompts/owned", {"model": "mock-gpt", "messages": [{"role": "user", "content": "x"}]}),
    ("POST", "/admin/prompts/reload", None),
    ("GET", "/admin/deployments", None),
]


def test_a_virtual_key_cannot_reach_admin(gateway: GatewayServer) -> None:
    own, other = _create(gateway, name="own"), _create(gateway, name="other")
    for method, template, body in ADMIN_ROUTES:
        path = template.format(own=own["id"], other=other["id"])
        for headers in (_bearer(own["key"]), {"x-api-key": own["key"]}):
            response = httpx.request(method, gateway.url + path, headers=headers, json=body)
            assert response.status_code in (401, 403), (method, path, response.status_code, response.text)
            assert response.json()["error"]["message"]
        anonymous = httpx.request(method, gateway.url + path, json=body)
        assert anonymous.status_code == 401, (method, path, anonymous.text)
    record = gateway.gw.store.get_key(other["id"])
    assert not record["revoked"] and gateway.gw.store.get_key(own["id"])["rpm"] is None
    assert gateway.gw.store.get_team("mine") is None


def test_a_key_reads_only_its_own_usage(gateway: GatewayServer) -> None:
    own, other = _create(gateway, name="reader"), _create(gateway, name="victim")
    headers = _bearer(own["key"])
    assert httpx.post(gateway.url + "/v1/chat/completions", headers=headers, json=CHAT).status_code == 200
    refused = httpx.get(gateway.url + "/v1/usage", params={"key_id": other["id"]}, headers=headers)
    assert refused.status_code == 403 and refused.json()["error"]["param"] == "key_id"
    for group_by in ("key", "team", "model", "day"):
        mine = httpx.get(gateway.url + "/v1/usage", params={"group_by": group_by}, headers=headers)
        assert mine.status_code == 200 and mine.json()["key_id"] == own["id"]
    explicit = httpx.get(gateway.url + "/v1/usage", params={"key_id": own["id"]}, headers=headers)
    assert explicit.status_code == 200


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("is_master", True),
        ("revoked", False),
        ("key_hash", "0" * 64),
        ("id", "key_master"),
        ("display_prefix", "sk-lg-x"),
        ("created_at", "2000-01-01T00:00:00Z"),
        ("revoked_at", None),
        ("role", "admin"),
        ("key", "sk-lg-chosen"),
        ("meta", {}),
    ],
)
def test_mass_assignment_is_refused(
    gateway: GatewayServer, master_headers: dict[str, str], field: str, value: Any
) -> None:
    created = _create(gateway, name="mass")
    for method, path in (("PATCH", f"/admin/keys/{created['id']}"), ("POST", "/admin/keys")):
        response = httpx.request(method, gateway.url + path, headers=master_headers, json={"name": "m", field: value})
        assert response.status_code == 422, response.text
        assert response.json()["error"]["param"] == field
    record = gateway.gw.store.get_key(created["id"])
    assert record["name"] == "mass" and record["id"] == created["id"] and not record["revoked"]
    with gateway.gw.store.engine.connect() as conn:
        stored_hash = conn.execute(text("SELECT key_hash FROM keys WHERE id = :id"), {"id": created["id"]}).scalar()
    assert stored_hash == hashlib.sha256(created["key"].encode()).hexdigest()


def test_revoked_key_is_refused_at_once(gateway: GatewayServer, master_headers: dict[str, str]) -> None:
    created = _create(gateway, name="to-revoke")
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=created["key"], max_retries=0)
    client.chat.completions.create(**CHAT)  # cached as valid
    revoked = httpx.delete(f"{gateway.url}/admin/keys/{created['id']}", headers=master_headers)
    assert revoked.status_code == 200 and revoked.json()["revoked"] is True
    with pytest.raises(openai.AuthenticationError) as caught:
        client.chat.completions.create(**CHAT)
    assert "revoked" in caught.value.body["message"]
    messages = httpx.post(
        gateway.url + "/v1/messages",
        headers={"x-api-key": created["key"]},
        json={"model": "mock-gpt", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]},
    )
    assert messages.status_code == 401 and messages.json()["error"]["type"] == "authentication_error"


def test_expired_key_is_refused_at_once(gateway: GatewayServer, master_headers: dict[str, str]) -> None:
    created = _create(gateway, name="to-expire")
    headers = _bearer(created["key"])
    assert httpx.post(gateway.url + "/v1/chat/completions", headers=headers, json=CHAT).status_code == 200
    past = (datetime.now(UTC) - timedelta(seconds=1)).isoformat()
    patched = httpx.patch(
        f"{gateway.url}/admin/keys/{created['id']}", headers=master_headers, json={"expires_at": past}
    )
    assert patched.status_code == 200
    refused = httpx.post(gateway.url + "/v1/chat/completions", headers=headers, json=CHAT)
    assert refused.status_code == 401 and "expired" in refused.json()["error"]["message"]
    born_expired = _create(gateway, name="born-expired", expires_at=past)
    refused = httpx.get(gateway.url + "/v1/models", headers=_bearer(born_expired["key"]))
    assert refused.status_code == 401 and "expired" in refused.json()["error"]["message"]


def test_a_restricted_key_cannot_use_other_models(gateway: GatewayServer) -> None:
    created = _create(gateway, name="narrow", models=["mock-gpt"])
    headers = _bearer(created["key"])
    refused = httpx.post(gateway.url + "/v1/chat/completions", headers=headers, json={**CHAT, "model": "gpt"})
    assert refused.status_code == 403 and refused.json()["error"]["param"] == "model"
    listed = httpx.get(gateway.url + "/v1/models", headers=headers).json()
    assert [m["id"] for m in listed["data"]] == ["mock-gpt"]


# Names that hold a secret (hashes of secrets are not secrets: looking a hash up in SQL leaks nothing).
_SECRET_NAME = re.compile(r"(^|_)(master|master_key|secret|token|password|api_key|signature|credential)$")


def _operand_names(node: ast.expr) -> list[str]:
    if isinstance(node, ast.Name):
        return [node.id]
    if isinstance(node, ast.Attribute):
        return [node.attr]
    if isinstance(node, ast.Call):
        return _operand_names(node.func)
    return []


def test_secrets_are_never_compared_with_equality() -> None:
    """`==` on a secret returns as soon as a byte differs; secrets go through hmac.compare_digest."""
    offenders = []
    files = [*(ROOT / "llmgate").rglob("*.py"), *(ROOT / "providers").rglob("*.py")]
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.Compare) or not any(isinstance(op, ast.Eq | ast.NotEq) for op in node.ops):
                continue
            operands = [node.left, *node.comparators]
            if any(isinstance(o, ast.Constant) for o in operands):
                continue  # `token == ""`, `secret is None`-style checks of shape, not of value
            if any(_SECRET_NAME.search(name.lower()) for o in operands for name in _operand_names(o)):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}: {ast.unparse(node)}")
    assert offenders == []
    for module in ("llmgate/gateway.py", "llmgate/surfaces/admin.py", "llmgate/surfaces/dashboard.py"):
        assert "hmac.compare_digest(" in (ROOT / module).read_text(), module


def test_the_equality_scan_finds_a_plain_comparison() -> None:
    """The scan above must catch the mistake it exists for."""
    tree = ast.parse("if token == settings.master_key:\n    pass\n")
    compare = next(n for n in ast.walk(tree) if isinstance(n, ast.Compare))
    names = [name for o in [compare.left, *compare.comparators] for name in _operand_names(o)]
    assert any(_SECRET_NAME.search(name) for name in names)
