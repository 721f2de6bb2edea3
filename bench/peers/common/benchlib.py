"""Shared helpers for the Python peer drivers (procrastinate, pgqueuer, pgq).

Standard library only: each driver's virtualenv brings its own database client.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import sys
import time
from collections.abc import Awaitable, Callable

WORKLOADS = ("enqueue_single", "enqueue_batch", "process")


def parse_args(peer: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=peer)
    parser.add_argument("workload", help=f"{'|'.join(WORKLOADS)}|process_batch<B>")
    parser.add_argument("--jobs", type=positive, default=None)
    parser.add_argument("--workers", type=positive, default=8)
    parser.add_argument("--batch", type=positive, default=None)
    args = parser.parse_args()
    # process_batch<B> is another name for `process --batch B` (it is echoed in the RESULT line).
    args.label = args.workload
    alias = re.fullmatch(r"process_batch([1-9][0-9]*)", args.workload)
    if alias:
        args.workload = "process"
        if args.batch is not None and args.batch != int(alias.group(1)):
            parser.error(f"{args.label} and --batch {args.batch} disagree")
        args.batch = int(alias.group(1))
    if args.workload not in WORKLOADS:
        parser.error(f"unknown workload {args.label}")
    if args.jobs is None:
        args.jobs = 20000 if args.workload == "enqueue_single" else 100000
    if args.workload == "enqueue_single":
        args.batch = 1
    elif args.batch is None:
        args.batch = 50 if args.workload == "enqueue_batch" else 1
    return args


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be a positive integer")
    return value


def pg_env() -> dict[str, str]:
    """Connection parameters from PGHOST/PGPORT/PGUSER/PGDATABASE (run.sh sets them)."""
    return {
        "host": os.environ.get("PGHOST", "/tmp/pgc-peers"),
        "port": os.environ.get("PGPORT", "55300"),
        "user": os.environ.get("PGUSER", "postgres"),
        "dbname": os.environ.get("PGDATABASE", "postgres"),
    }


def conninfo() -> str:
    return " ".join(f"{k}={v}" for k, v in pg_env().items())


def timeout_s() -> float:
    return float(os.environ.get("BENCH_TIMEOUT_S", "600"))


def now() -> float:
    return time.perf_counter()


def die(message: str) -> None:
    sys.stderr.write(f"FAIL {message}\n")
    sys.stderr.flush()
    os._exit(1)


def shares(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


async def produce(total: int, producers: int, chunk: int,
                  step: Callable[[int, int], Awaitable[object]]) -> int:
    """`producers` concurrent loops; each awaits step(n, first_index) for chunks of <= chunk
    items until its share of `total` is enqueued (and committed)."""
    counter = {"sent": 0}

    async def loop(share: int) -> None:
        left = share
        while left > 0:
            n = min(chunk, left)
            first = counter["sent"]
            counter["sent"] += n
            await step(n, first)
            left -= n

    await asyncio.gather(*(loop(s) for s in shares(total, producers)))
    return counter["sent"]


class Ledger:
    """Counts handler executions per job id; a second execution of an id is a duplicate."""

    def __init__(self) -> None:
        self.seen: set[object] = set()
        self.duplicates = 0
        self._target: int | None = None
        self._reached = asyncio.Event()

    def record(self, job_id: object) -> None:
        if job_id in self.seen:
            self.duplicates += 1
        else:
            self.seen.add(job_id)
        if self._target is not None and len(self.seen) >= self._target:
            self._reached.set()

    @property
    def count(self) -> int:
        return len(self.seen)

    async def reached(self, n: int, timeout: float) -> None:
        self._target = n
        if self.count >= n:
            return
        try:
            await asyncio.wait_for(self._reached.wait(), timeout)
        except asyncio.TimeoutError:
            raise RuntimeError(f"timeout: handled {self.count} of {n} jobs in {timeout}s") from None


async def wait_until(count_done: Callable[[], Awaitable[int]], n: int, timeout: float,
                     interval: float = 0.02) -> int:
    """Poll count_done() (a query on the peer's own tables) until it returns n."""
    deadline = now() + timeout
    done = await count_done()
    while done != n:
        if done > n:
            raise RuntimeError(f"peer reports {done} completed jobs, more than the {n} enqueued")
        if now() > deadline:
            raise RuntimeError(f"timeout: peer reports {done} of {n} jobs completed after {timeout}s")
        await asyncio.sleep(interval)
        done = await count_done()
    return done


def result(fields: dict[str, object], seconds: float) -> None:
    # system= is the key scripts/bench-report.sh groups by; peer= says the same.
    fields = {"system": fields["peer"], **fields, "seconds": f"{seconds:.2f}", "per_second": round(int(fields["jobs"]) / seconds)}
    line = " ".join(f"{k}={str(v).replace(' ', '')}" for k, v in fields.items())
    print(f"RESULT {line}", flush=True)
