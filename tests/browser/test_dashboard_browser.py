"""`/dashboard` in a real browser: Debian's chromium driven by Playwright (never a downloaded browser).

Served by uvicorn on 127.0.0.1 (an ephemeral port). With a SQLite store seeded
with a month of usage rows, the browser signs in, reads the per-key table,
checks the chart rendered, downloads the CSV (compared with the admin report's
bytes), signs out, and leaves a screenshot in tests/artifacts/dashboard.png
(also copied to docs/dashboard.png for the README). Then the whole gateway
(tests/harness.py) takes real calls through the mock provider, and the table
must show the figures those calls recorded.
"""

from __future__ import annotations

import asyncio
import random
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI

from llmgate.config import Settings
from llmgate.gateway import Gateway, MasterKeyAuthenticator
from llmgate.storage.store import Store
from llmgate.surfaces.admin import router as admin_router
from llmgate.surfaces.dashboard import COOKIE_NAME, router
from llmgate.throttle.limiter import ThrottleLimiter
from tests.harness import GatewayServer, make_settings

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
MASTER = "sk-master-browser-test"
LOOPBACK = httpx.Client(trust_env=False, timeout=30)  # 127.0.0.1 only: never through a proxy from the environment
REPO = Path(__file__).resolve().parents[2]
ARTIFACT = REPO / "tests" / "artifacts" / "dashboard.png"
README_SHOT = REPO / "docs" / "dashboard.png"
TODAY = datetime.now(UTC).date()
START = TODAY - timedelta(days=29)
TEAMS = ("research", "support", "growth")
MODELS = {"gpt-4o-mini": (150, 600), "claude-haiku": (800, 4000), "gemini-flash": (100, 400)}  # nano-USD/token


DAILY_TIERS = {
    "name": "daily-tiers",
    "signal": "tokens_today",
    "steps": [{"above": 0, "rpm": 600}, {"above": 1_000_000, "rpm": 60, "tpm": 20_000}],
}


@dataclass
class Served:
    url: str
    store: Store
    keys: dict[str, dict[str, Any]]


def _seed(store: Store) -> dict[str, dict[str, Any]]:
    """Eight keys with a month of varied, reproducible usage (the screenshot shows it)."""
    rng = random.Random(8)
    names = ["web-app", "batch-jobs", "support-bot", "eval-suite", "search", "notebooks", "mobile", "ci"]
    keys = {}
    for i, name in enumerate(names):
        key, _ = store.create_key(
            name=name, team=TEAMS[i % 3], budget_usd=str(40 + 20 * i), budget_period="month", rpm=600
        )
        keys[name] = key
    rows = []
    for day_offset in range(30):
        day = START + timedelta(days=day_offset)
        for rank, name in enumerate(names):
            for _ in range(rng.randint(1, 4)):
                model = rng.choice(list(MODELS))
                tokens_in = rng.randint(2_000, 40_000) * (len(names) - rank)
                tokens_out = tokens_in // rng.randint(3, 8)
                price_in, price_out = MODELS[model]
                failed = rng.random() < 0.05
                rows.append(
                    {
                        "ts": datetime(day.year, day.month, day.day, rng.randint(0, 23), tzinfo=UTC),
                        "key_id": keys[name]["id"],
                        "key_name": name,
                        "team": keys[name]["team"],
                        "model": model,
                        "status": 502 if failed else 200,
                        "input_tokens": 0 if failed else tokens_in,
                        "output_tokens": 0 if failed else tokens_out,
                        "cost_nusd": 0 if failed else tokens_in * price_in + tokens_out * price_out,
                    }
                )
    store.insert_usage(rows)
    return keys


