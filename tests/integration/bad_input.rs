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
    ("select conveyor.enqueue('t', parent_run_id => '01ARZ3NDEKTSV4RRFFQ69G5FAV')", "CV002", "unknown running parent run"),
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
    ("select * from conveyor.finish_and_claim('{}', 'default', 'w')", "22023", "finish_runs takes a JSON array"),
    ("select * from conveyor.finish_and_claim('[]', 'default', 'w', 0)", "22023", "invalid max 0"),
    ("select * from conveyor.finish_and_claim(null, 'default', '')", "22023", "worker must name the claiming worker"),
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
    // issue 13: hostile and careless input
    ("select conveyor.enqueue('t', delay => '@ -1 hour')", "22023", "must not be negative"),
    ("select conveyor.enqueue('t', delay => '1 sec -2 sec')", "22023", "must not be negative"),
    ("select conveyor.enqueue('t', delay => '0 days -2000000000:00:00')", "22023", "must not be negative"),
    ("select conveyor.enqueue('t', delay => interval '-1 hour')", "22023", "must not be negative"),
    ("select conveyor.enqueue('t', delay => interval '40000 days')", "22023", "longer than 100 years"),
    ("select conveyor.enqueue('t', run_at => '-infinity')", "22023", "invalid run_at -infinity"),
    ("select conveyor.enqueue('t', run_at => 'infinity')", "22023", "invalid run_at infinity"),
    ("select conveyor.enqueue('t', run_at => '1800-01-01')", "22023", "within 100 years of now"),
    ("select conveyor.enqueue('t', run_at => '2300-01-01')", "22023", "within 100 years of now"),
    ("select conveyor.enqueue('t', idempotency_key => repeat('k', 4000))", "22023", "idempotency key too long"),
    ("select conveyor.enqueue('t', queue => 'made_up_by_a_producer')", "CV007", "unknown queue \"made_up_by_a_producer\""),
    ("select conveyor.enqueue_many('t', array['{}']::jsonb[], run_at => 'infinity')", "22023", "invalid run_at"),
    ("select conveyor.define_task(null)", "CV010", "a task needs a name"),
    ("select conveyor.define_task('t2', schedule => '0 0 30 2 *')", "CV010", "never fires"),
    ("select conveyor.define_task('t2', delay => '@ -1 hour')", "CV010", "must not be negative"),
    ("select conveyor.define_task('t2', timeout => '1 sec -2 sec')", "CV010", "must not be negative"),
    ("select conveyor.define_service('svc2', restart_delay => '-1s')", "CV010", "must not be negative"),
    ("select conveyor.define_service(null)", "CV010", "a service needs a name"),
    ("select conveyor.set_defaults('{\"lease\": \"@ -30 secs\"}')", "CV010", "must not be negative"),
    ("select conveyor.set_defaults('{\"retention\": \"0 days -1:00:00\"}')", "CV010", "must not be negative"),
    ("select conveyor.apply_config('{\"tasks\": {\"t3\": {\"max_delay\": \"-5m\"}}}')", "CV010", "must not be negative"),
    ("select conveyor.apply_config('{\"queues\": {\"q2\": {\"concurrency\": -1}}}')", "CV010", "option \"concurrency\""),
    ("select conveyor.set_queue(null)", "CV010", "a queue needs a name"),
    ("select conveyor.publish('conveyor.delivery', '{}')", "22023", "is reserved"),
    ("select conveyor.publish('conveyor.q', '{}')", "22023", "is reserved"),
    ("select conveyor.publish('t', '{}', deliver_at => 'infinity')", "22023", "invalid deliver_at infinity"),
    ("select conveyor.publish('t', '{}', deliver_at => '-infinity')", "22023", "invalid deliver_at -infinity"),
    ("select conveyor.drop_queue('q')", "CV008", "queue \"q\" is in use"),
    ("select conveyor.drop_queue('no_such_queue')", "CV007", "unknown queue \"no_such_queue\""),
    ("select conveyor.resume_queue('nope')", "CV007", "unknown queue \"nope\""),
    ("select conveyor.enable_task('nope')", "CV003", "unknown task \"nope\""),
    ("select conveyor.stop_service('nope')", "CV003", "unknown service \"nope\""),
    ("select * from conveyor.claim_runs('q', null, 10)", "22023", "worker must name the claiming worker"),
    ("select * from conveyor.claim_runs('q', repeat('w', 201), 10)", "22023", "worker must name the claiming worker"),
    ("select * from conveyor.claim_runs('q', E'\\x1b\\x07', 10)", "22023", "worker must name the claiming worker"),
    ("select * from conveyor.claim_runs('q', 'w', null)", "22023", "invalid max null"),
    ("select * from conveyor.claim_runs('q', 'w', 10, lease => '-5s')", "22023", "must not be negative"),
    ("select conveyor.heartbeat('01ARZ3NDEKTSV4RRFFQ69G5FAV', gen_random_uuid(), '-1s')", "22023", "must not be negative"),
    ("select conveyor.heartbeat('01ARZ3NDEKTSV4RRFFQ69G5FAV', gen_random_uuid())", "CV002", "unknown run"),
    ("select conveyor.append_log('01ARZ3NDEKTSV4RRFFQ69G5FAV', gen_random_uuid(), 'x')", "CV002", "unknown run"),
    ("select conveyor.release_run('01ARZ3NDEKTSV4RRFFQ69G5FAV', gen_random_uuid(), '30s')", "CV002", "unknown run"),
    ("select conveyor.return_run('01ARZ3NDEKTSV4RRFFQ69G5FAV', gen_random_uuid())", "CV002", "unknown run"),
    ("select conveyor.fail_run('01ARZ3NDEKTSV4RRFFQ69G5FAV', gen_random_uuid(), 'x')", "CV002", "unknown run"),
    ("select * from conveyor.finish_runs('\"items\"')", "22023", "finish_runs takes a JSON array of items, got string"),
    ("select * from conveyor.outbox_claim('r', null, 10, lease => '-1s')", "22023", "must not be negative"),
    ("select conveyor.outbox_ack(array['01ARZ3NDEKTSV4RRFFQ69G5FAV']::conveyor.ulid[], 'nope')", "22P02", "uuid"),
    ("select conveyor.retry_runs(status => 'running')", "22023", "retry_runs takes status failed, cancelled or succeeded"),
    ("select conveyor.retry_runs(status => 'skipped')", "22023", "retry_runs takes status failed, cancelled or succeeded"),
    ("select conveyor.tick_step(null)", "22023", "unknown tick step"),
    ("select '-1 hour'::conveyor.duration", "22023", "must not be negative"),
    ("select interval '-1 day'::conveyor.duration", "22023", "must not be negative"),
    ("select '01ARZ3NDEKTSV4RRFFQ69G5FA'::conveyor.ulid", "22P02", "invalid ulid"),
];

