"""The worker: claims runs of its queues and calls the handler registered for each run's task.

    worker = Worker("dbname=app", queues=["emails"])

    @worker.task("emails.send")
    def send(job):
        ...                      # return a result (JSON-able) or None: succeeded
        raise Release("30s")     # not ready: claimed again later, not a failure
        raise Fail("smtp down")  # failed: retried with the task's backoff while its budget lasts

    worker.run()                 # until SIGINT/SIGTERM or worker.stop()

A batch's runs are worked one at a time: the ending of its last run goes with the next claim in
one conveyor.finish_and_claim call (one transaction per cycle), earlier endings are sent before
the next run starts, and the runs not started yet have their leases extended by the running
handler's heartbeats. A stale lease (SQLSTATE CV001: the lease expired and someone else has the
run, or it is over) is logged and the worker moves on.
"""

from __future__ import annotations

import json
import logging
import os
import select
import signal
import socket
import threading
import time
from typing import Any, Callable, Iterable, Optional, Union

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from .durations import Duration, duration
from .errors import STALE_LEASE, Cancelled, Fail, Interrupted, Release
from .records import ClaimedRun, Finished

log = logging.getLogger("pg_conveyor")

Handler = Callable[["Job"], Any]

# the statements every worker runs (the sync one here, the asyncio one in aio.py)
FINISH_AND_CLAIM = (f"select kind, status::text, {ClaimedRun.COLUMNS}"
                    " from conveyor.finish_and_claim(%s, %s, %s, %s, %s, %s, %s)")
FINISH_RUNS = "select status::text from conveyor.finish_runs(%s)"
HEARTBEAT = "select conveyor.heartbeat(%s, %s, %s)"
APPEND_LOG = "select conveyor.append_log(%s, %s, %s)"
PENDING = "select conveyor.pending(%s)"
# the lease the server grants (max_lease caps what the worker asks for), in seconds
LEASE_SECONDS = "select extract(epoch from conveyor.lease_granted(%s))::float8"
# after an empty claim: how long until a run a rate limit holds back can start (null: none is)
RATE_WAIT = "select greatest(extract(epoch from conveyor.rate_limited_until(%s) - now()), 0)::float8"

#: an ending not sent yet: the run, its finish_runs item, what the handler did
Pending = tuple[ClaimedRun, dict, str]


def ending(run: ClaimedRun, result: Any = None, error: Optional[BaseException] = None) -> Pending:
    """The finish_runs item for what a handler did: returned `result`, or raised `error`."""
    if error is None and isinstance(result, (Release, Fail)):
        error = result  # returned instead of raised: the same
    if error is None:
        try:
            json.dumps(result)  # as Jsonb will: a result that is not JSON fails the attempt, not the worker
        except (TypeError, ValueError) as e:
            return run, {"outcome": "failed", "message": f"the handler's result is not JSON: {e}",
                         "meta": {"exception": type(e).__name__}, "retryable": False}, "failed"
        return run, {"outcome": "succeeded", "result": result}, "succeeded"
    if isinstance(error, Interrupted):
        return run, {"outcome": "returned"}, "returned"
    if isinstance(error, Cancelled):
        return run, {"outcome": "failed", "message": "stopped: cancelled while running"}, "cancelled"
    if isinstance(error, Release):
        try:
            delay = duration(error.delay)
        except TypeError as e:
            return run, {"outcome": "failed", "message": f"Release: {e}", "retryable": False}, "failed"
        return run, {"outcome": "released", "delay": delay, "reason": error.reason, "meta": error.meta}, "released"
    if isinstance(error, Fail):
        return run, {"outcome": "failed", "message": error.message, "meta": error.meta,
                     "retryable": error.retryable}, "failed"
    if isinstance(error, psycopg.Error) and error.sqlstate == STALE_LEASE:
        return run, {"outcome": "returned"}, "stale"  # from job.heartbeat(): not ours any more
    # a bug in a handler is a failed attempt, not a dead worker
    return run, {"outcome": "failed", "message": f"{type(error).__name__}: {error}",
                 "meta": {"exception": type(error).__name__}}, "failed"


def unhandled(run: ClaimedRun) -> Pending:
    return run, {"outcome": "failed", "message": f"no handler for task {run.task} in this worker",
                 "retryable": False}, "failed"


