#!/usr/bin/env python3
"""A pg_conveyor worker in Python, on the pg_conveyor package (clients/python): claims runs of
QUEUES and runs the handlers of handlers.py.

    worker.py QUEUES [--drain] [--batch N]

Connects with the usual PG* variables. Settings (environment): CONVEYOR_BATCH (10),
CONVEYOR_LEASE ('30s'), CONVEYOR_POLL_SECONDS (5), CONVEYOR_GRACE (5), CONVEYOR_POOLED (1 behind
a transaction pooler such as PgBouncer: the worker polls and prepares no statements).
SIGINT/SIGTERM: no more claims; the run in hand may finish within the grace, then it and the
claimed runs not started are given back. One line per finished run on stdout.
"""

import argparse
import logging
import os
import sys
from datetime import datetime

from handlers import HANDLERS
from pg_conveyor import Finished, Worker


def report(f: Finished) -> None:
    status = f.status if f.status is not None else "stale lease, not recorded"
    print(f"{datetime.now():%H:%M:%S} run {f.run.run_id} {f.run.task} attempt {f.run.attempt}: {f.outcome} -> {status}",
          flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("queues", help="queue name(s), comma-separated")
    parser.add_argument("--drain", action="store_true", help="exit when the queues have nothing left to do")
    parser.add_argument("--batch", type=int, default=int(os.environ.get("CONVEYOR_BATCH", "10")),
                        help="runs per claim (default CONVEYOR_BATCH or 10)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S", stream=sys.stderr)
    worker = Worker(
        queues=args.queues, batch=args.batch,
        lease=os.environ.get("CONVEYOR_LEASE", "30s"),
        poll=float(os.environ.get("CONVEYOR_POLL_SECONDS", "5")),
        grace=float(os.environ.get("CONVEYOR_GRACE", "5")),
        pooled=os.environ.get("CONVEYOR_POOLED", "") not in ("", "0"),
        on_finished=report,
    )
    for task, handler in HANDLERS.items():
        worker.task(task)(handler)
    worker.run(drain=args.drain)
    return 0


if __name__ == "__main__":
    sys.exit(main())
