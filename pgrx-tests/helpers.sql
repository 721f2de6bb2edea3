-- Helpers for the SQL scenarios, installed once into the scenario database by `make test`.
-- Scenarios print no ids or clock readings: ids are masked and time is set with regress.at().
create schema regress;

-- mask: a message with ULIDs, UUIDs and timestamps replaced by placeholders.
create function regress.mask(t text) returns text
language sql immutable as $$
    select regexp_replace(regexp_replace(regexp_replace(t,
        '[0-7][0-9A-HJKMNP-TV-Z]{25}', '<ulid>', 'g'),
        '[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}', '<uuid>', 'g'),
        '\d{4}-\d\d-\d\d[ T]\d\d:\d\d:\d\d(\.\d+)?(\+00(:00)?|Z)?', '<time>', 'g')
$$;

-- try: run a statement; 'ok', or "SQLSTATE: message" (masked). A failed statement is undone.
create function regress.try(sql text) returns text
language plpgsql as $$
begin
    execute sql;
    return 'ok';
exception when others then
    return sqlstate || ': ' || regress.mask(sqlerrm);
end
$$;

-- at: set the test clock (for the rest of the transaction).
create function regress.at(ts text) returns void
language sql as $$ select set_config('conveyor.test_clock', ts, true) $$;

-- counts: a run's status and counters as one line.
create function regress.counts(run conveyor.ulid) returns text
language sql stable as $$
    select format('%s attempts=%s failures=%s retries=%s releases=%s', r.status, r.attempts, r.failures, r.retries, r.releases)
    from conveyor.runs r where r.id = run
$$;

-- events: a run's event types in order, comma-separated.
create function regress.events(run conveyor.ulid) returns text
language sql stable as $$
    select string_agg(e.type::text, ', ' order by e.id) from conveyor.events e where e.run_id = run
$$;

-- attempts: a run's attempts as "n:outcome[:code]", in order.
create function regress.attempts(run conveyor.ulid) returns text
language sql stable as $$
    select string_agg(a.attempt || ':' || a.outcome || coalesce(':' || (a.error ->> 'code'), ''), ', ' order by a.attempt)
    from conveyor.attempts a where a.run_id = run
$$;
