#!/usr/bin/env bash
# Enqueue in the same transaction as the application's own write.
#   app.sh [--batch TAG]
# An order row goes into shell_orders and a run of shell.ok is enqueued for it in ONE
# transaction: commit, and both exist; roll back, and neither does. Exits 1 if that does not
# hold. Run producer.sh first (it defines the task).
set -euo pipefail
batch="sh-$(date +%s)"
[ "${1:-}" = --batch ] && batch=$2
psql -X -q -At -v ON_ERROR_STOP=1 -v ref="$batch-commit" -v gone="$batch-rollback" -v batch="$batch" <<'SQL'
create table if not exists shell_orders (
    id bigserial primary key, ref text not null unique, item text not null,
    created_at timestamptz not null default now());

begin;
insert into shell_orders (ref, item) values (:'ref', 'book');
select conveyor.enqueue('shell.ok', jsonb_build_object('batch', :'batch', 'order_ref', :'ref')) \g /dev/null
commit;

begin;
insert into shell_orders (ref, item) values (:'gone', 'book');
select conveyor.enqueue('shell.ok', jsonb_build_object('batch', :'batch', 'order_ref', :'gone')) \g /dev/null
rollback;  -- e.g. payment declined: the order and its run vanish together

select format('order %s: %s order row(s), %s run(s)', ref,
              (select count(*) from shell_orders o where o.ref = x.ref),
              (select count(*) from conveyor.runs r where r.task = 'shell.ok' and r.payload->>'order_ref' = x.ref))
from (values (:'ref'), (:'gone')) as x(ref);
select case when (select count(*) from shell_orders where ref = :'ref') = 1
             and (select count(*) from conveyor.runs where payload->>'order_ref' = :'ref') = 1
             and (select count(*) from shell_orders where ref = :'gone') = 0
             and (select count(*) from conveyor.runs where payload->>'order_ref' = :'gone') = 0
            then 'transactional enqueue held' end as verdict \gset
\if :{?verdict}
\echo :verdict
\else
\echo 'transactional enqueue did NOT hold'
\quit 1
\endif
SQL
