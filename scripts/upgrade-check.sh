#!/usr/bin/env bash
# make upgrade-check: proves `ALTER EXTENSION pg_conveyor UPDATE` from the previous release
# (0.1.0) to the working tree's version, on a private copy of the PostgreSQL 15 installation,
# so the system PostgreSQL and the clusters running from it are never touched.
#
#   1. build 0.1.0's package from its commit (cached under target/upgrade-check/, keyed by the
#      commit); its install script must be byte-identical to the frozen sql/pg_conveyor--0.1.0.sql
#   2. copy /usr/lib/postgresql/15 and /usr/share/postgresql/15 under /tmp/pgc-upgrade/root and
#      prove the copy uses its own extension directory and $libdir; install 0.1.0 there
#   3. a cluster with the background worker; CREATE EXTENSION (0.1.0); a data set with runs in
#      every status, cron, a service, outbox, logs (tests/upgrade/01_populate.sql); snapshot
#   4. install the new package, restart: the new library on the 0.1.0 schema (worker and SQL)
#   5. ALTER EXTENSION pg_conveyor UPDATE
#   6. the upgraded schema against a fresh install, section by section (diff -u)
#   7. nothing lost, work in flight carries on (tests/upgrade/05_after_update.sql)
#   8. self-test: two fresh installs compare equal; a deliberately broken upgrade does not
#   9. summary
# Environment: CONVEYOR_UPGRADE_PORT (default 54341), CARGO_TARGET_DIR (default ./target).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD

# 0.1.0 is this commit: the repository has no tags (its Cargo.toml says version = "0.1.0")
OLD_COMMIT=deac4b65b25bb407dc7c33d0963b6f92b831d8f4
OLD_VERSION=0.1.0
NEW_VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)

DIR=/tmp/pgc-upgrade
PORT=${CONVEYOR_UPGRADE_PORT:-54341}
TARGET=${CARGO_TARGET_DIR:-$REPO/target}
CACHE=$TARGET/upgrade-check
OLD_PKG=$CACHE/pg_conveyor-$OLD_VERSION-$OLD_COMMIT
NEW_PKG=$CACHE/pg_conveyor-new
TESTS=$REPO/tests/upgrade
WORK=$DIR/work          # files the server reads and writes (snapshot, facts)
OUT=$DIR/compare        # the schema descriptions and their diffs
LOG=$DIR/server.log

SYS_PG_CONFIG=/usr/bin/pg_config
SYS_BINDIR=$($SYS_PG_CONFIG --bindir)         # /usr/lib/postgresql/15/bin
SYS_SHAREDIR=$($SYS_PG_CONFIG --sharedir)     # /usr/share/postgresql/15
SYS_PKGLIBDIR=$($SYS_PG_CONFIG --pkglibdir)   # /usr/lib/postgresql/15/lib
ROOT=$DIR/root
PGBIN=$ROOT$SYS_BINDIR
EXTDIR=$ROOT$SYS_SHAREDIR/extension
LIBDIR=$ROOT$SYS_PKGLIBDIR

START=$(date +%s.%N)
PHASE_NAMES=()
PHASE_SECONDS=()
FAILURES=()
phase_started=
phase_name=

now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$2" -v d="${3:-1}" 'BEGIN { printf "%.*f", d, b - a }'; }
end_phase() {
    if [ -n "$phase_name" ]; then
        PHASE_NAMES+=("$phase_name")
        PHASE_SECONDS+=("$(secs "$phase_started" "$(now)")")
    fi
}
phase() {
    end_phase
    phase_name=$1
    phase_started=$(now)
    printf '\n=== [%ss] %s\n' "$(secs "$START" "$phase_started")" "$1"
}
ok() { printf 'ok    %s\n' "$*"; }
fail() { printf 'FAIL  %s\n' "$*"; FAILURES+=("$*"); }
die() { printf '\nupgrade-check: %s\n' "$*" >&2; exit 1; }
check() { # check LABEL COMMAND...: ok or FAIL, by the command's status
    local label=$1
    shift
    if "$@"; then ok "$label"; else fail "$label"; fi
}

as_pg() { (cd /tmp && if [ "$(id -u)" = 0 ]; then sudo -u postgres "$@"; else "$@"; fi); }
pg_ctl() { as_pg "$PGBIN/pg_ctl" -D "$DIR/data" "$@"; }
psql_db() { # psql_db DB [psql args]: the private cluster, as role postgres, stopping at the first error
    local db=$1
    shift
    "$PGBIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$DIR" -p "$PORT" -U postgres -d "$db" "$@"
}
val() { psql_db "$1" -At -c "$2"; }  # val DB SQL: one value
run_step() { # run_step DB FILE [psql -v args]: a step file of tests/upgrade/ with the shared variables
    local db=$1 file=$2
    shift 2
    psql_db "$db" -At -v t0="$T0" -v work="$WORK" -v new_version="$NEW_VERSION" "$@" -f "$TESTS/$file"
}

