"""pg_conveyor's Python package against a real cluster: producer transactions, every way a
handler can end a run, cancellation, graceful shutdown, stale leases, PgBouncer."""

from __future__ import annotations

import datetime as dt
import os
import threading
import time
import uuid

import psycopg
import pytest
from conftest import define, run_worker

from pg_conveyor import (Cancelled, ClaimedRun, Fail, Finished, Interrupted, Release, Worker, enqueue,
                         enqueue_many)


def status(db, run_id):
    return db.execute("select status::text from conveyor.runs where id = %s", (run_id,)).fetchone()[0]


def outcomes(db, run_id):
    return [r[0] for r in db.execute("select outcome::text from conveyor.attempts where run_id = %s order by attempt",
                                     (run_id,))]


def test_enqueue_commits_and_rolls_back_with_the_callers_transaction(db, queue):
    task = define(db, queue, "t")
    with psycopg.connect("") as conn:  # not autocommit: one transaction until the block ends
        conn.execute("create temp table app_rows (n int)")
        conn.execute("insert into app_rows values (1)")
        kept = enqueue(conn, task, {"n": 1})
        (in_tx,) = conn.execute("select count(*) from conveyor.runs where id = %s", (kept,)).fetchone()
        assert in_tx == 1
        assert db.execute("select count(*) from conveyor.runs where id = %s", (kept,)).fetchone()[0] == 0, \
            "visible to others before the commit"
    assert status(db, kept) == "queued"

    with psycopg.connect("") as conn:
        gone = enqueue(conn, task, {"n": 2})
        conn.rollback()
    assert db.execute("select count(*) from conveyor.runs where id = %s", (gone,)).fetchone()[0] == 0

    with psycopg.connect("", autocommit=True) as conn:
        ids = enqueue_many(conn, task, [{"n": i} for i in range(5)], priority=3)
        assert len(ids) == 5
        payloads = [r[0] for r in conn.execute(
            "select payload from conveyor.runs where id = any(%s::text[]::conveyor.ulid[]) order by id", (ids,))]
        assert sorted(p["n"] for p in payloads) == list(range(5))
        first = enqueue(conn, task, {}, idempotency_key="k-1")
        assert enqueue(conn, task, {}, idempotency_key="k-1") == first, "the same key returns the same run"
        later = enqueue(conn, task, delay=dt.timedelta(hours=1))
        assert status(db, later) == "scheduled"
        # concurrency keys, one per run
        keyed = enqueue_many(conn, task, [{}, {}], keys=["tenant-1", None]) + [enqueue(conn, task, key="tenant-2")]
        keys = [r[0] for r in conn.execute(
            "select concurrency_key from conveyor.runs r join unnest(%s::text[]::conveyor.ulid[]) with ordinality"
            " as i(id, n) on r.id = i.id order by i.n", (keyed,))]
        assert keys == ["tenant-1", None, "tenant-2"]


def test_every_way_a_handler_ends_a_run(db, queue):
    ok = define(db, queue, "ok")
    flaky = define(db, queue, "flaky", max_attempts=3, delay="100ms")
    wait = define(db, queue, "wait")
    broken = define(db, queue, "broken", max_attempts=1)
    slow = define(db, queue, "slow")
    finished: list[Finished] = []
    worker = Worker(queues=[queue], batch=4, lease="10s", poll=0.2, on_finished=finished.append)

    @worker.task(ok)
    def _ok(job):
        assert isinstance(job.run, ClaimedRun)
        return {"echo": job.payload["n"]}

    @worker.task(flaky)
    def _flaky(job):
        if job.attempt == 1:
            raise Fail("first attempt fails", meta={"attempt": job.attempt})
        return {"attempt": job.attempt, "failures": job.failures}

    @worker.task(wait)
    def _wait(job):
        # returned rather than raised: the same
        return Release("100ms", "not ready") if job.attempt < 3 else {"releases": job.releases}

    @worker.task(broken)
    def _broken(job):
        raise ValueError("a bug")

    @worker.task(slow)
    def _slow(job):
        for _ in range(3):
            time.sleep(0.2)
            assert job.heartbeat("10s") is False
        job.log("three heartbeats")
        return {"heartbeats": job.heartbeats}

    with psycopg.connect("", autocommit=True) as conn:
        runs = {t: enqueue(conn, t, {"n": i}) for i, t in enumerate([ok, flaky, wait, broken, slow])}
    run_worker(worker)

    assert status(db, runs[ok]) == "succeeded"
    assert db.execute("select result from conveyor.runs where id = %s", (runs[ok],)).fetchone()[0] == {"echo": 0}
    assert outcomes(db, runs[flaky]) == ["failed", "succeeded"]
    assert db.execute("select result from conveyor.runs where id = %s", (runs[flaky],)).fetchone()[0] == \
        {"attempt": 2, "failures": 1}
    assert outcomes(db, runs[wait]) == ["released", "released", "succeeded"]
    assert status(db, runs[broken]) == "failed"
    (error,) = db.execute("select error from conveyor.runs where id = %s", (runs[broken],)).fetchone()
    assert "ValueError: a bug" in error["message"] and error["meta"] == {"exception": "ValueError"}
    assert db.execute("select result from conveyor.runs where id = %s", (runs[slow],)).fetchone()[0] == \
        {"heartbeats": 3}
    (logged,) = db.execute("select string_agg(chunk, '') from conveyor.attempt_logs where run_id = %s",
                           (runs[slow],)).fetchone()
    assert "three heartbeats" in logged
    seen = {(f.run.task, f.outcome, f.status) for f in finished}
    assert (flaky, "failed", "retrying") in seen and (wait, "released", "released") in seen
    assert (broken, "failed", "failed") in seen and (ok, "succeeded", "succeeded") in seen


