// pg-conveyor for Node.js: workers and producers for pg_conveyor, the job queue inside
// PostgreSQL, on node-postgres (pg). Types: index.d.ts.
//
// Producers enqueue on their own client, inside their own transaction (enqueue, enqueueMany).
// Workers register a handler per task and run: a batch's runs are worked one at a time, the
// ending of its last run goes with the next claim in one conveyor.finish_and_claim call (one
// transaction per cycle), earlier endings are sent before the next run starts, and the runs not
// started yet have their leases extended by the running handler's heartbeats. A stale lease
// (SQLSTATE CV001) is logged, reported with status null, and the worker goes on.

import os from 'node:os';
import pg from 'pg';

export const STALE_LEASE = 'CV001';

// --- what a handler throws (or returns) --------------------------------------------------------

/** Not ready yet: the run waits `delay` ('30s', or milliseconds) and is claimed again. Not a failure. */
export class Release extends Error {
  constructor(delay, reason = null, { meta = null } = {}) {
    super(reason ?? `released for ${delay}`);
    this.name = 'Release';
    this.delay = delay;
    this.reason = reason;
    this.meta = meta;
  }
}

/** A failed attempt: retried with the task's backoff while its budget lasts (if retryable). */
export class Fail extends Error {
  constructor(message, { meta = null, retryable = true } = {}) {
    super(message);
    this.name = 'Fail';
    this.meta = meta;
    this.retryable = retryable;
  }
}

/** Throw when job.heartbeat() resolved true: an operator cancelled the run. */
export class Cancelled extends Error {
  constructor(message = 'cancelled') { super(message); this.name = 'Cancelled'; }
}

/** Thrown by job.heartbeat() once the worker is stopping and its grace period is over. */
export class Interrupted extends Error {
  constructor(message = 'interrupted: the worker is stopping') { super(message); this.name = 'Interrupted'; }
}

/** A duration as pg_conveyor takes it: text passes as it is; a number is milliseconds. */
export function duration(value) {
  if (typeof value === 'string') return value;
  if (typeof value === 'number' && Number.isFinite(value)) return `${Math.round(value)}ms`;
  throw new TypeError(`a duration is text such as '30s' or milliseconds, got ${typeof value}`);
}

// --- producers ---------------------------------------------------------------------------------

const ENQUEUE = `select conveyor.enqueue($1, $2, run_at => $3, delay => $4, priority => $5, queue => $6,
                 idempotency_key => $7, parent_run_id => $8, key => $9)::text as id`;
const ENQUEUE_MANY = `select id::text from conveyor.enqueue_many($1, $2::jsonb[], run_at => $3, delay => $4,
                      priority => $5, queue => $6, idempotency_keys => $7, parent_run_id => $8,
                      keys => $9) as e(id)`;

// jsonb parameters: pg would turn a JS array into a Postgres array literal, so encode explicitly
const json = (value) => (value === undefined || value === null ? null : JSON.stringify(value));

function options(o) {
  return [o.runAt ?? null, o.delay == null ? null : duration(o.delay), o.priority ?? null, o.queue ?? null];
}

/** Enqueue one run on `client` (a pg Client or a PoolClient inside your transaction; nothing is
 *  committed here). Resolves to the run id. */
export async function enqueue(client, task, payload = {}, o = {}) {
  const { rows } = await client.query(ENQUEUE,
    [task, json(payload ?? {}), ...options(o), o.idempotencyKey ?? null, o.parentRunId ?? null, o.key ?? null]);
  return rows[0].id;
}

/** Enqueue one run per payload in one statement; resolves to the ids in payload order. */
export async function enqueueMany(client, task, payloads, o = {}) {
  const { rows } = await client.query(ENQUEUE_MANY,
    [task, payloads.map((p) => json(p ?? {})), ...options(o), o.idempotencyKeys ?? null, o.parentRunId ?? null,
     o.keys ?? null]);
  return rows.map((r) => r.id);
}

// --- one claimed run, as a handler sees it ------------------------------------------------------

const CLAIMED = `run_id::text as "runId", lease_token as "leaseToken", task, queue, payload, attempt, failures,
  releases, attempt_id::text as "attemptId", priority, parent_run_id::text as "parentRunId",
  lease_expires_at as "leaseExpiresAt", timeout_at as "timeoutAt"`;