stop_cluster() {
    if [ -f "$DIR/data/PG_VERSION" ] && pg_ctl status >/dev/null 2>&1; then
        pg_ctl -w -t 60 -m fast stop >/dev/null || true
    fi
}
on_exit() {
    local status=$?
    stop_cluster
    [ $status = 0 ] || printf '\nupgrade-check: stopped (exit %s); server log: %s, work files: %s\n' "$status" "$LOG" "$DIR" >&2
}

# install_pkg PKG: copy a `cargo pgrx package` tree into the private installation, each file
# beside its destination and renamed over it (as scripts/install-ext.sh does for the system):
# a running server keeps the library it mapped, new backends load the new one
install_pkg() {
    local pkg=$1 f
    (cd "$pkg" && find . -type f ! -name .complete) | while read -r f; do
        install -D -m 0644 "$pkg/$f" "$ROOT/${f#./}.new.$$"
        mv -f "$ROOT/${f#./}.new.$$" "$ROOT/${f#./}"
    done
}

# what the running server has mapped as pg_conveyor.so: "inode path" per process (postmaster,
# whose children inherit it, and the background worker)
mapped_library() {
    local pid
    for pid in "$@"; do
        awk '$6 ~ /pg_conveyor\.so$/ { print $5, $6 }' "/proc/$pid/maps" | sort -u
    done | sort -u
}
postmaster_pid() { head -1 "$DIR/data/postmaster.pid"; }
worker_pid() { val upgraded "select pid from pg_stat_activity where backend_type = 'pg_conveyor' and datname = 'upgraded'"; }
wait_for_worker() { # the background worker connected to database upgraded (it retries every second)
    local i pid
    for i in $(seq 100); do
        pid=$(worker_pid 2>/dev/null || true)
        if [ -n "$pid" ]; then echo "$pid"; return 0; fi
        sleep 0.1
    done
    return 1
}
log_since() { tail -c +$(($1 + 1)) "$LOG"; }
log_size() { wc -c <"$LOG"; }

# probe LABEL: a run due 0.3s from now on the real clock (which only the background worker
# follows); prints how it ended up after up to 5s: "delivered in N s" or "not delivered"
probe() {
    psql_db upgraded -At -v label="$1" <<'SQL'
select set_config('conveyor.test_clock', '', false) \g /dev/null
select set_config('upgrade_check.probe', conveyor.enqueue('upgrade.probe', jsonb_build_object('probe', :'label'),
                  run_at => clock_timestamp() + interval '300 milliseconds')::text, false) \g /dev/null
do $$
declare
    v_deadline timestamptz := clock_timestamp() + interval '5 seconds';
begin
    while clock_timestamp() < v_deadline loop
        exit when (select status::text from conveyor.runs where id = current_setting('upgrade_check.probe')::conveyor.ulid) <> 'scheduled';
        perform pg_sleep(0.05);
    end loop;
end
$$;
select case when r.status::text = 'queued'
            then format('delivered in %s s', round(extract(epoch from clock_timestamp() - r.created_at)::numeric, 1))
            else 'not delivered (' || r.status || ')' end
from conveyor.runs r where r.id = current_setting('upgrade_check.probe')::conveyor.ulid;
SQL
}

# in_extension_transaction DB SQL DATA: CREATE or ALTER EXTENSION, and in the same transaction
# the rows its scripts wrote into the extension's own tables (describe_data.sql) into file DATA
in_extension_transaction() {
    psql_db "$1" -At -c "begin" -c "$2" -f "$TESTS/describe_data.sql" -c "commit" >"$3"
}