def test_a_cancelled_run_stops_at_its_next_heartbeat(db, queue):
    task = define(db, queue, "long")
    started = threading.Event()
    worker = Worker(queues=queue, lease="10s", poll=0.2)

    @worker.task(task)
    def _long(job):
        started.set()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            time.sleep(0.05)
            if job.heartbeat():
                raise Cancelled()
        return {"finished": "without seeing the cancel"}

    with psycopg.connect("", autocommit=True) as conn:
        run_id = enqueue(conn, task)
    canceller = threading.Thread(target=lambda: (started.wait(20), db.execute("select conveyor.cancel_run(%s)",
                                                                             (run_id,))))
    canceller.start()
    run_worker(worker)
    canceller.join()
    assert status(db, run_id) == "cancelled"
    assert outcomes(db, run_id) == ["stopped"]


def test_stop_gives_the_run_in_hand_and_the_unstarted_ones_back(db, queue):
    task = define(db, queue, "held")
    worker = Worker(queues=queue, batch=5, lease="10s", grace=0.3, poll=0.2)
    interrupted = []

    @worker.task(task)
    def _held(job):
        worker.stop()  # as SIGTERM would
        try:
            while True:
                time.sleep(0.05)
                job.heartbeat()
        except Interrupted:
            interrupted.append(job.run_id)
            raise

    with psycopg.connect("", autocommit=True) as conn:
        ids = enqueue_many(conn, task, [{}] * 5)
    thread = threading.Thread(target=worker.run)
    thread.start()
    thread.join(30)
    assert not thread.is_alive(), "the worker did not stop"
    assert len(interrupted) == 1, "only the first run started"
    rows = db.execute("select status::text, failures from conveyor.runs where id = any(%s::text[]::conveyor.ulid[])",
                      (ids,)).fetchall()
    assert rows == [("queued", 0)] * 5, "all five given back, no failure counted"
    (n,) = db.execute("select count(*) from conveyor.attempts where run_id = any(%s::text[]::conveyor.ulid[])"
                      " and outcome = 'interrupted'", (ids,)).fetchone()
    assert n == 5


def test_a_stale_lease_is_reported_and_the_worker_goes_on(db, queue):
    task = define(db, queue, "late", max_attempts=3, delay="100ms")
    finished: list[Finished] = []
    worker = Worker(queues=queue, lease="1s", poll=0.2, on_finished=finished.append)

    @worker.task(task)
    def _late(job):
        if job.attempt == 1:
            # no heartbeat past the lease: tick ends the attempt as crashed, the run retries
            deadline = time.monotonic() + 20
            while db.execute("select attempts from conveyor.runs where id = %s", (job.run_id,)).fetchone()[0] == 0:
                assert time.monotonic() < deadline, "tick did not expire the lease"
                time.sleep(0.1)
        return {"attempt": job.attempt}

    with psycopg.connect("", autocommit=True) as conn:
        run_id = enqueue(conn, task)
    run_worker(worker)
    assert outcomes(db, run_id) == ["crashed", "succeeded"]
    assert [(f.outcome, f.status) for f in finished] == [("succeeded", None), ("succeeded", "succeeded")]


def test_bad_arguments_are_refused_before_anything_runs():
    with pytest.raises(ValueError):
        Worker(queues="")
    with pytest.raises(ValueError):
        Worker(queues="q", batch=0)
    with pytest.raises(TypeError):
        Worker(queues="q", lease=object())


def test_a_bad_duration_gets_the_servers_error(db, queue):
    task = define(db, queue, "t")
    with psycopg.connect("", autocommit=True) as conn, pytest.raises(psycopg.Error) as e:
        enqueue(conn, task, delay="soon")
    assert e.value.sqlstate == "22023", e.value.sqlstate  # invalid_parameter_value
    assert 'invalid duration "soon"' in e.value.diag.message_primary


