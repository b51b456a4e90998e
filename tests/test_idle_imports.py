"""An idle gateway loads no module it does not use: Jinja2, jsonschema and prometheus_client
come in on first need (a prompt, a tool schema, a scrape), and the results are unchanged.

The start-up probes run in a fresh interpreter, since this test process has long
imported everything.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

import llmgate.app
from llmgate.metrics import CONTENT_TYPE, Metrics

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("jinja2", "jsonschema", "prometheus_client")

CONFIG = """
[gateway]
master_key = "sk-test-master"
database_url = "sqlite:///{dir}/gw.db"
usage_spill_path = "{dir}/spill.jsonl"
prompts_dir = "{dir}/prompts"
log_requests = false

[providers.up]
type = "openai"
base_url = "http://127.0.0.1:9/v1"
api_key = "sk-upstream"

[providers.up-anthropic]
type = "anthropic"
base_url = "http://127.0.0.1:9"
api_key = "sk-ant-upstream"

[[models]]
name = "fake-gpt"
provider = "up"
upstream = "gpt-4o-mini"

[[models]]
name = "fake-claude"
provider = "up-anthropic"
upstream = "claude-3-5-haiku-20241022"
"""

# Starts the app as `llmgate serve` does, reports what is loaded when idle, then uses
# each lazily loaded part once: a scrape of /metrics and a prompt saved and rendered.
PROBE = """
import asyncio, json, sys
import llmgate.cli
from llmgate.app import create_app
from llmgate.config import load_settings

HEAVY = {heavy!r}

def loaded():
    return [m for m in HEAVY if m in sys.modules]

async def scrape(app):
    sent = []
    async def receive():
        return {{"type": "http.request", "body": b"", "more_body": False}}
    async def send(message):
        sent.append(message)
    scope = {{"type": "http", "method": "GET", "path": "/metrics", "headers": []}}
    await app(scope, receive, send)
    return sent[0]["status"], sent[1]["body"].decode()

async def main():
    app = create_app(load_settings(sys.argv[1]))
    await app.startup()
    out = {{"idle": loaded()}}
    prompts = app.gw.extras["prompts"]
    out["files"] = [pv.name for pv in prompts.current()]
    status, body = await scrape(app)
    out["scrape"] = [status, "llmgate_requests" in body, "process_cpu_seconds_total" in body]
    out["after_scrape"] = loaded()
    document = {{
        "model": "fake-gpt",
        "inputs": {{"who": {{"type": "string"}}}},
        "messages": [{{"role": "user", "content": "Hello {{{{ who }}}}!"}}],
    }}
    pv = await prompts.save("greet", document)
    out["rendered"] = await prompts.render(pv, {{"who": "world"}})
    out["after_prompt"] = loaded()
    await app.shutdown()
    print(json.dumps(out))

