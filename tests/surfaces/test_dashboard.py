"""`/dashboard` over HTTP: sign-in and session cookie, pages and their figures, CSV, scale.

Runs against a real SQLite Store seeded through `insert_usage`, so every figure
on a page comes from the store's own SQL aggregation.
"""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, date, datetime, timedelta
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from llmgate.config import Settings
from llmgate.gateway import Gateway, MasterKeyAuthenticator
from llmgate.storage.store import Store
from llmgate.surfaces import dashboard
from llmgate.surfaces.admin import router as admin_router
from llmgate.surfaces.dashboard import COOKIE_NAME, SessionSigner, parse_date_range, router
from llmgate.throttle.limiter import ThrottleLimiter

MASTER = "sk-master-for-dashboard-tests"
NANO = 1_000_000_000
TODAY = datetime.now(UTC).date()
# The dashboard and the limiter see noon of TODAY, so a run crossing midnight UTC keeps one day.
NOON_TODAY = datetime(TODAY.year, TODAY.month, TODAY.day, 12, tzinfo=UTC).timestamp()
DAY1 = TODAY - timedelta(days=3)
DAY2 = TODAY - timedelta(days=2)
RANGE = {"start": (TODAY - timedelta(days=6)).isoformat(), "end": TODAY.isoformat()}


def _ts(day: date, hour: int = 12) -> str:
    return datetime(day.year, day.month, day.day, hour, tzinfo=UTC).isoformat()


def _usage(key: dict[str, Any], day: date, model: str, cost_nusd: int, **extra: Any) -> dict[str, Any]:
    row = {
        "ts": _ts(day),
        "key_id": key["id"],
        "key_name": key["name"],
        "team": key.get("team"),
        "model": model,
        "status": 200,
        "input_tokens": 100,
        "output_tokens": 50,
        "cost_nusd": cost_nusd,
    }
    row.update(extra)
    return row


DAILY_TIERS = {
    "name": "daily-tiers",
    "scope": "key",
    "signal": "tokens_today",
    "steps": [{"above": 0, "rpm": 600, "tpm": 200_000}, {"above": 1_000_000, "rpm": 60, "tpm": 20_000}],
}


async def _tiered_limiter(settings: Settings, tokens_today: dict[str, int]) -> ThrottleLimiter:
    """The real throttle engine with one step policy, its tokens-today counters set from `tokens_today`."""
    limiter = ThrottleLimiter(settings, clock=lambda: NOON_TODAY)
    await limiter.reconcile({}, {}, tokens_today)
    return limiter


@pytest.fixture(autouse=True)
def _held_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dashboard, "_now", lambda: NOON_TODAY)


@pytest.fixture
def store(tmp_path: Any) -> Iterator[Store]:
    s = Store(f"sqlite:///{tmp_path}/dashboard.db")
    s.upgrade()
    yield s
    s.close()


@pytest.fixture
def seeded(store: Store) -> dict[str, dict[str, Any]]:
    alpha, _ = store.create_key(name="alpha", team="research", budget_usd="10", budget_period="day", rpm=30)
    beta, _ = store.create_key(name="beta", team="support")
    gamma, _ = store.create_key(name="gamma")
    store.revoke_key(gamma["id"])
    store.insert_usage(
        [
            _usage(alpha, DAY1, "gpt-4o-mini", 2 * NANO),
            _usage(alpha, DAY2, "gpt-4o-mini", 1 * NANO),
            _usage(alpha, DAY2, "claude-haiku", 500_000_000, status=502, input_tokens=10, output_tokens=0),
            _usage(alpha, TODAY, "gpt-4o-mini", 2_500_000_000),
            _usage(beta, DAY1, "gpt-4o-mini", 250_000_000),
            _usage(gamma, DAY2, "claude-haiku", 100_000_000),
        ]
    )
    return {"alpha": alpha, "beta": beta, "gamma": gamma}


def _settings(master: str | None = MASTER, policies: tuple[dict, ...] = (), **limits: Any) -> Settings:
    return Settings.model_validate(
        {"gateway": {"master_key": master}, "limits": limits, "throttle": {"policies": list(policies)}}
    )