function claimedRun(row) {
  const { runId, leaseToken, task, queue, payload, attempt, failures, releases, attemptId, priority,
    parentRunId, leaseExpiresAt, timeoutAt } = row;
  return Object.freeze({ runId, leaseToken, task, queue, payload, attempt, failures, releases, attemptId,
    priority, parentRunId, leaseExpiresAt, timeoutAt });
}

export class Job {
  constructor(worker, run) {
    this.worker = worker;
    this.run = run;
    this.heartbeats = 0;
    Object.assign(this, run);
  }

  /** Extend the lease (by `extend`, default the worker's lease); resolves true when an operator
   *  asked to cancel the run (then throw Cancelled). Throws Interrupted once the worker is
   *  stopping and its grace is over, and pg's error with code CV001 when the lease is stale. */
  async heartbeat(extend = null) {
    this.worker.checkGrace();
    const { rows } = await this.worker.client.query('select conveyor.heartbeat($1, $2, $3) as cancel',
      [this.run.runId, this.run.leaseToken, extend == null ? this.worker.lease : duration(extend)]);
    this.heartbeats += 1;
    await this.worker.extendHeld();
    return rows[0].cancel;
  }

  /** Append to the attempt's log (conveyor.attempt_logs). */
  async log(text) {
    await this.worker.client.query('select conveyor.append_log($1, $2, $3)', [this.run.runId, this.run.leaseToken, text]);
  }
}

// --- the worker --------------------------------------------------------------------------------

export class Worker {
  /** See index.d.ts for every option. */
  constructor({ connection = {}, queues = 'default', batch = 10, lease = '30s', pollMs = 5000, graceMs = 5000,
    pooled = false, listenConnection = null, name = null, bindSession = null, tasks = null, onFinished = null,
    logger = (m) => process.stderr.write(`${m}\n`), handleSignals = true } = {}) {
    this.queues = (Array.isArray(queues) ? queues : String(queues).split(',')).map((q) => q.trim()).filter(Boolean);
    if (this.queues.length === 0) throw new RangeError('a worker needs at least one queue');
    if (!Number.isInteger(batch) || batch < 1) throw new RangeError('batch must be an integer of at least 1');
    Object.assign(this, { connection, batch, lease: duration(lease), pollMs, graceMs, pooled, listenConnection,
      bindSession, tasks, onFinished, logger, handleSignals });
    this.name = name ?? `node:${os.hostname()}:${process.pid}`;
    this.handlers = new Map();
    this.stopAt = null;
    this.graceOver = false;
    this.woken = false;
    this.wake = null;
    this.pending = []; // [{ run, item, outcome }] endings not yet sent
    this.held = []; // claimed runs not started yet (the rest of the batch)
    this.extendedAt = new Map(); // run id -> Date.now() its lease last began
    this.leaseMs = 30_000;
  }

  /** Register the handler of task `name`: handler(job) -> result | Release | Fail (or throws). */
  task(name, handler) {
    this.handlers.set(name, handler);
    return this;
  }

  get stopping() { return this.stopAt !== null; }

  /** Stop claiming; the run in hand may finish within the grace. A second call ends the grace. */
  stop() {
    if (this.stopAt === null) this.stopAt = Date.now();
    else this.graceOver = true;
    this.wake?.();
  }

  checkGrace() {
    if (this.stopAt !== null && (this.graceOver || Date.now() - this.stopAt >= this.graceMs)) throw new Interrupted();
  }

