#!/usr/bin/env python3
"""Enqueue in the same transaction as the application's own write.

    app.py [--batch TAG]

An order is inserted into the app table python_orders and a run of python.ok is enqueued for it
in ONE transaction: commit, and both exist; roll back, and neither does. Exits 1 if that does
not hold. Connects with the usual PG* variables; run producer.py first (it defines the task).
"""

import argparse
import os
import sys
import time

import psycopg
from pg_conveyor import enqueue


class Rollback(Exception):
    pass


def place_order(conn, ref: str, batch: str, fail: bool = False):
    """The application's unit of work: the order row and its run commit or vanish together."""
    with conn.transaction():
        (order_id,) = conn.execute("insert into python_orders (ref, item) values (%s, %s) returning id",
                                   (ref, "book")).fetchone()
        # on the same connection, inside the same transaction: no commit of its own
        run_id = enqueue(conn, "python.ok", {"batch": batch, "order_ref": ref, "order_id": order_id})
        print(f"order {ref}: inserted order {order_id}, enqueued run {run_id}")
        if fail:
            raise Rollback()  # e.g. payment declined: the whole transaction is rolled back


def count(conn, ref: str):
    (orders,) = conn.execute("select count(*) from python_orders where ref = %s", (ref,)).fetchone()
    (runs,) = conn.execute("select count(*) from conveyor.runs where task = 'python.ok' and payload->>'order_ref' = %s",
                           (ref,)).fetchone()
    return orders, runs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", default=f"py-{int(time.time())}")
    args = parser.parse_args()

    # CONVEYOR_POOLED=1 (behind a transaction pooler): no server-side prepared statements
    pooled = os.environ.get("CONVEYOR_POOLED", "") not in ("", "0")
    with psycopg.connect(autocommit=True, prepare_threshold=None if pooled else 5) as conn:  # transactions only where we say so
        conn.execute("create table if not exists python_orders ("
                     " id bigserial primary key, ref text not null unique, item text not null,"
                     " created_at timestamptz not null default now())")
        committed, rolled_back = f"{args.batch}-commit", f"{args.batch}-rollback"

        place_order(conn, committed, args.batch)
        try:
            place_order(conn, rolled_back, args.batch, fail=True)
        except Rollback:
            print(f"order {rolled_back}: rolled back")

        ok = True
        for ref, want in ((committed, (1, 1)), (rolled_back, (0, 0))):
            got = count(conn, ref)
            print(f"order {ref}: {got[0]} order row(s), {got[1]} run(s)" + ("" if got == want else f"  WRONG, want {want}"))
            ok &= got == want
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