def _gateway(store: Any, master: str | None = MASTER, limiter: Any = None, **limits: Any) -> Gateway:
    settings = limiter.settings if limiter is not None else _settings(master, **limits)
    gateway = Gateway(settings=settings, client=None, router=None, auth=MasterKeyAuthenticator(settings), store=store)
    if limiter is not None:
        gateway.limiter = limiter
    return gateway


def _app(gateway: Gateway) -> FastAPI:
    app = FastAPI()
    app.include_router(router)
    app.include_router(admin_router)
    app.state.gateway = gateway
    return app


def _client(app: FastAPI, base_url: str = "http://gw.test") -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=base_url)


@pytest.fixture
async def client(store: Store, seeded: dict) -> AsyncIterator[httpx.AsyncClient]:
    async with _client(_app(_gateway(store))) as c:
        yield c


async def _sign_in(client: httpx.AsyncClient, key: str = MASTER, **headers: str) -> httpx.Response:
    return await client.post("/dashboard/login", data={"master_key": key}, headers=headers)


def _cells(html: str, key_id: str) -> dict[str, str]:
    """The text of each classed cell in the keys-table row of `key_id`."""
    row = re.search(rf'<tr data-key-id="{re.escape(key_id)}">(.*?)</tr>', html, re.S)
    assert row is not None, f"no row for {key_id}"
    cells = re.findall(r'<td class="n? ?(\w+)">(.*?)</td>', row.group(1), re.S)
    return {name: re.sub(r"<[^>]+>|\s+", " ", text).strip() for name, text in cells}


def _row_order(html: str) -> list[str]:
    return re.findall(r'<tr data-key-id="([^"]+)">', html)


# ---- sign-in and session ------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/dashboard", "/dashboard/keys", "/dashboard/keys/abc", "/dashboard/keys.csv"])
async def test_pages_redirect_to_the_login_page_without_a_session(client: httpx.AsyncClient, path: str) -> None:
    response = await client.get(path)
    assert response.status_code == 303
    assert response.headers["location"] == "/dashboard/login"


async def test_login_page_is_a_form_with_strict_security_headers(client: httpx.AsyncClient) -> None:
    response = await client.get("/dashboard/login")
    assert response.status_code == 200
    assert '<form method="post" action="/dashboard/login">' in response.text
    assert 'type="password"' in response.text
    assert "default-src 'none'" in response.headers["content-security-policy"]
    assert response.headers["x-frame-options"] == "DENY"


async def test_a_wrong_key_is_refused_without_a_cookie(client: httpx.AsyncClient) -> None:
    response = await _sign_in(client, "sk-not-the-master")
    assert response.status_code == 401
    assert "set-cookie" not in response.headers
    assert "That is not the master key." in response.text
    assert (await client.get("/dashboard")).status_code == 303


async def test_signing_in_sets_a_strict_httponly_cookie_that_is_not_the_key(client: httpx.AsyncClient) -> None:
    response = await _sign_in(client)
    assert response.status_code == 303
    assert response.headers["location"] == "/dashboard"
    cookie = response.headers["set-cookie"]
    assert cookie.startswith(f"{COOKIE_NAME}=")
    assert "HttpOnly" in cookie
    assert "SameSite=strict" in cookie or "SameSite=Strict" in cookie
    assert "Path=/dashboard" in cookie
    assert "Secure" not in cookie  # plain http
    assert MASTER not in cookie
    assert (await client.get("/dashboard")).status_code == 200


@pytest.mark.parametrize(
    ("base_url", "headers"),
    [("https://gw.test", {}), ("http://gw.test", {"x-forwarded-proto": "https"})],
)
async def test_the_cookie_is_secure_over_https(store: Store, seeded: dict, base_url: str, headers: dict) -> None:
    async with _client(_app(_gateway(store)), base_url) as c:
        response = await c.post("/dashboard/login", data={"master_key": MASTER}, headers=headers)
    assert response.status_code == 303
    assert "Secure" in response.headers["set-cookie"]


