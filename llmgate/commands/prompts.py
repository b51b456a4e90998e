"""`llmgate prompts list|show|check|reload`: prompt files on disk and on a running gateway.

`list`, `show` and `check` read the prompt files of `gateway.prompts_dir` (or
`--dir`) and need no running gateway; `list --remote` and `show --remote` ask a
running gateway's admin API instead (which also knows prompts saved through the
API). `reload` tells a running gateway to re-read its files.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import httpx
import orjson
import typer

from llmgate.config import ConfigError, Settings, load_settings
from llmgate.prompting.document import DocumentError, Prompt, list_prompt_files, read_prompt_file
from llmgate.prompting.inputs import build_input_schema
from llmgate.prompting.templates import compile_prompt

app = typer.Typer(no_args_is_help=True, help="Prompt templates: list, show, check and reload.")

CONFIG_OPTION = typer.Option("config.toml", "--config", "-c", help="Path to config.toml.")
DIR_OPTION = typer.Option(None, "--dir", "-d", help="Prompt directory (default: gateway.prompts_dir).")
URL_OPTION = typer.Option(None, "--url", help="A running gateway (default: http://<gateway.host>:<gateway.port>).")
KEY_OPTION = typer.Option(None, "--key", help="Master key (default: $LLMGATE_MASTER_KEY or gateway.master_key).")
REMOTE_OPTION = typer.Option(False, "--remote", help="Ask the running gateway instead of reading the files.")


def _settings(config: str) -> Settings | None:
    """The config's settings, None when the file does not exist; exit 2 on an invalid one."""
    if not Path(config).exists():
        return None
    try:
        return load_settings(config)
    except ConfigError as exc:
        for line in exc.problems:
            typer.echo(line, err=True)
        raise typer.Exit(2) from None


def _prompts_dir(config: str, directory: Path | None) -> Path:
    if directory is not None:
        return directory
    settings = _settings(config)
    return Path(settings.gateway.prompts_dir if settings else "prompts")


def _gateway_url(config: str, url: str | None) -> str:
    if url:
        return url.rstrip("/")
    settings = _settings(config)
    host = settings.gateway.host if settings else "127.0.0.1"
    port = settings.gateway.port if settings else 4000
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    return f"http://{host}:{port}"


def _master_key(config: str, key: str | None) -> str:
    found = key or os.environ.get("LLMGATE_MASTER_KEY")
    if not found:
        settings = _settings(config)
        found = settings.gateway.master_key if settings else None
    if not found:
        typer.echo("error: no master key: pass --key or set LLMGATE_MASTER_KEY", err=True)
        raise typer.Exit(2)
    return found


def _admin(method: str, config: str, url: str | None, key: str | None, path: str) -> Any:
    """Call the gateway's admin API; exit 1 with its error message when it fails."""
    base = _gateway_url(config, url)
    headers = {"Authorization": f"Bearer {_master_key(config, key)}"}
    try:
        response = httpx.request(method, f"{base}{path}", headers=headers, timeout=30)
    except httpx.HTTPError as exc:
        typer.echo(f"error: cannot reach the gateway at {base}: {exc}", err=True)
        raise typer.Exit(1) from None
    try:
        payload = response.json()
    except ValueError:
        payload = {"error": {"message": response.text[:200]}}
    if response.status_code >= 400:
        message = (payload.get("error") or {}).get("message") if isinstance(payload, dict) else None
        typer.echo(f"error: {response.status_code}: {message or response.text[:200]}", err=True)
        raise typer.Exit(1)
    return payload


def _load(path: Path) -> Prompt:
    prompt, _ = compile_prompt(read_prompt_file(path))
    return prompt


def _echo_json(value: Any) -> None:
    typer.echo(orjson.dumps(value, option=orjson.OPT_INDENT_2).decode())


def _table(rows: list[list[str]]) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        typer.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


