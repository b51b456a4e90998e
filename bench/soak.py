"""Soak: llmgate at a fixed share of its peak rate for a while, then three checks.

1. no memory growth: the gateway's RSS over the last fifth of the run stays within
   10% of its RSS once warmed up (the first tenth);
2. no error: every call answered 200;
3. exactly one usage row per answered call: after a graceful stop (which flushes
   the usage writer), the usage table holds one row per answered call, with no
   request id twice.

The load follows a fixed schedule (calls start at their slot whatever the answers
do, with at most 64 in flight so a late generator cannot burst), from this process
on LOAD_CPU, through the same full-pipeline config and virtual key as bench/run.sh.
Needs the bench kit's nginx on :18080 (started here if absent).

    .venv/bin/python bench/soak.py             # 10 minutes at 70% of peak
    .venv/bin/python bench/soak.py --short     # 30 s (CI: catches leaks and lost records early)

Exit status 0 when all checks hold; the markdown result goes to stdout (and to
bench/results/soak-<time>.md).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import orjson
from sqlalchemy import create_engine, func, select

from llmgate.http1 import Http1Client
from llmgate.storage.models import UsageRow

HERE = Path(__file__).parent
ROOT = HERE.parent
KIT = Path(os.environ.get("KIT", ROOT.parent / "shared" / "bench"))
MESSAGES = [{"role": "user", "content": "Say hello in one short sentence."}]
BODY = orjson.dumps({"model": "fake-gpt", "messages": MESSAGES, "max_tokens": 32})
MAX_IN_FLIGHT = 64
# Below uvicorn's 5 s keep-alive: a connection idle that long is closed by the server, and
# reusing one just as it closes would fail a call that never reached the gateway.
CLIENT_KEEPALIVE_S = 4.0
CALL_TIMEOUT_S = 30.0


@dataclass
class Tally:
    answered: int = 0
    errors: int = 0
    refused: int = 0  # errors the gateway answered (with a status): these are settled and recorded too
    late: int = 0  # calls started more than 100 ms behind schedule (the gateway or generator fell behind)
    error_samples: list[str] = field(default_factory=list)


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def upstream_ready() -> bool:
    try:
        urllib.request.urlopen("http://127.0.0.1:18080/health", timeout=1).read()
    except OSError:
        return False
    return True


def start_nginx(workdir: Path, cpu: str) -> subprocess.Popen[bytes] | None:
    if upstream_ready():
        return None
    (workdir / "nginx" / "tmp").mkdir(parents=True)
    conf = KIT / "upstream" / "nginx.conf"
    nginx = subprocess.Popen(
        ["taskset", "-c", cpu, "nginx", "-p", str(workdir / "nginx"), "-c", str(conf), "-g", "daemon off;"],
        stderr=subprocess.DEVNULL,
    )
    for _ in range(50):
        if upstream_ready():
            return nginx
        time.sleep(0.1)
    raise SystemExit("the fake upstream (nginx on :18080) did not start")


def write_config(workdir: Path) -> Path:
    text = (HERE / "llmgate-bench.toml").read_text()
    text = text.replace("/tmp/llmgate-bench.db", str(workdir / "soak.db"))
    text = text.replace("/tmp/llmgate-bench-spill.jsonl", str(workdir / "spill.jsonl"))
    config = workdir / "soak.toml"
    config.write_text(text)
    return config


def create_key(config: Path) -> str:
    out = subprocess.run(
        [
            *(str(ROOT / ".venv/bin/llmgate"), "keys", "create", "--config", str(config), "--name", "soak"),
            *("--team", "bench", "--rpm", "100000000", "--tpm", "10000000000", "--json"),
        ],
        check=True,
        capture_output=True,
    )
    return str(orjson.loads(out.stdout)["key"])


def start_gateway(config: Path, port: int, cpu: str, log: Path) -> subprocess.Popen[bytes]:
    cmd = ["taskset", "-c", cpu, str(ROOT / ".venv/bin/llmgate"), "serve", "--config", str(config)]
    gateway = subprocess.Popen([*cmd, "--port", str(port)], stdout=log.open("wb"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1).read()
            return gateway
        except OSError:
            if gateway.poll() is not None:
                raise SystemExit(f"the gateway exited during start-up; see {log}") from None
            time.sleep(0.05)
    raise SystemExit("the gateway did not become healthy within 30 s")


async def one_call(client: Http1Client, url: str, headers: dict[str, str], tally: Tally) -> None:
    try:
        async with asyncio.timeout(CALL_TIMEOUT_S):
            status, _, body = await client.request("POST", url, headers, BODY, 5.0)
    except (OSError, TimeoutError) as exc:
        status, body = 0, repr(exc).encode()
    if status == 200:
        tally.answered += 1
    else:
        tally.errors += 1
        tally.refused += status != 0
        if len(tally.error_samples) < 3:
            tally.error_samples.append(f"{status}: {body[:200]!r}")


async def closed_loop_peak(
    url: str, headers: dict[str, str], seconds: float, concurrency: int = 32
) -> tuple[float, int]:
    """Requests/s with `concurrency` calls always in flight (the peak the rate is a share of),
    and how many calls that took."""
    client = Http1Client(keepalive_s=CLIENT_KEEPALIVE_S)
    tally = Tally()
    stop = time.monotonic() + seconds

    async def worker() -> None:
        while time.monotonic() < stop:
            await one_call(client, url, headers, tally)

    started = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    await client.aclose()
    if tally.errors:
        raise SystemExit(f"calls failed while measuring the peak: {tally.error_samples}")
    return tally.answered / (time.monotonic() - started), tally.answered


async def paced_load(
    url: str, headers: dict[str, str], rate: float, seconds: float, pid: int, samples: list[tuple[float, float]]
) -> Tally:
    """Calls on a fixed schedule of `rate` per second for `seconds`, at most MAX_IN_FLIGHT at once
    (a call whose slot has passed starts at once; a late generator never bursts beyond that);
    the gateway's RSS is sampled every second."""
    client = Http1Client(keepalive_s=CLIENT_KEEPALIVE_S)
    tally = Tally()
    started = time.monotonic()
    slots = iter(range(10**12))

    async def worker() -> None:
        while True:
            at = started + next(slots) / rate
            if at - started >= seconds:
                return
            delay = at - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            elif delay < -0.1:
                tally.late += 1
            await one_call(client, url, headers, tally)

    async def sampler() -> None:
        while time.monotonic() - started < seconds:
            samples.append((time.monotonic() - started, rss_mib(pid)))
            await asyncio.sleep(1.0)

    await asyncio.gather(sampler(), *(worker() for _ in range(MAX_IN_FLIGHT)))
    await client.aclose()
    return tally


