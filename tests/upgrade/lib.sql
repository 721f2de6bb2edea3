-- lib.sql: helpers that every step file of the upgrade check includes first (\ir lib.sql).
--
-- Everything here is temporary (pg_temp, this session only), so nothing the check itself needs
-- ends up in the database whose schema step 6 compares with a fresh install.
-- psql variables every file gets from scripts/upgrade-check.sh:
--   t0     the base of the scripted clock (conveyor.test_clock = t0 + offset, see pg_temp.at)
--   work   a directory the server (user postgres) reads and writes: facts and the snapshot
\set ON_ERROR_STOP 1
\pset format unaligned
\pset tuples_only on
\pset footer off
set client_min_messages = warning;
select set_config('upgrade_check.t0', :'t0', false) \g /dev/null
select set_config('upgrade_check.facts_file', :'work' || '/facts.tsv', false) \g /dev/null
select set_config('upgrade_check.snapshot_file', :'work' || '/snapshot.tsv', false) \g /dev/null

create temp table checks (n serial, label text not null, ok boolean not null, detail text);

-- check: record one assertion and return the line to print: "ok    label" or "FAIL  label: detail".
create function pg_temp.check(label text, ok boolean, detail text default null)
returns text
language plpgsql
as $$
begin
    insert into pg_temp.checks (label, ok, detail) values (label, coalesce(ok, false), detail);
    return case when coalesce(ok, false) then 'ok    ' else 'FAIL  ' end || label
           || case when detail is not null and detail <> '' then ' (' || detail || ')' else '' end;
end
$$;

-- finish: end a step file; raises (psql exits non-zero) when any of its checks failed.
create function pg_temp.finish(step text)
returns text
language plpgsql
as $$
declare
    v_failed integer;
    v_total integer;
begin
    select count(*) filter (where not ok), count(*) into v_failed, v_total from pg_temp.checks;
    if v_failed > 0 then
        raise exception '%: % of % checks failed: %', step, v_failed, v_total,
            (select string_agg(label, '; ' order by n) from pg_temp.checks where not ok);
    end if;
    return format('%s: all %s checks passed', step, v_total);
end
$$;

-- at: move this session's clock to t0 + offset; every conveyor comparison with the current time
-- goes through conveyor._now(), which returns conveyor.test_clock (a superuser-only setting).
-- The background worker keeps the real time, which is far before t0: it never sees a lease
-- expire or a run come due in this data set unless the check moves its clock too (step 7).
create function pg_temp.at(offset_ interval)
returns timestamptz
language sql
as $$
    select set_config('conveyor.test_clock',
                      (current_setting('upgrade_check.t0')::timestamptz + offset_)::text, false)::timestamptz
$$;

-- t: the time t0 + offset, without moving the clock.
create function pg_temp.t(offset_ interval)
returns timestamptz
language sql
stable
as $$ select current_setting('upgrade_check.t0')::timestamptz + offset_ $$;

-- facts: ids and lease tokens that later steps need, kept in a file between sessions.
create temp table facts (key text primary key, value text not null);

create function pg_temp.remember(key text, value text)
returns text
language sql
as $$
    insert into pg_temp.facts values (key, value) on conflict (key) do update set value = excluded.value returning value
$$;

create function pg_temp.fact(key text)
returns text
language plpgsql
stable
as $$
declare
    v text;
begin
    select f.value into v from pg_temp.facts f where f.key = fact.key;
    if v is null then
        raise exception 'upgrade check: no fact "%" (was step 3 run?)', key;
    end if;
    return v;
end
$$;

create function pg_temp.save_facts()
returns void
language plpgsql
as $$
begin
    execute format('copy pg_temp.facts to %L', current_setting('upgrade_check.facts_file'));
end
$$;

create function pg_temp.load_facts()
returns void
language plpgsql
as $$
begin
    truncate pg_temp.facts;
    execute format('copy pg_temp.facts from %L', current_setting('upgrade_check.facts_file'));
end
$$;

-- claim: claim one run of a queue as worker "upgrade-check" and insist it is the expected one
-- (each case below claims while its run is the only one queued there).
create function pg_temp.claim(p_queue text, p_expected conveyor.ulid, p_lease text default '1h', p_tasks text[] default null)
returns conveyor.claimed_run
language plpgsql
as $$
declare
    c conveyor.claimed_run;
begin
    select * into c
    from conveyor.claim_run(queues => p_queue, worker => 'upgrade-check', lease => p_lease::conveyor.duration, tasks => p_tasks);
    if c.run_id is null then
        raise exception 'upgrade check: claim_run(%) returned nothing, expected run %', p_queue, p_expected;
    end if;
    if p_expected is not null and c.run_id <> p_expected then
        raise exception 'upgrade check: claim_run(%) returned run %, expected run %', p_queue, c.run_id, p_expected;
    end if;
    return c;
end
$$;

-- expect: a function's result must be what the case needs, or the file stops here.
create function pg_temp.expect(what text, got anyelement, want anyelement)
returns void
language plpgsql
as $$
begin
    if got is distinct from want then
        raise exception 'upgrade check: % returned %, expected %', what, got, want;
    end if;
end
$$;