async def test_a_cross_origin_login_is_refused(client: httpx.AsyncClient) -> None:
    response = await _sign_in(client, origin="https://evil.example")
    assert response.status_code == 403
    assert "set-cookie" not in response.headers
    same = await _sign_in(client, origin="http://gw.test")
    assert same.status_code == 303


async def test_a_null_origin_is_refused(client: httpx.AsyncClient) -> None:
    assert (await _sign_in(client, origin="null")).status_code == 403


async def test_a_proxys_forwarded_host_counts_as_this_host(client: httpx.AsyncClient) -> None:
    headers = {"origin": "https://gw.example.com", "x-forwarded-host": "gw.example.com"}
    assert (await _sign_in(client, **headers)).status_code == 303
    assert (await _sign_in(client, referer="https://evil.example/page")).status_code == 403


async def test_signing_out_clears_the_cookie_and_revokes_the_token(client: httpx.AsyncClient) -> None:
    await _sign_in(client)
    token = client.cookies[COOKIE_NAME]
    response = await client.post("/dashboard/logout", headers={"origin": "http://gw.test"})
    assert response.status_code == 303
    assert response.headers["location"] == "/dashboard/login"
    assert "Max-Age=0" in response.headers["set-cookie"]
    assert (await client.get("/dashboard")).status_code == 303
    replayed = await client.get("/dashboard", cookies={COOKIE_NAME: token})
    assert replayed.status_code == 303


async def test_a_cross_origin_sign_out_is_refused(client: httpx.AsyncClient) -> None:
    await _sign_in(client)
    response = await client.post("/dashboard/logout", headers={"origin": "https://evil.example"})
    assert response.status_code == 403
    assert (await client.get("/dashboard")).status_code == 200


async def test_forged_and_foreign_tokens_are_refused(client: httpx.AsyncClient) -> None:
    now = time.time()
    other = SessionSigner("another-master-key").issue(now)
    good = SessionSigner(MASTER).issue(now)
    expiry, nonce, signature = good.split(".")
    tampered = f"{int(expiry) + 3600}.{nonce}.{signature}"
    for token in (other, tampered, "garbage", MASTER):
        client.cookies.set(COOKIE_NAME, token)
        assert (await client.get("/dashboard")).status_code == 303, token
    client.cookies.set(COOKIE_NAME, good)
    assert (await client.get("/dashboard")).status_code == 200


def test_tokens_expire() -> None:
    signer = SessionSigner(MASTER)
    token = signer.issue(1_000_000.0)
    assert signer.verify(token, 1_000_000.0 + 60)
    assert not signer.verify(token, 1_000_000.0 + dashboard.SESSION_TTL_S + 1)


async def test_without_a_master_key_nobody_can_sign_in(store: Store, seeded: dict) -> None:
    async with _client(_app(_gateway(store, master=None))) as c:
        page = await c.get("/dashboard/login")
        assert "No master key is configured" in page.text
        assert (await c.post("/dashboard/login", data={"master_key": ""})).status_code == 401


# ---- pages --------------------------------------------------------------------------------------------------


async def test_overview_shows_totals_chart_and_top_tables(client: httpx.AsyncClient, seeded: dict) -> None:
    await _sign_in(client)
    response = await client.get("/dashboard", params=RANGE)
    assert response.status_code == 200
    html = response.text
    assert response.headers["cache-control"] == "no-store"
    # 2 + 1 + 0.5 + 2.5 (alpha) + 0.25 (beta) + 0.1 (gamma) USD over 6 calls, one of them an error.
    assert '<span class="value" id="total-cost">$6.35</span>' in html
    assert '<span class="value" id="total-requests">6</span>' in html
    assert '<span class="value" id="total-errors">1</span>' in html
    chart = re.search(r'<figure id="cost-chart">(.*?)</figure>', html, re.S).group(1)
    assert chart.startswith("<svg")
    assert len(re.findall(r'<rect class="bar"', chart)) == 5  # alpha on 3 days, beta and gamma on one each
    assert "(UTC)" in chart
    top_keys = re.search(r'<table id="top-keys">(.*?)</table>', html, re.S).group(1)
    assert top_keys.index("alpha") < top_keys.index("beta") < top_keys.index("gamma")
    top_models = re.search(r'<table id="top-models">(.*?)</table>', html, re.S).group(1)
    assert top_models.index("gpt-4o-mini") < top_models.index("claude-haiku")
    assert 'type="date" name="start"' in html and RANGE["start"] in html
    assert "UTC" in html


