-- apply_config: {defaults, queues, tasks, services} validated whole; one bad entry and nothing
-- changes, with every problem listed by entry and option. define_task bumps versions.
begin;
select regress.at('2030-01-01 00:00:00+00');

select conveyor.apply_config($${
  "defaults": {"max_attempts": 3, "delay": "10s", "retention": "3d"},
  "queues": {"emails": {"concurrency": 5}, "reports": {"paused": true}},
  "tasks": {
    "emails.send": {"queue": "emails", "backoff": "exponential", "max_delay": "10m", "timeout": "1m"},
    "reports.poll": {"queue": "reports", "retry_attempts": 0},
    "digest": {"schedule": "0 8 * * *", "timezone": "Europe/Paris", "on_overlap": "skip"}
  },
  "services": {"mailer": {"replicas": 2, "restart_delay": "2s"}}
}$$);
select name, kind, queue, version, max_attempts, backoff, conveyor._duration_text(delay) as delay,
       conveyor._duration_text(max_delay) as max_delay, conveyor._duration_text(timeout) as timeout, replicas
from conveyor.task_config order by name;
select name, concurrency, paused from conveyor.queues order by name;
select conveyor._duration_text(retention) as retention, max_attempts from conveyor.defaults;
select name, next_fire_at at time zone 'UTC' as next_fire_utc from conveyor.tasks where schedule is not null;

-- one bad entry among good ones: every problem listed, nothing applied
select regress.try($$select conveyor.apply_config('{
  "defaults": {"delay": "5 minits"},
  "queues": {"emails": {"concurrency": 0}},
  "tasks": {
    "emails.send": {"queue": "emails", "max_attempts": 9},
    "bad name": {},
    "x": {"max_attemps": 3, "restart_delay": "1s", "schedule": "61 * * * *", "backoff": "fast"},
    "y": {"retry_attempts": 2, "max_attempts": 3, "delay": "10m", "max_delay": "1m", "jitter": "lots"}
  },
  "services": {"mailer": {"max_attempts": 3}},
  "workers": {}
}')$$);
select regress.try($$select conveyor.apply_config('{
  "defaults": {"delay": "5 minits"},
  "queues": {"emails": {"concurrency": 0}},
  "tasks": {
    "emails.send": {"queue": "emails", "max_attempts": 9},
    "bad name": {},
    "x": {"max_attemps": 3, "restart_delay": "1s", "schedule": "61 * * * *", "backoff": "fast"},
    "y": {"retry_attempts": 2, "max_attempts": 3, "delay": "10m", "max_delay": "1m", "jitter": "lots"}
  },
  "services": {"mailer": {"max_attempts": 3}}
}')$$);
-- check_config lists the same problems and changes nothing; a valid configuration has none
select unnest(conveyor.check_config('{
  "queues": {"emails": {"concurrency": 0}},
  "tasks": {"emails.send": {"queue": "emails", "max_attempts": 9}, "bad name": {}}
}')) as problem;
select conveyor.check_config('{"tasks": {"emails.send": {"queue": "emails", "max_attempts": 9}}}') as no_problems;
select conveyor.check_config('[]') as not_an_object;
select max_attempts from conveyor.tasks where name = 'emails.send';
select count(*) as tasks from conveyor.tasks;

-- problems that only show with the defaults: a task's delay above the default max_delay
select regress.try($$select conveyor.define_task('slowpoke', delay => '10m')$$);
select regress.try($$select conveyor.set_defaults('{"max_delay": "2s"}')$$);
select conveyor._duration_text(max_delay) as default_max_delay from conveyor.defaults;

-- versions: re-defining with the same options keeps the version, a change bumps it
select conveyor.define_task('v', max_attempts => 2);
select conveyor.define_task('v', max_attempts => 2);
select conveyor.define_task('v', max_attempts => 3);
select conveyor.define_task('v', max_attempts => 3, queue => 'elsewhere');
select regress.try($$select conveyor.define_service('v')$$);
select regress.try($$select conveyor.define_task('mailer')$$);
select regress.try($$select conveyor.apply_config('[]')$$);
select regress.try($$select conveyor.set_queue('q', concurrency => -1)$$);
rollback;
