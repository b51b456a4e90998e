"""`llmgate keys create|list|show|revoke`: virtual keys in the configured database.

Fields are checked by the admin API's own request schema, so the command line
and `POST /admin/keys` accept exactly the same keys. The secret is printed once,
by `create`, and never again.
"""

from __future__ import annotations

from typing import Any

import orjson
import typer
from pydantic import ValidationError

from llmgate.commands.db import CONFIG_OPTION, open_store
from llmgate.surfaces.admin import KeyCreate

app = typer.Typer(no_args_is_help=True, help="Virtual keys: create, list, show and revoke.")

JSON_OPTION = typer.Option(False, "--json", help="Print JSON instead of text.")
_LIST_COLUMNS = ("id", "name", "team", "display_prefix", "rpm", "tpm", "budget_usd", "budget_period", "revoked")


@app.command("create")
def create(
    name: str = typer.Option(..., "--name", help="A name for the key (shown in reports)."),
    team: str | None = typer.Option(None, "--team", help="The team the key belongs to."),
    models: str | None = typer.Option(None, "--models", help="Allowed models, comma-separated (default: all)."),
    prompts: str | None = typer.Option(None, "--prompts", help="Allowed prompts, comma-separated (default: all)."),
    rpm: int | None = typer.Option(None, "--rpm", help="Requests per minute."),
    rps: int | None = typer.Option(None, "--rps", help="Requests per second."),
    tpm: int | None = typer.Option(None, "--tpm", help="Tokens per minute."),
    tpd: int | None = typer.Option(None, "--tpd", help="Tokens per day."),
    max_concurrency: int | None = typer.Option(None, "--max-concurrency", help="Calls in flight at once."),
    max_wait_ms: int | None = typer.Option(None, "--max-wait-ms", help="How long a call may queue for capacity."),
    budget_usd: str | None = typer.Option(None, "--budget-usd", help="Spending limit in USD per budget period."),
    budget_period: str | None = typer.Option(None, "--budget-period", help="day, week, month or total."),
    priority: str | None = typer.Option(None, "--priority", help="A priority class (step policies match it)."),
    expires_at: str | None = typer.Option(None, "--expires-at", help="Expiry, ISO 8601 (UTC unless a zone is given)."),
    as_json: bool = JSON_OPTION,
    config: str = CONFIG_OPTION,
) -> None:
    """Create a key and print its secret (shown this once only)."""
    given: dict[str, Any] = {
        "name": name,
        "team": team,
        "models": _split(models),
        "prompts": _split(prompts),
        "rpm": rpm,
        "rps": rps,
        "tpm": tpm,
        "tpd": tpd,
        "max_concurrency": max_concurrency,
        "max_wait_ms": max_wait_ms,
        "budget_usd": budget_usd,
        "budget_period": budget_period,
        "priority": priority,
        "expires_at": expires_at,
    }
    try:
        fields = KeyCreate.model_validate({k: v for k, v in given.items() if v is not None})
    except ValidationError as exc:
        for error in exc.errors():
            option = "--" + ".".join(str(p) for p in error["loc"]).replace("_", "-")
            typer.echo(f"{option}: {error['msg']}", err=True)
        raise typer.Exit(2) from None
    store = open_store(config)
    try:
        record, secret = store.create_key(**fields.model_dump(exclude_unset=True))
    finally:
        store.close()
    if as_json:
        typer.echo(_json({"id": record["id"], "key": secret, **record}))
        return
    typer.echo(f"Created key {record['id']} ({record['name']}).")
    typer.echo("Secret (shown once, store it now):")
    typer.echo(secret)


@app.command("list")
def list_keys(
    team: str | None = typer.Option(None, "--team", help="Only this team's keys."),
    include_revoked: bool = typer.Option(False, "--all", help="Include revoked keys."),
    as_json: bool = JSON_OPTION,
    config: str = CONFIG_OPTION,
) -> None:
    """List keys (never their secrets)."""
    store = open_store(config)
    try:
        records = store.list_keys(team=team, include_revoked=include_revoked)
    finally:
        store.close()
    if as_json:
        typer.echo(_json(records))
        return
    typer.echo(render_key_table(records))


@app.command("show")
def show(key_id: str = typer.Argument(..., help="The key's id (key_...)."), config: str = CONFIG_OPTION) -> None:
    """Show one key's record as JSON."""
    store = open_store(config)
    try:
        record = store.get_key(key_id)
    finally:
        store.close()
    if record is None:
        typer.echo(f"No key with id {key_id!r}.", err=True)
        raise typer.Exit(1)
    typer.echo(_json(record))


@app.command("revoke")
def revoke(key_id: str = typer.Argument(..., help="The key's id (key_...)."), config: str = CONFIG_OPTION) -> None:
    """Revoke a key for good: every gateway instance refuses it within its key cache TTL."""
    store = open_store(config)
    try:
        record = store.revoke_key(key_id)
    finally:
        store.close()
    if record is None:
        typer.echo(f"No key with id {key_id!r}.", err=True)
        raise typer.Exit(1)
    typer.echo(f"Revoked {record['id']} ({record['name']}) at {record['revoked_at'].isoformat()}.")


def render_key_table(records: list[dict[str, Any]]) -> str:
    cells = [[_cell(record.get(column)) for column in _LIST_COLUMNS] for record in records]
    widths = [max([len(column), *(len(row[i]) for row in cells)]) for i, column in enumerate(_LIST_COLUMNS)]

    def line(values: list[str] | tuple[str, ...]) -> str:
        return "  ".join(v.ljust(w) for v, w in zip(values, widths, strict=True)).rstrip()

    return "\n".join([line(_LIST_COLUMNS), line(["-" * w for w in widths]), *(line(row) for row in cells)])


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def _split(text: str | None) -> list[str] | None:
    if text is None:
        return None
    return [part.strip() for part in text.split(",") if part.strip()]


def _json(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_INDENT_2).decode()
