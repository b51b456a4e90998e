#!/usr/bin/env bash
# llmgate and the LiteLLM proxy measured with ../shared/bench in one run, one
# after the other on the same core; the tables go to bench/results/<UTC time>.md
# and a latency/throughput-vs-concurrency plot to bench/results/<UTC time>.svg.
#
# llmgate runs its whole pipeline: callers authenticate with a virtual key created
# in the bench database (team `bench`, its own rpm/tpm), every call is admitted
# against three throttling scopes (global, team, key), routed, priced and recorded.
#
#   bench/run.sh                                   # llmgate (memory + SQLite), then LiteLLM
#   VARIANTS="memory redis-pg" bench/run.sh        # also Redis limits + PostgreSQL usage
#   VARIANTS="memory workers2" bench/run.sh        # also --workers 2 with Redis
#   SKIP_LITELLM=1 CONNS="1 32" DURATION=6 bench/run.sh
#   SKIP_QUIET=1 (skip the one-connection cells rerun with nothing else running)
#   BENCH_PORT=4600 (the gateways under test listen there; LiteLLM too)
#
# Variants: memory (in-memory limits, SQLite usage), redis-pg (Redis limits, PostgreSQL
# usage; needs BENCH_REDIS_URL / BENCH_PG_URL; a local redis-server and PostgreSQL are
# pinned to LOAD_CPU for the variant, beside nginx and wrk), workers2 (redis-pg with --workers 2 on
# the CPUs in WORKERS_CPUS, default "0,1": this machine has two cores, so nginx and wrk
# share them; read it as a scaling indication, not a clean figure), granian (memory,
# served by granian instead of uvicorn, when granian is installed).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
kit=${KIT:-$root/../shared/bench}
[[ -x $kit/with_gateway.sh ]] || { echo "benchmark kit not found at $kit (set KIT=)" >&2; exit 1; }
export CONNS=${CONNS:-"1 8 32 128"} DURATION=${DURATION:-10} WARMUP=${WARMUP:-3}
variants=${VARIANTS:-memory}
port=${BENCH_PORT:-4600}
redis_url=${BENCH_REDIS_URL:-redis://127.0.0.1:6379/0}
pg_url=${BENCH_PG_URL:-postgresql+psycopg://postgres@127.0.0.1:5432/llmgate_bench}
stamp=$(date -u +%Y%m%dT%H%M%SZ)
out=$here/results/$stamp.md
mkdir -p "$here/results"
work=$(mktemp -d /tmp/llmgate-bench.XXXXXX)
trap 'restore_services; rm -rf "$work"' EXIT
py=$root/.venv/bin/python

# config_for VARIANT -> path of a config file for it
config_for() {
  local cfg=$work/$1.toml
  local base=${LLMGATE_BENCH_CONFIG:-$here/llmgate-bench.toml}
  case $1 in
    memory | granian)
      rm -f /tmp/llmgate-bench.db* /tmp/llmgate-bench-spill.jsonl*
      cp "$base" "$cfg" ;;
    redis-pg | workers2)
      "$py" "$here/pg_reset.py" "$pg_url"
      sed -e "s|^database_url = .*|database_url = \"$pg_url\"|" \
          -e "s|^\[gateway\]|[gateway]\nredis_url = \"$redis_url\"\nredis_prefix = \"llmgate-bench-$stamp-$1:\"|" \
          -e "s|^usage_spill_path = .*|usage_spill_path = \"$work/spill-$1.jsonl\"|" "$base" >"$cfg" ;;
    *) echo "unknown variant $1" >&2; exit 2 ;;
  esac
  echo "$cfg"
}

# bench_key CONFIG -> the secret of a new virtual key with key-scope limits (team `bench`)
bench_key() {
  "$root/.venv/bin/llmgate" keys create --config "$1" --name bench --team bench \
    --rpm 100000000 --tpm 10000000000 --json | "$py" -c 'import json, sys; print(json.load(sys.stdin)["key"])'
}

# pin_services CPUS: move every thread of the local redis-server and PostgreSQL to CPUS (the
# load generator's core), so Redis and PostgreSQL never take the gateway's core; the
# original affinity of each is restored at exit. No-op for a service not running here.
service_masks=()
pin_services() {
  local pid
  for pid in $(pgrep -x redis-server) $(pgrep -x postgres); do
    service_masks+=("$pid:$(taskset -p "$pid" | awk '{print $NF}')")
    taskset -a -p -c "$1" "$pid" >/dev/null
  done
}
restore_services() {
  local entry
  for entry in "${service_masks[@]}"; do
    taskset -a -p "${entry#*:}" "${entry%%:*}" >/dev/null 2>&1 || true
  done
  service_masks=()
}