# describe DB DIR DATA: the schema of pg_conveyor in a database, one file per section
# (describe.sql, then the data section saved by in_extension_transaction), plus its pg_dump
# --schema-only --binary-upgrade with only what must differ normalized away
describe() {
    local db=$1 dir=$2 data=$3
    rm -rf "$dir"
    mkdir -p "$dir"
    psql_db "$db" -At -f "$TESTS/describe.sql" >"$dir/describe.out" || die "tests/upgrade/describe.sql failed in database $db"
    cat "$dir/describe.out" "$data" | awk -v dir="$dir" '
        /^@@ / { n++; file = sprintf("%s/%02d-%s.txt", dir, n, $2); printf "" > file; next }
        { print > file }'
    # pg_dump dumps extension members one by one only in binary-upgrade mode (with ALTER
    # EXTENSION ... ADD for each); normalized: the oid-setting calls (different in every
    # database), the frozen xids, the oids of the config tables (the extension section lists
    # them by name), and the random key of \restrict; dropped-column placeholders and fast
    # defaults are the storage history of an ALTER TABLE, counted but not compared (the columns
    # section compares the live columns in order); setval of the config sequences is data
    "$PGBIN/pg_dump" -h "$DIR" -p "$PORT" -U postgres --schema-only --binary-upgrade "$db" |
        sed -E \
            -e '/^SELECT pg_catalog\.binary_upgrade_set_next_/d' \
            -e "s/(relfrozenxid|relminmxid) = '[0-9]+'/\1 = '<xid>'/g" \
            -e "s/^WHERE oid = '?[0-9]+'?;$/WHERE oid = <oid>;/" \
            -e "/^SELECT pg_catalog\.binary_upgrade_create_empty_extension\(/s/'\{[0-9,]*\}'/'{<config table oids>}'/" \
            -e 's/^\\(un)?restrict [A-Za-z0-9]+$/\\\1restrict <key>/' \
            -e '/binary_upgrade_set_missing_value/d' \
            -e '/^SELECT pg_catalog\.setval\(/d' |
        awk '/^-- set missing value\.$/ { blank = 2; next } blank > 0 && /^$/ { blank--; next } { blank = 0; print }' \
        >"$dir/99-pg_dump.sql" || die "pg_dump of database $db failed"
    grep -c 'pg\.dropped\.' "$dir/99-pg_dump.sql" >"$dir/dropped-columns" || true
}

# column_order DIR: "relation: col, col, ..." per relation, from the columns section
column_order() {
    awk '{ rel = $1 " " $2; if (n[rel]++) cols[rel] = cols[rel] ", " $4; else cols[rel] = $4 } END { for (r in cols) print r ": " cols[r] }' \
        "$1/03-columns.txt" | sort
}
# order_differs DIR_A DIR_B: the relations both have whose columns are not in the same order
order_differs() {
    join -t '|' <(column_order "$1" | sed 's/: /|/') <(column_order "$2" | sed 's/: /|/') |
        awk -F '|' '$2 != $3 { printf "      %s\n        fresh:    %s\n        upgraded: %s\n", $1, $2, $3 }'
}

# compare LABEL_A DIR_A LABEL_B DIR_B: one line per section, then the diff of each section that
# differs (diff -u, the first 150 lines; all of it in DIR_B.diff); status 1 when any differs
compare() {
    local label_a=$1 a=$2 label_b=$3 b=$4 f name status=0 lines
    : >"$b.diff"
    for f in "$a"/[0-9]*; do
        name=$(basename "$f" .txt)
        name=${name#[0-9][0-9]-}
        lines=$(wc -l <"$f")
        if cmp -s "$f" "$b/$(basename "$f")"; then
            printf '      %-12s identical (%s lines)\n' "$name" "$lines"
        else
            status=1
            diff -u --label "$label_a: $name" --label "$label_b: $name" "$f" "$b/$(basename "$f")" >>"$b.diff" || true
            printf '      %-12s DIFFERS (%s lines; +%s -%s)\n' "$name" "$lines" \
                "$(diff "$f" "$b/$(basename "$f")" | grep -c '^>' || true)" "$(diff "$f" "$b/$(basename "$f")" | grep -c '^<' || true)"
        fi
    done
    if [ $status != 0 ]; then
        echo
        head -n 150 "$b.diff" | sed 's/^/      /'
        if [ "$(wc -l <"$b.diff")" -gt 150 ]; then
            echo "      ... $(($(wc -l <"$b.diff") - 150)) more lines in $b.diff"
        fi
    fi
    return $status
}

# one check at a time on this machine: they share /tmp/pgc-upgrade, the port and the cache
exec 9>/tmp/pgc-upgrade.lock
flock -n 9 || { echo "upgrade-check: waiting for another upgrade check to finish"; flock -w 1800 9; }
trap on_exit EXIT

scripts/setup.sh

[ "$NEW_VERSION" != "$OLD_VERSION" ] ||
    die "Cargo.toml still says version $OLD_VERSION: there is no newer version to upgrade to"
echo "upgrade-check: pg_conveyor $OLD_VERSION (commit ${OLD_COMMIT:0:12}) -> $NEW_VERSION (working tree)"

# ---------------------------------------------------------------------------------------------
phase "1. packages: $OLD_VERSION from its commit (cached), $NEW_VERSION from the working tree"
mkdir -p "$CACHE"
rm -rf "$NEW_PKG"
cargo pgrx package --pg-config "$SYS_PG_CONFIG" --debug --out-dir "$NEW_PKG" >"$CACHE/new-package.log" 2>&1 ||
    { tail -n 40 "$CACHE/new-package.log"; die "cargo pgrx package of the working tree failed"; }
ok "built $NEW_VERSION ($TARGET/debug, as scripts/install-ext.sh does)"
NEW_EXT=$NEW_PKG$SYS_SHAREDIR/extension
# cargo-pgrx 0.18.1 copies sql/pg_conveyor--A--B.sql (upgrade scripts) into the package but not
# the frozen install scripts sql/pg_conveyor--A.sql of earlier releases: add those
for f in sql/pg_conveyor--[0-9]*.sql; do
    case "$f" in *--*--*) continue ;; esac
    [ -e "$NEW_EXT/$(basename "$f")" ] || install -m 0644 "$f" "$NEW_EXT/$(basename "$f")"
