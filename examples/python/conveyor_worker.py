"""A pg_conveyor worker in Python (psycopg 3): the machinery. worker.py is its command line,
handlers.py its demo handlers. The database is its only dependency.

QUEUES is one queue or several, comma-separated (python,emails). The connection comes from the
usual PG* variables (PGHOST, PGPORT, PGUSER, PGDATABASE, PGPASSWORD).

The worker LISTENs on "conveyor.<queue>" for each queue, claims runs in batches with
conveyor.finish_and_claim and calls the handler registered for each run's task (handlers.py):

    return a dict (or None)     succeeded: batched, the successes go with the next claim in one
                                conveyor.finish_and_claim call (one transaction per cycle)
    raise Release(delay, why)   conveyor.release_run: look again after `delay`, not a failure
    raise Fail(msg, meta, retryable) or any other exception
                                conveyor.fail_run: retried with the task's backoff while its budget lasts
    raise Cancelled             (after job.heartbeat() returned true) conveyor.fail_run, which the
                                server records as outcome stopped, run cancelled

A stale lease (SQLSTATE CV001: the lease expired and someone else has the run, or it is over) is
logged and the worker moves on.

SIGINT/SIGTERM: no more claims; the run in hand may finish within CONVEYOR_GRACE seconds
(default 5; a second signal ends the grace at once), after which its next job.heartbeat()
raises Interrupted and the run is given back with conveyor.return_run; claimed runs not yet
started are given back too. Then the connection is closed and the worker exits 0.

--drain: exit 0 once none of the queues' runs is scheduled, queued, running, retrying or released.

Settings (environment): CONVEYOR_BATCH (10), CONVEYOR_LEASE ('30s'), CONVEYOR_POLL_SECONDS (5),
CONVEYOR_GRACE (5), CONVEYOR_HEARTBEAT_SECONDS (1, used by the handlers), CONVEYOR_POOLED (set to 1
when the connection goes through a transaction pooler such as PgBouncer: no LISTEN, which needs a
session of its own, so the worker polls every CONVEYOR_POLL_SECONDS; no server-side prepared
statements, which the pooler cannot follow across its server connections).
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import time
from datetime import datetime

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

STALE_LEASE = "CV001"
# a claimed run that waited this long behind others in its batch gets its lease extended first
REFRESH_AFTER_SECONDS = 10


# --- what a handler can raise ----------------------------------------------------------------

class Release(Exception):
    """Not ready yet: the run waits `delay` (e.g. '1s') and is claimed again. Not a failure."""

    def __init__(self, delay: str, reason: str | None = None):
        super().__init__(reason or f"released for {delay}")
        self.delay, self.reason = delay, reason


class Fail(Exception):
    """A failed attempt: retried with the task's backoff while its budget lasts (if retryable)."""

    def __init__(self, message: str, meta: dict | None = None, retryable: bool = True):
        super().__init__(message)
        self.message, self.meta, self.retryable = message, meta, retryable


class Cancelled(Exception):
    """Raise when job.heartbeat() returned true: an operator cancelled the run."""


class Interrupted(Exception):
    """Raised by job.heartbeat() when the worker is shutting down and the grace period is over."""


# --- one claimed run, as a handler sees it ----------------------------------------------------

class Job:
    def __init__(self, worker: "Worker", row: tuple):
        self.worker = worker
        self.run_id, self.lease_token, self.task, self.payload, self.attempt = row
        self.heartbeats = 0

    def heartbeat(self, extend: str | None = None) -> bool:
        """Extend the lease; True when cancellation was requested. Raises Interrupted when the
        worker is shutting down and the grace period is over."""
        self.worker.check_grace()
        (cancel,) = self.worker.conn.execute(
            "select conveyor.heartbeat(%s, %s, %s)",
            (self.run_id, self.lease_token, extend or self.worker.lease),
        ).fetchone()
        self.heartbeats += 1
        return cancel


# --- the worker -------------------------------------------------------------------------------

