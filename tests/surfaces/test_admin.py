"""The admin API and /v1/usage over ASGI: master-key only, mass assignment refused,
bad parameters named, exact reports in JSON and CSV, a key sees only its own usage."""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator, Iterator
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from llmgate.config import parse_settings
from llmgate.gateway import Gateway
from llmgate.keys import StoreAuthenticator
from llmgate.storage import Store, create_store
from llmgate.surfaces.admin import install_error_handlers, router
from tests.storage.schemas import fresh_schema

MASTER = "mk-admin-test"
MASTER_HEADERS = {"authorization": f"Bearer {MASTER}"}


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    with ExitStack() as stack:
        if request.param == "sqlite":
            url = f"sqlite:///{tmp_path}/admin.db"
        else:
            url = stack.enter_context(fresh_schema(request.getfixturevalue("pg_url")))
        store = create_store(url)
        store.upgrade()
        stack.callback(store.close)
        yield store


@pytest.fixture
async def client(store: Store) -> AsyncIterator[httpx.AsyncClient]:
    settings = parse_settings({"gateway": {"master_key": MASTER, "key_cache_ttl_s": 60}}, "test")
    app = FastAPI()
    app.state.gateway = Gateway(
        settings=settings, client=None, router=None, auth=StoreAuthenticator(store, settings), store=store
    )
    app.include_router(router)
    install_error_handlers(app)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://gateway") as client:
        yield client


def assert_openai_error(response: httpx.Response, status: int, param: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    if param is not None:
        assert error["param"] == param
        assert param in error["message"]
    return error


async def create_key(client: httpx.AsyncClient, **body: Any) -> dict[str, Any]:
    response = await client.post("/admin/keys", json={"name": "k", **body}, headers=MASTER_HEADERS)
    assert response.status_code == 201, response.text
    return response.json()


def bearer(secret: str) -> dict[str, str]:
    return {"authorization": f"Bearer {secret}"}


# -- authentication --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [{}, {"authorization": "Bearer wrong"}, {"x-api-key": "wrong"}, {"authorization": f"Basic {MASTER}"}],
)
async def test_admin_needs_the_master_key(client: httpx.AsyncClient, headers: dict[str, str]) -> None:
    for method, path in (("GET", "/admin/keys"), ("POST", "/admin/keys"), ("GET", "/admin/reports/cost")):
        response = await client.request(method, path, headers=headers, json={"name": "x"})
        assert_openai_error(response, 401)


async def test_master_key_works_as_bearer_or_x_api_key(client: httpx.AsyncClient) -> None:
    assert (await client.get("/admin/keys", headers=MASTER_HEADERS)).status_code == 200
    assert (await client.get("/admin/keys", headers={"x-api-key": MASTER})).status_code == 200


async def test_a_virtual_key_cannot_reach_admin(client: httpx.AsyncClient) -> None:
    key = await create_key(client, rpm=1)
    for method, path, body in (
        ("GET", "/admin/keys", None),
        ("PATCH", f"/admin/keys/{key['id']}", {"rpm": 100000}),
        ("POST", "/admin/keys", {"name": "mine"}),
        ("DELETE", f"/admin/keys/{key['id']}", None),
        ("GET", "/admin/reports/cost", None),
    ):
        response = await client.request(method, path, json=body, headers=bearer(key["key"]))
        assert response.status_code in (401, 403)
        assert "error" in response.json()
    assert (await client.get(f"/admin/keys/{key['id']}", headers=MASTER_HEADERS)).json()["rpm"] == 1


# -- keys -------------------------------------------------------------------------------------------


async def test_create_key_returns_the_secret_only_once(client: httpx.AsyncClient) -> None:
    body = {
        "name": "search-svc",
        "team": "search",
        "models": ["gpt-4o-mini"],
        "rpm": 60,
        "tpm": 100000,
        "budget_usd": "25.5",
        "budget_period": "month",
        "priority": "batch",
        "expires_at": "2030-01-01T00:00:00Z",
        "metadata": {"owner": "ana"},
    }
    created = await create_key(client, **body)
    assert list(created)[:2] == ["id", "key"] and created["key"].startswith("sk-lg-")
    assert created["budget_usd"] == "25.5" and created["models"] == ["gpt-4o-mini"]
    assert created["expires_at"].startswith("2030-01-01T00:00:00")
    assert created["display_prefix"] == created["key"][:14]
    shown = (await client.get(f"/admin/keys/{created['id']}", headers=MASTER_HEADERS)).json()
    listed = (await client.get("/admin/keys", headers=MASTER_HEADERS)).json()["data"]
    for record in (shown, *listed):
        assert "key" not in record and "key_hash" not in record
        assert created["key"] not in str(record)
    assert shown == {k: v for k, v in created.items() if k != "key"}
    assert [k["id"] for k in listed] == [created["id"]]