async def test_the_overview_defaults_to_the_last_30_days(client: httpx.AsyncClient) -> None:
    await _sign_in(client)
    html = (await client.get("/dashboard")).text
    assert f'value="{(TODAY - timedelta(days=29)).isoformat()}"' in html
    assert f'value="{TODAY.isoformat()}"' in html
    assert '<span class="value" id="total-requests">6</span>' in html


async def test_the_overview_chart_keeps_ten_keys_and_folds_the_rest_into_other(store: Store) -> None:
    keys = [store.create_key(name=f"key-{i:02d}")[0] for i in range(13)]
    store.insert_usage([_usage(k, DAY1, "m", (i + 1) * NANO) for i, k in enumerate(keys)])
    async with _client(_app(_gateway(store))) as c:
        await _sign_in(c)
        html = (await c.get("/dashboard", params=RANGE)).text
    legend = re.findall(r'<g class="legend-item">.*?<text[^>]*>([^<]*)</text></g>', html)
    assert len(legend) == 11
    assert legend[0] == "key-12 ($13.00)"
    assert legend[-1] == "other ($6.00)"  # keys 00, 01 and 02 cost 1 + 2 + 3 USD


async def test_keys_table_shows_each_keys_figures(client: httpx.AsyncClient, seeded: dict) -> None:
    await _sign_in(client)
    html = (await client.get("/dashboard/keys", params=RANGE)).text
    alpha = _cells(html, seeded["alpha"]["id"])
    assert alpha["requests"] == "4"
    assert alpha["errors"] == "1"
    assert alpha["tokens"] == f"{3 * 150 + 10:,}"
    assert alpha["cost"] == "$6.00"
    assert alpha["budget"] == "25.0%"  # 2.5 USD of a 10 USD daily budget spent today
    assert alpha["step"] == "\u2014"  # this limiter has no step_in_force
    beta = _cells(html, seeded["beta"]["id"])
    assert (beta["requests"], beta["cost"], beta["budget"]) == ("1", "$0.25", "\u2014")
    gamma_row = re.search(rf'<tr data-key-id="{seeded["gamma"]["id"]}">(.*?)</tr>', html, re.S).group(1)
    assert "revoked" in gamma_row
    assert "Download CSV" in html


async def test_keys_table_shows_the_default_budget_and_the_step_in_force(store: Store, seeded: dict) -> None:
    settings = _settings(policies=(DAILY_TIERS,), budget_usd="1", budget_period="month")
    limiter = await _tiered_limiter(settings, {seeded["beta"]["id"]: 1_500_000})
    async with _client(_app(_gateway(store, limiter=limiter))) as c:
        await _sign_in(c)
        html = (await c.get("/dashboard/keys", params=RANGE)).text
    beta = _cells(html, seeded["beta"]["id"])
    assert beta["step"] == "daily-tiers step 1 (rpm 60, tpm 20,000)"
    assert _cells(html, seeded["alpha"]["id"])["step"] == "daily-tiers step 0 (rpm 600, tpm 200,000)"
    assert _cells(html, seeded["gamma"]["id"])["step"] == "\u2014"  # revoked
    month_start = TODAY.replace(day=1)
    assert beta["budget"] == ("25.0%" if month_start <= DAY1 else "0.0%")  # 0.25 USD of the 1 USD default
    assert _cells(html, seeded["alpha"]["id"])["budget"] == "25.0%"  # its own 10 USD daily budget wins


