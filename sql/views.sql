-- views.sql: what dashboards read.

-- run_history: a run's attempts and events in time order, one row each (its timeline).
create view conveyor.run_history as
select e.run_id, e.at, 'event' as kind, e.type::text as what, e.attempt, e.data as detail
from conveyor.events e
union all
select a.run_id, a.finished_at, 'attempt', a.outcome::text, a.attempt,
       jsonb_strip_nulls(jsonb_build_object('attempt_id', a.id::text, 'worker', a.worker,
                                            'started_at', a.started_at, 'error', a.error, 'reason', a.reason,
                                            'delay', conveyor._duration_text(a.delay)))
from conveyor.attempts a;
comment on view conveyor.run_history is 'each run''s events and ended attempts (filter by run_id, order by at)';