@pytest.mark.skipif(not os.environ.get("CONVEYOR_PGBOUNCER"), reason="CONVEYOR_PGBOUNCER is not set")
@pytest.mark.parametrize("listen", [False, True], ids=["polling", "listen-on-a-direct-session"])
def test_through_pgbouncer_in_transaction_mode(db, queue, listen):
    pooled = os.environ["CONVEYOR_PGBOUNCER"]
    task = define(db, queue, "pooled", max_attempts=2, delay="100ms")
    worker = Worker(pooled, queues=queue, batch=3, poll=0.2 if listen else 0.3, pooled=True,
                    listen_conninfo="" if listen else None)

    @worker.task(task)
    def _pooled(job):
        if job.attempt == 1 and job.payload["n"] % 2:
            raise Fail("odd ones fail once")
        job.heartbeat()
        return {"n": job.payload["n"]}

    # a producer through the pooler, in its own transaction (prepared statements off)
    with psycopg.connect(pooled, prepare_threshold=None) as conn:
        ids = enqueue_many(conn, task, [{"n": i} for i in range(12)])
        enqueue(conn, task, {"n": 100})
    run_worker(worker)
    (done,) = db.execute("select count(*) from conveyor.runs where queue = %s and status = 'succeeded'",
                         (queue,)).fetchone()
    assert done == 13
    assert outcomes(db, ids[1]) == ["failed", "succeeded"]


def test_claimed_run_has_typed_fields(db, queue):
    task = define(db, queue, "typed")
    seen: list[ClaimedRun] = []
    worker = Worker(queues=queue, poll=0.2)

    @worker.task(task)
    def _typed(job):
        seen.append(job.run)
        if "p" in job.payload:  # a running parent enqueues its child
            with psycopg.connect("", autocommit=True) as conn:
                enqueue(conn, task, {"c": 1}, parent_run_id=job.run_id, priority=7)

    with psycopg.connect("", autocommit=True) as conn:
        parent = enqueue(conn, task, {"p": 1})
    run_worker(worker)
    child = next(r for r in seen if r.parent_run_id)
    assert child.parent_run_id == parent and child.priority == 7 and child.payload == {"c": 1}
    assert isinstance(child.lease_token, uuid.UUID) and isinstance(child.lease_expires_at, dt.datetime)
    assert child.attempt == 1 and child.failures == 0 and child.queue == queue


def test_the_rest_of_a_batch_keeps_its_leases_while_a_long_handler_heartbeats(db, queue):
    # lease 2s: the first handler works 5s with heartbeats; the two runs claimed with it wait
    # behind it: their leases are extended by its heartbeats, and nothing crashes
    task = define(db, queue, "batch")
    worker = Worker(queues=queue, batch=3, lease="2s", poll=0.2)

    @worker.task(task)
    def _batch(job):
        if job.payload["n"] == 0:
            for _ in range(10):
                time.sleep(0.5)
                job.heartbeat()
        return {"n": job.payload["n"]}

    with psycopg.connect("", autocommit=True) as conn:
        ids = enqueue_many(conn, task, [{"n": i} for i in range(3)], priority=0)
    run_worker(worker)
    for run_id in ids:
        assert outcomes(db, run_id) == ["succeeded"], run_id


def test_a_result_that_is_not_json_fails_the_attempt_not_the_worker(db, queue):
    bad = define(db, queue, "bad")
    good = define(db, queue, "good")
    worker = Worker(queues=queue, batch=2, poll=0.2)
    worker.task(bad)(lambda job: {"at": dt.datetime.now()})
    worker.task(good)(lambda job: {"ok": True})
    with psycopg.connect("", autocommit=True) as conn:
        b, g = enqueue(conn, bad), enqueue(conn, good)
    run_worker(worker)
    assert status(db, b) == "failed" and status(db, g) == "succeeded"
    (error,) = db.execute("select error from conveyor.runs where id = %s", (b,)).fetchone()
    assert "the handler's result is not JSON" in error["message"]


def test_under_a_rate_limit_the_worker_waits_until_there_is_room_not_a_whole_poll(db, queue):
    # 4 runs a second, 12 runs: with a 30 s poll the worker would take a minute and more; it
    # sleeps until rate_limited_until instead, and drains in about 3 s
    db.execute("select conveyor.set_queue(%s, rate_limit => '4/1s')", (queue,))
    task = define(db, queue, "limited")
    worker = Worker(queues=queue, batch=10, poll=30.0)
    worker.task(task)(lambda job: None)
    with psycopg.connect("", autocommit=True) as conn:
        enqueue_many(conn, task, [{}] * 12)
    started = time.monotonic()
    run_worker(worker, timeout=25)
    took = time.monotonic() - started
    assert 1.9 < took < 15, took
    (most,) = db.execute("""select max(n) from (select count(*) over (order by started_at range between
                                interval '999999 microseconds' preceding and current row) as n
                            from conveyor.attempts where queue = %s) w""", (queue,)).fetchone()
    assert most <= 4
