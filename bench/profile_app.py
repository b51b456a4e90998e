"""Drive the ASGI app in-process against the bench kit's nginx and report CPU per call.

No HTTP server and no load generator in the measurement: the figure is what the
gateway's own code costs per proxied call (auth with a virtual key from the
database, three throttling scopes, routing, cost, usage records), the number to
watch when optimising. Start the kit's fake upstream first:

    mkdir -p /tmp/ngx/tmp && taskset -c 0 nginx -p /tmp/ngx -c ../shared/bench/upstream/nginx.conf \\
        -e /tmp/ngx/error.log -g 'daemon off;' &
    .venv/bin/python bench/profile_app.py [--calls 3200] [--model fake-gpt|fake-claude|fake-gpt-stream]
        [--profile [--callers NAME]] [--redis redis://127.0.0.1:6379/0] [--config bench/llmgate-bench.toml]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson
import uvloop

from llmgate.app import GatewayApp, create_app
from llmgate.config import load_settings
from llmgate.storage import create_store

HERE = Path(__file__).parent
CONCURRENCY = 32


def build_body(model: str) -> bytes:
    body: dict[str, Any] = {
        "model": model,
        "messages": [{"role": "user", "content": "Say hello in one short sentence."}],
        "max_tokens": 32,
    }
    if model.endswith("stream"):
        body["stream"] = True
    return orjson.dumps(body)


def create_bench_key(database_url: str) -> str:
    store = create_store(database_url)
    try:
        store.upgrade()
        _, secret = store.create_key(name="bench", team="bench", rpm=100_000_000, tpm=10_000_000_000)
    finally:
        store.close()
    return secret


async def call(app: GatewayApp, key: str, body: bytes) -> None:
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/v1/chat/completions",
        "headers": [
            (b"authorization", b"Bearer " + key.encode()),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ],
    }
    delivered = False

    async def receive() -> dict[str, Any]:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.sleep(3600)
        return {"type": "http.disconnect"}

    status = 0

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    await app(scope, receive, send)
    if status != 200:
        raise SystemExit(f"call failed with HTTP {status}")


async def run_calls(app: GatewayApp, key: str, body: bytes, n: int) -> float:
    """CPU milliseconds per call over `n` calls, CONCURRENCY at a time."""
    started = time.process_time()
    for _ in range(n // CONCURRENCY):
        await asyncio.gather(*(call(app, key, body) for _ in range(CONCURRENCY)))
    return (time.process_time() - started) * 1000 / n


async def main(args: argparse.Namespace) -> None:
    settings = load_settings(args.config)
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{tmp}/profile.db"
        changes: dict[str, Any] = {"database_url": url, "usage_spill_path": f"{tmp}/spill.jsonl"}
        if args.redis:
            changes.update(redis_url=args.redis, redis_prefix=f"llmgate-profile-{time.time_ns()}:")
        gateway = settings.gateway.model_copy(update=changes)
        settings = settings.model_copy(update={"gateway": gateway})
        key = create_bench_key(url)
        app = create_app(settings)
        await app.startup()
        body = build_body(args.model)
        try:
            await run_calls(app, key, body, 320)  # warm-up: caches, connections, encodings
            profiler = cProfile.Profile() if args.profile else None
            if profiler is not None:
                profiler.enable()
            ms = await run_calls(app, key, body, args.calls)
            if profiler is not None:
                profiler.disable()
                print(f"CPU ms/call, under cProfile: {ms:.3f}")
                stats = pstats.Stats(profiler).sort_stats("tottime")
                stats.print_stats(args.top)
                if args.callers:
                    stats.print_callers(args.callers)
                ms = await run_calls(app, key, body, args.calls)
            print(f"CPU ms/call ({args.model}, {args.calls} calls, {CONCURRENCY} at a time): {ms:.3f}")
        finally:
            await app.shutdown()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=str(HERE / "llmgate-bench.toml"))
    parser.add_argument("--model", default="fake-gpt")
    parser.add_argument("--calls", type=int, default=3200)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--redis", help="a Redis URL: limits in Redis instead of in memory")
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--callers", help="with --profile: also print who calls functions matching this")
    uvloop.run(main(parser.parse_args()))
