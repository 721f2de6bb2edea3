-- The state machine is data (sql/schema/state_machine.sql), and everything else follows it:
-- the generated status-set and outcome helpers, and the status lists that the schema itself
-- has to spell out (the CHECK constraint and partial index predicates, fixed at 0.1.0).
begin;

-- each helper answers what its rows say, for every status and outcome
select s.status,
       conveyor._finished(s.status) = s.finished as finished_ok,
       conveyor._live(s.status) = not s.finished as live_ok,
       conveyor._waiting(s.status) = s.waiting as waiting_ok,
       conveyor._delivered(s.status) = s.delivered::int as delivered_ok
from conveyor.run_statuses s
order by s.status;
select count(*) as statuses_without_a_row
from unnest(enum_range(null::conveyor.run_status)) e(status)
where not exists (select from conveyor.run_statuses s where s.status = e.status);
select o.outcome, o.failure, conveyor._is_failure(o.outcome) = o.failure as failure_ok,
       conveyor._outcome_status(o.outcome) is not distinct from o.leads_to as leads_to_ok
from conveyor.attempt_outcomes o
order by o.outcome;
select conveyor._delivered(null) as delivered_of_a_new_run;

-- the sets agree with the transitions: a finished run only moves again by retry_run; a
-- waiting run is delivered by tick; a live run can be cancelled
select s.status,
       coalesce(string_agg(distinct t.event::text, ',') filter (where t.from_status = s.status), '-') as leaves_by
from conveyor.run_statuses s
left join conveyor.transitions t on t.from_status = s.status
where s.finished or s.waiting
group by s.status
order by s.status;
select s.status, conveyor._allowed(s.status, 'cancelled') as cancellable
from conveyor.run_statuses s
order by s.status;

-- the schema's own status lists are the sets: each literal list in the CHECK constraint and
-- the partial indexes of conveyor.runs, compared with the status set of the same name
with lists as (
    select c.conname as name, pg_get_constraintdef(c.oid) as def
    from pg_constraint c where c.conrelid = 'conveyor.runs'::regclass and c.contype = 'c'
    union all
    select i.indexrelid::regclass::text, pg_get_expr(i.indpred, i.indrelid)
    from pg_index i where i.indrelid = 'conveyor.runs'::regclass and i.indpred is not null
),
used as (
    select l.name, m[1] as op,
           array(select x::conveyor.run_status from regexp_matches(m[2], '''(\w+)''', 'g') r(a), unnest(r.a) x
                 order by 1) as statuses
    from lists l, regexp_matches(l.def, 'status (= ANY|<> ALL) \(ARRAY\[([^]]*)\]', 'g') m
)
select u.name, u.op,
       case u.statuses
           when array(select s.status from conveyor.run_statuses s where s.finished order by 1) then 'finished'
           when array(select s.status from conveyor.run_statuses s where s.waiting order by 1) then 'waiting'
           when array(select s.status from conveyor.run_statuses s where s.delivered order by 1) then 'delivered'
           else 'UNNAMED SET ' || u.statuses::text
       end as set
from used u
order by u.name;
rollback;