def send(pending: list[Pending]) -> tuple[Optional[Jsonb], list[tuple[ClaimedRun, str]]]:
    """The finish_runs items of the pending endings, and what was sent, in order."""
    items = [dict(item, run_id=run.run_id, lease_token=str(run.lease_token)) for run, item, _ in pending]
    return (Jsonb(items) if items else None), [(run, outcome) for run, _, outcome in pending]


def claim_args(worker, items) -> tuple:
    return (items, ",".join(worker.queues), worker.name, worker.batch, worker.lease, worker.tasks,
            worker.bind_session)


def claimed(rows, sent) -> tuple[list[Finished], list[ClaimedRun]]:
    """finish_and_claim's rows: the endings' reports (item order), then the claimed runs."""
    statuses = [r[1] for r in rows if r[0] == "finished"]
    return ([Finished(run, outcome, status) for (run, outcome), status in zip(sent, statuses)],
            [ClaimedRun(*r[2:]) for r in rows if r[0] == "claimed"])


class Job:
    """A claimed run as a handler sees it: the run's fields (`job.run`, and `job.payload`,
    `job.attempt`... directly), `heartbeat()` and `log()`."""

    def __init__(self, worker: "Worker", run: ClaimedRun):
        self._worker = worker
        self.run = run
        self.heartbeats = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.run, name)

    def heartbeat(self, extend: Optional[Duration] = None) -> bool:
        """Extend the lease (by `extend`, default the worker's lease); True when an operator
        asked to cancel the run (then raise Cancelled). Raises Interrupted when the worker is
        stopping and its grace period is over, and psycopg's error with SQLSTATE CV001 when the
        lease is stale."""
        self._worker._check_grace()
        (cancel,) = self._worker._conn.execute(
            HEARTBEAT,
            (self.run.run_id, self.run.lease_token, duration(extend) if extend is not None else self._worker.lease),
        ).fetchone()
        self.heartbeats += 1
        self._worker._extend_held()
        return bool(cancel)

    def log(self, text: str) -> None:
        """Append to the attempt's log (conveyor.attempt_logs)."""
        self._worker._conn.execute(APPEND_LOG, (self.run.run_id, self.run.lease_token, text))


