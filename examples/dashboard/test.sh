#!/usr/bin/env bash
# test.sh: end-to-end test of the dashboard against a running PostgreSQL with pg_conveyor.
#
#   PGHOST=/tmp/pgc-it PGPORT=54329 PGUSER=postgres PGDATABASE=conveyor_it examples/dashboard/test.sh
#
# 1. installs what is missing (Debian's chromium, node and psql if absent; npm packages)
# 2. makes a known scenario with SQL only (test/scenario.sql; names carry a random suffix)
# 3. creates a login role that is only a member of conveyor_reader and checks it can read the
#    views but not enqueue or tick
# 4. starts server.mjs as that role on a free port, loads the page in headless Chromium and
#    checks the rendered DOM, auto-refresh and the endpoints (test/check-page.mjs)
# 5. saves a screenshot ($DASHBOARD_SCREENSHOT, default /tmp/conveyor-dashboard.png) and checks
#    it is a real picture; stops the server; removes the scenario's rows (if PGUSER is superuser)
#
# env: PG* (an admin connection: superuser, or the extension's owner), and optionally
#   DASHBOARD_SCREENSHOT   where to write the PNG              (/tmp/conveyor-dashboard.png)
#   DASHBOARD_READER       the reader login role to use/create (conveyor_dashboard_reader)
#   DASHBOARD_READER_PASSWORD  its password, for clusters that do not trust local connections
#   DASHBOARD_PORT         the server's port                    (0: any free port)
#   DASHBOARD_KEEP_DATA=1  keep the scenario's queues, tasks and runs
#   CHROMIUM               the browser                          (/usr/bin/chromium)
# Exits non-zero on any failure. The last line is "dashboard: N passed, M failed".
set -euo pipefail
cd "$(dirname "$0")"
start_time=$(date +%s)

SHOT=${DASHBOARD_SCREENSHOT:-/tmp/conveyor-dashboard.png}
READER=${DASHBOARD_READER:-conveyor_dashboard_reader}
CHROMIUM=${CHROMIUM:-/usr/bin/chromium}
if [ -z "${PGHOST:-}" ] && [ -d /var/run/postgresql ]; then export PGHOST=/var/run/postgresql; fi

