"""`/dashboard`: the cost dashboard in the browser (overview, per-key table, key page).

Signed in with the master key. The session cookie holds an HMAC-signed token
derived from the master key (never the key itself): it verifies in every worker
process without shared state, and rotating the master key ends every session.
Sign-out clears the cookie and revokes its token in this process.

Pages are server-rendered (Jinja2, autoescaped) with SVG charts drawn by
`llmgate.charts`; sorting and paging are query parameters, so no script runs and
nothing is loaded from outside the gateway. Every figure is aggregated in SQL by
the store (called off the event loop); a page asks for at most a few grouped
reports, so it stays fast with a year of usage for thousands of keys.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, PackageLoader, StrictUndefined
from markupsafe import Markup

from llmgate.charts import (
    OTHER_LABEL,
    Series,
    build_day_series,
    build_day_values,
    format_usd_nano,
    render_stacked_bars,
)
from llmgate.keys import build_key_info
from llmgate.reports import render_csv
from llmgate.throttle.periods import build_period_starts
from llmgate.throttle.rules import build_key_limits

PREFIX = "/dashboard"
COOKIE_NAME = "llmgate_dashboard"
SESSION_TTL_S = 8 * 3600
DEFAULT_RANGE_DAYS = 30
MAX_RANGE_DAYS = 3 * 366
TOP_N = 10
KEYS_PER_PAGE = 50
MAX_FORM_BYTES = 8192
NO_STEP = "\u2014"
_SESSION_CONTEXT = b"llmgate-dashboard-session-v1"
_STATIC_FILES = {"dashboard.css": "text/css; charset=utf-8"}
_SECURITY_HEADERS = {
    "content-security-policy": (
        "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "same-origin",
    "cache-control": "no-store",
}
_SORT_COLUMNS = ("name", "team", "requests", "errors", "tokens", "cost", "budget")

router = APIRouter(prefix=PREFIX, include_in_schema=False)


# ---- sessions -------------------------------------------------------------------------------------------------


class SessionSigner:
    """Issues and checks session tokens `<expiry>.<nonce>.<signature>`.

    The signing key is derived from the master key, so a token proves the holder
    once knew the master key without ever containing it.
    """

    def __init__(self, master_key: str) -> None:
        self._key = hmac.new(master_key.encode(), _SESSION_CONTEXT, hashlib.sha256).digest()

    def _sign(self, payload: str) -> str:
        digest = hmac.new(self._key, payload.encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()

    def issue(self, now: float) -> str:
        payload = f"{int(now) + SESSION_TTL_S}.{secrets.token_urlsafe(18)}"
        return f"{payload}.{self._sign(payload)}"

    def verify(self, token: str, now: float) -> bool:
        payload, _, signature = token.rpartition(".")
        expiry, _, nonce = payload.partition(".")
        if not (expiry.isdigit() and nonce and signature):
            return False
        if not hmac.compare_digest(signature.encode(), self._sign(payload).encode()):
            return False
        return int(expiry) > now


class RevokedTokens:
    """Tokens signed out in this process, kept until they would have expired anyway."""

    def __init__(self) -> None:
        self._until: dict[str, float] = {}

    def add(self, token: str, now: float) -> None:
        self._until = {t: until for t, until in self._until.items() if until > now}
        self._until[token] = now + SESSION_TTL_S

    def contains(self, token: str, now: float) -> bool:
        until = self._until.get(token)
        return until is not None and until > now


_revoked = RevokedTokens()


def _gateway(request: Request) -> Any:
    return request.app.state.gateway


def _master_key(request: Request) -> str | None:
    return _gateway(request).settings.gateway.master_key or None


def _request_scheme(request: Request) -> str:
    forwarded = request.headers.get("x-forwarded-proto", "").split(",")[0].strip().lower()
    return "https" if forwarded == "https" or request.scope.get("scheme") == "https" else "http"


def _is_signed_in(request: Request) -> bool:
    master = _master_key(request)
    token = request.cookies.get(COOKIE_NAME)
    now = time.time()
    return bool(master and token and SessionSigner(master).verify(token, now) and not _revoked.contains(token, now))


def _to_login() -> RedirectResponse:
    return RedirectResponse(f"{PREFIX}/login", status_code=303, headers={"cache-control": "no-store"})


def _is_same_origin(request: Request) -> bool:
    """The CSRF check for POSTs: a browser's Origin (or Referer) must name this host.

    Browsers send Origin on every cross-site POST, so its absence means a
    non-browser client, which carries no ambient cookie to abuse. Behind a
    proxy that rewrites Host, the proxy must pass `X-Forwarded-Host`.
    """
    source = request.headers.get("origin") or request.headers.get("referer")
    if source is None:
        return True
    parts = urlsplit(source)
    hosts = {request.headers.get("host"), request.headers.get("x-forwarded-host")} - {None}
    return parts.scheme in ("http", "https") and parts.netloc in hosts


async def _read_form(request: Request) -> dict[str, str]:
    """The urlencoded form fields (first value each); an oversized body reads as empty."""
    body = await request.body()
    if len(body) > MAX_FORM_BYTES:
        return {}
    parsed = parse_qs(body.decode("utf-8", errors="replace"), max_num_fields=10)
    return {name: values[0] for name, values in parsed.items()}


# ---- rendering ------------------------------------------------------------------------------------------------


def _format_int(value: int | None) -> str:
    return "\u2014" if value is None else f"{value:,}"


def _format_figure(value: float) -> str:
    """A measured signal or threshold: thousands separated, at most four decimals."""
    if float(value).is_integer():
        return f"{int(value):,}"
    return f"{value:,.4f}".rstrip("0").rstrip(".")


def _format_pct(value: float | None) -> str:
    return "\u2014" if value is None else f"{value:.1f}%"


def build_environment() -> Environment:
    env = Environment(
        loader=PackageLoader("llmgate", "templates"),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["usd"] = format_usd_nano
    env.filters["num"] = _format_int
    env.filters["pct"] = _format_pct
    env.filters["figure"] = _format_figure
    return env


_templates = build_environment()


def _page(template: str, context: Mapping[str, Any], status: int = 200) -> HTMLResponse:
    html = _templates.get_template(template).render(prefix=PREFIX, **context)
    return HTMLResponse(html, status_code=status, headers=_SECURITY_HEADERS)


def _message_page(rng: DateRange, heading: str, message: str, status: int) -> HTMLResponse:
    context = {"page": "", "range": rng, "note": None, "query": urlencode(rng.query())}
    return _page("message.html", {**context, "heading": heading, "message": message}, status)


def _no_store_page(rng: DateRange) -> HTMLResponse:
    message = "No database is configured (gateway.database_url), so there are no usage figures to show."
    return _message_page(rng, "No usage records", message, 503)


# ---- date range -----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DateRange:
    """A range of whole UTC days, both ends included."""

    start: date
    end: date

    def days(self) -> list[str]:
        count = (self.end - self.start).days + 1
        return [(self.start + timedelta(days=i)).isoformat() for i in range(count)]

    def query(self) -> dict[str, str]:
        return {"start": self.start.isoformat(), "end": self.end.isoformat()}


def parse_date_range(start: str | None, end: str | None, today: date) -> tuple[DateRange, str | None]:
    """The range asked for, or the last 30 days with a note saying what was wrong."""
    default = DateRange(today - timedelta(days=DEFAULT_RANGE_DAYS - 1), today)
    try:
        end_day = date.fromisoformat(end) if end else today
        start_day = date.fromisoformat(start) if start else end_day - timedelta(days=DEFAULT_RANGE_DAYS - 1)
    except ValueError:
        return default, "Dates must be YYYY-MM-DD; showing the last 30 days."
    if start_day > end_day:
        return default, "The start date is after the end date; showing the last 30 days."
    if (end_day - start_day).days >= MAX_RANGE_DAYS:
        return default, f"Ranges are limited to {MAX_RANGE_DAYS} days; showing the last 30 days."
    return DateRange(start_day, end_day), None


def _now() -> float:
    """The clock of the figures (budget periods, the default range): one place, so a page
    rendered across midnight UTC, or a test, sees one day."""
    return time.time()


def _today() -> date:
    return datetime.fromtimestamp(_now(), UTC).date()


def _range_of(request: Request) -> tuple[DateRange, str | None]:
    return parse_date_range(request.query_params.get("start"), request.query_params.get("end"), _today())


# ---- data -----------------------------------------------------------------------------------------------------


async def _report(store: Any, group_by: list[str], start: date | None, end: date | None, **filters: Any) -> list[dict]:
    return await asyncio.to_thread(store.cost_report, group_by, start, end, **filters)


def build_totals(rows: list[Mapping[str, Any]]) -> dict[str, int]:
    """Requests, errors, tokens and cost summed over report rows."""
    return {
        "requests": sum(int(r["requests"]) for r in rows),
        "errors": sum(int(r["errors"]) for r in rows),
        "input_tokens": sum(int(r["input_tokens"]) for r in rows),
        "output_tokens": sum(int(r["output_tokens"]) for r in rows),
        "cost_nusd": sum(int(r["cost_nusd"]) for r in rows),
    }


def _by_cost(rows: list[dict]) -> list[dict]:
    return sorted(rows, key=lambda r: (-int(r["cost_nusd"]), str(r.get("key_id") or r.get("model") or "")))


def build_key_labels(rows: list[Mapping[str, Any]]) -> dict[str, str]:
    """A label per key id: its name, with the id added where two keys share a name."""
    names = [str(r.get("key_name") or r["key_id"]) for r in rows]
    return {
        str(r["key_id"]): name if names.count(name) == 1 else f"{name} ({r['key_id']})"
        for r, name in zip(rows, names, strict=True)
    }


def build_remainder(days: list[str], total_rows: list[Mapping[str, Any]], series: list[Series]) -> Series:
    """The "other" layer: each day's total cost less the named series."""
    per_day = {str(r["day"]): int(r["cost_nusd"]) for r in total_rows}
    values = tuple(per_day.get(day, 0) - sum(s.values[i] for s in series) for i, day in enumerate(days))
    return Series(OTHER_LABEL, values)