async def test_patch_changes_only_the_sent_fields(client: httpx.AsyncClient) -> None:
    key = await create_key(client, rpm=10, team="a")
    response = await client.patch(f"/admin/keys/{key['id']}", json={"rpm": 20, "team": None}, headers=MASTER_HEADERS)
    assert response.status_code == 200
    updated = response.json()
    assert (updated["rpm"], updated["team"], updated["name"]) == (20, None, "k")
    null_name = await client.patch(f"/admin/keys/{key['id']}", json={"name": None}, headers=MASTER_HEADERS)
    assert_openai_error(null_name, 422, "name")
    missing = await client.patch("/admin/keys/key_nope", json={"rpm": 1}, headers=MASTER_HEADERS)
    assert_openai_error(missing, 404)


async def test_patch_takes_effect_on_this_instance_at_once(client: httpx.AsyncClient) -> None:
    key = await create_key(client, rpm=10)
    gateway = client._transport.app.state.gateway  # type: ignore[attr-defined]
    assert (await gateway.auth.authenticate(key["key"])).rpm == 10
    await client.patch(f"/admin/keys/{key['id']}", json={"rpm": 3}, headers=MASTER_HEADERS)
    assert (await gateway.auth.authenticate(key["key"])).rpm == 3


async def test_delete_revokes_the_key_at_once(client: httpx.AsyncClient) -> None:
    key = await create_key(client)
    assert (await client.get("/v1/usage", headers=bearer(key["key"]))).status_code == 200  # now cached
    response = await client.delete(f"/admin/keys/{key['id']}", headers=MASTER_HEADERS)
    assert response.status_code == 200 and response.json()["revoked"] is True
    assert_openai_error(await client.get("/v1/usage", headers=bearer(key["key"])), 401)
    assert (await client.get("/admin/keys", headers=MASTER_HEADERS)).json()["data"] == []
    listed = await client.get("/admin/keys", params={"include_revoked": "true"}, headers=MASTER_HEADERS)
    assert [k["id"] for k in listed.json()["data"]] == [key["id"]]
    assert_openai_error(await client.delete("/admin/keys/key_nope", headers=MASTER_HEADERS), 404)


@pytest.mark.parametrize(
    "field, value",
    [("revoked", False), ("key_hash", "0" * 64), ("id", "key_mine"), ("display_prefix", "x"), ("created_at", "x")],
)
async def test_mass_assignment_is_refused(client: httpx.AsyncClient, field: str, value: Any) -> None:
    create = await client.post("/admin/keys", json={"name": "x", field: value}, headers=MASTER_HEADERS)
    assert_openai_error(create, 422, field)
    key = await create_key(client)
    await client.delete(f"/admin/keys/{key['id']}", headers=MASTER_HEADERS)
    patch = await client.patch(f"/admin/keys/{key['id']}", json={field: value}, headers=MASTER_HEADERS)
    assert_openai_error(patch, 422, field)
    assert (await client.get(f"/admin/keys/{key['id']}", headers=MASTER_HEADERS)).json()["revoked"] is True


@pytest.mark.parametrize(
    "body, param",
    [
        ({"name": ""}, "name"),
        ({"name": "x", "rpm": -1}, "rpm"),
        ({"name": "x", "tpm": "lots"}, "tpm"),
        ({"name": "x", "budget_usd": "-5"}, "budget_usd"),
        ({"name": "x", "budget_period": "year"}, "budget_period"),
        ({"name": "x", "models": "gpt-4o"}, "models"),
        ({"rpm": 5}, "name"),
    ],
)
async def test_invalid_key_fields_are_named(client: httpx.AsyncClient, body: dict[str, Any], param: str) -> None:
    assert_openai_error(await client.post("/admin/keys", json=body, headers=MASTER_HEADERS), 422, param)


