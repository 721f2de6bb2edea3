#!/usr/bin/env bash
# Run one peer benchmark:
#   bench/peers/run.sh <peer> <workload> [--jobs N] [--workers W] [--batch B]
#   bench/peers/run.sh --list          (the peer names, one a line)
#   peers:     pgboss graphile-worker procrastinate pgqueuer pgq
#   workloads: enqueue_single enqueue_batch process, process_batch<B> = process --batch B, and
#              sustained --rate R --seconds S --hold 0|1 (pg-boss and graphile-worker: the held snapshot)
# Connects with PGHOST/PGPORT/PGUSER (defaults: /tmp/pgc-peers, 55300, postgres). The database is
# PGDATABASE (default bench_<peer>): it is DROPPED and recreated, empty, before every run.
# Prints one line "RESULT peer=... workload=... jobs=... seconds=... per_second=..." on stdout;
# on failure a "FAIL ..." line on stderr and a non-zero exit. Run bench/peers/setup.sh first.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
peers=(pgboss graphile-worker procrastinate pgqueuer pgq)
usage() { sed -n '2,/^[^#]/s/^# \{0,1\}//p' "$0" >&2; exit 2; }
if [ "${1:-}" = --list ]; then printf '%s\n' "${peers[@]}"; exit 0; fi
[ $# -ge 2 ] || usage
peer=$1
workload=$2
shift 2
case "$workload" in enqueue_single | enqueue_batch | process | process_batch[1-9]* | sustained) ;; *) usage ;; esac

export PGHOST=${PGHOST:-/tmp/pgc-peers}
export PGPORT=${PGPORT:-55300}
export PGUSER=${PGUSER:-postgres}
export PGDATABASE=${PGDATABASE:-bench_${peer//-/_}}
unset PGPASSWORD_FILE 2>/dev/null || true

case "$peer" in
pgboss | graphile-worker)
    cmd=("$here/$peer/node_modules/.bin/node" "$here/$peer/driver.mjs") ;;
procrastinate | pgqueuer | pgq)
    cmd=("$here/$peer/.venv/bin/python" "$here/$peer/driver.py") ;;
*) usage ;;
esac
[ -x "${cmd[0]}" ] || { echo "FAIL $peer is not installed: run bench/peers/setup.sh" >&2; exit 1; }

# A fresh, empty database for this run.
psql -X -q -v ON_ERROR_STOP=1 -d postgres -c "set client_min_messages = warning" \
    -c "drop database if exists \"$PGDATABASE\" with (force)" \
    -c "create database \"$PGDATABASE\"" >/dev/null

cd "$here/$peer"
exec "${cmd[@]}" "$workload" "$@"
