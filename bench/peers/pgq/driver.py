"""PgQ benchmark driver (the pgq extension, Debian package postgresql-15-pgq3).

Usage: python driver.py <workload> [--jobs N] [--workers W] [--batch B]
The database (PGDATABASE) is expected to be empty: run.sh drops and recreates it.

PgQ is a batch event queue: there is no per-job state. Producers append events with
pgq.insert_event(); a ticker (pgqd in production, calling pgq.ticker()) cuts the event stream
into batches at "ticks"; a consumer takes one batch at a time with pgq.next_batch(), reads its
events with pgq.get_batch_events() and acknowledges the whole batch with pgq.finish_batch().
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "common"))

import psycopg  # noqa: E402
from benchlib import Ledger, conninfo, die, now, parse_args, produce, result, timeout_s  # noqa: E402

QUEUE = "bench"
CONSUMER = "bench_consumer"
args = parse_args("pgq")


def pgq_version() -> str:
    """The Debian package's version (the extension itself says 3.5)."""
    try:
        out = subprocess.run(["dpkg-query", "-W", "-f=${Version}", "postgresql-15-pgq3"],
                             capture_output=True, text=True, check=True).stdout.strip()
        return out or "unknown"
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


async def connect() -> psycopg.AsyncConnection:
    return await psycopg.AsyncConnection.connect(conninfo(), autocommit=True)


