"""Shared fixtures for the security suite: one gateway per module in front of a recording fake upstream.

The fake upstream answers OpenAI chat and embeddings and Anthropic messages, and
keeps every request it received, so a test can check where a call really went.
`ServeProcess` runs the real `llmgate serve` command (uvloop, the production
uvicorn settings) for the tests that need its whole output or its server setup.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.harness import FakeUpstream, GatewayServer, Received, Step, json_response, make_settings

ROOT = Path(__file__).resolve().parents[2]
MASTER = "sk-master-security-0123456789"
PROVIDER_SECRET = "sk-upstream-SECRET-123"
ANTHROPIC_SECRET = "sk-ant-upstream-SECRET-456"


def answer_upstream(req: Received) -> list[Step]:
    """A well-formed answer for each upstream endpoint the gateway calls."""
    if req.path.endswith("/embeddings"):
        return json_response(
            {
                "object": "list",
                "data": [{"object": "embedding", "index": 0, "embedding": [0.1, 0.2]}],
                "model": "emb",
                "usage": {"prompt_tokens": 2, "total_tokens": 2},
            }
        )
    if req.path.endswith("/v1/messages"):
        return json_response(
            {
                "id": "msg_1",
                "type": "message",
                "role": "assistant",
                "model": "claude",
                "content": [{"type": "text", "text": "hello"}],
                "stop_reason": "end_turn",
                "stop_sequence": None,
                "usage": {"input_tokens": 3, "output_tokens": 1},
            }
        )
    return json_response(
        {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "created": 1,
            "model": "gpt",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "hello"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
        }
    )


def gateway_doc(upstream_url: str, **gateway: Any) -> dict[str, Any]:
    """A config with an OpenAI and an Anthropic provider at the fake upstream, and a mock provider."""
    return {
        "gateway": {"master_key": MASTER, **gateway},
        "providers": {
            "up": {"type": "openai", "base_url": upstream_url + "/v1", "api_key": PROVIDER_SECRET},
            "ant": {"type": "anthropic", "base_url": upstream_url, "api_key": ANTHROPIC_SECRET},
            "mock": {"type": "mock"},
        },
        "models": [
            {"name": "gpt", "provider": "up", "upstream": "gpt-upstream", "max_tokens_cap": 100},
            {"name": "emb", "provider": "up", "mode": "embedding"},
            {"name": "claude", "provider": "ant", "upstream": "claude-upstream", "max_tokens_cap": 50},
            {"name": "mock-gpt", "provider": "mock"},
        ],
    }


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeUpstream]:
    with FakeUpstream(answer_upstream) as up:
        yield up


@pytest.fixture(scope="module")
def gateway(upstream: FakeUpstream) -> Iterator[GatewayServer]:
    with GatewayServer(make_settings(gateway_doc(upstream.url))) as server:
        yield server


@pytest.fixture
def master_headers() -> dict[str, str]:
    return {"authorization": f"Bearer {MASTER}"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServeProcess:
    """`llmgate serve` as a child process, its stderr and stdout kept in a file."""

    def __init__(self, config: Path, log: Path, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}"
        self.log = log
        env = {**os.environ, "LLMGATE_LOG_LEVEL": "DEBUG", "PYTHONPATH": str(ROOT)}
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "llmgate.cli", "serve", "--config", str(config)],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=ROOT,
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError("llmgate serve did not start: " + log.read_text())

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.log.read_text(errors="replace")