  /** Claim and work until stop() (or SIGINT/SIGTERM); { drain: true } resolves once nothing of the
   *  queues is waiting, running or due later. */
  async run({ drain = false } = {}) {
    const onSignal = (signal) => {
      this.logger(`${this.name}: ${signal}: ${this.stopping ? 'no more grace' : `stopping (grace ${this.graceMs}ms)`}`);
      this.stop();
    };
    if (this.handleSignals) { process.on('SIGINT', onSignal); process.on('SIGTERM', onSignal); }
    // node-postgres sends unnamed statements unless told a name: a transaction pooler follows them
    this.client = new pg.Client({ application_name: this.name, ...this.connection });
    // a lost connection is an 'error' event (which would end the process unheard) and then a
    // failed query, which ends run() with that error
    this.client.on('error', (err) => this.logger(`${this.name}: connection lost: ${err.message}`));
    await this.client.connect();
    try {
      const { rows } = await this.client.query(
        // the lease the server grants (max_lease caps what the worker asks for)
        'select (extract(epoch from conveyor.lease_granted($1)) * 1000)::float8 as ms', [this.lease]);
      this.leaseMs = rows[0].ms;
      await this.listenStart();
      this.logger(`${this.name} claiming from ${this.queues.join(',')} (batch ${this.batch}, lease ${this.lease})`);
      while (!this.stopping) {
        this.woken = false; // what woke us is seen by this claim
        const runs = await this.finishAndClaim();
        if (runs.length > 0) {
          await this.process(runs);
          continue; // there may be more: claim again before waiting
        }
        if (drain && (await this.nothingLeft())) break;
        // the poll interval, or less when a rate limit holds runs back until sooner
        const { rows } = await this.client.query(
          'select greatest(extract(epoch from conveyor.rate_limited_until($1) - now()), 0)::float8 * 1000 as ms',
          [this.queues.join(',')]);
        await this.waitForWakeup(rows[0].ms == null ? this.pollMs : Math.min(this.pollMs, rows[0].ms));
      }
      await this.flush();
    } finally {
      if (this.handleSignals) { process.off('SIGINT', onSignal); process.off('SIGTERM', onSignal); }
      await this.client.end();
      if (this.listener && this.listener !== this.client) await this.listener.end();
    }
    this.logger(`${this.name} stopped`);
  }

  async listenStart() {
    if (this.pooled && !this.listenConnection) return; // LISTEN needs a session: poll instead
    if (this.pooled) {
      this.listener = new pg.Client({ application_name: `${this.name}:listen`, ...this.listenConnection });
      // the LISTEN connection lost: the worker polls from then on
      this.listener.on('error', (err) => this.logger(`${this.name}: LISTEN connection lost (${err.message}): polling`));
      await this.listener.connect();
    } else {
      this.listener = this.client;
    }
    this.listener.on('notification', () => { this.woken = true; this.wake?.(); });
    for (const q of this.queues) {
      // the channel has a dot in it: a quoted identifier
      await this.listener.query(`listen ${this.listener.escapeIdentifier(`conveyor.${q}`)}`);
    }
  }

  waitForWakeup(ms) {
    if (this.woken || this.stopping) return Promise.resolve();
    return new Promise((resolve) => {
      const timer = setTimeout(() => this.wake(), ms);
      this.wake = () => { clearTimeout(timer); this.wake = null; resolve(); };
    });
  }

  async nothingLeft() {
    const { rows } = await this.client.query('select conveyor.pending($1)::int as n', [this.queues.join(',')]);
    return rows[0].n === 0;
  }

  /** Each run of a batch in turn. The ending of the batch's last run goes with the next claim;
   *  an earlier one is sent before the next run starts, so that no ending waits behind a handler
   *  that may outlast its lease. The runs not started yet get their leases extended whenever the
   *  running handler heartbeats, and before they start. */
  async process(runs) {
    const now = Date.now();
    this.held = [...runs];
    this.extendedAt = new Map(runs.map((r) => [r.runId, now]));
    while (this.held.length) {
      const run = this.held[0];
      if (this.stopping) { // claimed, not started: give it back for another worker
        this.held.shift();
        this.pending.push({ run, item: { outcome: 'returned' }, outcome: 'returned' });
        continue;
      }
      await this.flush();
      if (this.dueForExtension(run) && !(await this.extend(run))) continue; // cancelled or stale
      this.held.shift();
      this.pending.push(await this.runOne(new Job(this, run)));
    }
  }

  dueForExtension(run) {
    return Date.now() - (this.extendedAt.get(run.runId) ?? 0) > this.leaseMs / 3;
  }

