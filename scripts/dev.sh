#!/usr/bin/env bash
# Developer loop (not part of make test): reinstall the extension into a persistent dev cluster
# and run some SQL scenarios against a fresh database.
#   scripts/dev.sh [scenario ...]     (default: all)
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=/tmp/pgc-dev
PORT=54331
PGBIN=$(/usr/bin/pg_config --bindir)
scripts/cluster.sh stop "$DIR"
scripts/install-ext.sh
scripts/cluster.sh start "$DIR" "$PORT" "conveyor.database = 'conveyor_dev'" "conveyor.tick_interval = '200ms'"
psql_dev() { "$PGBIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$DIR" -p "$PORT" -U postgres "$@"; }
psql_dev -d postgres -c "drop database if exists conveyor_regress" -c "create database conveyor_regress"
psql_dev -d conveyor_regress -c "create extension pg_conveyor" -f pgrx-tests/helpers.sql
scenarios=${*:-$(cd pgrx-tests/sql && ls *.sql | sed 's/\.sql$//')}
mkdir -p /tmp/pgc-regress-out
"$(/usr/bin/pg_config --pkglibdir)/pgxs/src/test/regress/pg_regress" --use-existing --host="$DIR" --port="$PORT" \
    --user=postgres --dbname=conveyor_regress --inputdir=pgrx-tests --outputdir=/tmp/pgc-regress-out \
    --bindir="$PGBIN" $scenarios || true
