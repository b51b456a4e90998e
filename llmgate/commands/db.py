"""`llmgate db upgrade`, and opening the configured database for the other commands.

Every command that reads or writes the store migrates it first: on a current
schema that is a no-op, and on a fresh SQLite file it creates the tables.
"""

from __future__ import annotations

import typer
from alembic.migration import MigrationContext
from sqlalchemy.engine import make_url

from llmgate.config import ConfigError, load_settings
from llmgate.storage import Store, create_store

app = typer.Typer(no_args_is_help=True, help="Database schema: upgrade to the latest revision.")

CONFIG_OPTION = typer.Option("config.toml", "--config", "-c", help="Path to config.toml.")


@app.callback()
def database() -> None:
    """Database schema commands (a group even with one command: `llmgate db upgrade`)."""


def open_store(config: str) -> Store:
    """The store of `config`'s `gateway.database_url`, migrated to the latest schema.
    Exits with status 2 on an invalid config, 1 when the database cannot be reached."""
    try:
        settings = load_settings(config)
    except ConfigError as exc:
        for line in exc.problems:
            typer.echo(line, err=True)
        raise typer.Exit(2) from None
    store = create_store(settings.gateway.database_url)
    try:
        store.upgrade()
    except Exception as exc:
        store.close()
        typer.echo(f"{safe_url(store.url)}: cannot open the database: {exc.__class__.__name__}: {exc}", err=True)
        raise typer.Exit(1) from None
    return store


def safe_url(url: str) -> str:
    """A database URL fit to print (no password)."""
    return make_url(url).render_as_string(hide_password=True)


@app.command("upgrade")
def upgrade(config: str = CONFIG_OPTION) -> None:
    """Create the schema or migrate it to the latest revision (keeps every record)."""
    store = open_store(config)
    try:
        with store.engine.connect() as conn:
            revision = MigrationContext.configure(conn).get_current_revision()
        typer.echo(f"{safe_url(store.url)}: schema at revision {revision}")
    finally:
        store.close()
