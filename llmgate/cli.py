"""The `llmgate` command line: serve, config check, and the admin sub-commands.

`llmgate serve` is dispatched before the admin sub-commands are imported: they
pull in FastAPI, Alembic and the admin schemas (about a second of start-up and
tens of MB) that a serving process loads only when an admin request needs them.
"""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path

import typer

from llmgate.config import ConfigError, Settings, load_settings
from llmgate.surfaces.http import HTTP_PROTOCOL

CONFIG_OPTION = typer.Option("config.toml", "--config", "-c", help="Path to config.toml.")
SERVERS = ("uvicorn", "granian")


def load_or_exit(path: str) -> Settings:
    """Settings from `path`; on problems print one line each and exit with status 2."""
    try:
        return load_settings(path)
    except ConfigError as exc:
        for line in exc.problems:
            typer.echo(line, err=True)
        raise typer.Exit(2) from None


def config_check(config: str = CONFIG_OPTION) -> None:
    """Validate a config file: one line per problem, exit status 0 (valid) or 2."""
    settings = load_or_exit(config)
    disabled = [n for n, p in settings.providers.items() if p.disabled_reason]
    for name in disabled:
        typer.echo(f"{config}: providers.{name}: disabled ({settings.providers[name].disabled_reason})")
    typer.echo(f"{config}: ok ({len(settings.providers)} providers, {len(settings.models)} model entries)")


def serve(
    config: str = CONFIG_OPTION,
    host: str | None = typer.Option(None, help="Interface to bind (default from config, 127.0.0.1)."),
    port: int | None = typer.Option(None, help="Port (default from config, 4000)."),
    workers: int | None = typer.Option(None, help="Worker processes (default from config, 1)."),
    server: str = typer.Option("uvicorn", help="ASGI server: uvicorn (uvloop + httptools) or granian."),
) -> None:
    """Start the gateway."""
    if server not in SERVERS:
        typer.echo(f"--server: one of {', '.join(SERVERS)}", err=True)
        raise typer.Exit(2)
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
    bind_host = host or gw.host
    bind_port = port if port is not None else gw.port
    grace_s = max(1, math.ceil(gw.shutdown_grace_s))
    if server == "granian":
        run_granian(bind_host, bind_port, n_workers, grace_s)
    else:
        run_uvicorn(bind_host, bind_port, n_workers, grace_s)


def run_uvicorn(host: str, port: int, workers: int, grace_s: int) -> None:
    import uvicorn

    uvicorn.run(
        "llmgate.app:app_from_env",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        loop="uvloop" if sys.platform != "win32" else "asyncio",
        http=HTTP_PROTOCOL,
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=grace_s,
        log_level="warning",
    )


def run_granian(host: str, port: int, workers: int, grace_s: int) -> None:
    try:
        from granian import Granian
        from granian.constants import Interfaces, Loops
    except ImportError:
        typer.echo("--server granian: granian is not installed (pip install granian)", err=True)
        raise typer.Exit(2) from None
    Granian(
        "llmgate.app:app_from_env",
        factory=True,
        address=host,
        port=port,
        workers=workers,
        interface=Interfaces.ASGI,
        loop=Loops.uvloop if sys.platform != "win32" else Loops.asyncio,
        log_access=False,
        log_level="warning",
        workers_kill_timeout=grace_s,
    ).serve()


def build_app() -> typer.Typer:
    """The whole command line (the admin sub-commands are imported here, not for `serve`)."""
    from llmgate.commands import db as db_commands
    from llmgate.commands import keys as keys_commands
    from llmgate.commands import prompts as prompts_commands
    from llmgate.commands import report as report_commands

    app = typer.Typer(add_completion=False, no_args_is_help=True, help="llmgate: a fast, exact AI model gateway.")
    config_app = typer.Typer(no_args_is_help=True, help="Check the configuration.")
    config_app.command("check")(config_check)
    app.add_typer(config_app, name="config")
    app.command()(serve)
    app.add_typer(keys_commands.app, name="keys")
    app.add_typer(report_commands.app, name="report")
    app.add_typer(db_commands.app, name="db")
    app.add_typer(prompts_commands.app, name="prompts")
    return app


def main() -> None:
    args = sys.argv[1:]
    if args[:1] == ["serve"]:
        serve_app = typer.Typer(add_completion=False)
        serve_app.command()(serve)
        serve_app(args=args[1:], prog_name="llmgate serve")
        return
    build_app()()


if __name__ == "__main__":
    main()
