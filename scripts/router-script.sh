#!/usr/bin/env bash
# Writes router/pg_conveyor_router--VERSION.sql, the router's install script, from the shards'
# own definitions of what both sides share (sql/schema/types.sql: conveyor.ulid and
# conveyor.duration; the run_status and attempt_outcome enums and the claimed_run type; the ulid helpers and
# conveyor.error_codes; the four roles of sql/functions/roles.sql) and router/router.sql. One definition each: a type the router
# declares differently from the shards would break PL/Proxy's calls.
#   scripts/router-script.sh           write it
#   scripts/router-script.sh --check   fail if the committed file is not what this writes
set -euo pipefail
cd "$(dirname "$0")/.."
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
out=router/pg_conveyor_router--$version.sql
# the lines of FILE from the one starting with START to the first `);` after it
block() { awk -v start="$2" 'index($0, start) == 1 { p = 1 } p { print } p && /^\);/ { exit }' "$1"; }
# the statement of FILE starting with START, up to the first line ending in `;`
statement() { awk -v start="$2" 'index($0, start) == 1 { p = 1 } p { print } p && /;$/ { exit }' "$1"; }
# the DO block of FILE starting with START, up to its closing `$$;`
do_block() { awk -v start="$2" 'index($0, start) == 1 { p = 1 } p { print } p && /^\$\$;$/ { exit }' "$1"; }
generate() {
    echo "-- pg_conveyor_router $version: CREATE EXTENSION pg_conveyor_router runs this file."
    echo "-- Written by scripts/router-script.sh from sql/schema/types.sql, sql/schema/state_machine.sql,"
    echo "-- sql/schema/tables.sql, sql/functions/rust.sql, sql/functions/errors.sql, sql/functions/roles.sql"
    echo "-- and router/router.sql:"
    echo "-- edit those, then run \`scripts/router-script.sh\`; \`make lint\` fails while this file is stale."
    echo '\echo Use "CREATE EXTENSION pg_conveyor_router" to load this file. \quit'
    echo
    echo "-- ============================================================================================"
    echo "-- the types the shards use, as they define them"
    echo
    cat sql/schema/types.sql
    echo
    block sql/schema/state_machine.sql "create type conveyor.run_status as enum ("
    echo
    block sql/schema/state_machine.sql "create type conveyor.attempt_outcome as enum ("
    echo
    block sql/schema/tables.sql "create type conveyor.claimed_run as ("
    echo
    for f in ulid_partition _ulid_or_null; do
        statement sql/functions/rust.sql "create or replace function conveyor.$f("
        echo
    done
    statement sql/functions/errors.sql "create or replace view conveyor.error_codes"
    echo
    echo "-- the shards' roles (sql/functions/roles.sql), granted the router's functions at the end"
    echo
    do_block sql/functions/roles.sql 'do $$'
    echo
    statement sql/functions/roles.sql "grant conveyor_producer, conveyor_worker, conveyor_reader to conveyor_admin;"
    echo
    echo "-- ============================================================================================"
    echo "-- router/router.sql"
    echo
    cat router/router.sql
}
if [ "${1:-}" = --check ]; then
    if ! diff -q <(generate) "$out" >/dev/null 2>&1; then
        echo "router-script: $out is stale: run scripts/router-script.sh" >&2
        exit 1
    fi
else
    generate > "$out"
    echo "router-script: wrote $out"
fi
