// A pg_conveyor worker in Node.js (pg): the machinery. worker.js is its command line,
// handlers.js its demo handlers. The database is its only dependency.
//
// The worker LISTENs on "conveyor.<queue>" for each queue, claims runs in batches with
// conveyor.finish_and_claim and awaits the handler registered for each run's task:
//
//   return a value (or nothing)   succeeded: the successes go with the next claim, in one
//                                 conveyor.finish_and_claim call (one transaction per cycle)
//   throw new Release(delay, why) conveyor.release_run: look again after `delay`, not a failure
//   throw new Fail(msg, {meta, retryable}) or any other error
//                                 conveyor.fail_run: retried with the task's backoff while its budget lasts
//   throw new Cancelled()         (after job.heartbeat() resolved true) conveyor.fail_run, which the
//                                 server records as outcome stopped, run cancelled
//
// A stale lease (SQLSTATE CV001: the lease expired and someone else has the run, or it is over)
// is logged and the worker moves on.
//
// SIGINT/SIGTERM: no more claims; the run in hand may finish within CONVEYOR_GRACE seconds
// (default 5; a second signal ends the grace at once), after which its next job.heartbeat()
// throws Interrupted and the run is given back with conveyor.return_run; claimed runs not yet
// started are given back too. Then the connection is closed and the process exits 0.
//
// drain: resolve once none of the queues' runs is scheduled, queued, running, retrying or released.
//
// Settings (environment): CONVEYOR_BATCH (10), CONVEYOR_LEASE ('30s'), CONVEYOR_POLL_SECONDS (5),
// CONVEYOR_GRACE (5), CONVEYOR_HEARTBEAT_SECONDS (1, used by the handlers), CONVEYOR_POOLED (set
// to 1 when the connection goes through a transaction pooler such as PgBouncer: no LISTEN, which
// needs a session of its own, so the worker polls every CONVEYOR_POLL_SECONDS; node-postgres sends
// unnamed statements, which a pooler follows).

import os from 'node:os';
import pg from 'pg';

const STALE_LEASE = 'CV001';
// a claimed run that waited this long behind others in its batch gets its lease extended first
const REFRESH_AFTER_MS = 10_000;

// --- what a handler can throw ------------------------------------------------------------------

/** Not ready yet: the run waits `delay` (e.g. '1s') and is claimed again. Not a failure. */
export class Release extends Error {
  constructor(delay, reason = null) {
    super(reason ?? `released for ${delay}`);
    this.delay = delay;
    this.reason = reason;
  }
}

/** A failed attempt: retried with the task's backoff while its budget lasts (if retryable). */
export class Fail extends Error {
  constructor(message, { meta = null, retryable = true } = {}) {
    super(message);
    this.meta = meta;
    this.retryable = retryable;
  }
}

/** Throw when job.heartbeat() resolved true: an operator cancelled the run. */
export class Cancelled extends Error {}

/** Thrown by job.heartbeat() when the worker is shutting down and the grace period is over. */
export class Interrupted extends Error {}

const isStale = (err) => err?.code === STALE_LEASE;

// --- one claimed run, as a handler sees it -----------------------------------------------------

class Job {
  constructor(worker, row) {
    this.worker = worker;
    this.runId = row.run_id; // conveyor.ulid: pg does not know the type and hands over its text
    this.leaseToken = row.lease_token; // uuid, as text
    this.task = row.task;
    this.payload = row.payload; // jsonb: already parsed
    this.attempt = row.attempt;
    this.heartbeats = 0;
  }

  /** Extend the lease; resolves true when cancellation was requested. Throws Interrupted when
   *  the worker is shutting down and the grace period is over. */
  async heartbeat(extend = null) {
    this.worker.checkGrace();
    const { rows } = await this.worker.client.query(
      'select conveyor.heartbeat($1, $2, $3) as cancel',
      [this.runId, this.leaseToken, extend ?? this.worker.lease],
    );
    this.heartbeats += 1;
    return rows[0].cancel;
  }
}

// --- the worker --------------------------------------------------------------------------------