/// Whether a role may call the function a corpus call names (sql/functions/roles.sql).
fn granted(role: &str, call: &str) -> bool {
    const PRODUCER: &[&str] = &["enqueue", "enqueue_many", "publish"];
    const WORKER: &[&str] = &[
        "claim_run",
        "claim_runs",
        "pending",
        "complete_run",
        "fail_run",
        "release_run",
        "return_run",
        "finish_runs",
        "finish_and_claim",
        "heartbeat",
        "append_log",
    ];
    let function = call
        .split("conveyor.")
        .nth(1)
        .map(|rest| rest.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).next().unwrap_or(""))
        .unwrap_or("");
    // casts to the extension's types (function "ulid", "duration") are everyone's
    match role {
        "postgres" | "conveyor_admin" => true,
        "conveyor_producer" => PRODUCER.contains(&function) || function == "ulid" || function == "duration",
        "conveyor_worker" => WORKER.contains(&function) || function == "ulid" || function == "duration",
        _ => function == "ulid" || function == "duration",
    }
}

/// Whether the call's bad value is a literal refused while the statement is parsed (type input),
/// which PostgreSQL does before it checks the privilege to execute the function.
fn refused_while_parsing(call: &str, code: &str, fragment: &str) -> bool {
    code == "22P02"
        || (fragment.contains("invalid duration")
            || fragment.contains("must not be negative")
            || fragment.contains("longer than 100 years"))
            && !call.contains("define_")
            && !call.contains("set_defaults")
            && !call.contains("apply_config")
}

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
    let mut denied = 0;
    // every call from every role: a role granted the function gets the documented refusal; any
    // other gets 42501 (insufficient_privilege), unless the bad value is refused while the call
    // is parsed (a literal that is no ULID, UUID or duration), before any privilege is checked
    for role in ["postgres", "conveyor_admin", "conveyor_producer", "conveyor_worker", "conveyor_reader"] {
        for (call, code, fragment) in CORPUS {
            let before: String = client.query_one(FINGERPRINT, &[]).unwrap().get(0);
            client.batch_execute(&format!("set role {role}")).unwrap();
            let result = client.batch_execute(call);
            client.batch_execute("reset role").unwrap();
            let err = result.expect_err(&format!("accepted as {role}: {call}"));
            let db_err = err.as_db_error().unwrap_or_else(|| panic!("{role}: {call}: {err}"));
            let (want, want_fragment) = if granted(role, call) || refused_while_parsing(call, code, fragment) {
                (*code, *fragment)
            } else {
                denied += 1;
                ("42501", "permission denied")
            };
            assert_eq!(db_err.code().code(), want, "{role}: {call}: {}", db_err.message());
            assert!(
                db_err.message().contains(want_fragment),
                "{role}: {call}: message {:?} lacks {want_fragment:?}",
                db_err.message()
            );
            refused += 1;
            let after: String = client.query_one(FINGERPRINT, &[]).unwrap().get(0);
            assert_eq!(before, after, "{role}: {call} changed the tables");
            unchanged += 1;
        }
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
        "bad inputs: {} calls x 5 roles = {refused} refused with the documented SQLSTATE ({denied} of them 42501 for a \
         role not granted the function), tables unchanged after {unchanged}",
        CORPUS.len()
    );
    drop(client);
    drop_db(&db);
}

