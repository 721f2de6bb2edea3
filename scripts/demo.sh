#!/usr/bin/env bash
# make demo: build and install pg_conveyor, start a local cluster (data in .demo/, port 54340),
# configure a realistic set of tasks, run example workers until the work is done, and print the
# runs and the dashboard views. Safe to run again; `make demo-stop` stops the cluster.
set -euo pipefail
cd "$(dirname "$0")/.."

PORT=${CONVEYOR_DEMO_PORT:-54340}
DIR=$PWD/.demo
PGBIN=$(/usr/bin/pg_config --bindir)

scripts/setup.sh

# the postgres user must reach the data directory; fall back to /tmp if this checkout is private
if [ "$(id -u)" = 0 ] && ! sudo -u postgres test -x "$PWD"; then
    DIR=/tmp/pgc-demo
    echo "demo: $PWD is not readable by the postgres user; using $DIR for the cluster"
fi

echo "demo: building and installing the extension"
scripts/cluster.sh stop "$DIR"
scripts/install-ext.sh
scripts/cluster.sh start "$DIR" "$PORT" "conveyor.database = 'conveyor_demo'" "conveyor.tick_interval = '250ms'"

export PGHOST=$DIR PGPORT=$PORT PGUSER=postgres
psql() { "$PGBIN/psql" -X -q -v ON_ERROR_STOP=1 -P pager=off "$@"; }
psql -d postgres -c "drop database if exists conveyor_demo with (force)" -c "create database conveyor_demo"
export PGDATABASE=conveyor_demo
psql -c "create extension pg_conveyor"

echo "demo: configuring tasks, queues, a cron task and a service"
psql <<'SQL'
select conveyor.apply_config('{
  "defaults": {"lease": "30s"},
  "queues": {
    "emails": {"concurrency": 3},
    "reports": {},
    "ops": {}
  },
  "tasks": {
    "emails.send": {"queue": "emails", "max_attempts": 4, "backoff": "exponential", "delay": "1s", "max_delay": "10s", "jitter": "equal"},
    "reports.poll": {"queue": "reports", "max_attempts": 2},
    "digest.minutely": {"queue": "ops", "schedule": "* * * * *"}
  },
  "services": {
    "upstream.listener": {"queue": "ops", "replicas": 1, "restart_delay": "1s"}
  }
}');

-- an app enqueues in the same transaction as its own write; a rolled-back one leaves no run
create table if not exists signups (email text primary key);
begin;
insert into signups values ('ann@example.com');
select conveyor.enqueue('emails.send', jsonb_build_object('n', 1, 'to', 'ann@example.com')) is not null as enqueued_with_the_signup;
commit;
begin;
insert into signups values ('bob@example.com');
select conveyor.enqueue('emails.send', jsonb_build_object('n', 99, 'to', 'bob@example.com')) is not null as enqueued;
rollback;

select count(*) as emails from conveyor.enqueue_many('emails.send',
    array(select jsonb_build_object('n', n, 'to', 'user' || n || '@example.com') from generate_series(2, 12) n));
select conveyor.enqueue('emails.send', '{"n": 13, "to": "nobody@invalid.example"}') is not null as bouncing;
select count(conveyor.enqueue('reports.poll', jsonb_build_object('report', n))) as report_polls from generate_series(1, 3) n;
SQL

HANDLERS=examples/demo/handlers
echo "demo: the Python worker's virtual environment (examples/python/venv.sh: the pg_conveyor package)"
examples/python/venv.sh
pids=()
: >"$DIR/workers.log"
CONVEYOR_POLL_SECONDS=1 examples/shell/worker.sh emails "$HANDLERS" 2>>"$DIR/workers.log" & pids+=($!)
# a worker on the Python package (clients/python) beside the shell ones, same queues
examples/python/.venv/bin/python examples/demo/worker.py emails,reports >>"$DIR/workers.log" 2>&1 & pids+=($!)
CONVEYOR_POLL_SECONDS=1 CONVEYOR_GRACE=1 examples/shell/worker.sh ops "$HANDLERS" 2>>"$DIR/workers.log" & pids+=($!)
stop_workers() { kill -TERM "${pids[@]}" 2>/dev/null || true; wait "${pids[@]}" 2>/dev/null || true; }
trap stop_workers EXIT

echo "demo: 2 shell workers and a Python one running (log: $DIR/workers.log); waiting for the emails, the reports and one cron firing"
for i in $(seq 180); do
    left=$(psql -At -c "select count(*) from conveyor.runs where task in ('emails.send', 'reports.poll')
                        and status not in ('succeeded', 'failed', 'cancelled')")
    cron=$(psql -At -c "select count(*) from conveyor.runs where task = 'digest.minutely' and status = 'succeeded'")
    [ "$left" = 0 ] && [ "$cron" -ge 1 ] && break
    for pid in "${pids[@]}"; do
        kill -0 "$pid" 2>/dev/null || { echo "demo: a worker exited early; see $DIR/workers.log" >&2; exit 1; }
    done
    [ $((i % 10)) = 1 ] && echo "  $left email/report runs to go; cron runs done: $cron (the cron task fires on the minute)"
    sleep 0.5
done
[ "$left" = 0 ] && [ "$cron" -ge 1 ] || { echo "demo: the work did not finish in 90s; see $DIR/workers.log" >&2; exit 1; }
stop_workers
trap - EXIT

psql <<'SQL'
\echo
\echo === runs by task and status (attempts, retries = failure pressure, releases = waiting)
select task, status, count(*) as runs, sum(attempts) as attempts, sum(retries) as retries, sum(releases) as releases
from conveyor.runs group by task, status order by task, status;
\echo === attempts by kind of worker (the shell workers and the one on the Python package)
select split_part(worker, ':', 1) as worker, task, count(*) as attempts
from conveyor.attempts group by 1, 2 order by 1, 2;
\echo === conveyor.queue_stats
select queue, concurrency, queued, running, succeeded, failed, lag_seconds, delivery_lag_seconds as delivery_lag,
       succeeded_5m, failures_5m, retries_5m, releases_5m
from conveyor.queue_stats order by queue;
\echo === conveyor.task_stats
select task, kind, scheduled + queued as waiting, running, retrying, released, succeeded, failed,
       retries, releases, attempts_1h, failures_1h, mean_seconds_1h
from conveyor.task_stats order by task;
\echo === conveyor.recent_failures (newest 8)
select to_char(finished_at, 'HH24:MI:SS') as at, task, attempt, outcome, code, left(message, 50) as message, run_status
from conveyor.recent_failures limit 8;
\echo === the timeline of an email that was retried (conveyor.run_history)
select to_char(at, 'HH24:MI:SS.MS') as at, kind, what, attempt, detail
from conveyor.run_history
where run_id = (select id from conveyor.runs where task = 'emails.send' and retries > 1 order by id limit 1)
order by at, kind desc;
SQL
echo "demo: the cluster is still running: PGHOST=$DIR PGPORT=$PORT psql -U postgres conveyor_demo"
echo "demo: stop it with: make demo-stop"