class WorkerBase:
    """What the sync and the asyncio worker share: the settings, the handlers, stopping.

    conninfo: a libpq connection string ("" takes the PG* environment variables).
    batch: runs per claim. lease: each claimed run's lease (text like "30s", seconds, timedelta).
    poll: seconds between claims when idle and no notification arrives.
    grace: seconds a run in hand may go on after stop() before its heartbeat raises Interrupted.
    pooled: the connection goes through a transaction pooler (PgBouncer): no LISTEN on it and no
      server-side prepared statements; wakeups come from `listen_conninfo` (a direct session
      connection used only for LISTEN) if given, else the worker polls every `poll` seconds.
    bind_session: claim_runs' bind_session (None: the task's, queue's or defaults' option).
    on_finished: called with a Finished record after each run ends (or turns out stale).
    """

    def __init__(self, conninfo: str = "", queues: Union[str, Iterable[str]] = "default", *, batch: int = 10,
                 lease: Duration = "30s", poll: float = 5.0, grace: float = 5.0, pooled: bool = False,
                 listen_conninfo: Optional[str] = None, name: Optional[str] = None,
                 bind_session: Optional[bool] = None, tasks: Optional[list[str]] = None,
                 on_finished: Optional[Callable[[Finished], None]] = None):
        names = queues.split(",") if isinstance(queues, str) else list(queues)
        self.queues = [q.strip() for q in names if q.strip()]
        if not self.queues:
            raise ValueError("a worker needs at least one queue")
        if batch < 1:
            raise ValueError("batch must be at least 1")
        self.conninfo, self.batch, self.lease = conninfo, batch, duration(lease)
        self.poll, self.grace, self.pooled = poll, grace, pooled
        self.listen_conninfo, self.bind_session, self.tasks = listen_conninfo, bind_session, tasks
        self.name = name or f"python:{socket.gethostname()}:{os.getpid()}"
        self.on_finished = on_finished
        self.handlers: dict[str, Handler] = {}
        self._stop_at: Optional[float] = None
        self._grace_over = False
        self._pending: list[Pending] = []  # endings not yet sent
        self._held: list[ClaimedRun] = []  # claimed, not started yet (the rest of the batch)
        self._extended_at: dict[str, float] = {}  # run id -> monotonic time its lease last began
        self._lease_seconds = 30.0

    def task(self, name: str) -> Callable[[Handler], Handler]:
        """Decorator: register the function as the handler of task `name`."""
        def register(fn: Handler) -> Handler:
            self.handlers[name] = fn
            return fn
        return register

    def stop(self) -> None:
        """Stop claiming; the run in hand may finish within the grace period. A second call
        ends the grace at once."""
        if self._stop_at is None:
            self._stop_at = time.monotonic()
        else:
            self._grace_over = True
        self._wake()

    def _wake(self) -> None:
        """Wake an idle wait (each worker its own way)."""

    @property
    def stopping(self) -> bool:
        return self._stop_at is not None

    def _check_grace(self) -> None:
        if self._stop_at is not None and (self._grace_over or time.monotonic() - self._stop_at >= self.grace):
            raise Interrupted()

    def _on_signal(self, signum: int) -> None:
        log.info("%s: %s (grace %gs)", self.name,
                 "stopping" if not self.stopping else "no more grace", self.grace)
        self.stop()

    def _take(self) -> tuple[Optional[Jsonb], list[tuple[ClaimedRun, str]]]:
        pending, self._pending = self._pending, []
        return send(pending)

    def _hold(self, runs: list[ClaimedRun]) -> None:
        now = time.monotonic()
        self._held = list(runs)
        self._extended_at = {r.run_id: now for r in runs}

    def _due_for_extension(self, run: ClaimedRun) -> bool:
        """A held run whose lease began a third of a lease ago (or more): extend it."""
        return time.monotonic() - self._extended_at.get(run.run_id, 0.0) > self._lease_seconds / 3

    def _extended(self, run: ClaimedRun, cancel: bool) -> None:
        self._extended_at[run.run_id] = time.monotonic()
        if cancel:  # cancelled while it waited: it ends stopped, without starting
            self._held.remove(run)
            self._cancelled_before_start(run)

    def _lost(self, run: ClaimedRun, why: str) -> None:
        """A held run whose lease went stale: someone else has it now, or it is over."""
        self._held.remove(run)
        self._report(Finished(run, "stale", None, why))

    def _cancelled_before_start(self, run: ClaimedRun) -> None:
        self._pending.append((run, {"outcome": "failed", "message": "stopped: cancelled before it started"},
                              "cancelled"))

    def _report(self, finished: Finished) -> None:
        if finished.status is None:
            log.warning("run %s: stale lease, moving on (its %s was not recorded)", finished.run.run_id,
                        finished.outcome)
        if self.on_finished is not None:
            self.on_finished(finished)


