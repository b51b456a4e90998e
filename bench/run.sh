#!/usr/bin/env bash
# llmgate and the LiteLLM proxy measured with ../shared/bench in one run, one
# after the other on the same core; the tables go to bench/results/<UTC time>.md.
#
#   bench/run.sh                 # llmgate, then LiteLLM (installed into /tmp/litellm-venv)
#   SKIP_LITELLM=1 bench/run.sh  # llmgate only
#   KIT=/path/to/shared/bench CONNS="1 32" DURATION=10 bench/run.sh
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
kit=${KIT:-$root/../shared/bench}
[[ -x $kit/with_gateway.sh ]] || { echo "benchmark kit not found at $kit (set KIT=)" >&2; exit 1; }
export CONNS=${CONNS:-"1 8 32 128"} DURATION=${DURATION:-10} WARMUP=${WARMUP:-3}
out=$here/results/$(date -u +%Y%m%dT%H%M%SZ).md
config=${LLMGATE_BENCH_CONFIG:-$here/llmgate-bench.toml}
rm -f /tmp/llmgate-bench.db /tmp/llmgate-bench-spill.jsonl

{
  echo "# llmgate vs LiteLLM, $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo
  echo "Machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -sr);" \
       "Python $("$root/.venv/bin/python" -c 'import platform; print(platform.python_version())')." \
       "Gateway pinned to CPU ${GW_CPU:-1}, nginx + wrk on CPU ${LOAD_CPU:-0}; ${DURATION}s per cell."
  echo
  echo "## llmgate ($(git -C "$root" rev-parse --short HEAD))"
  echo
  BENCH_URL=http://127.0.0.1:4000 BENCH_MODEL=fake-gpt BENCH_KEY=${BENCH_KEY:-sk-bench-master} \
  STREAM_MODEL=fake-gpt-stream ANTHROPIC_MODEL=${ANTHROPIC_MODEL-fake-claude} \
    "$kit/with_gateway.sh" http://127.0.0.1:4000/health \
    "$root/.venv/bin/llmgate" serve --config "$config" --port 4000 --workers "${WORKERS:-1}"
  if [[ -z ${SKIP_LITELLM:-} ]]; then
    echo
    echo "## LiteLLM (same kit, same core, same run)"
    echo
    "$kit/litellm_anchor.sh"
  fi
} 2>&1 | grep -v '^>> ' | tee "$out"
echo "results: $out"