asyncio.run(main())
"""


def run_probe(tmp_path: Path) -> dict[str, Any]:
    config = tmp_path / "gw.toml"
    config.write_text(CONFIG.format(dir=tmp_path))
    script = PROBE.format(heavy=HEAVY)
    result = subprocess.run(
        [sys.executable, "-c", script, str(config)], capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_an_idle_gateway_loads_no_prompt_or_metrics_library(tmp_path: Path) -> None:
    (tmp_path / "prompts").mkdir()
    out = run_probe(tmp_path)
    assert out["idle"] == []
    assert out["files"] == []
    assert out["scrape"] == [200, True, True]
    assert out["after_scrape"] == ["prometheus_client"]
    assert out["rendered"] == [{"role": "user", "content": "Hello world!"}]
    assert "jinja2" in out["after_prompt"]


def test_a_prompt_file_is_compiled_at_start(tmp_path: Path) -> None:
    prompts = tmp_path / "prompts"
    prompts.mkdir()
    (prompts / "classify.toml").write_text((ROOT / "prompts" / "classify.toml").read_text())
    out = run_probe(tmp_path)
    assert out["files"] == ["classify"]
    assert "jinja2" in out["idle"]


def test_the_prompting_package_still_exports_compile_prompt() -> None:
    import llmgate.prompting
    from llmgate.prompting import compile_prompt
    from llmgate.prompting.templates import compile_prompt as in_templates

    assert compile_prompt is in_templates
    assert "compile_prompt" in llmgate.prompting.__all__
    prompt, templates = compile_prompt(
        {"name": "p", "model": "m", "messages": [{"role": "user", "content": "Hi {{ x }}"}], "inputs": {"x": {}}}
    )
    assert prompt.name == "p" and len(templates) == 1
    with pytest.raises(AttributeError):
        _ = llmgate.prompting.no_such_name


# -- metrics: exported exactly as prometheus_client's own objects would be --------------


def test_content_type_is_prometheus_text_0_0_4() -> None:
    from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

    assert CONTENT_TYPE == CONTENT_TYPE_PLAIN_0_0_4


def _without_created_values(text: str) -> list[str]:
    return [line.rsplit(" ", 1)[0] if "_created{" in line else line for line in text.splitlines()]


def test_event_counters_render_as_prometheus_counters() -> None:
    """The rare-event counters' exposition equals that of prometheus_client Counters fed the same events."""
    from prometheus_client import CollectorRegistry, Counter
    from prometheus_client.exposition import generate_latest

    metrics = Metrics(process_metrics=False)
    registry = CollectorRegistry()
    throttle = Counter(
        "llmgate_throttle_decisions",
        "Throttle refusals and waits by scope and reason.",
        ("scope", "reason"),
        registry=registry,
    )
    errors = Counter("llmgate_upstream_errors", "Failed upstream attempts.", ("provider", "code"), registry=registry)
    cooldowns = Counter(
        "llmgate_deployment_cooldowns", "Deployments put in cooldown.", ("deployment",), registry=registry
    )
    for scope, reason in (("key", "rpm"), ("key", "rpm"), ("team", "budget")):
        metrics.throttle_decision(scope, reason)
        throttle.labels(scope, reason).inc()
    for provider, code, label in (("openai", 500, "500"), ("openai", "500", "500"), ("anthropic", None, "unknown")):
        metrics.upstream_error(provider, code)
        errors.labels(provider, label).inc()
    metrics.cooldown("openai/gpt-4o-mini")
    cooldowns.labels("openai/gpt-4o-mini").inc()

    ours = _without_created_values(metrics.render().decode())
    theirs = _without_created_values(generate_latest(registry).decode())
    start = ours.index(theirs[0])
    assert ours[start : start + len(theirs)] == theirs
    created = [line for line in metrics.render().decode().splitlines() if line.startswith("llmgate_upstream_errors_c")]
    assert len(created) == 2 and all(abs(float(line.rsplit(" ", 1)[1]) - time.time()) < 600 for line in created)


def test_event_counters_follow_the_created_series_switch(monkeypatch: pytest.MonkeyPatch) -> None:
    import prometheus_client.metrics

    metrics = Metrics(process_metrics=False)
    metrics.cooldown("d")
    monkeypatch.setattr(prometheus_client.metrics, "_use_created", False)
    text = metrics.render().decode()
    assert 'llmgate_deployment_cooldowns_total{deployment="d"} 1.0' in text
    assert "_created" not in text


def test_collectors_bound_after_the_first_scrape_are_exported() -> None:
    from llmgate.throttle.limiter import new_stats

    metrics = Metrics(process_metrics=False)
    assert "llmgate_limiter_outcomes" not in metrics.render().decode()
    stats = new_stats()
    stats["throttled"] = 4
    metrics.bind_limiter_stats(stats)
    assert 'llmgate_limiter_outcomes_total{outcome="throttled"} 4.0' in metrics.render().decode()


# -- malloc_trim after start-up ---------------------------------------------------------


class _FakeGC:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def collect(self) -> None:
        self.calls.append("collect")

    def freeze(self) -> None:
        self.calls.append("freeze")

    def set_threshold(self, *thresholds: int) -> None:
        self.calls.append("set_threshold")


def test_start_up_heap_is_trimmed_on_linux(monkeypatch: pytest.MonkeyPatch) -> None:
    import ctypes

    trims: list[int] = []
    fake_gc = _FakeGC()
    monkeypatch.setattr(llmgate.app, "gc", fake_gc)
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.setattr(ctypes, "CDLL", lambda name: SimpleNamespace(malloc_trim=trims.append))
    llmgate.app.freeze_startup_heap()
    assert fake_gc.calls == ["collect", "freeze", "set_threshold"]
    assert trims == [0]


def test_start_up_heap_trim_is_skipped_without_glibc(monkeypatch: pytest.MonkeyPatch) -> None:
    import ctypes

    def no_libc(name: str) -> Any:
        raise OSError(f"{name}: cannot open shared object file")

    fake_gc = _FakeGC()
    monkeypatch.setattr(llmgate.app, "gc", fake_gc)
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.setattr(ctypes, "CDLL", no_libc)
    llmgate.app.freeze_startup_heap()
    monkeypatch.setattr(ctypes, "CDLL", lambda name: SimpleNamespace())  # a libc without malloc_trim (musl)
    llmgate.app.freeze_startup_heap()
    opened: list[str] = []
    monkeypatch.setattr(sys, "platform", "darwin")
    monkeypatch.setattr(ctypes, "CDLL", opened.append)
    llmgate.app.freeze_startup_heap()
    assert opened == []
    assert fake_gc.calls.count("freeze") == 3
