-- Each option is defined once (src/config.rs, shown by conveyor.options): the kinds that accept
-- it, its value, its built-in default. The defaults view and the tables agree with it, and a
-- bad value is the same error whichever way it is given.
begin;
select name, kinds, "default" from conveyor.options order by name;

-- every built-in default of a defaults option is what conveyor.defaults shows when nothing is
-- set: the registry's text, normalized by the validator, against the view's value
with registry as (
    select o.name, conveyor._check_options('defaults', '',
               jsonb_build_object(o.name, case when o.type like 'integer%' then to_jsonb(o."default"::bigint)
                                               else to_jsonb(o."default") end)) -> 'options' -> o.name as normalized
    from conveyor.options o
    where 'defaults' = any(o.kinds) and o."default" is not null
),
shown as (
    select e.key as name, e.value from conveyor.defaults d, jsonb_each(to_jsonb(d)) e
)
select r.name,
       case when jsonb_typeof(r.normalized) = 'string' and r.normalized #>> '{}' ~ '^P'
            then (r.normalized #>> '{}')::interval = (s.value #>> '{}')::interval
            else r.normalized = s.value end as matches
from registry r
left join shown s on s.name = r.name
order by r.name;

-- every option that is stored has a column (a rate, N/period, has two: <name>_n and
-- <name>_period); every option column is an option
select 'defaults' as tbl, o.name as option_without_column from conveyor.options o
where 'defaults' = any(o.kinds) and o.name not in ('retry_attempts', 'delays')
  and not exists (select from information_schema.columns c
                  where c.table_schema = 'conveyor' and c.table_name = '_defaults' and c.column_name = o.name)
union all
select 'tasks', o.name from conveyor.options o
where (o.kinds && array['task', 'service']) and o.name not in ('retry_attempts', 'delays', 'queue')
  and not exists (select from information_schema.columns c
                  where c.table_schema = 'conveyor' and c.table_name = 'tasks'
                    and c.column_name in (o.name, o.name || '_n'))
union all
select 'queues', o.name from conveyor.options o
where 'queue' = any(o.kinds)
  and not exists (select from information_schema.columns c
                  where c.table_schema = 'conveyor' and c.table_name = 'queues'
                    and c.column_name in (o.name, o.name || '_n'));
select c.column_name as column_without_option
from information_schema.columns c
where c.table_schema = 'conveyor' and c.table_name = '_defaults'
  and c.column_name not in ('singleton', 'updated_at', 'backoff_custom')
  and not exists (select from conveyor.options o where o.name = c.column_name and 'defaults' = any(o.kinds));

-- a bad duration is CV010 whether it comes as a named argument or in options
select regress.try($$select conveyor.define_task('t', delay => 'soon')$$);
select regress.try($$select conveyor.define_task('t', options => '{"delay": "soon"}')$$);
select regress.try($$select conveyor.define_service('s', restart_delay => 'soon')$$);
select regress.try($$select conveyor.set_defaults('{"delay": "soon"}')$$);
-- and a good one is the same option either way
select conveyor.define_task('t', delay => '10s') as version;
select delay from conveyor.task_config where name = 't';
select conveyor.define_task('t', options => '{"delay": "10s"}') as unchanged_version;
rollback;
