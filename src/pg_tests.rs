// In-database tests of the Rust-backed SQL: types, time, policy arithmetic, refusals.
// (Included into `mod tests` in lib.rs; behaviour of the SQL API is tested in pgrx-tests/.)

use pgrx::prelude::*;

fn one<T: pgrx::IntoDatum + pgrx::FromDatum>(sql: &str) -> T {
    Spi::get_one::<T>(sql).expect("query failed").expect("query returned null")
}

#[pg_test]
fn ulid_text_round_trips_and_sorts_by_time() {
    assert_eq!(one::<String>("select '01ARZ3NDEKTSV4RRFFQ69G5FAV'::conveyor.ulid::text"), "01ARZ3NDEKTSV4RRFFQ69G5FAV");
    assert_eq!(one::<String>("select '01arz3ndektsv4rrffq69g5fav'::conveyor.ulid::text"), "01ARZ3NDEKTSV4RRFFQ69G5FAV");
    assert!(one::<bool>(
        "select bool_and(a < b) from (select conveyor.ulid_generate() a, conveyor.ulid_generate() b from generate_series(1, 1000)) x"
    ));
    assert_eq!(one::<i32>("select pg_column_size(conveyor.ulid_generate())"), 16);
    assert!(one::<bool>(
        "select abs(extract(epoch from conveyor.ulid_timestamp(conveyor.ulid_generate()) - clock_timestamp())) < 5"
    ));
}

#[pg_test(error = "invalid ulid \"not-a-ulid\"")]
fn bad_ulid_text_is_refused() {
    Spi::run("select 'not-a-ulid'::conveyor.ulid").unwrap();
}

#[pg_test]
fn ids_carry_the_partition_set_for_the_database() {
    assert_eq!(one::<i32>("select conveyor.ulid_partition(conveyor.ulid_generate())"), 0);
    Spi::run("set conveyor.partition = 7").unwrap();
    assert!(one::<bool>(
        "select bool_and(conveyor.ulid_partition(conveyor.ulid_generate()) = 7) from generate_series(1, 100)"
    ));
    // a run enqueued there carries it too: the router finds its shard from the id alone
    Spi::run("select conveyor.define_task('partition_test')").unwrap();
    assert_eq!(one::<i32>("select conveyor.ulid_partition(conveyor.enqueue('partition_test'))"), 7);
    Spi::run("reset conveyor.partition").unwrap();
    // characters 11 and 12 of the text (T=26, S=25 in Crockford base32) are the 10 bits: 26*32+25
    assert_eq!(one::<i32>("select conveyor.ulid_partition('01ARZ3NDEKTSV4RRFFQ69G5FAV')"), 857);
}

#[pg_test]
fn durations_accept_humantime_text_and_intervals() {
    assert_eq!(one::<String>("select '1m30s'::conveyor.duration::text"), "1m 30s");
    assert_eq!(one::<String>("select '00:05:00'::conveyor.duration::text"), "5m");
    assert_eq!(one::<String>("select (interval '2 hours')::conveyor.duration::text"), "2h");
    assert!(one::<bool>("select '90s'::conveyor.duration::interval = interval '90 seconds'"));
}

#[pg_test(error = "invalid duration \"5 minits\": expected e.g. 30s, 5m, 1h30m, 2d or 00:05:00")]
fn a_bad_duration_is_refused_with_the_value_quoted() {
    Spi::run("select '5 minits'::conveyor.duration").unwrap();
}

#[pg_test]
fn the_test_clock_moves_now() {
    Spi::run("set local conveyor.test_clock = '2030-01-02 03:04:05+00'").unwrap();
    assert_eq!(
        one::<String>("select to_char(conveyor._now() at time zone 'UTC', 'YYYY-MM-DD HH24:MI:SS')"),
        "2030-01-02 03:04:05"
    );
    Spi::run("set local conveyor.test_clock = ''").unwrap();
    assert!(one::<bool>("select conveyor._now() = now()"));
}

