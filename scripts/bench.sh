#!/usr/bin/env bash
# make bench: pg_conveyor's throughput, latency and scale, the pgbench limit for the least SQL
# any queue must run per job, and the peers (bench/peers/), all on one PostgreSQL 15 cluster
# with a fixed, printed configuration. Prints a markdown table; the figures are targets to read,
# not assertions. BENCH_SCALE=quick runs everything small (a smoke test of the harness).
set -euo pipefail
cd "$(dirname "$0")/.."

DIR=/tmp/pgc-bench
PORT=${CONVEYOR_BENCH_PORT:-54500}
PGBIN=$(/usr/bin/pg_config --bindir)
OUT=$(mktemp -d /tmp/pgc-bench-out.XXXXXX)
QUICK=${BENCH_SCALE:-full}
if [ "$QUICK" = quick ]; then
    RUNS=10000 BIG=100000 SECONDS_EACH=3 LAT=100 PEER_JOBS=5000 HOLD_SECONDS=20 LOAD_SECONDS=5 ROUNDS=1
else
    RUNS=100000 BIG=1000000 SECONDS_EACH=10 LAT=500 PEER_JOBS=100000 HOLD_SECONDS=300 LOAD_SECONDS=60 ROUNDS=3
fi

log() { printf '\n=== %s\n' "$*" >&2; }

scripts/setup.sh
if [ "${BENCH_PEERS:-1}" = 1 ] && [ -x bench/peers/setup.sh ]; then bench/peers/setup.sh; fi

log "building the extension (release) and the driver"
scripts/cluster.sh stop "$DIR"
scripts/install-ext.sh --release
cargo build --release --quiet --manifest-path bench/driver/Cargo.toml
DRIVER=bench/driver/target/release/conveyor-bench

# the configuration every figure below was measured with
CONF=(
    "shared_buffers = '1GB'"
    "max_connections = 100"
    "synchronous_commit = on"
    "wal_level = replica"
    "max_wal_size = '4GB'"
    "checkpoint_timeout = '15min'"
    "autovacuum = on"
    "autovacuum_naptime = '10s'"
    "conveyor.database = 'bench'"
    "conveyor.tick_interval = '200ms'"
    "conveyor.tick_batch = 10000"
)
rm -rf "$DIR"
scripts/cluster.sh start "$DIR" "$PORT" "${CONF[@]}"
trap 'scripts/cluster.sh stop "$DIR"' EXIT
export PGHOST=$DIR PGPORT=$PORT PGUSER=postgres
psql() { "$PGBIN/psql" -X -q -v ON_ERROR_STOP=1 "$@"; }
for db in bench bench_manual bench_pgbench; do psql -d postgres -c "create database $db"; done

run() { # run DB ARGS...: the driver's RESULT line into the results file
    PGDATABASE=$1 "$DRIVER" "${@:2}" | sed "${pass:+s/^RESULT /RESULT pass=$pass /}" | tee -a "$OUT/results"
}
pass=  # the pass the rows belong to: empty for the first, 2 for the one after the peers

log "pg_conveyor"
run bench enqueue-single --clients 8 --seconds "$SECONDS_EACH"
run bench enqueue-batch --clients 8 --batch 50 --seconds "$SECONDS_EACH"
run bench process --runs "$RUNS" --workers 8 --batch 1
# the same with finish_and_claim: one call and one commit per worker cycle
run bench process --runs "$RUNS" --workers 8 --batch 1 --combined 1
# the batch-50 workloads whose ratios to each other are targets, in ROUNDS interleaved rounds (the
# report takes each one's median: this VM's speed drifts by half within minutes)
for _ in $(seq "$ROUNDS"); do
    run bench process --runs "$RUNS" --workers 8 --batch 50
    run bench process --runs "$RUNS" --workers 8 --batch 50 --combined 1
    # the same under rate limits on the queue and the task that never bind: what a limited claim costs
    run bench process --runs "$RUNS" --workers 8 --batch 50 --limits 1
    # and under a key_concurrency that never binds, the runs spread over 100 keys
    run bench process --runs "$RUNS" --workers 8 --batch 50 --keys 100
    # the same keyed runs under no limit: what the limit costs, apart from the keys' fair turns
    run bench process --runs "$RUNS" --workers 8 --batch 50 --keys 100 --key-limit 0