say() { printf 'dashboard: %s\n' "$*"; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
apt_updated=
apt_install() {
    say "installing $* (apt)"
    if [ -z "$apt_updated" ]; then as_root apt-get update -qq; apt_updated=1; fi
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

# ---- what the test needs ----------------------------------------------------------------------
[ -x "$CHROMIUM" ] || apt_install chromium
[ -x "$CHROMIUM" ] || { echo "dashboard: no browser at $CHROMIUM (set CHROMIUM)" >&2; exit 1; }
command -v node >/dev/null && command -v npm >/dev/null || apt_install nodejs npm
command -v psql >/dev/null || apt_install postgresql-client
if ! npm ls --silent pg playwright-core >/dev/null 2>&1; then
    say "installing npm packages (npm ci)"
    npm ci --no-audit --no-fund --loglevel=error >/dev/null
fi

# ---- bookkeeping ----------------------------------------------------------------------------
tmp=$(mktemp -d /tmp/conveyor-dashboard-test.XXXXXX)
chmod 755 "$tmp"
results="$tmp/results"
: >"$results"
server_pid=
sfx=$(od -An -N4 -tx1 /dev/urandom | tr -d ' \n')
scenario_made=

record() { # record ok|FAIL what
    printf '  %-4s  %s\n' "$1" "$2" | tee -a "$results"
}
psql_admin() { psql -X -q -v ON_ERROR_STOP=1 "$@"; }
psql_reader() { PGUSER="$READER" PGPASSWORD="${DASHBOARD_READER_PASSWORD:-${PGPASSWORD:-}}" psql -X -q -v ON_ERROR_STOP=1 "$@"; }

finish() {
    rc=$?
    set +e
    if [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null; then
        kill "$server_pid"; wait "$server_pid" 2>/dev/null
        say "server stopped"
    fi
    if [ -n "$scenario_made" ] && [ "${DASHBOARD_KEEP_DATA:-0}" != 1 ]; then
        if [ "$(psql_admin -Atc 'select rolsuper from pg_roles where rolname = current_user' 2>/dev/null)" = t ]; then
            psql_admin -v sfx="$sfx" -f test/cleanup.sql >/dev/null && say "scenario rows removed (suffix $sfx)"
        else
            say "scenario rows kept (suffix $sfx): removing them needs a superuser"
        fi
    fi
    n_ok=$(grep -c '^  ok ' "$results" 2>/dev/null)
    n_fail=$(grep -c '^  FAIL ' "$results" 2>/dev/null)
    if [ "$rc" != 0 ] && [ "$n_fail" = 0 ]; then n_fail=1; fi   # a step that stopped the script
    rm -rf "$tmp"
    say "finished in $(( $(date +%s) - start_time )) s, screenshot: $SHOT"
    printf 'dashboard: %s passed, %s failed\n' "$n_ok" "$n_fail"
    exit "$rc"
}
trap finish EXIT
trap 'exit 130' INT TERM

say "database ${PGDATABASE:-?} on ${PGHOST:-?}:${PGPORT:-5432} as ${PGUSER:-$(id -un)}, scenario suffix $sfx"
psql_admin -Atc "select extversion from pg_extension where extname = 'pg_conveyor'" >"$tmp/ext"
[ -s "$tmp/ext" ] || { echo "pg_conveyor is not installed in this database" >&2; exit 1; }

# ---- 1. the scenario, with SQL only ----------------------------------------------------------
scenario_made=1
if ! psql_admin -v sfx="$sfx" -f test/scenario.sql >"$tmp/scenario.log" 2>&1; then
    cat "$tmp/scenario.log" >&2
    record FAIL "scenario.sql"
    exit 1
fi
record ok "scenario.sql: 2 queues, 3 tasks, runs claimed, completed, failed, released, cancelled"

# ---- 2. a reader role with nothing but conveyor_reader -----------------------------------------
psql_admin -v reader="$READER" -v password="${DASHBOARD_READER_PASSWORD:-}" <<'SQL'
set client_min_messages = warning;
select format('create role %I login', :'reader')
where not exists (select from pg_roles where rolname = :'reader') \gexec
select format('alter role %I password %L', :'reader', :'password') where :'password' <> '' \gexec
grant conveyor_reader to :"reader";
SQL
memberships=$(psql_admin -Atc "select coalesce(string_agg(g.rolname, ',' order by g.rolname), '')
    from pg_auth_members m join pg_roles g on g.oid = m.roleid
    where m.member = (select oid from pg_roles where rolname = '$READER')")
attrs=$(psql_admin -Atc "select rolsuper or rolcreaterole or rolcreatedb or rolbypassrls from pg_roles where rolname = '$READER'")
if [ "$memberships" = conveyor_reader ] && [ "$attrs" = f ]; then
    record ok "role $READER is a plain login role, member of conveyor_reader only"
else
    record FAIL "role $READER is a plain login role, member of conveyor_reader only (member of: $memberships; privileged: $attrs)"
fi
if psql_reader -c 'select 1 from conveyor.queue_stats, conveyor.task_stats, conveyor.recent_failures, conveyor.throughput limit 1' \
        -c 'select length(conveyor.metrics()) > 0' >/dev/null 2>"$tmp/reader.err"; then
    record ok "$READER reads the four views and metrics()"
else
    record FAIL "$READER reads the four views and metrics(): $(cat "$tmp/reader.err")"
fi
for sql in "select conveyor.enqueue('dash.send_$sfx')" "select conveyor.tick()"; do
    if psql_reader -c "$sql" >/dev/null 2>"$tmp/reader.err"; then
        record FAIL "$READER may not run: $sql"
    elif grep -q 'permission denied' "$tmp/reader.err"; then
        record ok "$READER may not run: $sql (permission denied)"
    else
        record FAIL "$READER may not run: $sql (failed otherwise: $(cat "$tmp/reader.err"))"
    fi
done

# ---- 3. the server, as the reader ------------------------------------------------------------
PGUSER="$READER" PGPASSWORD="${DASHBOARD_READER_PASSWORD:-${PGPASSWORD:-}}" \
    node server.mjs --port "${DASHBOARD_PORT:-0}" >"$tmp/server.log" 2>&1 &
server_pid=$!
url=
for _ in $(seq 1 100); do
    url=$(sed -n 's/^conveyor dashboard listening on \(http[^ ]*\)$/\1/p' "$tmp/server.log")
    [ -n "$url" ] && break
    kill -0 "$server_pid" 2>/dev/null || break
    sleep 0.1
done
if [ -z "$url" ]; then
    cat "$tmp/server.log" >&2
    record FAIL "server.mjs starts"
    exit 1
fi
record ok "server.mjs listens on $url as $READER"

# ---- 4. the page in headless Chromium --------------------------------------------------------
mkdir -p "$(dirname "$SHOT")"
rm -f "$SHOT"
set +e
DASHBOARD_URL="$url" SCENARIO_SUFFIX="$sfx" DASHBOARD_SCREENSHOT="$SHOT" CHROMIUM="$CHROMIUM" \
    node test/check-page.mjs | tee -a "$results"
browser_rc=${PIPESTATUS[0]}
set -e
if grep -q 'ERROR\|Error' "$tmp/server.log"; then
    record FAIL "server log has errors: $(grep 'ERROR\|Error' "$tmp/server.log" | head -3)"
else
    record ok "server log has no errors"
fi
[ "$browser_rc" = 0 ] && ! grep -q '^  FAIL ' "$results"