class Worker(WorkerBase):
    """Claims runs of `queues` (a list or comma-separated text) and runs their handlers, one at a
    time, on one connection. The settings are WorkerBase's."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._wake_r, self._wake_w = os.pipe()  # stop() wakes an idle wait
        self._conn: Optional[psycopg.Connection] = None
        self._listen: Optional[psycopg.Connection] = None

    def _wake(self) -> None:
        os.write(self._wake_w, b"x")  # safe from any thread and from a signal handler

    # --- the loop ----------------------------------------------------------------------------

    def run(self, drain: bool = False) -> None:
        """Claim and work until stop() (or SIGINT/SIGTERM, when called from the main thread).
        drain=True: return once none of the queues' runs is waiting, running or due later."""
        previous = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                previous[sig] = signal.signal(sig, lambda signum, _frame: self._on_signal(signum))
        # autocommit: every call is its own transaction. Behind a transaction pooler, never
        # prepare statements: psycopg prepares a query it has run 5 times, by name, on whichever
        # server connection the pooler gave it
        self._conn = psycopg.connect(self.conninfo, autocommit=True, application_name=self.name,
                                     prepare_threshold=None if self.pooled else 5)
        try:
            (self._lease_seconds,) = self._conn.execute(LEASE_SECONDS, (self.lease,)).fetchone()
            self._listen_start()
            log.info("%s claiming from %s (batch %d, lease %s)", self.name, ",".join(self.queues), self.batch, self.lease)
            while not self.stopping:
                self._drain_notifications()
                runs = self._finish_and_claim()
                if runs:
                    self._process(runs)
                    continue  # there may be more: claim again before waiting
                if drain and self._nothing_left():
                    log.info("%s drained: nothing left in %s", self.name, ",".join(self.queues))
                    break
                self._wait(self._idle_seconds())
            self._flush()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self._conn.close()
            if self._listen is not None and self._listen is not self._conn:
                self._listen.close()
        log.info("%s stopped", self.name)

    def _listen_start(self) -> None:
        if self.pooled and not self.listen_conninfo:
            return  # poll: LISTEN needs a session of its own, which a transaction pooler does not give
        if self.pooled:
            self._listen = psycopg.connect(self.listen_conninfo, autocommit=True,
                                           application_name=self.name + ":listen")
        else:
            self._listen = self._conn
        for q in self.queues:
            # the channel has a dot in it: a quoted identifier
            self._listen.execute(sql.SQL("listen {}").format(sql.Identifier(f"conveyor.{q}")))

    def _drain_notifications(self) -> None:
        """Forget wakeups that came while busy: the claim that follows sees their runs."""
        if self._listen is not None:
            for _ in self._listen.notifies(timeout=0):
                pass

    def _idle_seconds(self) -> float:
        """The poll interval, or less when a rate limit holds runs back until sooner."""
        (wait,) = self._conn.execute(RATE_WAIT, (",".join(self.queues),)).fetchone()
        return self.poll if wait is None else min(self.poll, wait)

    def _wait(self, seconds: float) -> None:
        """Sleep until a notification, stop(), or `seconds`."""
        deadline = time.monotonic() + seconds
        while not self.stopping and (left := deadline - time.monotonic()) > 0:
            if self._listen is not None:
                for _ in self._listen.notifies(timeout=min(left, 0.25), stop_after=1):
                    return
            else:
                ready, _, _ = select.select([self._wake_r], [], [], left)
                if ready:
                    os.read(self._wake_r, 64)

    def _nothing_left(self) -> bool:
        (n,) = self._conn.execute(PENDING, (",".join(self.queues),)).fetchone()
        return n == 0

    # --- one batch ---------------------------------------------------------------------------

    def _process(self, runs: list[ClaimedRun]) -> None:
        """Work through a batch: each run in turn. The ending of the batch's last run goes with
        the next claim; an earlier one is sent before the next run starts, so that no ending
        waits behind a handler that may outlast its lease. The runs not started yet get their
        leases extended whenever the running handler heartbeats, and before they start."""
        self._hold(runs)
        while self._held:
            run = self._held[0]
            if self.stopping:
                # claimed, not started: give it (and the rest) back for another worker
                self._held.pop(0)
                self._pending.append((run, {"outcome": "returned"}, "returned"))
                continue
            self._flush()
            if self._due_for_extension(run) and not self._extend(run):
                continue  # cancelled or stale: no longer held
            self._held.pop(0)
            self._pending.append(self._run_one(Job(self, run)))

    def _extend(self, run: ClaimedRun) -> bool:
        """Extend a held run's lease; False when it is no longer held (cancelled, or stale)."""
        try:
            (cancel,) = self._conn.execute(HEARTBEAT, (run.run_id, run.lease_token, self.lease)).fetchone()
        except psycopg.Error as e:
            if e.sqlstate != STALE_LEASE:
                raise
            self._lost(run, e.diag.message_primary)
            return False
        self._extended(run, bool(cancel))
        return not cancel

    def _extend_held(self) -> None:
        """From a heartbeat: extend the held runs that are due."""
        for run in [r for r in self._held if self._due_for_extension(r)]:
            self._extend(run)

    def _run_one(self, job: Job) -> Pending:
        handler = self.handlers.get(job.run.task)
        if handler is None:
            return unhandled(job.run)
        try:
            return ending(job.run, handler(job))
        except Exception as e:  # noqa: BLE001 - every exception ends the attempt somehow
            return ending(job.run, error=e)

    def _finish_and_claim(self) -> list[ClaimedRun]:
        """Send the pending endings and claim the next batch in one call (one transaction)."""
        items, sent = self._take()
        finished, runs = claimed(self._conn.execute(FINISH_AND_CLAIM, claim_args(self, items)).fetchall(), sent)
        for f in finished:
            self._report(f)
        return runs

    def _flush(self) -> None:
        """Send the pending endings now (conveyor.finish_runs)."""
        items, sent = self._take()
        if items is None:
            return
        for (run, outcome), (status,) in zip(sent, self._conn.execute(FINISH_RUNS, (items,)).fetchall()):
            self._report(Finished(run, outcome, status))
