"""`llmgate prompts ...`: files checked offline, and reload/list/show against a gateway on loopback."""

from __future__ import annotations

import asyncio
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
import uvicorn
from typer.testing import CliRunner

from llmgate.commands.prompts import app
from llmgate.prompting import start_prompt_service
from tests.surfaces.test_prompts_api import build_app, build_gateway

ROOT = Path(__file__).resolve().parents[2]
runner = CliRunner()

GOOD = """
model = "mock-gpt"
[inputs.who]
type = "string"
[[messages]]
role = "user"
content = "Hello {{ who }}"
"""


@pytest.fixture
def prompts(tmp_path: Path) -> Path:
    directory = tmp_path / "prompts"
    shutil.copytree(ROOT / "prompts", directory)
    return directory


def test_check_passes_on_the_shipped_prompts(prompts: Path) -> None:
    result = runner.invoke(app, ["check", "--dir", str(prompts), "--config", "/nonexistent.toml"])
    assert result.exit_code == 0, result.output
    assert "ok: 3 prompt file(s) valid" in result.stdout


def test_check_reports_each_problem_with_file_and_line_and_fails(prompts: Path) -> None:
    (prompts / "bad.toml").write_text(GOOD.replace("Hello {{ who }}", "line 1\\nHello {{ whom }}"))
    (prompts / "worse.toml").write_text("this is not toml")
    result = runner.invoke(app, ["check", "--dir", str(prompts), "--config", "/nonexistent.toml"])
    assert result.exit_code == 1
    assert f"{prompts / 'bad.toml'}: messages[0].content line 2: unknown variable `whom`" in result.stderr
    assert f"{prompts / 'worse.toml'}: invalid TOML" in result.stderr
    assert "2 of 5 prompt file(s) invalid" in result.stderr


def test_check_finds_duplicate_names(prompts: Path) -> None:
    (prompts / "copy.toml").write_text('name = "summarize"\n' + GOOD)
    result = runner.invoke(app, ["check", "--dir", str(prompts), "--config", "/nonexistent.toml"])
    assert result.exit_code == 1
    assert "`summarize` is also defined in" in result.stderr


def test_check_reads_the_prompt_dir_from_config(tmp_path: Path, prompts: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text(f'[gateway]\nprompts_dir = "{prompts}"\n')
    (prompts / "bad.toml").write_text("model = 3\n")
    result = runner.invoke(app, ["check", "--config", str(config)])
    assert result.exit_code == 1
    assert f"{prompts / 'bad.toml'}: model:" in result.stderr


def test_list_and_show_read_the_files(prompts: Path) -> None:
    result = runner.invoke(app, ["list", "--dir", str(prompts), "--config", "/nonexistent.toml"])
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["NAME", "STATE", "MODEL", "INPUTS", "FILE"]
    classify = next(line for line in lines if line.startswith("classify"))
    assert "published" in classify and "text, labels, instructions?" in classify

    shown = runner.invoke(app, ["show", "translate", "--dir", str(prompts), "--config", "/nonexistent.toml"])
    assert shown.exit_code == 0
    payload = orjson.loads(shown.stdout)
    assert payload["document"]["name"] == "translate"
    assert payload["input_schema"]["required"] == ["text", "target_language"]
    missing = runner.invoke(app, ["show", "nope", "--dir", str(prompts), "--config", "/nonexistent.toml"])
    assert missing.exit_code == 1 and "no prompt file defines `nope`" in missing.stderr


class LoopbackGateway:
    """The prompt surface served by uvicorn on 127.0.0.1:<ephemeral port>."""

    def __init__(self, prompts_dir: Path) -> None:
        gateway = build_gateway(prompts_dir)
        asyncio.run(start_prompt_service(gateway))
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        config = uvicorn.Config(build_app(gateway), loop="asyncio", lifespan="off", log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True)

    def __enter__(self) -> LoopbackGateway:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.01)
        return self

    def __exit__(self, *_: object) -> None:
        self.server.should_exit = True
        self.thread.join(5)


@pytest.fixture
def gateway(prompts: Path) -> Iterator[LoopbackGateway]:
    with LoopbackGateway(prompts) as server:
        yield server


def test_reload_tells_the_gateway_to_reread_files(gateway: LoopbackGateway, prompts: Path) -> None:
    args = ["--url", gateway.url, "--key", "sk-master", "--config", "/nonexistent.toml"]
    result = runner.invoke(app, ["reload", *args])
    assert result.exit_code == 0, result.output
    assert "summarize: version 1 (unchanged)" in result.stdout

    (prompts / "hello.toml").write_text(GOOD)
    result = runner.invoke(app, ["reload", *args])
    assert "hello: version 1 (new version)" in result.stdout

    listed = runner.invoke(app, ["list", "--remote", *args])
    assert listed.exit_code == 0
    assert any(line.split()[:4] == ["hello", "published", "1", "1"] for line in listed.stdout.splitlines())
    shown = runner.invoke(app, ["show", "hello", "--remote", *args])
    assert orjson.loads(shown.stdout)["document"]["messages"][0]["content"] == "Hello {{ who }}"

    (prompts / "broken.toml").write_text("model = 1\n")
    result = runner.invoke(app, ["reload", *args])
    assert result.exit_code == 1
    assert f"{prompts / 'broken.toml'}: model:" in result.stderr


def test_reload_with_a_wrong_key_or_no_gateway_fails(gateway: LoopbackGateway) -> None:
    result = runner.invoke(app, ["reload", "--url", gateway.url, "--key", "sk-a", "--config", "/nonexistent.toml"])
    assert result.exit_code == 1 and "403" in result.stderr
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}"
    result = runner.invoke(app, ["reload", "--url", closed, "--key", "k", "--config", "/nonexistent.toml"])
    assert result.exit_code == 1 and "cannot reach the gateway" in result.stderr


def test_reload_without_a_master_key_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LLMGATE_MASTER_KEY", raising=False)
    result = runner.invoke(app, ["reload", "--url", "http://127.0.0.1:9", "--config", "/nonexistent.toml"])
    assert result.exit_code == 2 and "no master key" in result.stderr
