-- Every SQLSTATE is defined once: conveyor.error_codes lists them, one raise helper in
-- sql/functions/errors.sql raises each, and no other function writes an errcode of its own.
begin;
select sqlstate, name from conveyor.error_codes order by sqlstate;

-- the functions that set an errcode, and the codes they set
select p.proname, string_agg(distinct m[1], ',') as codes
from pg_proc p, regexp_matches(p.prosrc, 'errcode\s*=\s*''(\w+)''', 'g') m
where p.pronamespace = 'conveyor'::regnamespace
group by p.proname
order by p.proname;
-- codes set but not documented, and documented CV codes that nothing raises (but the router's,
-- raised by pg_conveyor_router: tests/router.sh)
select m[1] as undocumented
from pg_proc p, regexp_matches(p.prosrc, 'errcode\s*=\s*''(\w+)''', 'g') m
where p.pronamespace = 'conveyor'::regnamespace
except select sqlstate from conveyor.error_codes;
select e.sqlstate as never_raised
from conveyor.error_codes e
where e.sqlstate like 'CV%' and e.meaning not like 'pg_conveyor_router:%'
  and not exists (select from pg_proc p where p.pronamespace = 'conveyor'::regnamespace
                  and p.prosrc ~ ('errcode\s*=\s*''' || e.sqlstate || ''''));

-- the helpers raise what they say (and callers get the documented code)
select regress.try($$select conveyor._raise_unknown_run('01ARZ3NDEKTSV4RRFFQ69G5FAV')$$);
select regress.try($$select conveyor._raise_unknown_task('nope')$$);
select regress.try($$select conveyor._raise_unknown_task('nope', 'service')$$);
select regress.try($$select conveyor._raise_unknown_queue('nope')$$);
select regress.try($$select conveyor._raise_invalid('bad thing')$$);
select regress.try($$select conveyor._raise_config(array['one', 'two'])$$);
select regress.try($$select conveyor.enqueue('nope')$$);
select regress.try($$select conveyor.pause_queue('nope')$$);
rollback;