done

if [ -f "$OLD_PKG/.complete" ]; then
    ok "$OLD_VERSION package cached ($OLD_PKG)"
else
    # Built in a target directory of its own, seeded with a copy of target/debug's dependency
    # builds. Not in target/debug itself: cargo names the cdylib of a path package
    # libpg_conveyor.so whatever its version, and keeps one fingerprint per package id, so after
    # building 0.1.0 there a build of the working tree finds its own fingerprint fresh and
    # packages 0.1.0's library (and the other way round): they would not rebuild each other,
    # they would silently use each other's library. The copy (about 2 GB, seconds) keeps the
    # dependency builds shared; it is deleted once the package is cached.
    git cat-file -e "$OLD_COMMIT^{commit}" 2>/dev/null ||
        die "commit $OLD_COMMIT ($OLD_VERSION) is not in this clone (a shallow clone? git fetch --unshallow)"
    build=$CACHE/build-$OLD_COMMIT
    rm -rf "$build" "$OLD_PKG" "$OLD_PKG.tmp"
    mkdir -p "$build/src" "$build/target/debug"
    git archive "$OLD_COMMIT" | tar -x -C "$build/src"
    if [ -d "$TARGET/debug/deps" ]; then
        # under cargo's build lock, so no half-written file is copied
        flock "$TARGET/debug/.cargo-lock" cp -a "$TARGET/debug/deps" "$TARGET/debug/build" "$TARGET/debug/.fingerprint" "$build/target/debug/"
        rm -rf "$build/target/debug/.fingerprint/pg_conveyor-"* "$build/target/debug/deps/"*pg_conveyor*
    fi
    (cd "$build/src" && CARGO_TARGET_DIR=$build/target cargo pgrx package --pg-config "$SYS_PG_CONFIG" --debug \
        --out-dir "$OLD_PKG.tmp") >"$CACHE/old-package.log" 2>&1 ||
        { tail -n 40 "$CACHE/old-package.log"; die "cargo pgrx package of $OLD_VERSION ($OLD_COMMIT) failed"; }
    touch "$OLD_PKG.tmp/.complete"
    mv "$OLD_PKG.tmp" "$OLD_PKG"
    rm -rf "$build"
    ok "built $OLD_VERSION from commit $OLD_COMMIT ($(grep -c '^ *Compiling' "$CACHE/old-package.log") crates compiled)"
fi
OLD_SQL=$OLD_PKG$SYS_SHAREDIR/extension/pg_conveyor--$OLD_VERSION.sql
[ -f "sql/pg_conveyor--$OLD_VERSION.sql" ] ||
    die "sql/pg_conveyor--$OLD_VERSION.sql (the frozen $OLD_VERSION install script) is missing; it must be $OLD_SQL"
if cmp -s "$OLD_SQL" "sql/pg_conveyor--$OLD_VERSION.sql"; then
    ok "sql/pg_conveyor--$OLD_VERSION.sql is byte-identical to the install script of commit ${OLD_COMMIT:0:12}"
else
    fail "sql/pg_conveyor--$OLD_VERSION.sql is not the install script of commit ${OLD_COMMIT:0:12} ($OLD_SQL)"
    diff -u --label "built from ${OLD_COMMIT:0:12}" --label "sql/pg_conveyor--$OLD_VERSION.sql" \
        "$OLD_SQL" "sql/pg_conveyor--$OLD_VERSION.sql" | head -n 20 | sed 's/^/      /'