async def _cost_per_day_by_key(store: Any, rng: DateRange, top_keys: list[dict]) -> list[Series]:
    """Top keys get their own layer (one small per-key query each); the rest is "other"."""
    days = rng.days()
    labels = build_key_labels(top_keys)
    per_key, total = await asyncio.gather(
        asyncio.gather(*(_report(store, ["day"], rng.start, rng.end, key_id=k["key_id"]) for k in top_keys)),
        _report(store, ["day"], rng.start, rng.end),
    )
    named = [
        Series(labels[str(key["key_id"])], build_day_values(rows, days))
        for key, rows in zip(top_keys, per_key, strict=True)
    ]
    other = build_remainder(days, total, named)
    return [*named, other] if other.total > 0 else named


def build_steps_in_force(limiter: Any, record: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The throttle policies applying to a key with the step of each in force (in-memory figures:
    none when the limiter has no step policies)."""
    method = getattr(limiter, "step_in_force", None)
    if method is None or record.get("revoked"):
        return []
    return list(method(build_key_info(dict(record))))


def format_step(entry: Mapping[str, Any]) -> str:
    """One policy's step in force, e.g. "daily-tiers step 1 (rpm 60, tpm 20,000)"."""
    limits = entry.get("limits") or {}
    detail = ", ".join(f"{name} {value:,}" for name, value in limits.items())
    text = f"{entry.get('policy')} step {entry.get('step')}"
    return f"{text} ({detail})" if detail else text


def format_steps(entries: list[dict[str, Any]]) -> str:
    return "; ".join(format_step(e) for e in entries) if entries else NO_STEP


def build_budget(record: Mapping[str, Any], limits: Any) -> tuple[int | None, str]:
    """A key's budget in nano-USD and its period, as the throttle enforces them (own, else `[limits]`)."""
    key_limits = build_key_limits(build_key_info(dict(record)), limits)
    return key_limits.budget_nusd, key_limits.budget_period


def build_period_start(period: str, now: float) -> date | None:
    """The first UTC day of the budget period holding `now` (the throttle's calendar); None for "total"."""
    return None if period == "total" else build_period_starts(now)[period].date()


async def _budget_spend(store: Any, records: list[Mapping[str, Any]], limits: Any, now: float) -> dict[str, int]:
    """Spend per budgeted key id in its own budget period: one grouped query per period in use."""
    budgets = {str(r["id"]): build_budget(r, limits) for r in records}
    periods = sorted({period for budget, period in budgets.values() if budget})
    reports = await asyncio.gather(*(_report(store, ["key"], build_period_start(p, now), None) for p in periods))
    spend_by_period = {
        period: {str(row["key_id"]): int(row["cost_nusd"]) for row in rows}
        for period, rows in zip(periods, reports, strict=True)
    }
    return {key_id: spend_by_period[period].get(key_id, 0) for key_id, (budget, period) in budgets.items() if budget}


def build_budget_pct(spend_nusd: int | None, budget_nusd: int | None) -> float | None:
    if not budget_nusd or spend_nusd is None:
        return None
    return 100.0 * spend_nusd / budget_nusd


def build_key_rows(records: list[Mapping[str, Any]], usage: list[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One table row per key: stored keys, plus keys that only appear in usage (since deleted)."""
    usage_by_id = {str(u["key_id"]): u for u in usage}
    rows: list[dict[str, Any]] = []
    seen: set[str] = set()
    for record in records:
        key_id = str(record["id"])
        seen.add(key_id)
        rows.append(_key_row(key_id, record.get("name"), record.get("team"), usage_by_id.get(key_id), record))
    for key_id, u in usage_by_id.items():
        if key_id not in seen:
            name = u.get("key_name") or (key_id if u["key_id"] is not None else "(no key)")
            rows.append(_key_row(key_id if u["key_id"] is not None else "", name, u.get("team"), u, None))
    return rows


def _key_row(
    key_id: str, name: Any, team: Any, usage: Mapping[str, Any] | None, record: Mapping[str, Any] | None
) -> dict[str, Any]:
    u = usage or {}
    return {
        "id": key_id,
        "name": str(name or key_id),
        "team": team or "",
        "requests": int(u.get("requests", 0)),
        "errors": int(u.get("errors", 0)),
        "tokens": int(u.get("input_tokens", 0)) + int(u.get("output_tokens", 0)),
        "cost_nusd": int(u.get("cost_nusd", 0)),
        "budget_nusd": None,
        "budget_period": None,
        "budget_pct": None,
        "record": record,
    }


def sort_key_rows(rows: list[dict[str, Any]], column: str, descending: bool) -> list[dict[str, Any]]:
    """Rows ordered by a table column; ties (and empty budgets) fall back to the name."""
    field_of = {"cost": "cost_nusd", "budget": "budget_pct"}.get(column, column)
    missing = [r for r in rows if r[field_of] is None]
    present = [r for r in rows if r[field_of] is not None]
    present.sort(key=lambda r: (r["name"].lower(), r["id"]))
    present.sort(key=lambda r: r[field_of].lower() if isinstance(r[field_of], str) else r[field_of], reverse=descending)
    missing.sort(key=lambda r: (r["name"].lower(), r["id"]))
    return present + missing


# ---- routes ---------------------------------------------------------------------------------------------------


@router.get("/static/{name}")
async def static_file(name: str) -> Response:
    media_type = _STATIC_FILES.get(name)
    if media_type is None:
        return Response("Not found.", status_code=404, media_type="text/plain")
    body = resources.files("llmgate").joinpath("static", name).read_bytes()
    return Response(body, media_type=media_type, headers={"cache-control": "public, max-age=3600"})


@router.get("/login")
async def login_page(request: Request) -> Response:
    if _is_signed_in(request):
        return RedirectResponse(PREFIX, status_code=303)
    return _login_page(request, None, 200)


def _login_page(request: Request, error: str | None, status: int) -> HTMLResponse:
    configured = _master_key(request) is not None
    return _page("login.html", {"error": error, "configured": configured}, status)


@router.post("/login")
async def login(request: Request) -> Response:
    if not _is_same_origin(request):
        return _login_page(request, "This sign-in did not come from this page.", 403)
    form = await _read_form(request)
    master = _master_key(request)
    given = form.get("master_key", "")
    if master is None or not hmac.compare_digest(given.encode(), master.encode()):
        return _login_page(request, "That is not the master key.", 401)
    response = RedirectResponse(PREFIX, status_code=303)
    response.set_cookie(
        COOKIE_NAME,
        SessionSigner(master).issue(time.time()),
        max_age=SESSION_TTL_S,
        path=PREFIX,
        httponly=True,
        samesite="strict",
        secure=_request_scheme(request) == "https",
    )
    return response


@router.post("/logout")
async def logout(request: Request) -> Response:
    if not _is_same_origin(request):
        return Response("Cross-origin sign-out refused.", status_code=403, media_type="text/plain")
    token = request.cookies.get(COOKIE_NAME)
    if token:
        _revoked.add(token, time.time())
    response = RedirectResponse(f"{PREFIX}/login", status_code=303)
    response.delete_cookie(
        COOKIE_NAME, path=PREFIX, httponly=True, samesite="strict", secure=_request_scheme(request) == "https"
    )
    return response


@router.get("")
async def overview(request: Request) -> Response:
    if not _is_signed_in(request):
        return _to_login()
    store = _gateway(request).store
    rng, note = _range_of(request)
    if store is None:
        return _no_store_page(rng)
    by_key, by_model = await asyncio.gather(
        _report(store, ["key"], rng.start, rng.end), _report(store, ["model"], rng.start, rng.end)
    )
    top_keys = _by_cost(by_key)[:TOP_N]
    series = await _cost_per_day_by_key(store, rng, [k for k in top_keys if k["key_id"] is not None])
    chart = render_stacked_bars(rng.days(), series, f"Cost per day by key, {rng.start} to {rng.end} (UTC)")
    context = {
        "page": "overview",
        "range": rng,
        "note": note,
        "totals": build_totals(by_key),
        "top_keys": top_keys,
        "top_n": TOP_N,
        "top_models": _by_cost(by_model)[:TOP_N],
        "key_count": len(by_key),
        "model_count": len(by_model),
        "chart": Markup(chart),
        "query": urlencode(rng.query()),
    }
    return _page("overview.html", context)


@router.get("/keys")
async def keys_table(request: Request) -> Response:
    if not _is_signed_in(request):
        return _to_login()
    gateway = _gateway(request)
    rng, note = _range_of(request)
    if gateway.store is None:
        return _no_store_page(rng)
    column = request.query_params.get("sort", "cost")
    column = column if column in _SORT_COLUMNS else "cost"
    descending = request.query_params.get("dir", "asc" if column in ("name", "team") else "desc") != "asc"
    records, usage = await asyncio.gather(
        asyncio.to_thread(gateway.store.list_keys, include_revoked=True),
        _report(gateway.store, ["key"], rng.start, rng.end),
    )
    rows = build_key_rows(records, usage)
    limits = gateway.settings.limits
    spend = await _budget_spend(gateway.store, records, limits, _now())
    for row in rows:
        if row["record"] is not None:
            row["budget_nusd"], row["budget_period"] = build_budget(row["record"], limits)
        row["budget_pct"] = build_budget_pct(spend.get(row["id"]), row["budget_nusd"])
    rows = sort_key_rows(rows, column, descending)
    pages = max(1, -(-len(rows) // KEYS_PER_PAGE))
    page = min(max(1, _parse_int(request.query_params.get("page"), 1)), pages)
    shown = rows[(page - 1) * KEYS_PER_PAGE : page * KEYS_PER_PAGE]
    for row in shown:
        row["step"] = (
            NO_STEP if row["record"] is None else format_steps(build_steps_in_force(gateway.limiter, row["record"]))
        )
    context = {
        "page": "keys",
        "range": rng,
        "note": note,
        "rows": shown,
        "total_rows": len(rows),
        "page_number": page,
        "pages": pages,
        "sort": column,
        "descending": descending,
        "query": urlencode(rng.query()),
        "sort_query": urlencode({**rng.query(), "sort": column, "dir": "desc" if descending else "asc"}),
    }
    return _page("keys.html", context)


def _parse_int(text: str | None, default: int) -> int:
    try:
        return int(text) if text else default
    except ValueError:
        return default


@router.get("/keys.csv")
async def keys_csv(request: Request) -> Response:
    if not _is_signed_in(request):
        return _to_login()
    rng, _ = _range_of(request)
    store = _gateway(request).store
    if store is None:
        return _no_store_page(rng)
    rows = await _report(store, ["key"], rng.start, rng.end)
    filename = f"llmgate-cost-by-key-{rng.start}-to-{rng.end}.csv"
    # The admin report's own rendering, so this file is byte for byte `GET /admin/reports/cost?format=csv`.
    return Response(
        render_csv(["key"], rows),
        media_type="text/csv; charset=utf-8",
        headers={"content-disposition": f'attachment; filename="{filename}"', "cache-control": "no-store"},
    )


@router.get("/keys/{key_id}")
async def key_page(request: Request, key_id: str) -> Response:
    if not _is_signed_in(request):
        return _to_login()
    gateway = _gateway(request)
    rng, note = _range_of(request)
    if gateway.store is None:
        return _no_store_page(rng)
    record, by_day_model, by_model = await asyncio.gather(
        asyncio.to_thread(gateway.store.get_key, key_id),
        _report(gateway.store, ["day", "model"], rng.start, rng.end, key_id=key_id),
        _report(gateway.store, ["key", "model"], rng.start, rng.end, key_id=key_id),
    )
    if record is None and not by_model:
        return _message_page(rng, "Not found", f"There is no key {key_id}.", 404)
    # Usage without a stored record: the master key, a key from config, or a key since deleted.
    key = record or {"id": key_id, "name": by_model[0].get("key_name") or key_id, "team": None}
    series = build_day_series(by_day_model, rng.days(), lambda row: str(row["model"]), top_n=TOP_N)
    title = f"Cost per day by model for {key['name']}, {rng.start} to {rng.end} (UTC)"
    limits = gateway.settings.limits
    budget_nusd, budget_period = build_budget(record, limits) if record else (None, "month")
    spend = await _budget_spend(gateway.store, [record], limits, _now()) if record else {}
    steps = build_steps_in_force(gateway.limiter, record) if record else []
    context = {
        "page": "keys",
        "range": rng,
        "note": note,
        "key": key,
        "stored": record is not None,
        "totals": build_totals(by_model),
        "models": _by_cost(by_model),
        "chart": Markup(render_stacked_bars(rng.days(), series, title)),
        "budget_nusd": budget_nusd,
        "budget_period": budget_period,
        "budget_pct": build_budget_pct(spend.get(key_id), budget_nusd),
        "steps": steps,
        "step": format_steps(steps),
        "limits": build_limit_rows(record, gateway.settings) if record else [],
        "query": urlencode(rng.query()),
    }
    return _page("key.html", context)


def build_limit_rows(record: Mapping[str, Any], settings: Any) -> list[tuple[str, str]]:
    """(limit, value) pairs for a key; a limit the key leaves unset shows the `[limits]` default."""
    defaults = settings.limits
    rows: list[tuple[str, str]] = []
    for name in ("rpm", "rps", "tpm", "tpd", "max_concurrency", "max_wait_ms"):
        own = record.get(name)
        default = getattr(defaults, name, None)
        if own is not None:
            rows.append((name, f"{own:,}"))
        elif default is not None:
            rows.append((name, f"{default:,} (default)"))
        else:
            rows.append((name, "unlimited"))
    budget_nusd, period = build_budget(record, defaults)
    default_note = "" if record.get("budget_usd") not in (None, "") else " (default)"
    budget_text = f"{format_usd_nano(budget_nusd)} per {period}{default_note}" if budget_nusd is not None else "none"
    rows.append(("budget", budget_text))
    models = record.get("models")
    rows.append(("models", ", ".join(models) if models else "any"))
    if record.get("priority") is not None:
        rows.append(("priority", str(record["priority"])))
    if record.get("expires_at") is not None:
        rows.append(("expires", format_instant(record["expires_at"])))
    return rows


def format_instant(value: datetime) -> str:
    """A stored moment (aware, or naive UTC) as UTC text."""
    moment = value if value.tzinfo else value.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
