#!/usr/bin/env bash
# Define the shell demo tasks and enqueue COUNT runs of each into the queue `shell`.
#   producer.sh [--count N] [--batch TAG]
# Connects with the usual PG* variables; psql is the only client. Every payload carries
# {"batch": TAG, "n": i}, so one batch's runs can be told from earlier ones.
set -euo pipefail
count=3 batch="sh-$(date +%s)"
while [ $# -gt 0 ]; do
    case $1 in
        --count) count=$2; shift 2 ;;
        --batch) batch=$2; shift 2 ;;
        *) echo "usage: producer.sh [--count N] [--batch TAG]" >&2; exit 2 ;;
    esac
done
# psql variables (:'batch') are quoted by psql itself: no value is pasted into SQL text
psql -X -q -At -v ON_ERROR_STOP=1 -v batch="$batch" -v count="$count" <<'SQL'
begin;
-- define_task is create-or-replace: running the producer again is harmless
select conveyor.define_task('shell.ok', queue => 'shell') \g /dev/null
select conveyor.define_task('shell.flaky', queue => 'shell', max_attempts => 3, delay => '1s') \g /dev/null
select conveyor.define_task('shell.wait', queue => 'shell') \g /dev/null
select conveyor.define_task('shell.slow', queue => 'shell') \g /dev/null
select format('enqueued %s x %s', count(*), t.task)
from unnest(array['shell.ok', 'shell.flaky', 'shell.wait', 'shell.slow']) as t(task),
     lateral conveyor.enqueue_many(t.task, array(
         select jsonb_build_object('batch', :'batch', 'n', n)
                || case when t.task = 'shell.slow' then '{"seconds": 2.5}'::jsonb else '{}' end
         from generate_series(1, :count) n)) as id
group by t.task;
commit;
SQL