def _free_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    store = Store(f"sqlite:///{tmp_path_factory.mktemp('browser')}/gateway.db")
    store.upgrade()
    keys = _seed(store)
    settings = Settings.model_validate(
        {"gateway": {"master_key": MASTER}, "limits": {"tpm": 200_000}, "throttle": {"policies": [DAILY_TIERS]}}
    )
    limiter = ThrottleLimiter(settings)
    asyncio.run(limiter.reconcile({}, {}, {keys["batch-jobs"]["id"]: 1_200_000}))
    app = FastAPI()
    app.include_router(router)
    app.include_router(admin_router)
    app.state.gateway = Gateway(
        settings=settings,
        client=None,
        router=None,
        auth=MasterKeyAuthenticator(settings),
        limiter=limiter,
        store=store,
    )
    sock = _free_socket()
    server = uvicorn.Server(uvicorn.Config(app, lifespan="off", log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    host, port = sock.getsockname()
    yield Served(f"http://{host}:{port}", store, keys)
    server.should_exit = True
    thread.join(timeout=10)
    sock.close()
    store.close()


@pytest.fixture
def browser(chromium_path: str) -> Iterator[Any]:
    """Debian's chromium (LLMGATE_TEST_CHROMIUM, see tests/conftest.py), never a downloaded browser."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=chromium_path, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


def _expected_cell(store: Store, key_id: str, field: str) -> int:
    rows = store.cost_report(["key"], START, TODAY, key_id=key_id)
    return sum(int(row[field]) for row in rows)


def _usd(nusd: int) -> str:
    from llmgate.charts import format_usd_nano

    return format_usd_nano(nusd)


def test_sign_in_read_the_keys_download_the_csv_and_sign_out(served: Served, browser: Any) -> None:
    context = browser.new_context(accept_downloads=True, viewport={"width": 1280, "height": 900})
    page = context.new_page()
    problems: list[str] = []
    page.on("console", lambda msg: problems.append(msg.text) if msg.type == "error" else None)
    page.on("requestfailed", lambda request: problems.append(f"failed: {request.url}"))
    range_query = f"start={START.isoformat()}&end={TODAY.isoformat()}"

    page.goto(f"{served.url}/dashboard?{range_query}")
    assert page.url.startswith(f"{served.url}/dashboard/login")
    page.fill("#master-key", MASTER)
    page.click("#sign-in")
    page.wait_for_url(f"{served.url}/dashboard")
    cookie = next(c for c in context.cookies() if c["name"] == COOKIE_NAME)
    assert cookie["httpOnly"] is True
    assert cookie["sameSite"] == "Strict"
    assert cookie["path"] == "/dashboard"
    assert MASTER not in cookie["value"]

    page.goto(f"{served.url}/dashboard?{range_query}")
    chart = page.locator("#cost-chart svg")
    assert page.locator("#cost-chart svg rect.bar").count() >= 30
    box = chart.bounding_box()
    assert box is not None and box["width"] > 600 and box["height"] > 200
    total = sum(int(r["cost_nusd"]) for r in served.store.cost_report(["key"], START, TODAY))
    assert page.inner_text("#total-cost") == _usd(total)
    ARTIFACT.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACT), full_page=True)
    README_SHOT.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(ARTIFACT, README_SHOT)

    page.click("nav >> text=Keys")
    page.wait_for_selector("#keys-table")
    for name, key in served.keys.items():
        row = page.locator(f'#keys-table tr[data-key-id="{key["id"]}"]')
        assert row.locator("td").first.inner_text().startswith(name)
        assert row.locator("td.requests").inner_text() == f"{_expected_cell(served.store, key['id'], 'requests'):,}"
        assert row.locator("td.errors").inner_text() == f"{_expected_cell(served.store, key['id'], 'errors'):,}"
        assert row.locator("td.cost").inner_text() == _usd(_expected_cell(served.store, key["id"], "cost_nusd"))
    batch_jobs = page.locator(f'#keys-table tr[data-key-id="{served.keys["batch-jobs"]["id"]}"]')
    assert batch_jobs.locator("td.step").inner_text() == "daily-tiers step 1 (rpm 60, tpm 20,000)"
    page.screenshot(path=str(ARTIFACT.with_name("dashboard-keys.png")), full_page=True)
    page.click("#keys-table th >> text=Key")  # sort by name, ascending
    first_names = page.locator("#keys-table tbody tr td:first-child a").all_inner_texts()
    assert first_names == sorted(served.keys)

    with page.expect_download() as download_info:
        page.click("#csv-download")
    downloaded = Path(download_info.value.path()).read_bytes()
    admin_report = LOOPBACK.get(
        f"{served.url}/admin/reports/cost",
        params={"group_by": "key", "format": "csv", "start": START.isoformat(), "end": TODAY.isoformat()},
        headers={"authorization": f"Bearer {MASTER}"},
    )
    assert admin_report.status_code == 200
    assert downloaded == admin_report.content
    assert downloaded.count(b"\r\n") == len(served.keys) + 1

    page.click(f'#keys-table tr[data-key-id="{served.keys["web-app"]["id"]}"] a')
    page.wait_for_selector("#key-chart svg")
    assert page.locator("#key-chart svg rect.bar").count() >= 30
    assert page.locator("#key-chart svg").inner_html().count("gpt-4o-mini") >= 1
    page.screenshot(path=str(ARTIFACT.with_name("dashboard-key.png")), full_page=True)

    page.click("#sign-out")
    page.wait_for_url(f"{served.url}/dashboard/login")
    assert not [c for c in context.cookies() if c["name"] == COOKIE_NAME]
    page.goto(f"{served.url}/dashboard")
    assert page.url.startswith(f"{served.url}/dashboard/login")
    assert problems == []
    context.close()


def test_the_date_picker_narrows_the_range(served: Served, browser: Any) -> None:
    context = browser.new_context()
    page = context.new_page()
    page.goto(f"{served.url}/dashboard/login")
    page.fill("#master-key", MASTER)
    page.click("#sign-in")
    page.wait_for_url(f"{served.url}/dashboard")
    day: date = TODAY - timedelta(days=3)
    page.fill("#range-start", day.isoformat())
    page.fill("#range-end", day.isoformat())
    page.click("form.range button")
    page.wait_for_url(f"**start={day.isoformat()}**")
    requests = sum(int(r["requests"]) for r in served.store.cost_report(["key"], day, day))
    assert page.inner_text("#total-requests") == f"{requests:,}"
    bars_per_day = page.locator("#cost-chart svg rect.bar").count()
    assert 1 <= bars_per_day <= len(served.keys)
    context.close()


def _gateway_settings(tmp_path: Path) -> dict[str, Any]:
    return {
        "gateway": {
            "master_key": MASTER,
            "database_url": f"sqlite:///{tmp_path}/calls.db",
            "usage_flush_interval_s": 0.05,
            "usage_spill_path": str(tmp_path / "spill.jsonl"),
            "log_requests": False,
        },
        "providers": {"mock": {"type": "mock"}},
        "models": [{"name": "mock-gpt", "provider": "mock", "price": {"input": 1.0, "output": 2.0}}],
    }


def _wait_for_usage(url: str, requests: int) -> list[dict[str, Any]]:
    """The per-key report once the usage writer has stored `requests` calls."""
    deadline = time.monotonic() + 15
    while True:
        report = LOOPBACK.get(
            f"{url}/admin/reports/cost", params={"group_by": "key"}, headers={"authorization": f"Bearer {MASTER}"}
        ).json()
        if report["total"]["requests"] >= requests or time.monotonic() > deadline:
            return report["data"]
        time.sleep(0.1)


def test_figures_from_real_calls_through_the_gateway(tmp_path: Path, browser: Any) -> None:
    with GatewayServer(make_settings(_gateway_settings(tmp_path))) as server:
        admin = {"authorization": f"Bearer {MASTER}"}
        created = {
            name: LOOPBACK.post(f"{server.url}/admin/keys", json={"name": name, "team": "qa"}, headers=admin).json()
            for name in ("caller-one", "caller-two")
        }
        for name, calls in (("caller-one", 3), ("caller-two", 1)):
            for i in range(calls):
                reply = LOOPBACK.post(
                    f"{server.url}/v1/chat/completions",
                    json={"model": "mock-gpt", "messages": [{"role": "user", "content": f"hello number {i}"}]},
                    headers={"authorization": f"Bearer {created[name]['key']}"},
                )
                assert reply.status_code == 200, reply.text
        report = {row["key_id"]: row for row in _wait_for_usage(server.url, 4)}
        assert {report[k["id"]]["requests"] for k in created.values()} == {3, 1}

        context = browser.new_context()
        page = context.new_page()
        page.goto(f"{server.url}/dashboard/keys")
        page.fill("#master-key", MASTER)
        page.click("#sign-in")
        page.wait_for_url(f"{server.url}/dashboard")
        assert page.locator("#cost-chart svg rect.bar").count() >= 2
        page.goto(f"{server.url}/dashboard/keys")
        for key in created.values():
            figures = report[key["id"]]
            row = page.locator(f'#keys-table tr[data-key-id="{key["id"]}"]')
            assert row.locator("td.requests").inner_text() == str(figures["requests"])
            tokens = figures["input_tokens"] + figures["output_tokens"]
            assert tokens > 0
            assert row.locator("td.tokens").inner_text() == f"{tokens:,}"
            assert row.locator("td.cost").inner_text() == _usd(figures["cost_nusd"])
        context.close()