fi
new_is_new() { [ -f "$NEW_EXT/pg_conveyor--$NEW_VERSION.sql" ] && ! cmp -s "$NEW_EXT/pg_conveyor--$NEW_VERSION.sql" "$OLD_SQL"; }
check "the new package has pg_conveyor--$NEW_VERSION.sql and it is not $OLD_VERSION's (the library is really new)" new_is_new
check "the new package has the upgrade script pg_conveyor--$OLD_VERSION--$NEW_VERSION.sql" \
    test -f "$NEW_EXT/pg_conveyor--$OLD_VERSION--$NEW_VERSION.sql"

# ---------------------------------------------------------------------------------------------
phase "2. a private PostgreSQL installation ($ROOT)"
stop_cluster
rm -rf "$DIR"
mkdir -p "$ROOT$(dirname "$(dirname "$SYS_BINDIR")")" "$ROOT$(dirname "$SYS_SHAREDIR")" "$WORK" "$OUT"
: >"$OUT/upgraded.diff"
cp -a "$(dirname "$SYS_BINDIR")" "$ROOT$(dirname "$(dirname "$SYS_BINDIR")")/"
cp -a "$SYS_SHAREDIR" "$ROOT$(dirname "$SYS_SHAREDIR")/"
# whatever pg_conveyor the system has installed (other tests install theirs) is not ours
rm -f "$EXTDIR"/pg_conveyor* "$LIBDIR"/pg_conveyor*
# an extension that exists only in the copy, to prove which extension directory the server reads
printf "comment = 'upgrade-check marker'\ndefault_version = '1'\nrelocatable = true\n" >"$EXTDIR/pgc_upgrade_marker.control"
echo "select 1;" >"$EXTDIR/pgc_upgrade_marker--1.sql"
install_pkg "$OLD_PKG"
if [ "$(id -u)" = 0 ]; then chown postgres "$DIR" "$WORK"; fi
check "pg_config of the copy reports the copy's directories" \
    test "$("$PGBIN/pg_config" --sharedir):$("$PGBIN/pg_config" --pkglibdir)" = "$ROOT$SYS_SHAREDIR:$ROOT$SYS_PKGLIBDIR"

# ---------------------------------------------------------------------------------------------
phase "3. schema and library $OLD_VERSION: a cluster with the worker, and a data set"
as_pg "$PGBIN/initdb" -D "$DIR/data" -A trust -U postgres --no-sync -E UTF8 --locale=C.UTF-8 >/dev/null
{
    echo "port = $PORT"
    echo "listen_addresses = '127.0.0.1'"
    echo "unix_socket_directories = '$DIR'"
    echo "shared_preload_libraries = 'pg_conveyor'"
    echo "conveyor.database = 'upgraded'"
    echo "conveyor.tick_interval = '200ms'"
    echo "fsync = off"
    echo "log_line_prefix = '%m [%p] %b '"
    echo "log_lock_waits = on" # a lock wait of deadlock_timeout (1s) is logged with who holds what
} | as_pg tee -a "$DIR/data/postgresql.conf" >/dev/null
pg_ctl -l "$LOG" -w -t 60 start >/dev/null || { tail -n 20 "$LOG"; die "the cluster did not start"; }
psql_db postgres -c "create database upgraded" -c "create database fresh" -c "create database fresh_again"
psql_db upgraded -c "create extension pg_conveyor"
check "the server reads the copy's extension directory (marker extension only in the copy)" \
    test "$(val postgres "select count(*) from pg_available_extensions where name = 'pgc_upgrade_marker'")" = 1
sys_versions=$(find "$SYS_SHAREDIR/extension" -maxdepth 1 -name 'pg_conveyor--*.sql' ! -name '*--*--*' -printf '%f\n' |
               sed 's/^pg_conveyor--//; s/\.sql$//' | sort -V | paste -sd ' ')
check "the server lists only the copy's pg_conveyor versions: $OLD_VERSION (the system has: ${sys_versions:-none})" \
    test "$(val postgres "select string_agg(version, ',') from pg_available_extension_versions where name = 'pg_conveyor'")" = "$OLD_VERSION"
check "pg_config() in SQL reports the copy's SHAREDIR and PKGLIBDIR" \
    test "$(val postgres "select string_agg(setting, ':' order by name desc) from pg_config() where name in ('SHAREDIR', 'PKGLIBDIR')")" = "$ROOT$SYS_SHAREDIR:$ROOT$SYS_PKGLIBDIR"
