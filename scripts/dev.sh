#!/usr/bin/env bash
# Developer loop (not part of make test): reinstall the extension (debug build) into a
# persistent dev cluster (/tmp/pgc-dev, port 54331, the worker serving database conveyor_dev),
# then run SQL scenarios or integration tests against it. Exits non-zero when one fails.
#   scripts/dev.sh [scenario ...]      pgrx-tests/sql/<scenario>.sql (default: all) in a fresh
#                                      database conveyor_regress; `make scenario NAME=...`
#   scripts/dev.sh --it [filter ...]   the integration tests (tests/) whose names contain a
#                                      filter, e.g. lifecycle::a_stale_lease; `make it NAME=...`
# DEV_INSTALL=0 skips the rebuild and reinstall (the cluster is only started if it is down).
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=/tmp/pgc-dev
PORT=54331
PGBIN=$(/usr/bin/pg_config --bindir)
OUT=/tmp/pgc-dev-regress-out

mode=scenarios
if [ "${1:-}" = --it ]; then
    mode=it
    shift
fi

if [ "${DEV_INSTALL:-1}" != 0 ]; then
    # the postmaster maps the preloaded library once: stop it, install, start it again. The
    # touch rebuilds the crate even when another checkout sharing target/ left its library there
    scripts/cluster.sh stop "$DIR"
    touch src/lib.rs
    scripts/install-ext.sh
fi
scripts/cluster.sh start "$DIR" "$PORT" "conveyor.database = 'conveyor_dev'" "conveyor.tick_interval = '200ms'"
psql_dev() { PGOPTIONS="-c client_min_messages=warning" "$PGBIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$DIR" -p "$PORT" -U postgres "$@"; }

if [ "$mode" = it ]; then
    # the database the background worker ticks (conveyor.database), fresh, with the extension;
    # tests that need more make their own databases or clusters
    psql_dev -d postgres -c "drop database if exists conveyor_dev with (force)" -c "create database conveyor_dev"
    psql_dev -d conveyor_dev -c "create extension pg_conveyor"
    CONVEYOR_TEST_HOST="$DIR" CONVEYOR_TEST_PORT="$PORT" CONVEYOR_TEST_DB=conveyor_dev \
        cargo test --features integration --test integration -- --show-output "$@"
    exit
fi

psql_dev -d postgres -c "drop database if exists conveyor_regress with (force)" -c "create database conveyor_regress"
psql_dev -d conveyor_regress -c "create extension pg_conveyor" -f pgrx-tests/helpers.sql
scenarios=()
for name in "$@"; do
    name=${name%.sql}
    scenarios+=("${name##*/}") # pgrx-tests/sql/lifecycle.sql works as well as lifecycle
done
if [ ${#scenarios[@]} = 0 ]; then
    scenarios=($(cd pgrx-tests/sql && ls *.sql | sed 's/\.sql$//'))
fi
for name in "${scenarios[@]}"; do
    [ -f "pgrx-tests/sql/$name.sql" ] || { echo "dev: no scenario pgrx-tests/sql/$name.sql" >&2; exit 2; }
done
rm -rf "$OUT"
mkdir -p "$OUT"
if ! "$(/usr/bin/pg_config --pkglibdir)/pgxs/src/test/regress/pg_regress" --use-existing --host="$DIR" --port="$PORT" \
        --user=postgres --dbname=conveyor_regress --inputdir=pgrx-tests --outputdir="$OUT" \
        --bindir="$PGBIN" "${scenarios[@]}"; then
    cat "$OUT/regression.diffs"
    exit 1
fi
