#!/usr/bin/env bash
# Build pg_conveyor and install it into the system PostgreSQL 15 without disturbing running
# servers: `cargo pgrx package` builds into target/, then each file is copied beside its
# destination and renamed over it. A rename gives the file a new inode, so running backends
# keep the library they mapped and new ones load the new one; there is no moment without a
# library (cp over the file in place would crash running servers; deleting it first would
# leave a gap in which new connections fail).
#   scripts/install-ext.sh [--release]
set -euo pipefail
cd "$(dirname "$0")/.."
profile=debug
args=(--debug)
if [ "${1:-}" = --release ]; then profile=release args=(); fi
cargo pgrx package --pg-config /usr/bin/pg_config "${args[@]}" >/dev/null
root=target/$profile/pg_conveyor-pg15
# cargo pgrx copies the upgrade scripts (sql/pg_conveyor--A--B.sql) but not the frozen install
# scripts of earlier releases (sql/pg_conveyor--A.sql): ship those too, so that
# `create extension pg_conveyor version '0.1.0'` works (the upgrade check uses it)
for f in sql/pg_conveyor--[0-9]*.sql; do
    case "$f" in *--*--*) continue ;; esac
    install -m 0644 "$f" "$root/usr/share/postgresql/15/extension/$(basename "$f")"
done
# the router extension (router/: pg_conveyor_router, docs/scale-out.md) ships beside it, using
# the same library for its ulid type
for f in router/pg_conveyor_router.control router/pg_conveyor_router--*.sql; do
    install -m 0644 "$f" "$root/usr/share/postgresql/15/extension/$(basename "$f")"
done
sudo_if() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
(cd "$root" && find . -type f) | while read -r f; do
    dest=/${f#./}
    sudo_if install -D -m 0644 "$root/$f" "$dest.new.$$"
    sudo_if mv -f "$dest.new.$$" "$dest"
done