check "the extension is $OLD_VERSION" test "$(val upgraded "select extversion from pg_extension where extname = 'pg_conveyor'")" = "$OLD_VERSION"
WORKER=$(wait_for_worker) || die "the background worker did not connect to database upgraded; see $LOG"
check "postmaster and worker map the copy's pg_conveyor.so ($LIBDIR), the file installed" \
    test "$(mapped_library "$(postmaster_pid)" "$WORKER")" = "$(stat -c '%i %n' "$LIBDIR/pg_conveyor.so")"
# the scripted clock starts on a whole hour a month ahead of the real one (the worker's)
T0=$(val postgres "select date_trunc('hour', now() + interval '30 days')")
run_step upgraded 01_populate.sql
result=$(probe "schema $OLD_VERSION, library $OLD_VERSION") || result="probe failed"
check "the $OLD_VERSION worker delivers a run due on the real clock: $result" test "${result#delivered}" != "$result"
run_step upgraded 02_snapshot.sql

# ---------------------------------------------------------------------------------------------
phase "4. library $NEW_VERSION on schema $OLD_VERSION (installed, server restarted, no ALTER yet)"
install_pkg "$NEW_PKG"
# the release ships what the package has; a file only the old one had would not be there
for f in "$EXTDIR"/pg_conveyor*; do
    [ -e "$NEW_PKG$SYS_SHAREDIR/extension/$(basename "$f")" ] || rm -f "$f"
done
check "installing over the running server (rename) leaves it running (a C function of the mapped library works)" \
    test "$(val upgraded "select length(conveyor.ulid_generate()::text)")" = 26
pg_ctl -w -t 60 -m fast stop >/dev/null
offset=$(log_size) # the log from here on is the new library's
pg_ctl -l "$LOG" -w -t 60 start >/dev/null || { log_since "$offset" | tail -n 20; die "the cluster did not start again"; }
WORKER=$(wait_for_worker) || { fail "the background worker is back after the restart"; WORKER=; }
check "postmaster and worker map the new pg_conveyor.so" \
    test "$(mapped_library "$(postmaster_pid)" ${WORKER:+"$WORKER"})" = "$(stat -c '%i %n' "$LIBDIR/pg_conveyor.so")"
sleep 2.5 # a dozen ticks of the worker on the old schema
result=$(probe "schema $OLD_VERSION, library $NEW_VERSION") || result="probe failed (see above)"
case "$result" in
    delivered*) echo "      the worker drives the $OLD_VERSION schema: probe $result" ;;
    *) echo "      the worker idles on the $OLD_VERSION schema: probe $result" ;;
esac
run_step upgraded 03_new_library_old_schema.sql || fail "step 4 SQL checks (tests/upgrade/03_new_library_old_schema.sql)"
check "the server is up and the worker is the same process (no crash, no restart)" \
    test "$(worker_pid)" = "$WORKER"
no_crash() { ! log_since "$offset" | grep -Eq "terminated by signal|PANIC|exited with exit code|server process .* was terminated"; }
no_failed_step() { ! log_since "$offset" | grep -q "tick step .* failed"; }
check "the server log since the restart shows no crash (signal, PANIC, worker exit)" no_crash
check "no tick step failed on the $OLD_VERSION schema (no 'tick step ... failed' warning)" no_failed_step
since_restart=$(log_since "$offset")
mismatch_lines=$(grep -c "has schema version $OLD_VERSION, the library is $NEW_VERSION" <<<"$since_restart" || true)
check "the worker logged 'has schema version $OLD_VERSION, the library is $NEW_VERSION' exactly once (logged $mismatch_lines times)" \
    test "$mismatch_lines" = 1
grep "has schema version" <<<"$since_restart" | sed 's/^/      log: /' | head -3

# ---------------------------------------------------------------------------------------------
phase "5. ALTER EXTENSION pg_conveyor UPDATE ($OLD_VERSION -> $NEW_VERSION)"
update_started=$(now)
if in_extension_transaction upgraded "alter extension pg_conveyor update" "$WORK/upgraded.data" 2>"$WORK/alter.err"; then
    ok "ALTER EXTENSION pg_conveyor UPDATE ($(secs "$update_started" "$(now)" 2) s)"
    UPDATED=1
else
    fail "ALTER EXTENSION pg_conveyor UPDATE: $(cat "$WORK/alter.err")"
    UPDATED=0
fi
check "extversion is $NEW_VERSION" test "$(val upgraded "select extversion from pg_extension where extname = 'pg_conveyor'")" = "$NEW_VERSION"
result=$(probe "schema $NEW_VERSION, library $NEW_VERSION") || result="probe failed"
check "the worker delivers a run due on the real clock on the new schema: $result" test "${result#delivered}" != "$result"

