#!/usr/bin/env bash
# The scale-out figures of make bench (docs/scale-out.md): the same no-op runs drained by 8
# workers on one shard directly, through the router with one shard, and through the router
# with two shards, at claim batch 1 and 50. Two shard clusters and a router cluster on this
# machine: they share its cores, so two shards do not add cores here; the CPU per run of the
# shards' servers and of the router's says what each costs (bench/driver: workload routed).
#   scripts/bench-scale-out.sh RESULTS RUNS [postgresql.conf line ...]
# Appends the driver's RESULT lines to RESULTS. Expects the release build installed
# (scripts/bench.sh installs it) and the driver built.
set -euo pipefail
cd "$(dirname "$0")/.."
results=${1:?results file}
runs=${2:?runs}
shift 2
PGBIN=$(/usr/bin/pg_config --bindir)
DRIVER=bench/driver/target/release/conveyor-bench
BASE=/tmp/pgc-bench-shard
PORT0=${CONVEYOR_BENCH_SHARD_PORT:-54510}
psql() { "$PGBIN/psql" -X -q -v ON_ERROR_STOP=1 "$@"; }
conn() { echo "host=$BASE$1 port=$((PORT0 + $1)) user=postgres dbname=$2"; }
# where a shard is, as the router lists it: no user (router roles connect as themselves)
where_is() { echo "host=$BASE$1 port=$((PORT0 + $1)) dbname=$2"; }

stop_all() { for i in 0 1 2; do scripts/cluster.sh stop "$BASE$i"; done; }
stop_all
trap stop_all EXIT
for p in 0 1; do
    rm -rf "$BASE$p"
    scripts/cluster.sh start "$BASE$p" $((PORT0 + p)) "$@" "conveyor.database = 'shard'" "conveyor.partition = $p"
    psql -h "$BASE$p" -p $((PORT0 + p)) -U postgres -d postgres -c "create database shard"
    psql -h "$BASE$p" -p $((PORT0 + p)) -U postgres -d shard -c "create extension pg_conveyor"
done
# the router: cluster 2, with a one-shard router database and a two-shard one
rm -rf "${BASE}2"
scripts/cluster.sh start "${BASE}2" $((PORT0 + 2)) "shared_buffers = '256MB'" "max_connections = 100" "conveyor.worker_enabled = off"
for n in 1 2; do
    psql -h "${BASE}2" -p $((PORT0 + 2)) -U postgres -d postgres -c "create database router$n"
    psql -h "${BASE}2" -p $((PORT0 + 2)) -U postgres -d "router$n" -c "create extension pg_conveyor_router cascade"
    for p in $(seq 0 $((n - 1))); do
        psql -h "${BASE}2" -p $((PORT0 + 2)) -U postgres -d "router$n" -c "select conveyor.add_shard($p, '$(where_is "$p" shard)')" >/dev/null
    done
done

routed() { # routed SHARDS ROUTER|- ARGS...
    CONVEYOR_BENCH_SHARDS=$1 CONVEYOR_BENCH_ROUTER=$2 "$DRIVER" routed "${@:3}" | tee -a "$results"
}
one="$(conn 0 shard)"
two="$(conn 0 shard);$(conn 1 shard)"
for batch in 1 50; do
    n=$runs
    if [ "$batch" = 1 ]; then n=$((runs / 5)); fi
    routed "$one" - --runs "$n" --workers 8 --batch "$batch" --direct 1
    routed "$one" "$(conn 2 router1)" --runs "$n" --workers 8 --batch "$batch"
    routed "$two" "$(conn 2 router2)" --runs "$n" --workers 8 --batch "$batch"
done