async def main() -> None:
    sql = await connect()
    await sql.execute("create extension if not exists pgq")
    ext = (await (await sql.execute(
        "select extversion from pg_extension where extname = 'pgq'")).fetchone())[0]
    await sql.execute("select pgq.create_queue(%s)", (QUEUE,))
    # A first tick taken after pgq.force_tick() (which moves the event sequence on): from then on
    # the ticker's count of new events is exact (the queue's creation tick is one short).
    await sql.execute("select pgq.force_tick(%s)", (QUEUE,))
    if (await (await sql.execute("select pgq.ticker(%s)", (QUEUE,))).fetchone())[0] is None:
        raise RuntimeError("pgq.ticker() made no tick after pgq.force_tick()")
    await sql.execute("select pgq.register_consumer(%s, %s)", (QUEUE, CONSUMER))
    table = (await (await sql.execute(
        "select queue_data_pfx from pgq.queue where queue_name = %s", (QUEUE,))).fetchone())[0]
    base = {"peer": "pgq", "version": pgq_version(), "extension": ext,
            # for scripts/bench-report.sh, which prints a peer's note with _ as spaces
            "note": "batch_event_queue,_1_consumer,_no_per-event_state", "workload": args.label,
            "jobs": args.jobs}

    async def events_in_queue() -> int:
        # queue_data_pfx is the parent of the rotating event tables: every event of the queue.
        return (await (await sql.execute(f"select count(*) from {table}")).fetchone())[0]

    insert_many = ("select pgq.insert_event(%s, 'job', d) from unnest(%s::text[]) d")

    if args.workload in ("enqueue_single", "enqueue_batch"):
        conns = [await connect() for _ in range(args.workers)]
        free = list(conns)

        async def step(n: int, first: int) -> None:
            conn = free.pop()
            try:
                if n == 1:  # one event, one transaction (autocommit)
                    await conn.execute("select pgq.insert_event(%s, 'job', %s)", (QUEUE, str(first)))
                else:  # n events in one statement, one transaction
                    await conn.execute(insert_many, (QUEUE, [str(first + k) for k in range(n)]))
            finally:
                free.append(conn)

        chunk = 1 if args.workload == "enqueue_single" else args.batch
        t0 = now()
        await produce(args.jobs, args.workers, chunk, step)
        seconds = now() - t0
        stored = await events_in_queue()
        if stored != args.jobs:
            raise RuntimeError(f"{table} has {stored} events, expected {args.jobs}")
        knob = ("pgq.insert_event()_per_event" if chunk == 1
                else f"pgq.insert_event()x{chunk}_in_one_statement")
        result({**base, "workers": args.workers, "batch": chunk, "knob": knob,
                "verified": f"events={stored}"}, seconds)
        for conn in conns:
            await conn.close()

    else:
        # Pre-fill (not timed): B events per transaction, then a tick. ticker_max_count = B makes
        # pgq.ticker() (what pgqd calls every second) cut a tick exactly there, so every batch
        # the consumer gets holds B events: B is PgQ's batch knob.
        await sql.execute("select pgq.set_queue_config(%s, 'ticker_max_count', %s)",
                          (QUEUE, str(args.batch)))
        # Server-side loop with a COMMIT after the events and after the tick (a DO block run
        # outside a transaction may commit): each tick's snapshot sees its batch committed.
        await sql.execute(f"""
            do $$
            declare
                b int := {int(args.batch)};
                n int := {int(args.jobs)};
                first int := 0;
                k int;
            begin
                while first < n loop
                    k := least(b, n - first);
                    perform pgq.insert_event('{QUEUE}', 'job', (first + g)::text)
                       from generate_series(0, k - 1) g;
                    commit;
                    if k < b then  -- a short last batch: below ticker_max_count, force its tick
                        perform pgq.set_queue_config('{QUEUE}', 'ticker_max_count', '1');
                    end if;
                    if pgq.ticker('{QUEUE}') is null then
                        raise exception 'pgq.ticker() made no tick after % events', first + k;
                    end if;
                    commit;
                    first := first + k;
                end loop;
            end $$""")
        ticks = -(-args.jobs // args.batch)
        stored = await events_in_queue()
        if stored != args.jobs:
            raise RuntimeError(f"pre-fill left {stored} events, expected {args.jobs}")
        await sql.execute(f"vacuum analyze {table}")
        await sql.execute("vacuum analyze pgq.tick")

        # One consumer (PgQ delivers each batch to every registered consumer; there is no
        # competing-consumer mode for one consumer name in this package): per batch, one
        # transaction of next_batch + get_batch_events + the (no-op) handler + finish_batch.
        consumer = await psycopg.AsyncConnection.connect(conninfo())
        ledger = Ledger()
        batches = 0
        t0 = now()
        while True:
            async with consumer.transaction():
                cur = await consumer.execute("select pgq.next_batch(%s, %s)", (QUEUE, CONSUMER))
                batch_id = (await cur.fetchone())[0]
                if batch_id is None:
                    break
                cur = await consumer.execute("select ev_id from pgq.get_batch_events(%s)", (batch_id,))
                for (ev_id,) in await cur.fetchall():
                    ledger.record(ev_id)
                await consumer.execute("select pgq.finish_batch(%s)", (batch_id,))
            batches += 1
            if now() - t0 > timeout_s():
                raise RuntimeError(f"timeout after {batches} batches")
        seconds = now() - t0
        await consumer.close()

        # Verify: every event handled once, and the consumer's position (pgq.subscription) is
        # the queue's last tick with nothing pending.
        info = await (await sql.execute(
            "select last_tick, pending_events from pgq.get_consumer_info(%s, %s)",
            (QUEUE, CONSUMER))).fetchone()
        last_tick = (await (await sql.execute(
            "select max(tick_id) from pgq.tick t join pgq.queue q on q.queue_id = t.tick_queue "
            "where q.queue_name = %s", (QUEUE,))).fetchone())[0]
        if (ledger.count != args.jobs or ledger.duplicates or info[0] != last_tick
                or (info[1] or 0) != 0 or batches != ticks):
            raise RuntimeError(
                f"verification: handled={ledger.count} duplicates={ledger.duplicates} "
                f"consumer_last_tick={info[0]} queue_last_tick={last_tick} pending={info[1]} "
                f"batches={batches} ticks={ticks}")
        result({**base, "workers": 1, "batch": args.batch,
                "knob": f"ticker_max_count={args.batch},1_consumer,next_batch+get_batch_events+finish_batch",
                "verified": f"events_handled_once={ledger.count},batches={batches},consumer_at_last_tick"},
               seconds)
    await sql.close()


try:
    asyncio.run(main())
except Exception as exc:  # noqa: BLE001
    die(f"peer=pgq workload={args.label}: {type(exc).__name__}: {exc}")
