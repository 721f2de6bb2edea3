//! A corpus of bad calls, each refused with a clear message and a documented SQLSTATE, and
//! nothing written: the tables' fingerprint is the same before and after every call.

use crate::common::{drop_db, fresh_db};

/// (call, expected SQLSTATE, a fragment the message must contain)
#[rustfmt::skip] // a table: one row per call, however wide
const CORPUS: &[(&str, &str, &str)] = &[
    ("select conveyor.enqueue('no.such.task')", "CV003", "unknown task \"no.such.task\""),
    ("select conveyor.enqueue('t', '[1, 2]')", "22023", "payload must be a JSON object, got array"),
    ("select conveyor.enqueue('t', 'null'::jsonb)", "22023", "payload must be a JSON object, got null"),
    ("select conveyor.enqueue('t', '\"text\"')", "22023", "got string"),
    ("select conveyor.enqueue('t', null)", "22023", "payload must be a JSON object"),
    ("select conveyor.enqueue('t', delay => '5 minits')", "22023", "invalid duration \"5 minits\""),
    ("select conveyor.enqueue('t', delay => '-1s')", "22023", "must not be negative"),
    ("select conveyor.enqueue('t', delay => '1000 years')", "22023", "longer than 100 years"),
    ("select conveyor.enqueue('t', delay => '')", "22023", "invalid duration \"\""),
    ("select conveyor.enqueue('t', delay => '30')", "22023", "invalid duration \"30\""),
    ("select conveyor.enqueue('t', delay => '1s', run_at => now())", "22023", "give run_at or delay, not both"),
    ("select conveyor.enqueue('t', priority => 10)", "22023", "invalid priority 10"),
    ("select conveyor.enqueue('t', priority => -1)", "22023", "invalid priority -1"),
    ("select conveyor.enqueue('t', priority => 2147483647)", "22023", "invalid priority 2147483647"),
    ("select conveyor.enqueue('t', queue => 'bad queue; drop table conveyor.runs')", "22023", "invalid queue name"),
    ("select conveyor.enqueue('t', queue => 'q''--')", "22023", "invalid queue name \"q'--\""),
    ("select conveyor.enqueue('t', queue => repeat('q', 100))", "22023", "invalid queue name"),
    ("select conveyor.enqueue('t', parent_run_id => '01ARZ3NDEKTSV4RRFFQ69G5FAV')", "CV002", "unknown parent run"),
    ("select conveyor.enqueue('t', parent_run_id => 'not-a-ulid')", "22P02", "invalid ulid \"not-a-ulid\""),
    ("select conveyor.enqueue('svc')", "22023", "is a service"),
    ("select conveyor.enqueue_many('t', array['{}', '{}', '7']::jsonb[])", "22023", "(payload 3 of 3)"),
    ("select conveyor.enqueue_many('t', array['{}']::jsonb[], idempotency_keys => array['a', 'b'])", "22023", "2 idempotency keys for 1 payloads"),
    ("select conveyor.define_task('x''; drop table conveyor.runs; --')", "CV010", "invalid task name"),
    ("select conveyor.define_task('')", "CV010", "invalid task name \"\""),
    ("select conveyor.define_task('t2', delay => '5 minits')", "CV010", "option \"delay\": invalid duration \"5 minits\""),
    ("select conveyor.define_task('t2', options => '{\"delay\": \"5 minits\"}')", "CV010", "option \"delay\": invalid duration"),
    ("select conveyor.define_task('t2', schedule => '61 * * * *')", "CV010", "invalid schedule \"61 * * * *\""),
    ("select conveyor.define_task('t2', schedule => '* * *')", "CV010", "expected 5 fields, found 3"),
    ("select conveyor.define_task('t2', schedule => '* * * * *', timezone => 'Mars/Olympus')", "CV010", "unknown time zone \"Mars/Olympus\""),
    ("select conveyor.define_task('t2', delay => '10m', max_delay => '1m')", "CV010", "must be at least delay (1m < 10m)"),
    ("select conveyor.define_task('t2', delay => '10m')", "CV010", "must be at least delay (5m < 10m)"),
    ("select conveyor.define_task('t2', max_attempts => 0)", "CV010", "expected an integer from 1 to 1000, got 0"),
    ("select conveyor.define_task('t2', max_attempts => 2, retry_attempts => 1)", "CV010", "not both"),
    ("select conveyor.define_task('t2', backoff => 'fast')", "CV010", "got \"fast\""),
    ("select conveyor.define_task('t2', backoff => '30s, soon')", "CV010", "invalid duration \"soon\""),
    ("select conveyor.define_task('t2', jitter => 'lots')", "CV010", "expected one of none, full, equal"),
    ("select conveyor.define_task('t2', priority => 12)", "CV010", "expected an integer from 0 to 9, got 12"),
    ("select conveyor.define_task('t2', options => '{\"max_attemps\": 3}')", "CV010", "option \"max_attemps\": unknown option"),
    ("select conveyor.define_task('t2', options => '{\"restart_delay\": \"1s\"}')", "CV010", "restart options are for services"),
    ("select conveyor.define_task('t2', options => '{\"timeout\": \"0s\"}')", "CV010", "must be greater than 0s"),
    ("select conveyor.define_task('t2', options => '{\"log_max_size\": \"huge\"}')", "CV010", "expected a size in bytes"),
    ("select conveyor.define_task('svc')", "CV010", "already defined as a service"),
    ("select conveyor.define_service('svc2', options => '{\"max_attempts\": 3}')", "CV010", "services restart instead of retrying"),
    ("select conveyor.define_service('svc2', replicas => 0)", "CV010", "expected an integer from 1 to 1000, got 0"),
    ("select conveyor.apply_config('[]')", "CV010", "expected an object with sections"),
    ("select conveyor.apply_config('{\"tasks\": {\"ok\": {}, \"bad\": {\"delay\": \"x\"}}}')", "CV010", "task \"bad\": option \"delay\""),
    ("select conveyor.apply_config('{\"workers\": {}}')", "CV010", "unknown section \"workers\""),
    ("select conveyor.set_queue('q', concurrency => 0)", "CV010", "option \"concurrency\""),
    ("select conveyor.set_defaults('{\"retention\": \"forever\"}')", "CV010", "invalid duration \"forever\""),
    ("select conveyor.set_defaults('{\"max_delay\": \"1s\"}')", "CV010", "must be at least delay"),
    ("select conveyor.pause_queue('nope')", "CV007", "unknown queue \"nope\""),
    ("select conveyor.disable_task('nope')", "CV003", "unknown task \"nope\""),
    ("select * from conveyor.claim_runs('q', '', 10)", "22023", "worker must name the claiming worker"),
    ("select * from conveyor.claim_runs('q', 'w', 0)", "22023", "invalid max 0"),
    ("select * from conveyor.claim_runs('q', 'w', 100000)", "22023", "invalid max 100000"),
    ("select * from conveyor.claim_runs('q', 'w', 10, lease => 'forever')", "22023", "invalid duration \"forever\""),
    ("select * from conveyor.claim_runs('q', 'w', 10, lease => '0s')", "22023", "lease must be longer than 0s"),
    ("select conveyor.complete_run('not-a-ulid', gen_random_uuid())", "22P02", "invalid ulid"),
    ("select conveyor.complete_run('01ARZ3NDEKTSV4RRFFQ69G5FAV', gen_random_uuid())", "CV002", "unknown run"),
    ("select conveyor.complete_run('01ARZ3NDEKTSV4RRFFQ69G5FAV', 'not-a-uuid')", "22P02", "uuid"),
    ("select conveyor.heartbeat('01ARZ3NDEKTSV4RRFFQ69G5FAV', gen_random_uuid(), '0s')", "22023", "extend must be longer than 0s"),
    ("select * from conveyor.finish_runs('{}')", "22023", "finish_runs takes a JSON array"),
    ("select * from conveyor.finish_runs('[1]')", "22023", "items must be JSON objects"),
    ("select * from conveyor.finish_runs(null)", "22023", "finish_runs takes a JSON array of items, got null"),
    ("select conveyor.cancel_run('01ARZ3NDEKTSV4RRFFQ69G5FAV')", "CV002", "unknown run"),
    ("select conveyor.retry_run('01ARZ3NDEKTSV4RRFFQ69G5FAV')", "CV002", "unknown run"),
    ("select conveyor.retry_runs(status => 'queued')", "22023", "retry_runs takes status failed, cancelled or succeeded"),
    ("select conveyor.publish('bad topic', '{}')", "22023", "invalid topic 'bad topic'"),
    ("select conveyor.publish(repeat('t', 64), '{}')", "22023", "invalid topic"),
    ("select conveyor.publish('t', null)", "22023", "payload must be JSON, got null"),
    ("select * from conveyor.outbox_claim('', null, 10)", "22023", "relay must name the claiming relay"),
    ("select * from conveyor.outbox_claim('r', null, 0)", "22023", "invalid max 0"),
    ("select conveyor.tick_step('nap')", "22023", "unknown tick step \"nap\""),
    ("select conveyor.start_service('nope')", "CV003", "unknown service \"nope\""),
    ("select 'bogus'::conveyor.ulid", "22P02", "invalid ulid \"bogus\""),
    ("select '5 minits'::conveyor.duration", "22023", "invalid duration \"5 minits\""),
];

