-- Step 3 (end): save every row of runs, attempts, events, attempt_logs, outbox, tasks, queues
-- and _defaults as jsonb in a file (not in the database: its schema is what step 6 compares).
-- check_snapshot.sql proves after the library change (step 4) and after the upgrade (step 7)
-- that each of them is still there with the same values.
\ir lib.sql
\ir rows.sql
do $$
begin
    execute format('copy (select tbl, key, data from pg_temp.current_rows order by tbl, key) to %L',
                   current_setting('upgrade_check.snapshot_file'));
end
$$;
select format('snapshot: %s rows (%s)', sum(n), string_agg(format('%s %s', tbl, n), ', ' order by tbl))
from (select tbl, count(*) n from pg_temp.current_rows group by tbl) x;
