#!/usr/bin/env bash
# A throwaway PostgreSQL 15 cluster run by an unprivileged user (PostgreSQL refuses root).
#   cluster.sh start DIR PORT [postgresql.conf line ...]   create if needed, then start
#   cluster.sh stop DIR
# The cluster listens on 127.0.0.1:PORT and on a Unix socket in DIR; role postgres, trust auth.
set -euo pipefail

PGBIN=$(/usr/bin/pg_config --bindir)
cmd=${1:?start or stop}
dir=${2:?cluster directory}

as_pg() {
    if [ "$(id -u)" = 0 ]; then (cd /tmp && sudo -u postgres "$@"); else "$@"; fi
}

case "$cmd" in
start)
    port=${3:?port}
    shift 3
    if [ ! -f "$dir/data/PG_VERSION" ]; then
        mkdir -p "$dir"
        [ "$(id -u)" = 0 ] && chown postgres "$dir"
        as_pg "$PGBIN/initdb" -D "$dir/data" -A trust -U postgres --no-sync -E UTF8 --locale=C.UTF-8 >/dev/null
        {
            echo "port = $port"
            echo "listen_addresses = '127.0.0.1'"
            echo "unix_socket_directories = '$dir'"
            echo "shared_preload_libraries = 'pg_conveyor'"
            echo "max_connections = 200"
            for line in "$@"; do echo "$line"; done
        } | as_pg tee -a "$dir/data/postgresql.conf" >/dev/null
    fi
    if ! as_pg "$PGBIN/pg_ctl" -D "$dir/data" status >/dev/null 2>&1; then
        as_pg "$PGBIN/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 start >/dev/null
    fi
    ;;
stop)
    if [ -f "$dir/data/PG_VERSION" ] && as_pg "$PGBIN/pg_ctl" -D "$dir/data" status >/dev/null 2>&1; then
        as_pg "$PGBIN/pg_ctl" -D "$dir/data" -w -t 60 -m fast stop >/dev/null
    fi
    ;;
*)
    echo "usage: $0 start DIR PORT [conf...] | stop DIR" >&2
    exit 2
    ;;
esac
