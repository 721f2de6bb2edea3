"""The asyncio worker (AsyncWorker) and enqueue_async against a real cluster: the same endings
as the sync worker, with coroutine handlers; graceful stop; PgBouncer."""

from __future__ import annotations

import asyncio
import os

import psycopg
import pytest
from conftest import define

from pg_conveyor import AsyncWorker, Cancelled, Fail, Interrupted, Release, enqueue_async, enqueue_many_async


def outcomes(db, run_id):
    return [r[0] for r in db.execute("select outcome::text from conveyor.attempts where run_id = %s order by attempt",
                                     (run_id,))]


async def drain(worker, timeout=60.0):
    try:
        await asyncio.wait_for(worker.run(drain=True), timeout)
    except asyncio.TimeoutError:
        pytest.fail(f"the async worker did not drain within {timeout}s")


def test_async_handlers_end_runs_every_way_and_enqueue_async_joins_the_transaction(db, queue):
    ok = define(db, queue, "ok")
    flaky = define(db, queue, "flaky", max_attempts=3, delay="100ms")
    wait = define(db, queue, "wait")
    cancel = define(db, queue, "cancel")
    plain = define(db, queue, "plain")
    finished = []

    async def main():
        async with await psycopg.AsyncConnection.connect("") as conn:  # one transaction
            ids = {t: await enqueue_async(conn, t, {"n": i}) for i, t in enumerate([ok, flaky, wait, cancel, plain])}
            await conn.rollback()
        gone = ids[ok]
        async with await psycopg.AsyncConnection.connect("", autocommit=True) as conn:
            ids = {t: await enqueue_async(conn, t, {"n": i}) for i, t in enumerate([ok, flaky, wait, cancel, plain])}
        worker = AsyncWorker(queues=[queue], batch=3, lease="10s", poll=0.2, on_finished=finished.append)

        @worker.task(ok)
        async def _ok(job):
            await asyncio.sleep(0.05)
            assert await job.heartbeat() is False
            await job.log("async")
            return {"echo": job.payload["n"]}

        @worker.task(flaky)
        async def _flaky(job):
            if job.attempt == 1:
                raise Fail("first attempt fails")
            return {"attempt": job.attempt}

        @worker.task(wait)
        async def _wait(job):
            return Release("100ms", "not ready") if job.attempt < 2 else {"ready": True}

        @worker.task(cancel)
        async def _cancel(job):
            async with await psycopg.AsyncConnection.connect("", autocommit=True) as other:
                await other.execute("select conveyor.cancel_run(%s)", (job.run_id,))
            if await job.heartbeat():
                raise Cancelled()
            return {"finished": "without seeing the cancel"}

        @worker.task(plain)
        def _plain(job):  # a plain function is a handler too
            return {"plain": True}

        await drain(worker)
        return gone, ids

    gone, ids = asyncio.run(main())
    assert db.execute("select count(*) from conveyor.runs where id = %s", (gone,)).fetchone()[0] == 0
    assert db.execute("select result from conveyor.runs where id = %s", (ids[ok],)).fetchone()[0] == {"echo": 0}
    assert outcomes(db, ids[flaky]) == ["failed", "succeeded"]
    assert outcomes(db, ids[wait]) == ["released", "succeeded"]
    assert outcomes(db, ids[cancel]) == ["stopped"]
    assert db.execute("select status::text from conveyor.runs where id = %s", (ids[plain],)).fetchone()[0] == "succeeded"
    assert {(f.run.task, f.outcome) for f in finished} >= {(flaky, "failed"), (wait, "released"), (cancel, "cancelled")}


def test_async_stop_gives_the_run_in_hand_and_the_unstarted_ones_back(db, queue):
    task = define(db, queue, "held")
    interrupted = []

    async def main():
        async with await psycopg.AsyncConnection.connect("", autocommit=True) as conn:
            ids = await enqueue_many_async(conn, task, [{"n": i} for i in range(4)])
        worker = AsyncWorker(queues=queue, batch=4, lease="10s", grace=0.3, poll=0.2)

        @worker.task(task)
        async def _held(job):
            worker.stop()
            try:
                while True:
                    await asyncio.sleep(0.05)
                    await job.heartbeat()
            except Interrupted:
                interrupted.append(job.run_id)
                raise

        await asyncio.wait_for(worker.run(), 30)
        return ids

    ids = asyncio.run(main())
    assert len(interrupted) == 1
    for run_id in ids:
        assert db.execute("select status::text, failures from conveyor.runs where id = %s", (run_id,)).fetchone() == \
            ("queued", 0)
        assert outcomes(db, run_id) == ["interrupted"]


@pytest.mark.skipif(not os.environ.get("CONVEYOR_PGBOUNCER"), reason="CONVEYOR_PGBOUNCER is not set")
def test_async_worker_through_pgbouncer_listening_on_a_direct_session(db, queue):
    task = define(db, queue, "pooled")

    async def main():
        pooled = os.environ["CONVEYOR_PGBOUNCER"]
        worker = AsyncWorker(pooled, queues=queue, batch=5, poll=5.0, pooled=True, listen_conninfo="")
        worker.task(task)(lambda job: {"n": job.payload["n"]})
        async with await psycopg.AsyncConnection.connect(pooled, prepare_threshold=None) as conn:
            for n in range(8):
                await enqueue_async(conn, task, {"n": n})
        await drain(worker)

    asyncio.run(main())
    (done,) = db.execute("select count(*) from conveyor.runs where queue = %s and status = 'succeeded'",
                         (queue,)).fetchone()
    assert done == 8