export class Worker {
  constructor(queues, handlers, { drain = false } = {}) {
    this.queueNames = queues.split(',').map((q) => q.trim()).filter(Boolean);
    this.queues = this.queueNames.join(',');
    this.handlers = handlers;
    this.drain = drain;
    this.name = `node:${os.hostname()}:${process.pid}`;
    this.batch = Number(process.env.CONVEYOR_BATCH ?? 10);
    this.lease = process.env.CONVEYOR_LEASE ?? '30s';
    this.pollMs = Number(process.env.CONVEYOR_POLL_SECONDS ?? 5) * 1000;
    this.graceMs = Number(process.env.CONVEYOR_GRACE ?? 5) * 1000;
    this.pooled = !['', '0'].includes(process.env.CONVEYOR_POOLED ?? '');
    this.stopAt = null; // Date.now() of the first SIGINT/SIGTERM
    this.graceOver = false;
    this.woken = false; // a notification arrived since the last claim
    this.wake = null; // resolves the current wait
  }

  log(message) {
    process.stderr.write(`${new Date().toTimeString().slice(0, 8)} [${this.name}] ${message}\n`);
  }

  /** One line per finished run, on stdout. */
  report(job, outcome) {
    process.stdout.write(`${new Date().toTimeString().slice(0, 8)} run ${job.runId} ${job.task} attempt ${job.attempt}: ${outcome}\n`);
  }

  get stopping() {
    return this.stopAt !== null;
  }

  onSignal(signal) {
    if (this.stopAt === null) {
      this.stopAt = Date.now();
      this.log(`${signal}: stopping (grace ${this.graceMs / 1000}s)`);
    } else {
      this.graceOver = true;
      this.log(`${signal} again: no more grace`);
    }
    this.wake?.();
  }

  checkGrace() {
    if (this.stopAt !== null && (this.graceOver || Date.now() - this.stopAt >= this.graceMs)) {
      throw new Interrupted();
    }
  }

  async run() {
    const onSignal = (s) => this.onSignal(s);
    process.on('SIGINT', onSignal);
    process.on('SIGTERM', onSignal);
    this.client = new pg.Client({ application_name: this.name }); // PGHOST, PGPORT, PGUSER, ...
    this.client.on('notification', () => {
      this.woken = true;
      this.wake?.();
    });
    await this.client.connect();
    try {
      for (const q of this.pooled ? [] : this.queueNames) {
        // the channel name has a dot in it: it must be a quoted identifier
        await this.client.query(`listen ${this.client.escapeIdentifier(`conveyor.${q}`)}`);
      }
      this.log(`claiming from ${this.queues} (batch ${this.batch}, lease ${this.lease})`);
      while (!this.stopping) {
        this.woken = false; // what woke us is seen by this claim
        const rows = await this.finishAndClaim();
        if (rows.length > 0) {
          await this.process(rows, Date.now());
          continue; // there may be more: claim again before waiting
        }
        if (this.drain && (await this.nothingLeft())) {
          this.log(`drained: nothing left in ${this.queues}`);
          break;
        }
        await this.waitForWakeup();
      }
      await this.flush();
    } finally {
      process.off('SIGINT', onSignal);
      process.off('SIGTERM', onSignal);
      await this.client.end();
    }
    this.log('stopped');
  }

  /** Until a notification on one of our channels, a signal, or the poll interval. */
  waitForWakeup() {
    if (this.woken || this.stopping) return Promise.resolve();
    return new Promise((resolve) => {
      const timer = setTimeout(() => this.wake(), this.pollMs);
      this.wake = () => {
        clearTimeout(timer);
        this.wake = null;
        resolve();
      };
    });
  }

  /** The pending successes as finish_runs items, and their jobs by run id; empties the list. */
  takePending() {
    const pending = this.pending ?? [];
    this.pending = [];
    const items = pending.map(({ job, result }) => ({
      run_id: job.runId, lease_token: job.leaseToken, outcome: 'succeeded', result: result === undefined ? null : result,
    }));
    return { items, jobs: new Map(pending.map(({ job }) => [job.runId, job])) };
  }

  reportSuccess(jobs, runId, status) {
    if (status == null) this.log(`run ${runId}: stale lease, moving on (its success was not recorded)`);
    else this.report(jobs.get(runId), `succeeded -> ${status}`);
  }

  /** Complete the pending successes and claim the next batch, in one call and one transaction. */
  async finishAndClaim() {
    const { items, jobs } = this.takePending();
    const { rows } = await this.client.query(
      `select kind, run_id, status, lease_token, task, payload, attempt
         from conveyor.finish_and_claim($1, $2, $3, $4, $5)`,
      [items.length ? JSON.stringify(items) : null, this.queues, this.name, this.batch, this.lease],
    );
    for (const r of rows) if (r.kind === 'finished') this.reportSuccess(jobs, r.run_id, r.status);
    return rows.filter((r) => r.kind === 'claimed');
  }