#[pg_test]
fn backoff_from_sql_follows_the_curves() {
    assert_eq!(
        one::<String>(
            "select string_agg(conveyor._duration_text(conveyor._backoff_delay('exponential', '10s', '5m', null, 'none', n)), ',' order by n)
             from generate_series(1, 7) n"
        ),
        "10s,20s,40s,1m 20s,2m 40s,5m,5m"
    );
    assert_eq!(
        one::<String>(
            "select string_agg(conveyor._duration_text(conveyor._backoff_delay('custom', '5s', null, array['30s', '1m16s']::interval[], 'none', n)), ',' order by n)
             from generate_series(1, 3) n"
        ),
        "30s,1m 16s,1m 16s"
    );
    assert!(one::<bool>(
        "select bool_and(d >= interval '5s' and d < interval '10s')
         from (select conveyor._backoff_delay('constant', '10s', '5m', null, 'equal', 1) d from generate_series(1, 200)) x"
    ));
}

#[pg_test]
fn cron_next_from_sql() {
    assert_eq!(
        one::<String>(
            "select to_char(conveyor._cron_next('*/15 * * * *', null, '2026-01-01 10:07:00+00') at time zone 'UTC', 'HH24:MI')"
        ),
        "10:15"
    );
}

#[pg_test(
    error = "invalid configuration: task \"t\": option \"delay\": invalid duration \"soon\": expected e.g. 30s, 5m, 1h30m, 2d or 00:05:00"
)]
fn define_task_refuses_bad_options() {
    Spi::run("select conveyor.define_task('t', options => '{\"delay\": \"soon\"}')").unwrap();
}

#[pg_test(error = "run 01ARZ3NDEKTSV4RRFFQ69G5FAV cannot go from queued to succeeded")]
fn a_direct_update_outside_the_transitions_is_refused() {
    Spi::run("select conveyor.define_task('t')").unwrap();
    Spi::run(
        "insert into conveyor.runs (id, task, queue, status, run_at, payload, created_at, task_version)
         values ('01ARZ3NDEKTSV4RRFFQ69G5FAV', 't', 'default', 'queued', now(), '{}', now(), 1)",
    )
    .unwrap();
    Spi::run("update conveyor.runs set status = 'succeeded', finished_at = now()").unwrap();
}

// _key_pick (src/admit.rs) over SQL arrays: nulls for "no gates" and "no caps", ids back in
// claim order, shards of the gates held, and arrays that do not line up refused.
const KEY_PICK_CANDIDATES: &str = "array['01ARZ3NDEKTSV4RRFFQ69G5FA1', '01ARZ3NDEKTSV4RRFFQ69G5FA2', '01ARZ3NDEKTSV4RRFFQ69G5FA3']::conveyor.ulid[]::uuid[],
     array['t', 't', 't'], array['q', 'q', 'q'], array['a', 'a', null], array[0, 0, 0]::smallint[],
     array[1, 2, 0]::bigint[], array['2026-01-01', '2026-01-01', '2026-01-02']::timestamptz[]";

#[pg_test]
fn key_pick_takes_the_ids_in_claim_order_within_the_gates_held() {
    let without_gates: String = one(&format!(
        "select string_agg(id::text || ':' || coalesce(queue_shard::text, '-'), ',' order by n)
         from conveyor._key_pick({KEY_PICK_CANDIDATES}, null, null, null, null, null, null, null, 10) with ordinality as p(id, queue_shard, task_shard, n)"
    ));
    // the unkeyed run is at turn 0, then a's two
    assert_eq!(without_gates, "01ARZ3NDEKTSV4RRFFQ69G5FA3:-,01ARZ3NDEKTSV4RRFFQ69G5FA1:-,01ARZ3NDEKTSV4RRFFQ69G5FA2:-");
    let one_room: String = one(&format!(
        "select string_agg(id::text || ':' || coalesce(queue_shard::text, '-'), ',' order by n)
         from conveyor._key_pick({KEY_PICK_CANDIDATES}, array['queue'], array['q'], array['a'], array[5]::smallint[], array[1],
                                 null, null, 10) with ordinality as p(id, queue_shard, task_shard, n)"
    ));
    assert_eq!(one_room, "01ARZ3NDEKTSV4RRFFQ69G5FA3:-,01ARZ3NDEKTSV4RRFFQ69G5FA1:5");
}

#[pg_test(error = "a claim's key gate arrays differ in length")]
fn key_pick_refuses_gate_arrays_that_do_not_line_up() {
    Spi::run(&format!(
        "select * from conveyor._key_pick({KEY_PICK_CANDIDATES}, array['queue', 'queue'], array['q', 'q'], array['a', 'b'],
                                          array[1, 2]::smallint[], array[1], null, null, 10)"
    ))
    .unwrap();
}
