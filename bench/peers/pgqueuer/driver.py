"""PgQueuer benchmark driver.

Usage: python driver.py <workload> [--jobs N] [--workers W] [--batch B]
The database (PGDATABASE) is expected to be empty: run.sh drops and recreates it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from importlib.metadata import version

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "common"))

import asyncpg  # noqa: E402
from benchlib import (  # noqa: E402
    Ledger, die, now, parse_args, pg_env, produce, result, timeout_s, wait_until,
)
from pgqueuer.db import AsyncpgDriver, AsyncpgPoolDriver  # noqa: E402
from pgqueuer.models import Job  # noqa: E402
from pgqueuer.qm import QueueManager  # noqa: E402
from pgqueuer.queries import Queries  # noqa: E402
from pgqueuer.types import QueueExecutionMode  # noqa: E402

ENTRYPOINT = "noop"
args = parse_args("pgqueuer")
logging.basicConfig(level=logging.WARNING, stream=sys.stderr)


def connect_kwargs() -> dict[str, object]:
    env = pg_env()
    return {"host": env["host"], "port": int(env["port"]), "user": env["user"],
            "database": env["dbname"]}


async def main() -> None:
    base = {"peer": "pgqueuer", "version": version("pgqueuer"), "workload": args.label,
            "jobs": args.jobs, "workers": args.workers}
    sql = await asyncpg.connect(**connect_kwargs())
    # One pool for the producers: one connection each (PgQueuer's pool driver).
    pool = await asyncpg.create_pool(**connect_kwargs(), min_size=args.workers, max_size=args.workers + 1)
    queries = Queries(AsyncpgPoolDriver(pool))
    await queries.install()

    async def count(table: str, where: str = "true") -> int:
        return await sql.fetchval(f"select count(*) from {table} where {where}")

    def enqueue_many(n: int, first: int):
        return queries.enqueue([ENTRYPOINT] * n, [str(first + k).encode() for k in range(n)], [0] * n)

    if args.workload == "enqueue_single":
        t0 = now()
        await produce(args.jobs, args.workers, 1,
                      lambda _n, i: queries.enqueue(ENTRYPOINT, str(i).encode(), 0))
        seconds = now() - t0
        queued = await count("pgqueuer")
        if queued != args.jobs:
            raise RuntimeError(f"pgqueuer has {queued} jobs, expected {args.jobs}")
        result({**base, "batch": 1, "knob": "Queries.enqueue()_per_job", "verified": f"queued={queued}"}, seconds)

    elif args.workload == "enqueue_batch":
        t0 = now()
        await produce(args.jobs, args.workers, args.batch, enqueue_many)
        seconds = now() - t0
        queued = await count("pgqueuer")
        if queued != args.jobs:
            raise RuntimeError(f"pgqueuer has {queued} jobs, expected {args.jobs}")
        result({**base, "batch": args.batch, "knob": f"Queries.enqueue(lists_of_{args.batch})",
                "verified": f"queued={queued}"}, seconds)

    else:
        await produce(args.jobs, 4, 1000, enqueue_many)
        queued = await count("pgqueuer")
        if queued != args.jobs:
            raise RuntimeError(f"pre-enqueue left {queued} jobs, expected {args.jobs}")
        await sql.execute("vacuum analyze pgqueuer")

        # W workers, each a QueueManager on its own connection (what `pgq run` starts, once per
        # worker process), each dequeuing `batch_size` jobs per query; drain mode makes a
        # worker stop once the queue is empty and its jobs are finished. A finished job is
        # deleted from `pgqueuer` and logged, status 'successful', in `pgqueuer_log`.
        ledger = Ledger()
        managers = []
        for _ in range(args.workers):
            qm = QueueManager(Queries(AsyncpgDriver(await asyncpg.connect(**connect_kwargs()))))

            @qm.entrypoint(ENTRYPOINT)
            async def noop(job: Job) -> None:
                ledger.record(job.id)

            managers.append(qm)
        t0 = now()
        await asyncio.wait_for(
            asyncio.gather(*(qm.run(batch_size=args.batch, mode=QueueExecutionMode.drain)
                             for qm in managers)),
            timeout_s())
        await wait_until(lambda: successful(sql), args.jobs, timeout_s())
        seconds = now() - t0
        done = await successful(sql)
        distinct = await sql.fetchval(
            "select count(distinct job_id) from pgqueuer_log where status = 'successful'")
        left = await count("pgqueuer")
        if (done != args.jobs or distinct != args.jobs or left != 0 or ledger.duplicates
                or ledger.count != args.jobs):
            raise RuntimeError(f"verification: successful={done} distinct={distinct} jobs_left={left} "
                               f"handled={ledger.count} duplicates={ledger.duplicates}")
        result({**base, "batch": args.batch,
                "knob": f"{args.workers}xQueueManager.run(batch_size={args.batch},mode=drain)",
                "verified": f"deleted,logged_successful={done}"}, seconds)
    await pool.close()
    await sql.close()


async def successful(sql: asyncpg.Connection) -> int:
    """Jobs PgQueuer logged as successful (pgqueuer_log rows; one per finished job)."""
    return await sql.fetchval("select count(*) from pgqueuer_log where status = 'successful'")


try:
    asyncio.run(main())
except Exception as exc:  # noqa: BLE001
    die(f"peer=pgqueuer workload={args.label}: {type(exc).__name__}: {exc}")
