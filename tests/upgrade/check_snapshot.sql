-- check_snapshot.sql: every row saved by 02_snapshot.sql is still there with the same values
-- (each saved column compared by jsonb equality: a new column is fine, a changed value is not;
-- stricter than `to_jsonb(row) @> saved`, which lets arrays match as subsets), and the counters
-- dashboards rely on did not move. Included after lib.sql by step 4 (new library, old schema)
-- and step 7 (after ALTER EXTENSION UPDATE).
create temp table saved (tbl text, key text, data jsonb);
do $$
begin
    execute format('copy pg_temp.saved from %L', current_setting('upgrade_check.snapshot_file'));
end
$$;
\ir rows.sql
-- one row per saved column whose value is not what it was, or per saved row that is gone
create temp table changed as
select s.tbl, s.key, k.key as col, k.value as was, c.data -> k.key as now, c.key is null as row_missing
from pg_temp.saved s
cross join lateral jsonb_each(s.data) k
left join pg_temp.current_rows c on c.tbl = s.tbl and c.key = s.key
where c.key is null or c.data -> k.key is distinct from k.value;

select pg_temp.check(format('%s: %s saved rows still there with the same values', t.tbl, t.saved),
    not exists (select from pg_temp.changed c where c.tbl = t.tbl),
    (select format('%s rows gone, %s changed; e.g. %s',
                   count(distinct c.key) filter (where c.row_missing),
                   count(distinct c.key) filter (where not c.row_missing),
                   (select string_agg(case when x.row_missing then format('%s gone', x.key)
                                           else format('%s.%s was %s, now %s', x.key, x.col, x.was,
                                                       coalesce(x.now::text, '(no such column)')) end, '; ')
                    from (select * from pg_temp.changed c2 where c2.tbl = t.tbl
                          order by c2.key, c2.col limit 5) x))
     from pg_temp.changed c where c.tbl = t.tbl having count(*) > 0))
from (select tbl, count(*) as saved from pg_temp.saved group by tbl) t
order by t.tbl;

-- the counters, named: cumulative run counters, bounded-queue and capped-task slots
select pg_temp.check(format('counter %s.%s unchanged on every saved row', k.tbl, k.col),
    not exists (select from pg_temp.changed c where c.tbl = k.tbl and c.col = k.col),
    (select string_agg(format('%s: %s -> %s', c.key, c.was, coalesce(c.now::text, 'gone')), '; ')
     from pg_temp.changed c where c.tbl = k.tbl and c.col = k.col))
from (values ('runs', 'attempts'), ('runs', 'failures'), ('runs', 'retries'), ('runs', 'releases'),
             ('queues', 'delivered'), ('tasks', 'active')) as k(tbl, col);

select format('rows checked: %s (%s)', sum(n), string_agg(format('%s %s', tbl, n), ', ' order by tbl))
from (select tbl, count(*) n from pg_temp.saved group by tbl) x;
