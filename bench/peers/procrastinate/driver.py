"""Procrastinate benchmark driver.

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

import procrastinate  # noqa: E402
import psycopg  # noqa: E402
from benchlib import (  # noqa: E402
    Ledger, conninfo, die, now, parse_args, produce, result, timeout_s, wait_until,
)

QUEUE = "bench"
args = parse_args("procrastinate")
logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
# This script is __main__, which procrastinate warns about for task naming; the task is named
# explicitly below, so the warning does not apply.
logging.getLogger("procrastinate.blueprints").setLevel(logging.ERROR)

# The connector's psycopg pool: one connection per producer or concurrent job, plus the worker's
# LISTEN connection and heartbeat / abort polling.
app = procrastinate.App(
    connector=procrastinate.PsycopgConnector(
        conninfo=conninfo(), min_size=2, max_size=args.workers + 4
    )
)
ledger = Ledger()


@app.task(name="noop", queue=QUEUE, pass_context=True)
async def noop(context: procrastinate.JobContext, i: int) -> None:
    ledger.record(context.job.id)


async def count(sql: psycopg.AsyncConnection, where: str) -> int:
    cur = await sql.execute(f"select count(*) from procrastinate_jobs where {where}")
    return (await cur.fetchone())[0]


async def main() -> None:
    base = {"peer": "procrastinate", "version": version("procrastinate"),
            "note": "fetches_one_job_at_a_time:_no_batch_knob", "workload": args.label,
            "jobs": args.jobs, "workers": args.workers}
    async with app.open_async():
        await app.schema_manager.apply_schema_async()
        sql = await psycopg.AsyncConnection.connect(conninfo(), autocommit=True)

        if args.workload == "enqueue_single":
            t0 = now()
            await produce(args.jobs, args.workers, 1, lambda _n, i: noop.defer_async(i=i))
            seconds = now() - t0
            todo = await count(sql, "status = 'todo'")
            if todo != args.jobs:
                raise RuntimeError(f"procrastinate_jobs has {todo} todo jobs, expected {args.jobs}")
            result({**base, "batch": 1, "knob": "defer_async()_per_job", "verified": f"todo={todo}"}, seconds)

        elif args.workload == "enqueue_batch":
            t0 = now()
            await produce(args.jobs, args.workers, args.batch,
                          lambda n, i: noop.batch_defer_async(*({"i": i + k} for k in range(n))))
            seconds = now() - t0
            todo = await count(sql, "status = 'todo'")
            if todo != args.jobs:
                raise RuntimeError(f"procrastinate_jobs has {todo} todo jobs, expected {args.jobs}")
            result({**base, "batch": args.batch, "knob": f"batch_defer_async({args.batch}_jobs)",
                    "verified": f"todo={todo}"}, seconds)

        else:
            if args.batch != 1:
                # Procrastinate fetches exactly one job per procrastinate_fetch_job() call and
                # finishes each one on its own: it has no batch knob to turn.
                raise RuntimeError("procrastinate has no batch-fetch option: run process with --batch 1")
            await produce(args.jobs, 4, 1000,
                          lambda n, i: noop.batch_defer_async(*({"i": i + k} for k in range(n))))
            todo = await count(sql, "status = 'todo'")
            if todo != args.jobs:
                raise RuntimeError(f"pre-enqueue left {todo} jobs, expected {args.jobs}")
            await sql.execute("vacuum analyze procrastinate_jobs")

            # The documented worker: `concurrency` jobs in flight in one asyncio worker;
            # wait=False makes it stop once the queue is drained. Production defaults otherwise
            # (LISTEN/NOTIFY on, jobs kept as 'succeeded' rows: delete_jobs='never').
            t0 = now()
            await asyncio.wait_for(
                app.run_worker_async(queues=[QUEUE], concurrency=args.workers, wait=False,
                                     install_signal_handlers=False),
                timeout_s())
            await wait_until(lambda: count(sql, "status = 'succeeded'"), args.jobs, timeout_s())
            seconds = now() - t0
            succeeded = await count(sql, "status = 'succeeded'")
            other = await count(sql, "status <> 'succeeded'")
            if (succeeded != args.jobs or other != 0 or ledger.duplicates
                    or ledger.count != args.jobs):
                raise RuntimeError(f"verification: succeeded={succeeded} other_states={other} "
                                   f"handled={ledger.count} duplicates={ledger.duplicates}")
            result({**base, "batch": 1, "knob": f"run_worker_async(concurrency={args.workers})",
                    "verified": f"succeeded={succeeded}"}, seconds)
        await sql.close()


try:
    asyncio.run(main())
except Exception as exc:  # noqa: BLE001
    die(f"peer=procrastinate workload={args.label}: {type(exc).__name__}: {exc}")
