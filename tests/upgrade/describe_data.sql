-- describe_data.sql: the "data" section of describe.sql, run in the transaction of CREATE
-- EXTENSION (fresh install) or ALTER EXTENSION UPDATE (upgrade) so that it shows exactly the
-- rows the extension scripts wrote, and not what the background worker writes at run time
-- into member tables that are not config tables (e.g. per-step tick statistics).
\set ON_ERROR_STOP 1
\pset format unaligned
\pset tuples_only on
\pset footer off
\echo @@ data
-- rows the extension scripts own (e.g. the allowed transitions): all rows of member tables
-- that are not config tables (pg_extension_config_dump), and the rows a config table's
-- condition leaves to the extension. Config tables without a condition hold only user data
-- and are skipped.
select format($q$select %L || ': ' || r from (select to_jsonb(t)::text as r from %s t %s) x order by r$q$,
              c.oid::regclass, c.oid::regclass,
              case when cfg.cond is not null then format('except select to_jsonb(t)::text from %s t %s', c.oid::regclass, cfg.cond) end)
from pg_depend d
join pg_extension e on d.refclassid = 'pg_extension'::regclass and d.refobjid = e.oid
join pg_class c on d.classid = 'pg_class'::regclass and c.oid = d.objid and c.relkind in ('r', 'p')
left join lateral (
    select x.cond from unnest(e.extconfig, e.extcondition) as x(rel, cond) where x.rel = c.oid
) cfg on true
where e.extname = 'pg_conveyor' and d.deptype = 'e'
  and (cfg.cond is null or cfg.cond <> '')
order by c.oid::regclass::text
\gexec
