#!/usr/bin/env bash
# prometheus.sh: a real Prometheus scrapes the dashboard's /metrics while a load runs.
#
#   PGHOST=/tmp/pgc-it PGPORT=54329 PGUSER=postgres PGDATABASE=conveyor_dashboard examples/dashboard/test/prometheus.sh
#
# 1. installs Debian's prometheus (with promtool) if missing
# 2. starts server.mjs, and a load on a queue of its own: producers enqueue, a worker claims
#    and completes, fails (retried) and releases runs, through the SQL API
# 3. `promtool check metrics` passes on /metrics
# 4. Prometheus scrapes it every second; rate(conveyor_attempts_total[1m]), and the rates of the
#    enqueued, retries and releases counters, are non-zero while the load runs
# 5. the Grafana dashboard (grafana/pg_conveyor.json): every query names metrics /metrics has,
#    and Prometheus evaluates it (test/grafana-check.mjs)
# The last line is "prometheus: N passed, M failed"; exits non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf 'prometheus: %s\n' "$*"; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
if ! command -v prometheus >/dev/null || ! command -v promtool >/dev/null; then
    say "installing prometheus (apt, without recommends)"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi
[ -d node_modules/pg ] || npm ci --no-audit --no-fund --loglevel=error >/dev/null

tmp=$(mktemp -d /tmp/conveyor-prometheus-test.XXXXXX)
passed=0 failed=0
record() { if [ "$1" = ok ]; then passed=$((passed + 1)); else failed=$((failed + 1)); fi; printf '%s %s\n' "$1" "$2"; }
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    psql_q -c "select conveyor.drop_queue('$queue')" >/dev/null 2>&1 || true
    rm -rf "$tmp"
}
trap cleanup EXIT
psql_q() { psql -X -q -At -v ON_ERROR_STOP=1 "$@"; }
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# ---- the server and a load -------------------------------------------------------------------
queue="prom_$(od -An -N4 -tx1 /dev/urandom | tr -d ' \n')"
psql_q -c "select conveyor.define_task('$queue.ok', queue => '$queue')" \
       -c "select conveyor.define_task('$queue.flaky', queue => '$queue', max_attempts => 5, delay => '200ms')" >/dev/null
node server.mjs --port 0 >"$tmp/server.log" 2>&1 &
pids+=($!)
url=
for _ in $(seq 1 100); do
    url=$(sed -n 's/^conveyor dashboard listening on \(http[^ ]*\)$/\1/p' "$tmp/server.log")
    [ -n "$url" ] && break
    sleep 0.1
done
[ -n "$url" ] || { cat "$tmp/server.log" >&2; say "server.mjs did not start"; exit 1; }
record ok "server.mjs listens on $url"
(   # producer: 20 runs every 200 ms, a third of them flaky
    while :; do
        psql_q -c "select count(*) from conveyor.enqueue_many('$queue.ok', array_fill('{}'::jsonb, array[14]))" \
               -c "select count(*) from conveyor.enqueue_many('$queue.flaky', array_fill('{}'::jsonb, array[6]))" >/dev/null
        sleep 0.2
    done
) &
pids+=($!)
(   # worker: completes ok runs, fails flaky ones on their first attempt and releases them on their second
    while :; do
        psql_q -c "select count(case
                       when c.task like '%.ok' or c.attempt > 2 then conveyor.complete_run(c.run_id, c.lease_token)::text
                       when c.attempt = 1 then conveyor.fail_run(c.run_id, c.lease_token, 'flaky')::text
                       else conveyor.release_run(c.run_id, c.lease_token, '100ms', 'not yet')::text end)
                   from conveyor.claim_runs('$queue', 'prometheus-test', 50) c" >/dev/null
        sleep 0.1
    done
) &
pids+=($!)
# without a background worker, retries and releases come back through a tick from here
if [ "$(psql_q -c "select count(*) from pg_stat_activity where backend_type = 'pg_conveyor' and datname = current_database()")" = 0 ]; then
    ( while :; do psql_q -c "select from conveyor.tick()" >/dev/null; sleep 0.2; done ) &
    pids+=($!)
fi

