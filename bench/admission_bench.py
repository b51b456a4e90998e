"""Micro-benchmark of the throttling engine: admission + settlement per request, in µs.

Scenarios (in-memory backend, each request touching three scopes: global, team, key):
- requests: rpm limits on all three, max_concurrency on the key (no token work at all);
- tokens: the same plus tpm on the key, prompt tokens known (as a surface that counted them);
- tokens+tiktoken: the same, prompt tokens counted here with tiktoken (a short chat message).
With --redis URL it also times the Redis backend (one script per admission, one per settle).

Usage: .venv/bin/python bench/admission_bench.py [-n 50000] [--redis redis://127.0.0.1:6379/0]
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from typing import Any

from llmgate.config import parse_settings
from llmgate.throttle import ThrottleLimiter
from llmgate.throttle.redis import RedisBackend, build_client
from llmgate.types import KeyInfo, RequestContext, Usage

BIG = 10**12
BODY = {"model": "gpt-4o", "max_tokens": 16, "messages": [{"role": "user", "content": "Say hello to the bench."}]}
USAGE = Usage(input_tokens=12, output_tokens=8)


def build_settings(tokens: bool, redis_url: str | None = None) -> Any:
    key_limits: dict[str, Any] = {"rpm": BIG, "max_concurrency": BIG}
    if tokens:
        key_limits["tpm"] = BIG
    raw: dict[str, Any] = {
        "limits": key_limits,
        "throttle": {"global": {"rpm": BIG}, "teams": {"bench": {"rpm": BIG}}},
    }
    if redis_url:
        raw["gateway"] = {"redis_url": redis_url}
    return parse_settings(raw, "bench")


async def run(limiter: ThrottleLimiter, n: int, preset_prompt: bool) -> float:
    key = KeyInfo(id="bench-key", name="bench", team="bench")
    start = time.perf_counter()
    for i in range(n):
        ctx = RequestContext(request_id=f"r{i}", surface="chat", token=None, body=BODY, model="gpt-4o", key=key)
        if preset_prompt:
            ctx.prompt_tokens = 12
        await limiter.admit(ctx)
        ctx.usage = USAGE
        await limiter.settle(ctx)
    return (time.perf_counter() - start) / n * 1e6


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=50_000)
    parser.add_argument("--redis", default=None, help="also time the Redis backend at this URL")
    args = parser.parse_args()
    scenarios = [("requests", False, True), ("tokens", True, True), ("tokens+tiktoken", True, False)]
    print("backend scenario         best / median of 7 rounds, µs per request (admit + settle)")
    for name, tokens, preset in scenarios:
        limiter = ThrottleLimiter(build_settings(tokens))
        await run(limiter, 2_000, preset)  # warm-up (tiktoken load, caches)
        rounds = sorted([await run(limiter, max(1, args.n // 7), preset) for _ in range(7)])
        print(f"memory  {name:<16} {rounds[0]:7.2f} / {rounds[3]:7.2f}")
    if args.redis:
        prefix = f"llmgate-bench-{uuid.uuid4().hex[:8]}:"
        client = build_client(args.redis)
        try:
            for name, tokens, preset in scenarios[:2]:
                backend = RedisBackend(client, prefix=prefix, track_inflight=False, read_key_signals=False)
                limiter = ThrottleLimiter(build_settings(tokens), backend)
                await run(limiter, 200, preset)
                n = max(1, args.n // 10)
                print(f"redis   {name:<16} {await run(limiter, n, preset):7.2f} (mean; 2 round trips per request)")
        finally:
            cursor, keys = b"0", []
            while True:
                cursor, batch = await client.execute("SCAN", cursor, "MATCH", f"{prefix}*", "COUNT", 1000)
                keys += batch
                if cursor == b"0":
                    break
            if keys:
                await client.execute("DEL", *keys)
            await client.aclose()


if __name__ == "__main__":
    asyncio.run(main())
