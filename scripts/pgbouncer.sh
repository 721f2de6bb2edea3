#!/usr/bin/env bash
# A throwaway PgBouncer (Debian's package, scripts/setup.sh installs it) in transaction mode in
# front of a cluster, run by the postgres user (PgBouncer refuses root), trust auth.
#   pgbouncer.sh start DIR PORT SERVER_HOST SERVER_PORT [POOL_SIZE] [QUERY_TIMEOUT]
#     (default pool size 4; QUERY_TIMEOUT seconds, 0 = none: a query, a server connect or a wait
#     for a server connection that takes longer fails, e.g. in front of a shard that hangs)
#   pgbouncer.sh stop DIR
# It listens on 127.0.0.1:PORT and on a Unix socket in DIR, for every database of the server
# (`* =`); each database and user pair gets POOL_SIZE server connections, shared by any number
# of clients transaction by transaction. Logs in DIR/pgbouncer.log.
set -euo pipefail

cmd=${1:?start or stop}
dir=${2:?directory}

as_pg() {
    if [ "$(id -u)" = 0 ]; then (cd /tmp && sudo -u postgres "$@"); else "$@"; fi
}

case "$cmd" in
start)
    port=${3:?port}
    server_host=${4:?server host or socket directory}
    server_port=${5:?server port}
    pool=${6:-4}
    timeout=${7:-0}
    timeouts=""
    if [ "$timeout" != 0 ]; then
        timeouts="query_timeout = $timeout
server_connect_timeout = $timeout
query_wait_timeout = $timeout"
    fi
    mkdir -p "$dir"
    [ "$(id -u)" = 0 ] && chown postgres "$dir"
    if [ -f "$dir/pgbouncer.pid" ] && as_pg kill -0 "$(cat "$dir/pgbouncer.pid")" 2>/dev/null; then
        exit 0
    fi
    as_pg tee "$dir/userlist.txt" >/dev/null <<<'"postgres" ""'
    as_pg tee "$dir/pgbouncer.ini" >/dev/null <<INI
[databases]
* = host=$server_host port=$server_port

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $port
unix_socket_dir = $dir
auth_type = trust
auth_file = $dir/userlist.txt
admin_users = postgres
pool_mode = transaction
default_pool_size = $pool
max_client_conn = 500
# clients' startup parameters PgBouncer does not track itself
ignore_startup_parameters = extra_float_digits,options
logfile = $dir/pgbouncer.log
pidfile = $dir/pgbouncer.pid
$timeouts
INI
    as_pg /usr/sbin/pgbouncer -d -q "$dir/pgbouncer.ini"
    for _ in $(seq 1 100); do
        [ -S "$dir/.s.PGSQL.$port" ] && exit 0
        sleep 0.05
    done
    echo "pgbouncer.sh: PgBouncer did not start (see $dir/pgbouncer.log)" >&2
    exit 1
    ;;
stop)
    if [ -f "$dir/pgbouncer.pid" ]; then
        as_pg kill -INT "$(cat "$dir/pgbouncer.pid")" 2>/dev/null || true
        for _ in $(seq 1 100); do
            [ -f "$dir/pgbouncer.pid" ] || exit 0
            sleep 0.05
        done
    fi
    ;;
*)
    echo "usage: $0 start DIR PORT SERVER_HOST SERVER_PORT [POOL_SIZE] [QUERY_TIMEOUT] | stop DIR" >&2
    exit 2
    ;;
esac