@pytest.mark.parametrize(
    ("sort", "direction", "expected"),
    [
        ("name", "asc", ["alpha", "beta", "gamma"]),
        ("name", "desc", ["gamma", "beta", "alpha"]),
        ("cost", "desc", ["alpha", "beta", "gamma"]),
        ("cost", "asc", ["gamma", "beta", "alpha"]),
        ("requests", "desc", ["alpha", "beta", "gamma"]),
        ("budget", "desc", ["alpha", "beta", "gamma"]),  # keys without a budget go last, by name
    ],
)
async def test_keys_table_sorts_by_a_column(
    client: httpx.AsyncClient, seeded: dict, sort: str, direction: str, expected: list[str]
) -> None:
    await _sign_in(client)
    html = (await client.get("/dashboard/keys", params={**RANGE, "sort": sort, "dir": direction})).text
    assert _row_order(html) == [seeded[name]["id"] for name in expected]
    assert 'aria-sort="' in html


async def test_keys_table_pages_through_many_keys(store: Store) -> None:
    for i in range(dashboard.KEYS_PER_PAGE + 7):
        store.create_key(name=f"key-{i:03d}")
    async with _client(_app(_gateway(store))) as c:
        await _sign_in(c)
        first = (await c.get("/dashboard/keys", params={"sort": "name", "dir": "asc"})).text
        second = (await c.get("/dashboard/keys", params={"sort": "name", "dir": "asc", "page": "2"})).text
    assert len(_row_order(first)) == dashboard.KEYS_PER_PAGE
    assert len(_row_order(second)) == 7
    assert "Page 2 of 2" in second
    assert "key-056" in second and "key-056" not in first


async def test_key_page_shows_cost_by_model_limits_and_step(store: Store, seeded: dict) -> None:
    alpha = seeded["alpha"]
    limiter = await _tiered_limiter(_settings(policies=(DAILY_TIERS,), tpm=100_000), {alpha["id"]: 1_000_001})
    async with _client(_app(_gateway(store, limiter=limiter))) as c:
        await _sign_in(c)
        html = (await c.get(f"/dashboard/keys/{alpha['id']}", params=RANGE)).text
    assert '<span class="value" id="key-cost">$6.00</span>' in html
    assert '<span class="value" id="key-step">daily-tiers step 1 (rpm 60, tpm 20,000)</span>' in html
    assert '<span class="value" id="key-budget" title="of $10.00 per day">25.0%</span>' in html
    chart = re.search(r'<figure id="key-chart">(.*?)</figure>', html, re.S).group(1)
    assert len(re.findall(r'<rect class="bar"', chart)) == 4  # gpt-4o-mini on 3 days, claude-haiku on 1
    assert "claude-haiku" in chart and "gpt-4o-mini" in chart
    limits = re.search(r'<table id="key-limits">(.*?)</table>', html, re.S).group(1)
    assert re.search(r"<th[^>]*>rpm</th><td>30</td>", limits)
    assert re.search(r"<th[^>]*>tpm</th><td>100,000 \(default\)</td>", limits)
    assert re.search(r"<th[^>]*>budget</th><td>\$10.00 per day</td>", limits)
    steps = re.search(r'<table id="key-steps">(.*?)</table>', html, re.S).group(1)
    assert "tokens_today" in steps and "1,000,001" in steps and "1 (above 1,000,000)" in steps


async def test_key_page_shows_models_priority_and_expiry(store: Store) -> None:
    key, _ = store.create_key(
        name="batch", models=["gpt-4o-mini"], priority="batch", expires_at="2027-01-02T03:04:05+00:00"
    )
    async with _client(_app(_gateway(store))) as c:
        await _sign_in(c)
        html = (await c.get(f"/dashboard/keys/{key['id']}")).text
    limits = re.search(r'<table id="key-limits">(.*?)</table>', html, re.S).group(1)
    assert re.search(r"<th[^>]*>models</th><td>gpt-4o-mini</td>", limits)
    assert re.search(r"<th[^>]*>priority</th><td>batch</td>", limits)
    assert re.search(r"<th[^>]*>expires</th><td>2027-01-02 03:04:05 UTC</td>", limits)
    assert re.search(r"<th[^>]*>budget</th><td>none</td>", limits)
    assert "No step policy applies to this key." in html