/// An interval's binary form (microseconds, days, months), sent as a `conveyor.duration` as is:
/// what a binary driver that maps the type sends.
#[derive(Debug)]
struct RawDuration(i64, i32, i32);

impl postgres::types::ToSql for RawDuration {
    fn to_sql(
        &self,
        _: &postgres::types::Type,
        out: &mut bytes::BytesMut,
    ) -> Result<postgres::types::IsNull, Box<dyn std::error::Error + Sync + Send>> {
        use bytes::BufMut;
        out.put_i64(self.0);
        out.put_i32(self.1);
        out.put_i32(self.2);
        Ok(postgres::types::IsNull::No)
    }

    fn accepts(ty: &postgres::types::Type) -> bool {
        ty.name() == "duration"
    }

    postgres::types::to_sql_checked!();
}

#[test]
fn a_duration_sent_in_binary_obeys_the_rule_text_follows() {
    let (db, mut client) = fresh_db("it_bad_binary");
    let text = |c: &mut postgres::Client, d: RawDuration| {
        c.query_one("select $1::conveyor.duration::text", &[&d]).map(|r| r.get::<_, String>(0))
    };
    assert_eq!(text(&mut client, RawDuration(90_000_000, 1, 0)).unwrap(), "1d 1m 30s");
    // stored as text input stores it: all in microseconds (a day field would follow the time zone)
    let days: i32 = client
        .query_one("select extract(day from $1::conveyor.duration::interval)::int", &[&RawDuration(0, 2, 0)])
        .unwrap()
        .get(0);
    assert_eq!(days, 0, "2 days are kept as 48 hours");
    assert_eq!(text(&mut client, RawDuration(48 * 3_600_000_000, -1, 0)).unwrap(), "1d");
    for (bad, fragment) in [
        (RawDuration(-1, 0, 0), "must not be negative"),
        (RawDuration(0, -1, 0), "must not be negative"),
        (RawDuration(0, 101 * 365, 0), "longer than 100 years"),
        (RawDuration(0, 0, 1), "months have no fixed length"),
        (RawDuration(0, i32::MIN, 0), "must not be negative"),
        (RawDuration(i64::MAX, i32::MAX, 0), "longer than 100 years"),
    ] {
        let shown = format!("{bad:?}");
        let err = text(&mut client, bad).expect_err(&format!("accepted {shown}"));
        let db_err = err.as_db_error().unwrap_or_else(|| panic!("{shown}: {err}"));
        assert_eq!(db_err.code().code(), "22023", "{shown}: {}", db_err.message());
        assert!(db_err.message().contains(fragment), "{shown}: {}", db_err.message());
    }
    drop(client);
    drop_db(&db);
}