@app.command("list")
def list_prompts(
    config: str = CONFIG_OPTION,
    directory: Path | None = DIR_OPTION,
    remote: bool = REMOTE_OPTION,
    url: str | None = URL_OPTION,
    key: str | None = KEY_OPTION,
) -> None:
    """One line per prompt: name, state, model, inputs (and the file, or the gateway's versions)."""
    if remote:
        data = _admin("GET", config, url, key, "/admin/prompts")["data"]
        rows = [["NAME", "STATE", "DEFAULT", "LATEST", "LABELS"]]
        for row in data:
            labels = ", ".join(f"{k}={v}" for k, v in sorted(row["labels"].items()))
            rows.append([row["name"], str(row["state"]), str(row["default_version"]), str(row["latest"]), labels])
        _table(rows)
        return
    rows = [["NAME", "STATE", "MODEL", "INPUTS", "FILE"]]
    for path in list_prompt_files(_prompts_dir(config, directory)):
        try:
            prompt = _load(path)
        except DocumentError as exc:
            rows.append([path.stem, "INVALID", "-", f"{len(exc.problems)} problem(s)", str(path)])
            continue
        inputs = ", ".join(n if s.is_required else f"{n}?" for n, s in prompt.inputs.items())
        rows.append([prompt.name, prompt.state, prompt.model, inputs or "-", str(path)])
    _table(rows)


@app.command("show")
def show(
    name: str,
    config: str = CONFIG_OPTION,
    directory: Path | None = DIR_OPTION,
    remote: bool = REMOTE_OPTION,
    version: int | None = typer.Option(None, help="With --remote: a given version (default: the latest)."),
    url: str | None = URL_OPTION,
    key: str | None = KEY_OPTION,
) -> None:
    """A prompt's document and the JSON schema of its request body."""
    if remote:
        query = f"?version={version}" if version is not None else ""
        _echo_json(_admin("GET", config, url, key, f"/admin/prompts/{name}{query}"))
        return
    for path in list_prompt_files(_prompts_dir(config, directory)):
        try:
            raw = read_prompt_file(path)
        except DocumentError:
            continue
        if raw.get("name") != name:
            continue
        try:
            prompt = _load(path)
        except DocumentError as exc:
            for problem in exc.problems:
                typer.echo(f"{path}: {problem}", err=True)
            raise typer.Exit(1) from None
        _echo_json({"file": str(path), "document": prompt.to_document(), "input_schema": build_input_schema(prompt)})
        return
    typer.echo(f"error: no prompt file defines `{name}`", err=True)
    raise typer.Exit(1)


@app.command("check")
def check(
    files: list[Path] = typer.Argument(None, help="Files to check (default: every file of the prompt directory)."),
    config: str = CONFIG_OPTION,
    directory: Path | None = DIR_OPTION,
) -> None:
    """Validate prompt files: one line per problem; exit status 1 when any file is invalid."""
    paths = list(files) if files else list_prompt_files(_prompts_dir(config, directory))
    bad = 0
    names: dict[str, Path] = {}
    for path in paths:
        try:
            prompt = _load(path)
        except DocumentError as exc:
            bad += 1
            for problem in exc.problems:
                typer.echo(f"{path}: {problem}", err=True)
            continue
        if prompt.name in names:
            bad += 1
            typer.echo(f"{path}: name: `{prompt.name}` is also defined in {names[prompt.name]}", err=True)
        names[prompt.name] = path
    if bad:
        typer.echo(f"{bad} of {len(paths)} prompt file(s) invalid", err=True)
        raise typer.Exit(1)
    typer.echo(f"ok: {len(paths)} prompt file(s) valid")


@app.command("reload")
def reload(config: str = CONFIG_OPTION, url: str | None = URL_OPTION, key: str | None = KEY_OPTION) -> None:
    """Ask a running gateway to re-read its prompt files (like SIGHUP)."""
    result = _admin("POST", config, url, key, "/admin/prompts/reload")
    for entry in result["loaded"]:
        status = "new version" if entry["changed"] else "unchanged"
        typer.echo(f"{entry['name']}: version {entry['version']} ({status})")
    for line in result["errors"]:
        typer.echo(line, err=True)
    if result["errors"]:
        raise typer.Exit(1)
