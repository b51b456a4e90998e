"""The `llmgate` command line: serve, config check, and the admin sub-commands."""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path

import typer

from llmgate.commands import db as db_commands
from llmgate.commands import keys as keys_commands
from llmgate.commands import prompts as prompts_commands
from llmgate.commands import report as report_commands
from llmgate.config import ConfigError, Settings, load_settings

app = typer.Typer(add_completion=False, no_args_is_help=True, help="llmgate: a fast, exact AI model gateway.")
config_app = typer.Typer(no_args_is_help=True, help="Check the configuration.")
app.add_typer(config_app, name="config")
app.add_typer(keys_commands.app, name="keys")
app.add_typer(report_commands.app, name="report")
app.add_typer(db_commands.app, name="db")
app.add_typer(prompts_commands.app, name="prompts")

CONFIG_OPTION = typer.Option("config.toml", "--config", "-c", help="Path to config.toml.")


def load_or_exit(path: str) -> Settings:
    """Settings from `path`; on problems print one line each and exit with status 2."""
    try:
        return load_settings(path)
    except ConfigError as exc:
        for line in exc.problems:
            typer.echo(line, err=True)
        raise typer.Exit(2) from None


@config_app.command("check")
def config_check(config: str = CONFIG_OPTION) -> None:
    """Validate a config file: one line per problem, exit status 0 (valid) or 2."""
    settings = load_or_exit(config)
    disabled = [n for n, p in settings.providers.items() if p.disabled_reason]
    for name in disabled:
        typer.echo(f"{config}: providers.{name}: disabled ({settings.providers[name].disabled_reason})")
    typer.echo(f"{config}: ok ({len(settings.providers)} providers, {len(settings.models)} model entries)")


@app.command()
def serve(
    config: str = CONFIG_OPTION,
    host: str | None = typer.Option(None, help="Interface to bind (default from config, 127.0.0.1)."),
    port: int | None = typer.Option(None, help="Port (default from config, 4000)."),
    workers: int | None = typer.Option(None, help="Worker processes (default from config, 1)."),
) -> None:
    """Start the gateway."""
    import uvicorn

    settings = load_or_exit(config)
    gw = settings.gateway
    n_workers = workers or gw.workers
    if n_workers > 1 and not gw.redis_url:
        typer.echo(
            "warning: --workers > 1 without gateway.redis_url: every limit becomes per worker "
            f"(each of {n_workers} workers admits up to the full limit). Set redis_url for exact shared limits.",
            err=True,
        )
    os.environ["LLMGATE_CONFIG"] = str(Path(config).resolve())
    uvicorn.run(
        "llmgate.app:app_from_env",
        factory=True,
        host=host or gw.host,
        port=port if port is not None else gw.port,
        workers=n_workers,
        loop="uvloop" if sys.platform != "win32" else "asyncio",
        http="httptools",
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=max(1, math.ceil(gw.shutdown_grace_s)),
        log_level="warning",
    )


def main() -> None:
    app()


if __name__ == "__main__":
    main()