def usage_rows(config_db: Path) -> tuple[int, int]:
    engine = create_engine(f"sqlite:///{config_db}")
    try:
        with engine.connect() as conn:
            total = conn.execute(select(func.count()).select_from(UsageRow)).scalar_one()
            distinct = conn.execute(select(func.count(func.distinct(UsageRow.request_id)))).scalar_one()
    finally:
        engine.dispose()
    return int(total), int(distinct)


def judge(samples: list[tuple[float, float]], duration: float) -> tuple[float, float, float]:
    """RSS once warmed up (median of the first tenth), at the end (median of the last fifth), growth."""
    warm = sorted(r for t, r in samples if t <= max(duration * 0.1, 2.0))
    end = sorted(r for t, r in samples if t >= duration * 0.8)
    base, last = warm[len(warm) // 2], end[len(end) // 2]
    return base, last, (last - base) / base


async def soak(args: argparse.Namespace) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="llmgate-soak-"))
    nginx = start_nginx(workdir, args.load_cpu)
    config = write_config(workdir)
    key = create_key(config)
    log = workdir / "gateway.log"
    gateway = start_gateway(config, args.port, args.gw_cpu, log)
    url = f"http://127.0.0.1:{args.port}/v1/chat/completions"
    headers = {"content-type": "application/json", "authorization": f"Bearer {key}"}
    try:
        os.sched_setaffinity(0, {int(c) for c in args.load_cpu.split(",")})
        peak, probe_calls = (args.peak, 0) if args.peak else await closed_loop_peak(url, headers, args.peak_seconds)
        rate = peak * args.share
        samples: list[tuple[float, float]] = []
        tally = await paced_load(url, headers, rate, args.duration, gateway.pid, samples)
    finally:
        gateway.send_signal(signal.SIGTERM)
        gateway.wait(timeout=60)
        if nginx is not None:
            nginx.terminate()
            nginx.wait()
    rows, distinct = usage_rows(workdir / "soak.db")
    base, last, growth = judge(samples, args.duration)
    expected_rows = tally.answered + tally.refused + probe_calls
    checks = {
        "memory growth <= 10%": growth <= 0.10,
        "no error": tally.errors == 0,
        "one usage row per answered call": rows == distinct == expected_rows,
    }
    lines = [
        f"# Soak, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        "",
        f"{args.duration:.0f} s at {rate:.0f} calls/s ({args.share:.0%} of a measured peak of {peak:.0f}/s), "
        f"gateway on CPU {args.gw_cpu}, load on CPU {args.load_cpu}; load average {os.getloadavg()[0]:.2f}.",
        "",
        "| answered | errors | started late | RSS warm MiB | RSS end MiB | growth | usage rows | distinct ids |",
        "|---|---|---|---|---|---|---|---|",
        f"| {tally.answered} | {tally.errors} | {tally.late} | {base:.1f} | {last:.1f} | {growth:+.1%} | {rows} "
        f"| {distinct} |",
        "",
        *(f"- {'PASS' if ok else 'FAIL'}: {name}" for name, ok in checks.items()),
        "",
        "RSS over the run (s: MiB): "
        + ", ".join(f"{t:.0f}: {r:.1f}" for t, r in samples[:: max(1, len(samples) // 10)]),
    ]
    if probe_calls:
        lines.append(f"\nThe usage table also holds the {probe_calls} calls of the peak probe (all answered 200).")
    if tally.error_samples:
        lines.append(f"\nFirst errors: {tally.error_samples}")
    report = "\n".join(lines) + "\n"
    print(report)
    out = HERE / "results" / f"soak-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.md"
    out.parent.mkdir(exist_ok=True)
    out.write_text(report)
    if all(checks.values()):
        shutil.rmtree(workdir, ignore_errors=True)
        return 0
    print(f"kept {workdir} (gateway log, database) for inspection", file=sys.stderr)
    return 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--short", action="store_true", help="30 s instead of 10 minutes")
    parser.add_argument("--duration", type=float, help="seconds of load (default 600, or 30 with --short)")
    parser.add_argument("--share", type=float, default=0.7, help="share of the peak rate (default 0.7)")
    parser.add_argument("--peak", type=float, help="peak calls/s; measured first when not given")
    parser.add_argument("--peak-seconds", type=float, default=5.0)
    parser.add_argument("--port", type=int, default=4700)
    parser.add_argument("--gw-cpu", default=os.environ.get("GW_CPU", "1"))
    parser.add_argument("--load-cpu", default=os.environ.get("LOAD_CPU", "0"))
    args = parser.parse_args()
    if args.duration is None:
        args.duration = 30.0 if args.short else 600.0
    raise SystemExit(asyncio.run(soak(args)))


if __name__ == "__main__":
    main()