class Worker:
    def __init__(self, queues: str, handlers: dict, drain: bool = False):
        self.queue_names = [q.strip() for q in queues.split(",") if q.strip()]
        self.queues = ",".join(self.queue_names)
        self.handlers = handlers
        self.drain = drain
        self.name = f"python:{socket.gethostname()}:{os.getpid()}"
        self.batch = int(os.environ.get("CONVEYOR_BATCH", "10"))
        self.lease = os.environ.get("CONVEYOR_LEASE", "30s")
        self.poll_seconds = float(os.environ.get("CONVEYOR_POLL_SECONDS", "5"))
        self.grace = float(os.environ.get("CONVEYOR_GRACE", "5"))
        self.pooled = os.environ.get("CONVEYOR_POOLED", "") not in ("", "0")
        self.stop_at: float | None = None  # monotonic time of the first SIGINT/SIGTERM
        self.grace_over = False
        self.pending: list[dict] = []  # successes not yet sent (finish_and_claim, finish_runs)
        self.conn: psycopg.Connection | None = None

    # signals --------------------------------------------------------------------------------

    def on_signal(self, signum, _frame):
        if self.stop_at is None:
            self.stop_at = time.monotonic()
            self.log(f"{signal.Signals(signum).name}: stopping (grace {self.grace:g}s)")
        else:
            self.grace_over = True
            self.log(f"{signal.Signals(signum).name} again: no more grace")

    @property
    def stopping(self) -> bool:
        return self.stop_at is not None

    def check_grace(self):
        if self.stop_at is not None and (self.grace_over or time.monotonic() - self.stop_at >= self.grace):
            raise Interrupted()

    # output ---------------------------------------------------------------------------------

    def log(self, message: str):
        print(f"{datetime.now():%H:%M:%S} [{self.name}] {message}", file=sys.stderr, flush=True)

    def report(self, run_id, task, attempt, outcome):
        """One line per finished run, on stdout."""
        print(f"{datetime.now():%H:%M:%S} run {run_id} {task} attempt {attempt}: {outcome}", flush=True)

    # main loop ------------------------------------------------------------------------------

    def run(self) -> int:
        signal.signal(signal.SIGINT, self.on_signal)
        signal.signal(signal.SIGTERM, self.on_signal)
        # autocommit: every call is its own transaction, and LISTEN takes effect at once
        # behind a transaction pooler: never prepare statements (psycopg prepares a query it has
        # run 5 times, by name, on whichever server connection the pooler gave it)
        self.conn = psycopg.connect(
            autocommit=True, application_name=self.name, prepare_threshold=None if self.pooled else 5
        )
        try:
            for q in [] if self.pooled else self.queue_names:
                # the channel name has a dot in it: it must be a quoted identifier
                self.conn.execute(sql.SQL("listen {}").format(sql.Identifier(f"conveyor.{q}")))
            self.log(f"claiming from {self.queues} (batch {self.batch}, lease {self.lease})")
            while not self.stopping:
                self.drain_notifications()
                rows = self.finish_and_claim()
                if rows:
                    self.process(rows, claimed_at=time.monotonic())
                    continue  # there may be more: claim again before waiting
                if self.drain and self.nothing_left():
                    self.log("drained: nothing left in " + self.queues)
                    break
                self.wait_for_wakeup()
            self.flush()
        finally:
            self.conn.close()
        self.log("stopped")
        return 0

    def drain_notifications(self):
        """Forget wakeups that arrived while we were busy: the claim that follows sees their runs."""
        for _ in self.conn.notifies(timeout=0):
            pass

    def wait_for_wakeup(self):
        """Sleep until a notification on one of our channels, a signal, or the poll interval."""
        deadline = time.monotonic() + self.poll_seconds
        while not self.stopping:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            for _ in self.conn.notifies(timeout=min(left, 0.5), stop_after=1):
                return

    def nothing_left(self) -> bool:
        # conveyor.pending is granted to workers: no read access to the run tables needed
        (n,) = self.conn.execute("select conveyor.pending(%s)", (",".join(self.queue_names),)).fetchone()
        return n == 0

    def process(self, rows, claimed_at: float):
        for row in rows:
            job = Job(self, row)
            if self.stopping:
                # claimed but not started: give it back for another worker
                self.finish(job, "conveyor.return_run(%s, %s)", (), "returned (shutting down)")
                continue
            if self.pending:
                # a success held back behind another run could outlive its lease (heartbeats extend
                # only the run they are for): only the batch's last success waits for the next claim
                self.flush()
            if time.monotonic() - claimed_at > REFRESH_AFTER_SECONDS and not self.refresh(job):
                continue
            self.run_one(job)
        # the successes still pending go with the next claim (finish_and_claim): one call, one commit

    def refresh(self, job: Job) -> bool:
        """Extend the lease of a run that waited behind others of its batch: its lease has been
        running since the claim. False when it must not be started (cancelled, or stale)."""
        try:
            (cancel,) = self.conn.execute("select conveyor.heartbeat(%s, %s, %s)",
                                          (job.run_id, job.lease_token, self.lease)).fetchone()
        except psycopg.Error as e:
            if e.sqlstate != STALE_LEASE:
                raise
            self.log(f"run {job.run_id}: stale lease before it started, moving on ({e.diag.message_primary})")
            return False
        if cancel:
            self.finish(job, "conveyor.fail_run(%s, %s, %s)", ("stopped: cancelled before it started",), "cancelled")
        return not cancel

    def run_one(self, job: Job):
        handler = self.handlers.get(job.task)
        try:
            if handler is None:
                raise Fail(f"no handler for task {job.task} in this worker", retryable=False)
            result = handler(job)
        except Interrupted:
            self.finish(job, "conveyor.return_run(%s, %s)", (), "returned (shutting down)")
        except Cancelled:
            self.finish(job, "conveyor.fail_run(%s, %s, %s)", ("stopped: cancelled while running",), "cancelled")
        except Release as r:
            self.finish(job, "conveyor.release_run(%s, %s, %s, %s)", (r.delay, r.reason), f"released for {r.delay}")
        except Fail as f:
            self.finish(job, "conveyor.fail_run(%s, %s, %s, %s, %s)",
                        (f.message, Jsonb(f.meta) if f.meta is not None else None, f.retryable), f"failed: {f.message}")
        except Exception as e:  # a bug in a handler is a failed attempt, not a dead worker
            if isinstance(e, psycopg.Error) and e.sqlstate == STALE_LEASE:  # from job.heartbeat()
                self.log(f"run {job.run_id}: stale lease, moving on ({e.diag.message_primary})")
                return
            message = f"{type(e).__name__}: {e}"
            self.finish(job, "conveyor.fail_run(%s, %s, %s, %s)",
                        (message, Jsonb({"exception": type(e).__name__})), f"failed: {message}")
        else:
            self.pending.append({"job": job, "result": result})

    def finish(self, job: Job, call: str, args: tuple, outcome: str):
        """One finishing call (complete/fail/release/return). A stale lease is logged, not fatal."""
        try:
            (status,) = self.conn.execute(f"select {call}", (job.run_id, job.lease_token, *args)).fetchone()
        except psycopg.Error as e:
            if e.sqlstate != STALE_LEASE:
                raise
            self.log(f"run {job.run_id}: stale lease, moving on ({e.diag.message_primary})")
            return
        self.report(job.run_id, job.task, job.attempt, f"{outcome} -> {status}")

    def pending_items(self):
        return [
            {"run_id": p["job"].run_id, "lease_token": str(p["job"].lease_token),
             "outcome": "succeeded", "result": p["result"]}
            for p in self.pending
        ]

    def finish_and_claim(self):
        """Complete the pending successes and claim the next batch in one conveyor.finish_and_claim
        call (one transaction); returns the claimed rows (run_id, lease_token, task, payload, attempt)."""
        items = self.pending_items()
        jobs = {p["job"].run_id: p["job"] for p in self.pending}
        self.pending = []
        claimed = []
        for kind, run_id, status, token, task, payload, attempt in self.conn.execute(
                "select kind, run_id, status, lease_token, task, payload, attempt"
                " from conveyor.finish_and_claim(%s, %s, %s, %s, %s)",
                (Jsonb(items) if items else None, self.queues, self.name, self.batch, self.lease)).fetchall():
            if kind == "claimed":
                claimed.append((run_id, token, task, payload, attempt))
            else:
                self.report_success(jobs, run_id, status)
        return claimed

    def report_success(self, jobs, run_id, status):
        job = jobs[run_id]
        if status is None:  # stale lease: someone else has it now, or it is over
            self.log(f"run {run_id}: stale lease, moving on (its success was not recorded)")
        else:
            self.report(run_id, job.task, job.attempt, f"succeeded -> {status}")

    def flush(self):
        """Complete the pending successes in one conveyor.finish_runs call."""
        if not self.pending:
            return
        items = self.pending_items()
        jobs = {p["job"].run_id: p["job"] for p in self.pending}
        self.pending = []
        for run_id, status in self.conn.execute(
                "select run_id, status from conveyor.finish_runs(%s)", (Jsonb(items),)).fetchall():
            self.report_success(jobs, run_id, status)
