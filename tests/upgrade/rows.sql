-- rows.sql: the view of the rows an upgrade must keep, one line per row: (table, key, row as
-- jsonb). Included by 02_snapshot.sql (saved before the upgrade) and check_snapshot.sql
-- (compared after). The key identifies a row across versions; the row is compared column by
-- column, so columns a new version adds are not a change, and a changed or missing value is.
create temp view current_rows as
select 'runs' as tbl, r.id::text as key, to_jsonb(r) as data from conveyor.runs r
union all select 'attempts', a.run_id::text || '/' || a.attempt, to_jsonb(a) from conveyor.attempts a
union all select 'events', e.id::text, to_jsonb(e) from conveyor.events e
union all select 'attempt_logs', l.id::text, to_jsonb(l) from conveyor.attempt_logs l
union all select 'outbox', o.id::text, to_jsonb(o) from conveyor.outbox o
union all select 'tasks', t.name, to_jsonb(t) from conveyor.tasks t
union all select 'queues', q.name, to_jsonb(q) from conveyor.queues q
union all select '_defaults', d.singleton::text, to_jsonb(d) from conveyor._defaults d;