# ---------------------------------------------------------------------------------------------
phase "6. schema: fresh $NEW_VERSION vs $OLD_VERSION upgraded"
in_extension_transaction fresh "create extension pg_conveyor" "$WORK/fresh.data" ||
    die "CREATE EXTENSION pg_conveyor ($NEW_VERSION) failed in a fresh database"
describe fresh "$OUT/fresh" "$WORK/fresh.data"
describe upgraded "$OUT/upgraded" "$WORK/upgraded.data"
SCHEMA_SAME=0
if [ "$UPDATED" != 1 ]; then
    fail "schema comparison skipped: ALTER EXTENSION UPDATE failed"
elif compare "fresh $NEW_VERSION" "$OUT/fresh" "$OLD_VERSION upgraded" "$OUT/upgraded"; then
    ok "the upgraded schema is the fresh $NEW_VERSION schema (sections in $OUT)"
    SCHEMA_SAME=1
else
    fail "the upgraded schema differs from a fresh $NEW_VERSION install (full diff: $OUT/upgraded.diff)"
fi
if [ "$UPDATED" = 1 ]; then
    misordered=$(order_differs "$OUT/fresh" "$OUT/upgraded")
    if [ -z "$misordered" ]; then
        ok "every table, view and composite type lists its columns in the fresh install's order"
    else
        fail "column order differs from the fresh install (row constructors and composite values are positional)"
        echo "$misordered"
    fi
    dropped=$(cat "$OUT/upgraded/dropped-columns")
    [ "$dropped" = 0 ] || echo "      note: the upgraded database has $dropped dropped-column placeholders (ALTER TABLE ... DROP COLUMN)"
fi

# ---------------------------------------------------------------------------------------------
phase "7. nothing lost; work in flight carries on"
if [ "$UPDATED" = 1 ]; then
    run_step upgraded 05_after_update.sql | tee "$WORK/step7.out" || fail "step 7 SQL checks (tests/upgrade/05_after_update.sql)"
else
    fail "step 7 skipped: the update failed"
fi
mismatch_lines=$(log_since "$offset" | grep -c "has schema version $OLD_VERSION, the library is $NEW_VERSION" || true)
check "the version line was still logged once only, after the update and many ticks (logged $mismatch_lines times)" \
    test "$mismatch_lines" = 1
if no_failed_step; then
    ok "no tick step failed since the restart"
else
    fail "no tick step failed since the restart: $(log_since "$offset" | grep -c "tick step .* failed") failed"
    log_since "$offset" | grep "tick step .* failed" | head -3 | cut -c1-200 | sed 's/^/      log: /'
fi
# a deadlock here is between ALTER EXTENSION UPDATE (or a step file) and a tick step of the
# worker: whichever waited first is aborted after deadlock_timeout, so next time it can be the ALTER
deadlocks=$(log_since "$offset" | grep -c "deadlock detected" || true)
if [ "$deadlocks" = 0 ]; then
    ok "no deadlock between ALTER EXTENSION UPDATE (or the check's sessions) and the worker"
else
    fail "no deadlock between ALTER EXTENSION UPDATE (or the check's sessions) and the worker: $deadlocks in the log"
    log_since "$offset" | grep -E "detected deadlock while waiting|Processes holding the lock" | head -4 |
        while read -r line; do
            rel=$(sed -n 's/.* on relation \([0-9]*\) of database.*/\1/p' <<<"$line")
            [ -z "$rel" ] || line="$line [relation $rel is $(val upgraded "select $rel::regclass" 2>/dev/null || echo '?')]"
            echo "      log: ${line:0:300}"
        done
fi
check "no crash since the restart" no_crash

# ---------------------------------------------------------------------------------------------
phase "8. self-test of the comparison"
in_extension_transaction fresh_again "create extension pg_conveyor" "$WORK/fresh_again.data" ||
    die "CREATE EXTENSION pg_conveyor ($NEW_VERSION) failed in a fresh database"
describe fresh_again "$OUT/fresh_again" "$WORK/fresh_again.data"
if compare "fresh $NEW_VERSION" "$OUT/fresh" "fresh $NEW_VERSION again" "$OUT/fresh_again" >"$WORK/self-test-a.out"; then
    ok "two fresh installs compare equal (the normalization hides no real difference and invents none)"
else
    cat "$WORK/self-test-a.out"
    fail "two fresh installs compare equal"