run_variant() {
  local variant=$1 cfg key workers=1 cpu=${GW_CPU:-1} server=()
  cfg=$(config_for "$variant")
  key=$(bench_key "$cfg")
  case $variant in
    redis-pg | workers2) pin_services "${LOAD_CPU:-0}" ;;
  esac
  case $variant in
    workers2) workers=2; cpu=${WORKERS_CPUS:-0,1} ;;
    granian) server=(--server granian) ;;
  esac
  echo "## llmgate, variant $variant ($(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)," \
       "workers $workers on CPU $cpu)"
  echo
  GW_CPU=$cpu BENCH_URL=http://127.0.0.1:$port BENCH_MODEL=fake-gpt BENCH_KEY=$key \
  STREAM_MODEL=fake-gpt-stream ANTHROPIC_MODEL=${ANTHROPIC_MODEL-fake-claude} \
    "$kit/with_gateway.sh" http://127.0.0.1:$port/health \
    "$root/.venv/bin/llmgate" serve --config "$cfg" --port "$port" --workers "$workers" "${server[@]}"
  echo
  echo "Usage rows recorded: $("$py" "$here/usage_rows.py" "$cfg")"
  echo
  [[ $workers == 1 && -z ${SKIP_QUIET:-} ]] && quiet_one_connection "$cfg" "$key" "$cpu"
  restore_services
}

# wrk_one URL MODEL SECONDS KEY -> "p50 p99" at one connection (the kit's post.lua, on LOAD_CPU)
wrk_one() {
  BENCH_MODEL=$2 BENCH_KEY=$4 taskset -c "${LOAD_CPU:-0}" wrk -t1 -c1 -d"$3"s -s "$kit/post.lua" "$1" \
    | sed -n 's/^RESULT .* p50=\([^ ]*\) p99=\([^ ]*\) .*/\1 \2/p'
}

# quiet_one_connection CONFIG KEY CPU: the one-connection cells again with nothing else
# running. The kit samples the gateway's RSS every 0.5 s (`ps` over every process), and
# on two cores that sampler shares a core with wrk and nginx or with the gateway: at one
# connection, where a call takes ~0.2 ms, it shows in the p99 (A/B: +0.5-1 ms). Here the
# same wrk script runs alone against the same gateway, direct cell first.
quiet_one_connection() {
  local cfg=$1 key=$2 cpu=$3 ngx gw scenario model direct dp50 dp99 gp50 gp99
  ngx=$(mktemp -d /tmp/llmgate-quiet.XXXXXX); mkdir -p "$ngx/tmp"
  taskset -c "${LOAD_CPU:-0}" nginx -p "$ngx" -c "$kit/upstream/nginx.conf" -e "$ngx/error.log" -g 'daemon off;' &
  local nginx_pid=$!
  taskset -c "$cpu" "$root/.venv/bin/llmgate" serve --config "$cfg" --port "$port" >/dev/null 2>&1 &
  gw=$!
  for _ in $(seq 200); do curl -sf -o /dev/null "http://127.0.0.1:$port/health" && break; sleep 0.05; done
  echo "### One connection, nothing else running (no RSS sampler; ${DURATION}s per cell)"
  echo
  echo "| upstream | direct p50 ms | direct p99 ms | gw p50 ms | gw p99 ms | +p50 ms | +p99 ms |"
  echo "|---|---|---|---|---|---|---|"
  for scenario in "openai fake-gpt /v1/chat/completions" "anthropic ${ANTHROPIC_MODEL-fake-claude} /v1/messages"; do
    read -r scenario model direct <<<"$scenario"
    [[ -z $model ]] && continue
    wrk_one "http://127.0.0.1:$port/v1/chat/completions" "$model" "${WARMUP}" "$key" >/dev/null
    read -r dp50 dp99 < <(wrk_one "http://127.0.0.1:18080$direct" "$model" "$DURATION" "$key")
    read -r gp50 gp99 < <(wrk_one "http://127.0.0.1:$port/v1/chat/completions" "$model" "$DURATION" "$key")
    awk -v s="$scenario" -v d5="$dp50" -v d9="$dp99" -v g5="$gp50" -v g9="$gp99" \
      'BEGIN{printf "| %s | %.2f | %.2f | %.2f | %.2f | %+.2f | %+.2f |\n", s,d5,d9,g5,g9,g5-d5,g9-d9}'
  done
  echo
  kill "$gw" "$nginx_pid" 2>/dev/null; wait "$gw" "$nginx_pid" 2>/dev/null || true
  rm -rf "$ngx"
}

{
  echo "# llmgate vs LiteLLM, $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo
  echo "Machine: $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//'))," \
       "$(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -sr);" \
       "Python $("$py" -c 'import platform; print(platform.python_version())')." \
       "Gateway pinned to CPU ${GW_CPU:-1}, nginx + wrk on CPU ${LOAD_CPU:-0}; ${DURATION}s per cell." \
       "Load average at start: $(cut -d' ' -f1-3 /proc/loadavg)."
  echo
  for variant in $variants; do
    run_variant "$variant"
  done
  if [[ -z ${SKIP_LITELLM:-} ]]; then
    echo "## LiteLLM (same kit, same core, same run)"
    echo
    PORT=$port "$kit/litellm_anchor.sh"
    echo
  fi
  if [[ -n ${WITH_PORTKEY:-} ]]; then
    echo "## Portkey (same kit, same core, same run)"
    echo
    "$kit/portkey_anchor.sh"
    echo
  fi
  echo "Load average at end: $(cut -d' ' -f1-3 /proc/loadavg)."
} 2>&1 | grep -v '^>> ' | tee "$out"
"$py" "$here/report.py" "$out"
echo "results: $out (summary and plot: ${out%.md}.svg)"
