"""A gateway in a process of its own (`python -m llmgate.cli serve`), for signal, memory and fd tests.

The config is written as TOML from a dict; the process's database, spill file and
log stay in the given directory, so a second process started on the same
directory replays what the first one left.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import create_engine, text

from tests.reliability.conftest import free_port, wait_for


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"no TOML for {value!r}")


def build_toml(doc: dict[str, Any]) -> str:
    """`gateway`, `limits` and `routing` tables, `providers.<name>` tables and `[[models]]`."""
    lines: list[str] = []
    for table in ("gateway", "limits", "routing"):
        if table in doc:
            lines.append(f"[{table}]")
            lines += [f"{k} = {toml_value(v)}" for k, v in doc[table].items()]
    for name, provider in doc.get("providers", {}).items():
        lines.append(f"[providers.{name}]")
        lines += [f"{k} = {toml_value(v)}" for k, v in provider.items()]
    for model in doc.get("models", []):
        lines.append("[[models]]")
        lines += [f"{k} = {toml_value(v)}" for k, v in model.items()]
    return "\n".join(lines) + "\n"


class ServedGateway:
    """One `llmgate serve` process on a free port; `state` holds its database, spill file and log."""

    def __init__(self, state: Path, doc: dict[str, Any], env: dict[str, str] | None = None) -> None:
        self.state = state
        gateway = {
            "database_url": f"sqlite:///{state}/gateway.db",
            "usage_spill_path": f"{state}/spill.jsonl",
            "log_requests": False,
            **doc.get("gateway", {}),
        }
        self.doc = {**doc, "gateway": gateway}
        self.env = env or {}
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = state / f"gateway-{self.port}.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> ServedGateway:
        cfg = self.state / "config.toml"
        cfg.write_text(build_toml(self.doc))
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "llmgate.cli", "serve", "--config", str(cfg), "--port", str(self.port)],
            cwd=self.state,
            stdout=log,
            stderr=log,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **self.env},
        )
        if not wait_for(self.is_up, 30, 0.05):
            self.kill()
            raise RuntimeError(f"gateway did not start:\n{self.log()}")
        return self

    def is_up(self) -> bool:
        try:
            return httpx.get(self.url + "/health", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def terminate(self, timeout: float = 30) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def __enter__(self) -> ServedGateway:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.kill()


def usage_request_ids(database_url: str) -> list[str]:
    """Every usage row's request id, read straight from the database file."""
    engine = create_engine(database_url)
    try:
        with engine.connect() as conn:
            return [r[0] for r in conn.execute(text("select request_id from usage"))]
    finally:
        engine.dispose()


def proc_status(pid: int) -> dict[str, str]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        out[name] = value.strip()
    return out


def rss_kib(pid: int) -> int:
    return int(proc_status(pid)["VmRSS"].split()[0])


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def cpu_seconds(pid: int) -> float:
    """User + system CPU time the process has used."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