async def test_the_login_page_sends_a_signed_in_user_on(client: httpx.AsyncClient) -> None:
    await _sign_in(client)
    response = await client.get("/dashboard/login")
    assert response.status_code == 303
    assert response.headers["location"] == "/dashboard"


async def test_an_unknown_key_page_is_404(client: httpx.AsyncClient) -> None:
    await _sign_in(client)
    response = await client.get("/dashboard/keys/nope")
    assert response.status_code == 404
    assert "There is no key nope." in response.text


async def test_names_are_escaped_everywhere(store: Store) -> None:
    evil, _ = store.create_key(name='<img src=x onerror="alert(1)">', team="<b>t</b>")
    store.insert_usage([_usage(evil, DAY1, "<script>m</script>", NANO)])
    async with _client(_app(_gateway(store))) as c:
        await _sign_in(c)
        pages = [
            (await c.get(path, params=RANGE)).text
            for path in ("/dashboard", "/dashboard/keys", f"/dashboard/keys/{evil['id']}")
        ]
    for html in pages:
        assert "<img src=x" not in html and "<script>m" not in html and "<b>t</b>" not in html
        assert "&lt;img src=x" in html or "&lt;script&gt;m" in html


async def test_usage_of_keys_without_a_stored_record_is_shown(store: Store, seeded: dict) -> None:
    master = {"id": "master", "name": "master", "team": None}
    store.insert_usage(
        [
            _usage(master, DAY1, "gpt-4o-mini", 3 * NANO),
            {"ts": _ts(DAY2), "key_id": None, "status": 401, "model": "gpt-4o-mini"},
        ]
    )
    async with _client(_app(_gateway(store))) as c:
        await _sign_in(c)
        keys_html = (await c.get("/dashboard/keys", params=RANGE)).text
        overview = (await c.get("/dashboard", params=RANGE)).text
        master_page = await c.get("/dashboard/keys/master", params=RANGE)
    master_row = _cells(keys_html, "master")
    assert (master_row["requests"], master_row["cost"], master_row["step"]) == ("1", "$3.00", "\u2014")
    keyless = _cells(keys_html, "")
    assert (keyless["requests"], keyless["errors"]) == ("1", "1")
    assert "(no key)" in keys_html and "not stored" in keys_html
    assert '<span class="value" id="total-requests">8</span>' in overview
    assert master_page.status_code == 200
    assert '<span class="value" id="key-cost">$3.00</span>' in master_page.text
    assert "not a stored key" in master_page.text


async def test_a_bad_range_falls_back_to_30_days_with_a_note(client: httpx.AsyncClient) -> None:
    await _sign_in(client)
    html = (await client.get("/dashboard", params={"start": "2026-02-30", "end": "x"})).text
    assert "Dates must be YYYY-MM-DD" in html
    html = (await client.get("/dashboard/keys", params={"start": "2026-03-02", "end": "2026-03-01"})).text
    assert "The start date is after the end date" in html


def test_date_ranges_include_both_ends() -> None:
    rng, note = parse_date_range("2026-02-27", "2026-03-02", date(2026, 3, 5))
    assert note is None
    assert rng.days() == ["2026-02-27", "2026-02-28", "2026-03-01", "2026-03-02"]
    rng, note = parse_date_range(None, None, date(2026, 3, 5))
    assert (rng.start, rng.end, note) == (date(2026, 2, 4), date(2026, 3, 5), None)
    _, note = parse_date_range("2020-01-01", "2026-01-01", date(2026, 3, 5))
    assert note is not None and "limited" in note


