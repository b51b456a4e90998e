"""`llmgate report --by key --since 7d [--until DAY] [--csv]`: the cost report as a table or CSV.

The same rows as `GET /admin/reports/cost`, read straight from the configured
database (no running gateway needed).
"""

from __future__ import annotations

from datetime import UTC, datetime

import typer

from llmgate.commands.db import CONFIG_OPTION, open_store
from llmgate.cost import format_usd
from llmgate.errors import InvalidRequest
from llmgate.reports import parse_day, parse_group_by, parse_since, render_csv, render_table

# The report parameter each option feeds, for naming the option in an error.
_OPTIONS = {"group_by": "--by", "since": "--since", "until": "--until"}

app = typer.Typer(help="Cost report: usage and exact cost grouped by key, team, model, day or prompt.")


@app.callback(invoke_without_command=True)
def report(
    by: str = typer.Option("key", "--by", help="Group by key, team, model, day or prompt (comma-combined)."),
    since: str = typer.Option("7d", "--since", help="First day: 7d (the last 7 days), 2w, or YYYY-MM-DD."),
    until: str | None = typer.Option(None, "--until", help="Last day, YYYY-MM-DD (default: today, UTC)."),
    key_id: str | None = typer.Option(None, "--key", help="Only this key's usage."),
    as_csv: bool = typer.Option(False, "--csv", help="Print CSV (with a header row) instead of a table."),
    config: str = CONFIG_OPTION,
) -> None:
    """Print the cost report."""
    try:
        group_by = parse_group_by(by)
        last = parse_day(until, "until") or datetime.now(UTC).date()
        first = parse_since(since, today=last)
    except InvalidRequest as exc:
        typer.echo(f"{_OPTIONS.get(exc.param or '', '')}: {exc.message}", err=True)
        raise typer.Exit(2) from None
    if first > last:
        typer.echo(f"--since ({first}) is after --until ({last}).", err=True)
        raise typer.Exit(2)
    store = open_store(config)
    try:
        rows = store.cost_report(list(group_by), first, last, key_id=key_id)
    finally:
        store.close()
    if as_csv:
        typer.echo(render_csv(group_by, rows), nl=False)
        return
    total = sum(row["cost_nusd"] for row in rows)
    typer.echo(f"Usage from {first} to {last} (UTC), by {', '.join(group_by) or 'total'}:")
    typer.echo(render_table(group_by, rows))
    typer.echo(f"Total: {sum(row['requests'] for row in rows)} requests, {format_usd(total)} USD")
