#!/usr/bin/env bash
# Writes the upgrade script sql/pg_conveyor--FROM--TO.sql: the hand-written schema changes of
# sql/migrations/FROM--TO.sql, then every file of sql/functions/ in install order (the order of
# src/lib.rs), re-applied whole (they are all `create or replace`). TO is Cargo.toml's version;
# FROM the previous release (the newest frozen sql/pg_conveyor--X.sql other than TO).
#   scripts/upgrade-script.sh           write it
#   scripts/upgrade-script.sh --check   fail if the committed file is not what this writes
set -euo pipefail
cd "$(dirname "$0")/.."
to=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
from=$(ls sql/ | sed -n 's/^pg_conveyor--\([0-9.]*\)\.sql$/\1/p' | grep -vx "$to" | sort -V | tail -1)
migration=sql/migrations/$from--$to.sql
out=sql/pg_conveyor--$from--$to.sql
[ -f "$migration" ] || { echo "upgrade-script: $migration is missing" >&2; exit 1; }
functions=$(sed -n 's|^extension_sql_file!("\.\./\(sql/functions/[a-z_]*\.sql\)".*|\1|p; s|^    "\.\./\(sql/functions/[a-z_]*\.sql\)",$|\1|p' src/lib.rs)
expected=$(ls sql/functions/*.sql | sort)
if [ "$(echo "$functions" | sort)" != "$expected" ]; then
    echo "upgrade-script: src/lib.rs does not list every file of sql/functions/ exactly once" >&2
    diff <(echo "$functions" | sort) <(echo "$expected") >&2 || true
    exit 1
fi
generate() {
    echo "-- pg_conveyor $from -> $to: ALTER EXTENSION pg_conveyor UPDATE runs this file."
    echo "-- Written by scripts/upgrade-script.sh from $migration and sql/functions/*.sql: edit those,"
    echo "-- then run \`make upgrade-script\`; \`make lint\` and \`make test\` fail while this file is stale."
    echo '\echo Use "ALTER EXTENSION pg_conveyor UPDATE" to load this file. \quit'
    echo
    echo "-- First, before any table is touched: wait for the background worker's tick step in progress,"
    echo "-- and hold its next one until this update commits (src/version.rs, UPGRADE_LOCK); a step and"
    echo "-- the update then never wait for each other's locks."
    echo "select pg_catalog.pg_advisory_xact_lock($((0x70676376)), 1);"
    echo
    echo "-- ============================================================================================"
    echo "-- $migration"
    echo
    cat "$migration"
    for f in $functions; do
        echo
        echo "-- ============================================================================================"
        echo "-- $f"
        echo
        cat "$f"
    done
}
if [ "${1:-}" = --check ]; then
    if ! diff -u "$out" <(generate) >/tmp/upgrade-script.diff; then
        echo "upgrade-script: $out is stale (run make upgrade-script):" >&2
        head -40 /tmp/upgrade-script.diff >&2
        exit 1
    fi
    echo "upgrade-script: $out is current"
else
    generate >"$out"
    echo "upgrade-script: wrote $out"
fi