fi
# a broken copy of the upgrade script: the real one, then the removal of an index and of a
# table comment that the upgraded database has (so the real diff does not already name them);
# installed under the real file name only for one ALTER EXTENSION in a database of its own
script=$EXTDIR/pg_conveyor--$OLD_VERSION--$NEW_VERSION.sql
index='' table=''
for n in $(val fresh "select c.relname from pg_index i join pg_class c on c.oid = i.indexrelid
                      where c.relnamespace = 'conveyor'::regnamespace and not i.indisunique order by 1"); do
    grep -Eq -- "^[-+].*\\b$n\\b" "$OUT/upgraded.diff" || { index=$n; break; }
done
for n in $(val fresh "select c.relname from pg_class c join pg_description d on d.objoid = c.oid and d.objsubid = 0
                      where c.relnamespace = 'conveyor'::regnamespace and c.relkind = 'r' order by 1"); do
    grep -q -- "^[-+]table conveyor\.$n: " "$OUT/upgraded.diff" || { table=$n; break; }
done
if [ ! -f "$script" ]; then
    fail "the broken upgrade self-test could not run: no $script"
elif [ -z "$index" ] || [ -z "$table" ]; then
    fail "the broken upgrade self-test could not run: no index ($index) or table comment ($table) that the real diff does not already name"
else
    cp "$script" "$WORK/upgrade-script.real"
    { cat "$WORK/upgrade-script.real"
      echo
      echo "-- upgrade-check self-test: this copy is broken on purpose"
      echo "drop index conveyor.$index;"
      echo "comment on table conveyor.$table is null;"
    } >"$script.broken"
    mv -f "$script.broken" "$script"
    psql_db postgres -c "create database broken"
    broken_ok=1
    { psql_db broken -c "create extension pg_conveyor version '$OLD_VERSION'" &&
      in_extension_transaction broken "alter extension pg_conveyor update" "$WORK/broken.data"; } || broken_ok=0
    install -m 0644 "$WORK/upgrade-script.real" "$script.real" && mv -f "$script.real" "$script"
    if [ "$broken_ok" = 1 ]; then
        describe broken "$OUT/broken" "$WORK/broken.data"
        if compare "fresh $NEW_VERSION" "$OUT/fresh" "broken upgrade" "$OUT/broken" >"$WORK/self-test-b.out"; then
            fail "a broken upgrade script (index $index and the comment of table $table removed) is caught"
        else
            check "a broken upgrade script is caught: the diff names index $index (pg_dump section)" \
                grep -Eq "^-.*INDEX $index ON" "$OUT/broken.diff"
            check "a broken upgrade script is caught: the diff names the comment of table conveyor.$table (comments section)" \
                grep -Eq "^-table conveyor\.$table: " "$OUT/broken.diff"
            grep -E "^-.*(INDEX $index ON|table conveyor\.$table: )" "$OUT/broken.diff" | cut -c1-110 | sed 's/^/      /'
        fi
    else
        fail "the broken upgrade self-test could not run (ALTER EXTENSION failed)"
    fi
fi

# ---------------------------------------------------------------------------------------------
end_phase
phase_name=
echo
echo "=== summary: pg_conveyor $OLD_VERSION -> $NEW_VERSION"
rows=$(grep -m1 '^rows checked:' "$WORK/step7.out" 2>/dev/null || true)
echo "  data:    ${rows:-rows checked: (step 7 did not run)}"
printf '  schema:  %s members, %s functions, %s comments, %s privilege lines, %s columns, %s pg_dump lines compared\n' \
    "$(wc -l <"$OUT/fresh/02-members.txt")" "$(grep -c '^-- ' "$OUT/fresh/05-functions.txt" || true)" \
    "$(wc -l <"$OUT/fresh/06-comments.txt")" "$(wc -l <"$OUT/fresh/07-privileges.txt")" \
    "$(wc -l <"$OUT/fresh/03-columns.txt")" "$(wc -l <"$OUT/fresh/99-pg_dump.sql")"
[ "$SCHEMA_SAME" = 1 ] && echo "  schema:  identical to a fresh install" || echo "  schema:  DIFFERS from a fresh install: $OUT/upgraded.diff"
printf '  time:    '
for i in "${!PHASE_NAMES[@]}"; do printf 'step %s %ss, ' "${PHASE_NAMES[$i]%%.*}" "${PHASE_SECONDS[$i]}"; done
printf 'total %ss\n' "$(secs "$START" "$(now)")"
if [ ${#FAILURES[@]} -gt 0 ]; then
    echo "  FAILED (${#FAILURES[@]}):"
    printf '    - %s\n' "${FAILURES[@]}"
    exit 1
fi
echo "  all checks passed"