# ---- promtool check metrics -------------------------------------------------------------------
sleep 2
curl -fsS "${url}metrics" >"$tmp/metrics.txt"
if promtool check metrics <"$tmp/metrics.txt" >"$tmp/promtool.out" 2>&1; then
    record ok "promtool check metrics: $(grep -c '^# TYPE' "$tmp/metrics.txt") families, no problems"
else
    record FAIL "promtool check metrics: $(tr '\n' ' ' <"$tmp/promtool.out")"
fi
for family in conveyor_runs_enqueued_total conveyor_attempts_total conveyor_retries_total conveyor_releases_total \
              conveyor_tick_step_runs_total conveyor_tick_step_failures_total; do
    if grep -q "^# TYPE $family counter$" "$tmp/metrics.txt"; then record ok "/metrics has counter $family"
    else record FAIL "/metrics has counter $family"; fi
done

# ---- a real Prometheus ------------------------------------------------------------------------
pport=$(free_port)
target=${url#http://}
cat >"$tmp/prometheus.yml" <<YML
global:
  scrape_interval: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: conveyor
    metrics_path: /metrics
    static_configs:
      - targets: ['${target%/}']
YML
promtool check config "$tmp/prometheus.yml" >/dev/null
prometheus --config.file="$tmp/prometheus.yml" --storage.tsdb.path="$tmp/data" \
    --web.listen-address="127.0.0.1:$pport" >"$tmp/prometheus.log" 2>&1 &
pids+=($!)
prom="http://127.0.0.1:$pport"
for _ in $(seq 1 100); do curl -fsS "$prom/-/ready" >/dev/null 2>&1 && break; sleep 0.2; done
curl -fsS "$prom/-/ready" >/dev/null || { tail -20 "$tmp/prometheus.log" >&2; say "prometheus did not start"; exit 1; }
record ok "prometheus $(prometheus --version 2>&1 | sed -n '1s/prometheus, version \([^ ]*\).*/\1/p') scrapes ${url}metrics every 1s"

query() { # query PROMQL: the first result's value, or nothing
    curl -fsS -G "$prom/api/v1/query" --data-urlencode "query=$1" |
        python3 -c 'import json, sys; r = json.load(sys.stdin)["data"]["result"]; print(r[0]["value"][1] if r else "")'
}
rate_ok() { # rate_ok LABEL PROMQL: wait up to 60 s for a value > 0
    local value=
    for _ in $(seq 1 60); do
        value=$(query "$2")
        if [ -n "$value" ] && python3 -c "import sys; sys.exit(0 if float('$value') > 0 else 1)"; then
            record ok "$1 = $value"
            return
        fi
        sleep 1
    done
    record FAIL "$1 stayed ${value:-empty}"
}
rate_ok "sum(rate(conveyor_attempts_total{queue=\"$queue\"}[1m]))" "sum(rate(conveyor_attempts_total{queue=\"$queue\"}[1m]))"
rate_ok "succeeded per second" "sum(rate(conveyor_attempts_total{queue=\"$queue\",outcome=\"succeeded\"}[1m]))"
rate_ok "enqueued per second" "sum(rate(conveyor_runs_enqueued_total{queue=\"$queue\"}[1m]))"
rate_ok "retries per second" "sum(rate(conveyor_retries_total{queue=\"$queue\"}[1m]))"
rate_ok "releases per second" "sum(rate(conveyor_releases_total{queue=\"$queue\"}[1m]))"
resets=$(query "sum(resets(conveyor_attempts_total{queue=\"$queue\"}[5m]))")
[ "${resets:-0}" = 0 ] && record ok "no counter reset seen (resets = ${resets:-0})" || record FAIL "counter resets: $resets"

# ---- the Grafana dashboard --------------------------------------------------------------------
if METRICS_URL="${url}metrics" PROMETHEUS_URL="$prom" node test/grafana-check.mjs >"$tmp/grafana.out" 2>&1; then
    record ok "grafana/pg_conveyor.json: $(grep -c '^ok' "$tmp/grafana.out") checks"
else
    grep -v '^ok' "$tmp/grafana.out" >&2
    record FAIL "grafana/pg_conveyor.json"
fi
say "$passed passed, $failed failed"
[ "$failed" = 0 ]