  /** Extend a held run's lease; false when it is no longer held (cancelled, or stale). */
  async extend(run) {
    let cancel;
    try {
      const { rows } = await this.client.query('select conveyor.heartbeat($1, $2, $3) as cancel',
        [run.runId, run.leaseToken, this.lease]);
      cancel = rows[0].cancel;
    } catch (err) {
      if (err?.code !== STALE_LEASE) throw err;
      this.held.splice(this.held.indexOf(run), 1);
      this.report(run, 'stale', null);
      return false;
    }
    this.extendedAt.set(run.runId, Date.now());
    if (cancel) { // cancelled while it waited: it ends stopped, without starting
      this.held.splice(this.held.indexOf(run), 1);
      this.pending.push({ run, item: { outcome: 'failed', message: 'stopped: cancelled before it started' }, outcome: 'cancelled' });
    }
    return !cancel;
  }

  /** From a heartbeat: extend the held runs that are due. */
  async extendHeld() {
    for (const run of this.held.filter((r) => this.dueForExtension(r))) await this.extend(run);
  }

  /** Call the handler; the ending item for finish_runs and what the handler did. */
  async runOne(job) {
    const { run } = job;
    const handler = this.handlers.get(run.task);
    let result;
    try {
      if (!handler) throw new Fail(`no handler for task ${run.task} in this worker`, { retryable: false });
      result = await handler(job);
      if (result instanceof Release || result instanceof Fail) throw result; // returned: the same
    } catch (err) {
      if (err instanceof Interrupted) return { run, item: { outcome: 'returned' }, outcome: 'returned' };
      if (err instanceof Cancelled) {
        return { run, item: { outcome: 'failed', message: 'stopped: cancelled while running' }, outcome: 'cancelled' };
      }
      if (err instanceof Release) {
        let delay;
        try { delay = duration(err.delay); } catch (e) {
          return { run, item: { outcome: 'failed', message: `Release: ${e.message}`, retryable: false }, outcome: 'failed' };
        }
        return { run, item: { outcome: 'released', delay, reason: err.reason, meta: err.meta }, outcome: 'released' };
      }
      if (err?.code === STALE_LEASE) return { run, item: { outcome: 'returned' }, outcome: 'stale' };
      if (err instanceof Fail) {
        return { run, item: { outcome: 'failed', message: err.message, meta: err.meta, retryable: err.retryable }, outcome: 'failed' };
      }
      // a bug in a handler is a failed attempt, not a dead worker
      const name = err?.name ?? typeof err;
      return { run, item: { outcome: 'failed', message: `${name}: ${err?.message ?? err}`, meta: { exception: name } }, outcome: 'failed' };
    }
    try {
      JSON.stringify(result); // as the ending will be: a result that is not JSON fails the attempt, not the worker
    } catch (e) {
      return { run, item: { outcome: 'failed', message: `the handler's result is not JSON: ${e.message}`, meta: { exception: e.name }, retryable: false }, outcome: 'failed' };
    }
    return { run, item: { outcome: 'succeeded', result: result === undefined ? null : result }, outcome: 'succeeded' };
  }

  takePending() {
    const pending = this.pending;
    this.pending = [];
    const items = pending.map(({ run, item }) => ({ ...item, run_id: run.runId, lease_token: run.leaseToken }));
    return { items: items.length ? JSON.stringify(items) : null, sent: pending };
  }

  /** Send the pending endings and claim the next batch in one call (one transaction). */
  async finishAndClaim() {
    const { items, sent } = this.takePending();
    const { rows } = await this.client.query(
      `select kind, status::text, ${CLAIMED} from conveyor.finish_and_claim($1, $2, $3, $4, $5, $6, $7)`,
      [items, this.queues.join(','), this.name, this.batch, this.lease, this.tasks, this.bindSession]);
    const finished = rows.filter((r) => r.kind === 'finished');
    sent.forEach(({ run, outcome }, i) => this.report(run, outcome, finished[i]?.status ?? null));
    return rows.filter((r) => r.kind === 'claimed').map(claimedRun);
  }

  /** Send the pending endings now (conveyor.finish_runs). */
  async flush() {
    const { items, sent } = this.takePending();
    if (!items) return;
    const { rows } = await this.client.query('select status::text from conveyor.finish_runs($1)', [items]);
    sent.forEach(({ run, outcome }, i) => this.report(run, outcome, rows[i].status));
  }

  report(run, outcome, status) {
    if (status == null) this.logger(`run ${run.runId}: stale lease, moving on (its ${outcome} was not recorded)`);
    this.onFinished?.({ run, outcome, status });
  }
}