done
# a realistic mix: a tenth of the runs fail once, a tenth are released once
run bench process-mix --runs "$RUNS" --workers 8 --batch 50
# fairness: 10 runs of a small key behind 10,000 of a flooded one, first in first out (no keys),
# round-robin across keys, and round-robin with the flood capped at 4 running
run bench fairness --flood 10000 --small 10 --workers 8 --batch 10 --keys 0
run bench fairness --flood 10000 --small 10 --workers 8 --batch 10 --keys 1
run bench fairness --flood 10000 --small 10 --workers 8 --batch 10 --keys 1 --limit 4
run bench latency --samples "$LAT"
# held snapshot: the sustained maximum (offered far above it), then half of it for HOLD_SECONDS
# without and with a REPEATABLE READ snapshot held the whole time
run bench sustained --rate 1000000 --seconds "$SECONDS_EACH" --hold 0
max=$(sed -n 's/.*workload=sustained hold=0 rate=1000000 .*per_second=\([0-9]*\).*/\1/p' "$OUT/results" | tail -1)
half=$(( ${max:-2000} / 2 ))
run bench sustained --rate "$half" --seconds "$HOLD_SECONDS" --hold 0
run bench sustained --rate "$half" --seconds "$HOLD_SECONDS" --hold 1
# latency under load: enqueue -> start at 90% of the sustained maximum (50% is the run above)
run bench sustained --rate $(( ${max:-2000} * 9 / 10 )) --seconds "$LOAD_SECONDS" --hold 0
run bench_manual claim-cost --waiting $((BIG / 100)) --cycles 2000
run bench_manual claim-cost --waiting "$BIG" --cycles 2000
run bench_manual tick-cost --scheduled $((BIG / 100)) --due 1000
run bench_manual tick-cost --scheduled "$BIG" --due 1000
# what the monotonic counters add to a run: the delta row of a completion, and the fold
run bench_manual counter-cost --cycles 5000
run bench size --runs "$BIG" --workers 8 --batch 50
run bench growth --runs $((BIG * 3)) --workers 8 --batch 50

log "scale-out: one shard directly, through the router, two shards (scripts/bench-scale-out.sh)"
scripts/bench-scale-out.sh "$OUT/results" "$RUNS" "${CONF[@]}"

log "the limit: pgbench, 8 clients, the least SQL per job (insert, update, update)"
psql -d bench_pgbench -c "create table bench_jobs (id bigserial primary key, status text not null default 'queued', payload jsonb not null)"
cat >"$OUT/single.sql" <<'SQL'
insert into bench_jobs (payload) values ('{}') returning id \gset
update bench_jobs set status = 'running' where id = :id;
update bench_jobs set status = 'done' where id = :id;
SQL
cat >"$OUT/batch.sql" <<'SQL'
with ins as (insert into bench_jobs (payload) select '{}' from generate_series(1, 50) returning id) select min(id) as lo, max(id) as hi from ins \gset
update bench_jobs set status = 'running' where id between :lo and :hi;
update bench_jobs set status = 'done' where id between :lo and :hi;
SQL
for kind in single batch; do
    tps=$("$PGBIN/pgbench" -n -M prepared -c 8 -j 2 -T "$SECONDS_EACH" -f "$OUT/$kind.sql" bench_pgbench 2>/dev/null |
          sed -n 's/^tps = \([0-9.]*\).*/\1/p')
    per=$(awk -v t="$tps" -v k="$kind" 'BEGIN { printf "%.0f", (k == "batch" ? 50 : 1) * t }')
    echo "RESULT system=pgbench workload=limit_$kind per_second=$per" | tee -a "$OUT/results"
done

peer_run() { # peer_run PEER WORKLOAD ARGS...: a peer's RESULT line into the results file (a failure is logged, not fatal)
    PGDATABASE=bench_$1 bench/peers/run.sh "$@" 2> >(sed "s/^/  [$1] /" >&2) | grep '^RESULT' | tee -a "$OUT/results" || true
}
if [ "${BENCH_PEERS:-1}" = 1 ] && [ -x bench/peers/run.sh ]; then
    log "peers"
    for peer in $(bench/peers/run.sh --list); do
        for workload in enqueue_single enqueue_batch process_batch1 process_batch50; do
            peer_run "$peer" "$workload" --jobs "$PEER_JOBS" --workers 8
        done
    done
    # the held snapshot for the peers that can run it, at pg_conveyor's offered rate (half its
    # sustained maximum), without and with the snapshot held
    for peer in pgboss graphile-worker; do
        for hold in 0 1; do
            peer_run "$peer" sustained --rate "$half" --seconds "$HOLD_SECONDS" --hold "$hold"
        done
    done
    # pg_conveyor's four headline workloads once more, after the peers (rows tagged pass=2): this
    # VM's speed drifts within minutes, so the report compares the peers with the median of all
    # the samples and prints each; pg_conveyor's own ratios use the first pass only
    log "pg_conveyor again, after the peers"
    pass=2
    run bench enqueue-single --clients 8 --seconds "$SECONDS_EACH"
    run bench enqueue-batch --clients 8 --batch 50 --seconds "$SECONDS_EACH"
    run bench process --runs "$RUNS" --workers 8 --batch 1
    run bench process --runs "$RUNS" --workers 8 --batch 50
    pass=
fi

log "report"
scripts/bench-report.sh "$OUT/results" "${CONF[@]}"
echo "raw results: $OUT/results" >&2
