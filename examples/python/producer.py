#!/usr/bin/env python3
"""Define the Python demo tasks and enqueue COUNT runs of each into the queue `python`.

    producer.py [--count N] [--batch TAG]

Connects with the usual PG* variables. Every payload carries {"batch": TAG, "n": i}, so one
batch's runs can be told from earlier ones (TAG defaults to the current time).
"""

import argparse
import os
import sys
import time

import psycopg
from pg_conveyor import enqueue_many

QUEUE = "python"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=3, help="runs of each task (default 3)")
    parser.add_argument("--batch", default=f"py-{int(time.time())}", help="tag written into every payload")
    args = parser.parse_args()

    # CONVEYOR_POOLED=1 (behind a transaction pooler): no server-side prepared statements
    pooled = os.environ.get("CONVEYOR_POOLED", "") not in ("", "0")
    with psycopg.connect(prepare_threshold=None if pooled else 5) as conn:  # one transaction, committed when the block ends
        # define_task is create-or-replace: running the producer again is harmless
        conn.execute("select conveyor.define_task('python.ok', queue => %s)", (QUEUE,))
        conn.execute("select conveyor.define_task('python.flaky', queue => %s, max_attempts => 3, delay => '1s')",
                     (QUEUE,))
        conn.execute("select conveyor.define_task('python.wait', queue => %s)", (QUEUE,))
        conn.execute("select conveyor.define_task('python.slow', queue => %s)", (QUEUE,))

        for task in ("python.ok", "python.flaky", "python.wait", "python.slow"):
            payloads = [{"batch": args.batch, "n": i} for i in range(1, args.count + 1)]
            if task == "python.slow":
                for p in payloads:
                    p["seconds"] = 2.5
            # enqueue_many: one statement for the lot, in this transaction
            ids = enqueue_many(conn, task, payloads)
            print(f"enqueued {len(ids)} x {task}: {', '.join(ids)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