const FINGERPRINT: &str = "select md5(concat_ws('|',
    (select string_agg(r::text, ',' order by id) from conveyor.runs r),
    (select string_agg(a::text, ',' order by run_id, attempt) from conveyor.attempts a),
    (select string_agg(e::text, ',' order by id) from conveyor.events e),
    (select string_agg(t::text, ',' order by name) from conveyor.tasks t),
    (select string_agg(q::text, ',' order by name) from conveyor.queues q),
    (select string_agg(o::text, ',' order by id) from conveyor.outbox o),
    (select string_agg(d::text, ',') from conveyor._defaults d)))";

#[test]
fn every_bad_call_is_refused_with_a_documented_sqlstate_and_writes_nothing() {
    let (db, mut client) = fresh_db("it_bad");
    client
        .batch_execute(
            "select conveyor.define_task('t', queue => 'q');
             select conveyor.define_service('svc');
             select conveyor.enqueue('t', '{\"n\": 1}');
             select count(conveyor.fail_run(c.run_id, c.lease_token, 'x')) from conveyor.claim_run('q', 'w') c;
             select conveyor.publish('t', '{}');",
        )
        .unwrap();
    let mut refused = 0;
    let mut unchanged = 0;
    for (call, code, fragment) in CORPUS {
        let before: String = client.query_one(FINGERPRINT, &[]).unwrap().get(0);
        let err = client.batch_execute(call).expect_err(&format!("accepted: {call}"));
        let db_err = err.as_db_error().unwrap_or_else(|| panic!("{call}: {err}"));
        assert_eq!(db_err.code().code(), *code, "{call}: {}", db_err.message());
        assert!(db_err.message().contains(fragment), "{call}: message {:?} lacks {fragment:?}", db_err.message());
        refused += 1;
        let after: String = client.query_one(FINGERPRINT, &[]).unwrap().get(0);
        assert_eq!(before, after, "{call} changed the tables");
        unchanged += 1;
    }

    // a huge, control-character-laden failure message is not an error: it is cleaned and capped
    client.batch_execute("select conveyor.enqueue('t', '{\"n\": 2}')").unwrap();
    let row = client.query_one("select run_id::text, lease_token from conveyor.claim_run('q', 'w')", &[]).unwrap();
    let (id, token): (String, uuid::Uuid) = (row.get(0), row.get(1));
    let huge = format!("bad\u{1}\u{7}news {}", "x".repeat(10 * 1024 * 1024));
    client.execute("select conveyor.fail_run($1::text, $2, $3)", &[&id, &token, &huge]).unwrap();
    let (len, head): (i32, String) = {
        let r = client
            .query_one("select length(error ->> 'message'), left(error ->> 'message', 9) from conveyor.runs where id = $1::text::conveyor.ulid", &[&id])
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!((len, head.as_str()), (4000, "badnews x"));
    println!(
        "bad inputs tried: {}, refused with the documented SQLSTATE: {refused}, tables unchanged: {unchanged}",
        CORPUS.len()
    );
    drop(client);
    drop_db(&db);
}
