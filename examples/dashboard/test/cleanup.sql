-- cleanup.sql: remove what scenario.sql (-v sfx=...) made, so repeated test runs leave no
-- trace on the dashboard. There is no API to drop a queue or a task, so this deletes rows
-- directly: it needs the tables' owner (a superuser), and test.sh only runs it as one.
\set ON_ERROR_STOP 1
\set emails 'dash_emails_' :sfx
\set reports 'dash_reports_' :sfx
begin;
delete from conveyor.attempt_logs where run_id in (select id from conveyor.runs where queue in (:'emails', :'reports'));
delete from conveyor.events where run_id in (select id from conveyor.runs where queue in (:'emails', :'reports'));
delete from conveyor.attempts where queue in (:'emails', :'reports');
delete from conveyor.runs where queue in (:'emails', :'reports');
delete from conveyor.tasks where queue in (:'emails', :'reports');
delete from conveyor.queues where name in (:'emails', :'reports');
commit;