async def test_malformed_json_is_a_400(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/admin/keys", content=b"{not json", headers={**MASTER_HEADERS, "content-type": "application/json"}
    )
    assert_openai_error(response, 400)


# -- teams -------------------------------------------------------------------------------------------


async def test_team_crud(client: httpx.AsyncClient) -> None:
    created = await client.post(
        "/admin/teams", json={"name": "red", "rpm": 100, "budget_usd": 12.5}, headers=MASTER_HEADERS
    )
    assert created.status_code == 201 and created.json()["budget_usd"] == "12.5"
    assert_openai_error(await client.post("/admin/teams", json={"name": "red"}, headers=MASTER_HEADERS), 409, "name")
    assert_openai_error(
        await client.post("/admin/teams", json={"name": "blue", "created_at": "x"}, headers=MASTER_HEADERS),
        422,
        "created_at",
    )
    patched = await client.patch("/admin/teams/red", json={"tpm": 5000}, headers=MASTER_HEADERS)
    assert patched.json()["tpm"] == 5000 and patched.json()["rpm"] == 100
    listed = await client.get("/admin/teams", headers=MASTER_HEADERS)
    assert [t["name"] for t in listed.json()["data"]] == ["red"]
    assert (await client.delete("/admin/teams/red", headers=MASTER_HEADERS)).json() == {"name": "red", "deleted": True}
    assert_openai_error(await client.get("/admin/teams/red", headers=MASTER_HEADERS), 404)
    assert_openai_error(await client.get("/admin/teams", headers=bearer("wrong")), 401)


# -- reports and usage --------------------------------------------------------------------------------


def calls(key_a: str, key_b: str) -> list[dict[str, Any]]:
    def row(ts: str, key_id: str, model: str, cost: int, status: int = 200, **extra: Any) -> dict[str, Any]:
        return {
            "ts": datetime.fromisoformat(ts).replace(tzinfo=UTC),
            "key_id": key_id,
            "key_name": key_id,
            "team": "red" if key_id == key_a else "blue",
            "model": model,
            "status": status,
            "input_tokens": 100,
            "output_tokens": 10,
            "cost_nusd": cost,
            **extra,
        }

    return [
        row("2026-05-01T00:00:00", key_a, "gpt-4o-mini", 21_000),
        row("2026-05-01T23:59:59", key_a, "claude", 333_333_333),
        row("2026-05-02T12:00:00", key_a, "gpt-4o-mini", 0, status=500),
        row("2026-05-02T12:00:00", key_b, "gpt-4o-mini", 7, cached_input_tokens=50),
        row("2026-05-03T08:00:00", key_b, "claude", 1_000_000_001, prompt_name="summarize"),
    ]


async def test_cost_report_totals_are_exact_and_csv_equals_json(client: httpx.AsyncClient, store: Store) -> None:
    rows = calls("key_a", "key_b")
    store.insert_usage(rows)
    for group_by in ("key", "team", "model", "day", "prompt", "key,day", "team,model", "day,model,key"):
        params = {"group_by": group_by, "start": "2026-05-01", "end": "2026-05-03"}
        report = (await client.get("/admin/reports/cost", params=params, headers=MASTER_HEADERS)).json()
        assert report["total"]["cost_nusd"] == sum(r["cost_nusd"] for r in rows) == 1_333_354_341
        assert report["total"]["cost_usd"] == "1.333354341"
        assert report["total"]["requests"] == 5 and report["total"]["errors"] == 1
        assert sum(r["cost_nusd"] for r in report["data"]) == report["total"]["cost_nusd"]
        text = (
            await client.get("/admin/reports/cost", params={**params, "format": "csv"}, headers=MASTER_HEADERS)
        ).text
        parsed = list(csv.DictReader(io.StringIO(text)))
        assert len(parsed) == len(report["data"])
        for from_csv, from_json in zip(parsed, report["data"], strict=True):
            assert set(from_csv) == set(from_json)
            assert from_csv == {k: "" if v is None else str(v) for k, v in from_json.items()}


async def test_cost_report_groups_and_date_bounds(client: httpx.AsyncClient, store: Store) -> None:
    store.insert_usage(calls("key_a", "key_b"))
    day_one = await client.get(
        "/admin/reports/cost",
        params={"group_by": "model", "start": "2026-05-01", "end": "2026-05-01"},
        headers=MASTER_HEADERS,
    )
    assert [(r["model"], r["cost_nusd"]) for r in day_one.json()["data"]] == [
        ("claude", 333_333_333),
        ("gpt-4o-mini", 21_000),
    ]
    by_team = await client.get("/admin/reports/cost", params={"group_by": "team"}, headers=MASTER_HEADERS)
    assert {r["team"]: r["requests"] for r in by_team.json()["data"]} == {"blue": 2, "red": 3}
    csv_response = await client.get("/admin/reports/cost", params={"format": "csv"}, headers=MASTER_HEADERS)
    assert csv_response.headers["content-type"].startswith("text/csv")
    assert csv_response.text.splitlines()[0].startswith("key_id,key_name,requests,errors")


@pytest.mark.parametrize(
    "params, param",
    [
        ({"group_by": "key,colour"}, "group_by"),
        ({"group_by": "provider"}, "group_by"),
        ({"start": "2026-13-01"}, "start"),
        ({"start": "yesterday"}, "start"),
        ({"end": "2026-5-1"}, "end"),
        ({"start": "2026-05-02", "end": "2026-05-01"}, "start"),
        ({"format": "xml"}, "format"),
    ],
)
async def test_bad_report_parameters_are_400_naming_the_parameter(
    client: httpx.AsyncClient, params: dict[str, str], param: str
) -> None:
    for path, headers in (("/admin/reports/cost", MASTER_HEADERS), ("/v1/usage", MASTER_HEADERS)):
        assert_openai_error(await client.get(path, params=params, headers=headers), 400, param)


async def test_usage_shows_a_key_only_its_own_figures(client: httpx.AsyncClient, store: Store) -> None:
    a, b = await create_key(client, name="a"), await create_key(client, name="b")
    store.insert_usage(calls(a["id"], b["id"]))
    own = await client.get("/v1/usage", params={"group_by": "key"}, headers=bearer(a["key"]))
    assert own.status_code == 200
    assert [r["key_id"] for r in own.json()["data"]] == [a["id"]]
    assert own.json()["total"]["cost_nusd"] == 333_354_333 and own.json()["key_id"] == a["id"]
    by_day = await client.get("/v1/usage", headers={"x-api-key": b["key"]})
    assert [(r["day"], r["requests"]) for r in by_day.json()["data"]] == [("2026-05-02", 1), ("2026-05-03", 1)]
    other = await client.get("/v1/usage", params={"key_id": b["id"]}, headers=bearer(a["key"]))
    assert_openai_error(other, 403, "key_id")
    same = await client.get("/v1/usage", params={"key_id": a["id"]}, headers=bearer(a["key"]))
    assert same.json()["total"] == own.json()["total"]
    as_master = await client.get("/v1/usage", params={"key_id": b["id"]}, headers=MASTER_HEADERS)
    assert as_master.json()["total"]["cost_nusd"] == 1_000_000_008
    everything = await client.get("/v1/usage", headers=MASTER_HEADERS)
    assert everything.json()["total"]["requests"] == 5
    csv_text = (await client.get("/v1/usage", params={"format": "csv"}, headers=bearer(a["key"]))).text
    assert b["id"] not in csv_text


async def test_usage_needs_a_valid_key(client: httpx.AsyncClient) -> None:
    assert_openai_error(await client.get("/v1/usage"), 401)
    assert_openai_error(await client.get("/v1/usage", headers=bearer("sk-lg-forged")), 401)


async def test_framework_errors_use_the_openai_shape(client: httpx.AsyncClient) -> None:
    assert_openai_error(await client.get("/admin/nothing-here", headers=MASTER_HEADERS), 404)
    assert_openai_error(await client.put("/admin/keys", headers=MASTER_HEADERS), 405)
    bad_flag = await client.get("/admin/keys", params={"include_revoked": "maybe"}, headers=MASTER_HEADERS)
    assert_openai_error(bad_flag, 422, "include_revoked")