async def test_the_stylesheet_is_served_and_nothing_else(client: httpx.AsyncClient) -> None:
    css = await client.get("/dashboard/static/dashboard.css")
    assert css.status_code == 200
    assert css.headers["content-type"].startswith("text/css")
    assert (await client.get("/dashboard/static/..%2Fstorage%2Fstore.py")).status_code == 404
    assert (await client.get("/dashboard/static/nothing.js")).status_code == 404


# ---- CSV ----------------------------------------------------------------------------------------------------


async def test_csv_download_is_the_admin_reports_bytes(client: httpx.AsyncClient, seeded: dict) -> None:
    await _sign_in(client)
    response = await client.get("/dashboard/keys.csv", params=RANGE)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/csv")
    assert "attachment" in response.headers["content-disposition"]
    admin = await client.get(
        "/admin/reports/cost",
        params={"group_by": "key", "format": "csv", **RANGE},
        headers={"authorization": f"Bearer {MASTER}"},
    )
    assert admin.status_code == 200
    assert response.content == admin.content
    lines = response.text.splitlines()
    assert lines[0].startswith("key_id,key_name,requests,errors")
    alpha = next(line for line in lines if line.startswith(seeded["alpha"]["id"]))
    assert ",alpha,4,1," in alpha and alpha.endswith(",6.000000000")


async def test_csv_follows_the_chosen_range(client: httpx.AsyncClient, seeded: dict) -> None:
    await _sign_in(client)
    day = {"start": DAY1.isoformat(), "end": DAY1.isoformat()}
    lines = (await client.get("/dashboard/keys.csv", params=day)).text.splitlines()
    assert len(lines) == 3  # header, alpha and beta (gamma was used on DAY2 only)


async def test_without_a_database_the_pages_say_so(store: Store) -> None:
    gateway = _gateway(store)
    gateway.store = None
    async with _client(_app(gateway)) as c:
        await _sign_in(c)
        for path in ("/dashboard", "/dashboard/keys", "/dashboard/keys.csv", "/dashboard/keys/abc"):
            response = await c.get(path)
            assert response.status_code == 503, path
            assert "No database is configured" in response.text


# ---- scale --------------------------------------------------------------------------------------------------


class CountingStore:
    """Counts the store calls a page makes (each one SQL aggregation) while passing them through."""

    def __init__(self, inner: Store) -> None:
        self.inner = inner
        self.calls: list[str] = []

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.inner, name)

        def counted(*args: Any, **kwargs: Any) -> Any:
            self.calls.append(name)
            return method(*args, **kwargs)

        return counted


async def test_pages_stay_fast_with_a_year_of_usage_for_1000_keys(store: Store) -> None:
    keys = [store.create_key(name=f"key-{i:04d}", budget_usd="100")[0] for i in range(1000)]
    first_day = TODAY - timedelta(days=364)
    rows = [
        _usage(key, first_day + timedelta(days=week * 7 + i % 7), f"model-{i % 5}", 1_000_000 + i)
        for week in range(52)
        for i, key in enumerate(keys)
    ]
    for begin in range(0, len(rows), 20_000):
        store.insert_usage(rows[begin : begin + 20_000])
    counting = CountingStore(store)
    year = {"start": first_day.isoformat(), "end": TODAY.isoformat()}
    async with _client(_app(_gateway(counting))) as c:
        await _sign_in(c)
        timings = {}
        for path in ("/dashboard", "/dashboard/keys", f"/dashboard/keys/{keys[0]['id']}"):
            counting.calls.clear()
            began = time.perf_counter()
            response = await c.get(path, params=year)
            timings[path] = time.perf_counter() - began
            assert response.status_code == 200
            assert len(counting.calls) <= 4 + dashboard.TOP_N, (path, counting.calls)
    keys_html = (await _keys_page(counting, year)).text
    assert len(_row_order(keys_html)) == dashboard.KEYS_PER_PAGE
    assert all(seconds < 2.0 for seconds in timings.values()), timings


async def _keys_page(store: Any, params: dict[str, str]) -> httpx.Response:
    async with _client(_app(_gateway(store))) as c:
        await _sign_in(c)
        return await c.get("/dashboard/keys", params=params)
