"""The asyncio worker: the same worker on psycopg's AsyncConnection, for handlers that are
coroutines (plain functions work too). Settings, handlers, endings and statements are the sync
worker's (worker.py); only the I/O differs.

    worker = AsyncWorker("dbname=app", queues=["emails"])

    @worker.task("emails.send")
    async def send(job):
        if await job.heartbeat():
            raise Cancelled()
        return {"sent": True}

    await worker.run()    # until SIGINT/SIGTERM (in the loop's thread) or worker.stop()
"""

from __future__ import annotations

import asyncio
import inspect
import signal
from typing import Any, Optional

import psycopg
from psycopg import sql

from .durations import Duration, duration
from .errors import STALE_LEASE
from .records import ClaimedRun, Finished
from .worker import (APPEND_LOG, FINISH_AND_CLAIM, FINISH_RUNS, HEARTBEAT, LEASE_SECONDS, PENDING, RATE_WAIT, Pending,
                     WorkerBase, claim_args, claimed, ending, log, unhandled)


class AsyncJob:
    """A claimed run as an async handler sees it: `job.run` and its fields, `await
    job.heartbeat()`, `await job.log()`."""

    def __init__(self, worker: "AsyncWorker", run: ClaimedRun):
        self._worker = worker
        self.run = run
        self.heartbeats = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.run, name)

    async def heartbeat(self, extend: Optional[Duration] = None) -> bool:
        """As Job.heartbeat: True when an operator asked to cancel the run."""
        self._worker._check_grace()
        cur = await self._worker._conn.execute(
            HEARTBEAT, (self.run.run_id, self.run.lease_token, duration(extend) if extend is not None else self._worker.lease))
        (cancel,) = await cur.fetchone()
        self.heartbeats += 1
        await self._worker._extend_held()
        return bool(cancel)

    async def log(self, text: str) -> None:
        await self._worker._conn.execute(APPEND_LOG, (self.run.run_id, self.run.lease_token, text))


class AsyncWorker(WorkerBase):
    """Worker's asyncio twin: one handler at a time, on one AsyncConnection."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._conn: Optional[psycopg.AsyncConnection] = None
        self._listen: Optional[psycopg.AsyncConnection] = None
        self._woken: Optional[asyncio.Event] = None
        self._loop: Optional[asyncio.AbstractEventLoop] = None

    def _wake(self) -> None:
        if self._loop is not None and self._woken is not None:
            self._loop.call_soon_threadsafe(self._woken.set)

    async def run(self, drain: bool = False) -> None:
        """Claim and work until stop(); drain=True: return once nothing of the queues is left."""
        self._loop, self._woken = asyncio.get_running_loop(), asyncio.Event()
        signals = []
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._loop.add_signal_handler(sig, self._on_signal, sig)
                signals.append(sig)
            except (NotImplementedError, RuntimeError, ValueError):
                pass  # not the main thread's loop: stop() only
        self._conn = await psycopg.AsyncConnection.connect(self.conninfo, autocommit=True, application_name=self.name,
                                                           prepare_threshold=None if self.pooled else 5)
        listener: Optional[asyncio.Task] = None
        try:
            cur = await self._conn.execute(LEASE_SECONDS, (self.lease,))
            (self._lease_seconds,) = await cur.fetchone()
            listener = await self._listen_start()
            log.info("%s claiming from %s (batch %d, lease %s)", self.name, ",".join(self.queues), self.batch, self.lease)
            while not self.stopping:
                self._woken.clear()  # what woke us is seen by this claim
                runs = await self._finish_and_claim()
                if runs:
                    await self._process(runs)
                    continue
                if drain and await self._nothing_left():
                    break
                try:
                    cur = await self._conn.execute(RATE_WAIT, (",".join(self.queues),))
                    (wait,) = await cur.fetchone()
                    # the poll interval, or less when a rate limit holds runs back until sooner
                    await asyncio.wait_for(self._woken.wait(), self.poll if wait is None else min(self.poll, wait))
                except asyncio.TimeoutError:
                    pass
            await self._flush()
        finally:
            for sig in signals:
                self._loop.remove_signal_handler(sig)
            if listener is not None:
                listener.cancel()
            await self._conn.close()
            if self._listen is not None:
                await self._listen.close()
        log.info("%s stopped", self.name)

    async def _listen_start(self) -> Optional[asyncio.Task]:
        """LISTEN on a session connection of its own (the pooled connection gives none, and the
        worker's connection is busy with claims), forwarding notifications to the wakeup."""
        if self.pooled and not self.listen_conninfo:
            return None  # poll
        self._listen = await psycopg.AsyncConnection.connect(
            self.listen_conninfo if self.pooled else self.conninfo, autocommit=True,
            application_name=self.name + ":listen")
        for q in self.queues:
            await self._listen.execute(sql.SQL("listen {}").format(sql.Identifier(f"conveyor.{q}")))

        async def forward():
            try:
                async for _ in self._listen.notifies():
                    self._woken.set()
            except psycopg.Error as e:  # the LISTEN connection is gone: the worker polls from now on
                log.warning("%s: LISTEN connection lost (%s): polling every %gs", self.name, e, self.poll)
        return asyncio.create_task(forward())

    async def _nothing_left(self) -> bool:
        cur = await self._conn.execute(PENDING, (",".join(self.queues),))
        (n,) = await cur.fetchone()
        return n == 0

    async def _process(self, runs: list[ClaimedRun]) -> None:
        """As Worker._process."""
        self._hold(runs)
        while self._held:
            run = self._held[0]
            if self.stopping:
                self._held.pop(0)
                self._pending.append((run, {"outcome": "returned"}, "returned"))
                continue
            await self._flush()
            if self._due_for_extension(run) and not await self._extend(run):
                continue
            self._held.pop(0)
            self._pending.append(await self._run_one(AsyncJob(self, run)))

    async def _extend(self, run: ClaimedRun) -> bool:
        try:
            cur = await self._conn.execute(HEARTBEAT, (run.run_id, run.lease_token, self.lease))
            (cancel,) = await cur.fetchone()
        except psycopg.Error as e:
            if e.sqlstate != STALE_LEASE:
                raise
            self._lost(run, e.diag.message_primary)
            return False
        self._extended(run, bool(cancel))
        return not cancel

    async def _extend_held(self) -> None:
        for run in [r for r in self._held if self._due_for_extension(r)]:
            await self._extend(run)

    async def _run_one(self, job: AsyncJob) -> Pending:
        handler = self.handlers.get(job.run.task)
        if handler is None:
            return unhandled(job.run)
        try:
            result = handler(job)
            if inspect.isawaitable(result):
                result = await result
            return ending(job.run, result)
        except Exception as e:  # noqa: BLE001 - every exception ends the attempt somehow
            return ending(job.run, error=e)

    async def _finish_and_claim(self) -> list[ClaimedRun]:
        items, sent = self._take()
        cur = await self._conn.execute(FINISH_AND_CLAIM, claim_args(self, items))
        finished, runs = claimed(await cur.fetchall(), sent)
        for f in finished:
            self._report(f)
        return runs

    async def _flush(self) -> None:
        items, sent = self._take()
        if items is None:
            return
        cur = await self._conn.execute(FINISH_RUNS, (items,))
        for (run, outcome), (status,) in zip(sent, await cur.fetchall()):
            self._report(Finished(run, outcome, status))