  /** Complete the pending successes now, in one conveyor.finish_runs call. */
  async flush() {
    const { items, jobs } = this.takePending();
    if (!items.length) return;
    const { rows } = await this.client.query('select run_id, status from conveyor.finish_runs($1)', [JSON.stringify(items)]);
    for (const r of rows) this.reportSuccess(jobs, r.run_id, r.status);
  }

  async nothingLeft() {
    // conveyor.pending is granted to workers: no read access to the run tables needed
    const { rows } = await this.client.query('select conveyor.pending($1)::int as n', [this.queueNames.join(',')]);
    return rows[0].n === 0;
  }

  async process(rows, claimedAt) {
    for (const row of rows) {
      const job = new Job(this, row);
      if (this.pending?.length) {
        // a success held back behind another run could outlive its lease (heartbeats extend only
        // the run they are for): only the batch's last success waits for the next claim
        await this.flush();
      }
      if (this.stopping) {
        // claimed but not started: give it back for another worker
        await this.finish(job, 'conveyor.return_run($1, $2)', [], 'returned (shutting down)');
      } else if (Date.now() - claimedAt < REFRESH_AFTER_MS || (await this.refresh(job))) {
        await this.runOne(job);
      }
    }
  }

  /** Extend the lease of a run that waited behind others of its batch: its lease has been
   *  running since the claim. False when it must not be started (cancelled, or stale). */
  async refresh(job) {
    let cancel;
    try {
      const { rows } = await this.client.query('select conveyor.heartbeat($1, $2, $3) as cancel',
        [job.runId, job.leaseToken, this.lease]);
      cancel = rows[0].cancel;
    } catch (err) {
      if (!isStale(err)) throw err;
      this.log(`run ${job.runId}: stale lease before it started, moving on (${err.message})`);
      return false;
    }
    if (cancel) {
      await this.finish(job, 'conveyor.fail_run($1, $2, $3)', ['stopped: cancelled before it started'], 'cancelled');
    }
    return !cancel;
  }

  async runOne(job) {
    const handler = this.handlers[job.task];
    let result;
    try {
      if (!handler) throw new Fail(`no handler for task ${job.task} in this worker`, { retryable: false });
      result = await handler(job);
    } catch (err) {
      if (err instanceof Interrupted) {
        return this.finish(job, 'conveyor.return_run($1, $2)', [], 'returned (shutting down)');
      }
      if (err instanceof Cancelled) {
        return this.finish(job, 'conveyor.fail_run($1, $2, $3)', ['stopped: cancelled while running'], 'cancelled');
      }
      if (err instanceof Release) {
        return this.finish(job, 'conveyor.release_run($1, $2, $3, $4)', [err.delay, err.reason], `released for ${err.delay}`);
      }
      if (isStale(err)) { // from job.heartbeat()
        return this.log(`run ${job.runId}: stale lease, moving on (${err.message})`);
      }
      // a Fail, or a bug in a handler: a failed attempt, not a dead worker
      const meta = err instanceof Fail ? err.meta : { exception: err?.name ?? typeof err };
      const retryable = err instanceof Fail ? err.retryable : true;
      const message = err instanceof Fail ? err.message : `${err?.name}: ${err?.message ?? err}`;
      // jsonb parameters: pg JSON-encodes plain objects itself, but would turn an array into a
      // Postgres array literal, so encode explicitly
      return this.finish(job, 'conveyor.fail_run($1, $2, $3, $4, $5)',
        [message, meta == null ? null : JSON.stringify(meta), retryable], `failed: ${message}`);
    }
    // a success waits for the next claim (finishAndClaim), or the next flush
    (this.pending ??= []).push({ job, result });
    return undefined;
  }

  /** One finishing call (complete/fail/release/return). A stale lease is logged, not fatal. */
  async finish(job, call, args, outcome) {
    try {
      const { rows } = await this.client.query(`select ${call} as status`, [job.runId, job.leaseToken, ...args]);
      this.report(job, `${outcome} -> ${rows[0].status}`);
    } catch (err) {
      if (!isStale(err)) throw err;
      this.log(`run ${job.runId}: stale lease, moving on (${err.message})`);
    }
  }
}
