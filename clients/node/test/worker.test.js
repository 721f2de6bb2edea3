// pg-conveyor against a real cluster (the PG* variables; make test points them at its own):
// producer transactions, every way a handler ends a run, cancellation, graceful shutdown, stale
// leases, and PgBouncer in transaction mode (CONVEYOR_PGBOUNCER_PORT, same host and database).
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { after, before, test } from 'node:test';
import pg from 'pg';
import { Cancelled, Fail, Interrupted, Release, Worker, enqueue, enqueueMany } from '../src/index.js';

const db = new pg.Client();
let ticker = null;
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

before(async () => {
  await db.connect();
  const { rows } = await db.query(`select count(*)::int as n from pg_stat_activity
                                   where backend_type = 'pg_conveyor' and datname = current_database()`);
  if (rows[0].n === 0) { // retries and releases come back through tick: tick from here
    const t = new pg.Client();
    await t.connect();
    ticker = { client: t, timer: setInterval(() => t.query('select from conveyor.tick()').catch(() => {}), 100) };
  }
});

after(async () => {
  if (ticker) { clearInterval(ticker.timer); await ticker.client.end(); }
  await db.end();
});

async function define(queue, name, extra = '') {
  const task = `${queue}.${name}`;
  await db.query(`select conveyor.define_task($1, queue => $2${extra})`, [task, queue]);
  return task;
}
const newQueue = () => `js_${randomUUID().slice(0, 8)}`;
const one = async (sql, args) => (await db.query(sql, args)).rows[0];
const status = async (id) => (await one('select status::text as s from conveyor.runs where id = $1', [id])).s;
const outcomes = async (id) => (await db.query('select outcome::text as o from conveyor.attempts where run_id = $1 order by attempt', [id]))
  .rows.map((r) => r.o);

async function drain(worker, timeoutMs = 60_000) {
  let timer;
  const timeout = new Promise((_, reject) => { timer = setTimeout(() => { worker.stop(); worker.stop(); reject(new Error('the worker did not drain')); }, timeoutMs); });
  try { await Promise.race([worker.run({ drain: true }), timeout]); } finally { clearTimeout(timer); }
}

test('enqueue commits and rolls back with the caller\'s transaction', async () => {
  const queue = newQueue();
  const task = await define(queue, 't');
  const c = new pg.Client();
  await c.connect();
  try {
    await c.query('begin');
    const kept = await enqueue(c, task, { n: 1 });
    assert.equal((await one('select count(*)::int as n from conveyor.runs where id = $1', [kept])).n, 0, 'visible before commit');
    await c.query('commit');
    assert.equal(await status(kept), 'queued');
    await c.query('begin');
    const gone = await enqueue(c, task, { n: 2 });
    await c.query('rollback');
    assert.equal((await one('select count(*)::int as n from conveyor.runs where id = $1', [gone])).n, 0);
    const ids = await enqueueMany(c, task, [{ n: [1, 2] }, { n: 3 }], { priority: 2 });
    assert.equal(ids.length, 2);
    assert.deepEqual((await one('select payload from conveyor.runs where id = $1', [ids[0]])).payload, { n: [1, 2] },
      'an array in a payload stays JSON');
    const first = await enqueue(c, task, {}, { idempotencyKey: 'k-1' });
    assert.equal(await enqueue(c, task, {}, { idempotencyKey: 'k-1' }), first);
    assert.equal(await status(await enqueue(c, task, {}, { delay: 3_600_000 })), 'scheduled');
    // concurrency keys, one per run
    const keyed = [...await enqueueMany(c, task, [{}, {}], { keys: ['tenant-1', null] }),
      await enqueue(c, task, {}, { key: 'tenant-2' })];
    const keys = await Promise.all(keyed.map(async (id) =>
      (await one('select concurrency_key as k from conveyor.runs where id = $1', [id])).k));
    assert.deepEqual(keys, ['tenant-1', null, 'tenant-2']);
    await assert.rejects(enqueue(c, task, {}, { delay: 'soon' }), (e) => e.code === '22023' && /invalid duration "soon"/.test(e.message));
  } finally {
    await c.end();
  }
});

test('every way a handler ends a run', async () => {
  const queue = newQueue();
  const ok = await define(queue, 'ok');
  const flaky = await define(queue, 'flaky', ", max_attempts => 3, delay => '100ms'");
  const wait = await define(queue, 'wait');
  const broken = await define(queue, 'broken', ', max_attempts => 1');
  const slow = await define(queue, 'slow');
  const finished = [];
  const worker = new Worker({ queues: [queue], batch: 4, lease: '10s', pollMs: 200, handleSignals: false,
    onFinished: (f) => finished.push(f), logger: () => {} })
    .task(ok, (job) => ({ echo: job.payload.n }))
    .task(flaky, (job) => {
      if (job.attempt === 1) throw new Fail('first attempt fails', { meta: { attempt: 1 } });
      return { attempt: job.attempt, failures: job.failures };
    })
    .task(wait, (job) => (job.attempt < 3 ? new Release('100ms', 'not ready') : { releases: job.releases }))
    .task(broken, () => { throw new TypeError('a bug'); })
    .task(slow, async (job) => {
      for (let i = 0; i < 3; i += 1) { await sleep(200); assert.equal(await job.heartbeat(10_000), false); }
      await job.log('three heartbeats');
      return { heartbeats: job.heartbeats };
    });
  const runs = {};
  for (const [i, t] of [ok, flaky, wait, broken, slow].entries()) runs[t] = await enqueue(db, t, { n: i });
  await drain(worker);
  assert.deepEqual((await one('select result from conveyor.runs where id = $1', [runs[ok]])).result, { echo: 0 });
  assert.deepEqual(await outcomes(runs[flaky]), ['failed', 'succeeded']);
  assert.deepEqual((await one('select result from conveyor.runs where id = $1', [runs[flaky]])).result, { attempt: 2, failures: 1 });
  assert.deepEqual(await outcomes(runs[wait]), ['released', 'released', 'succeeded']);
  assert.equal(await status(runs[broken]), 'failed');
  const { error } = await one('select error from conveyor.runs where id = $1', [runs[broken]]);
  assert.match(error.message, /TypeError: a bug/);
  assert.deepEqual(error.meta, { exception: 'TypeError' });
  assert.deepEqual((await one('select result from conveyor.runs where id = $1', [runs[slow]])).result, { heartbeats: 3 });
  assert.match((await one("select string_agg(chunk, '') as l from conveyor.attempt_logs where run_id = $1", [runs[slow]])).l, /three heartbeats/);
  const seen = new Set(finished.map((f) => `${f.run.task} ${f.outcome} ${f.status}`));
  for (const want of [`${flaky} failed retrying`, `${wait} released released`, `${broken} failed failed`, `${ok} succeeded succeeded`]) {
    assert.ok(seen.has(want), want);
  }
});

test('a cancelled run stops at its next heartbeat', async () => {
  const queue = newQueue();
  const task = await define(queue, 'long');
  let started;
  const running = new Promise((r) => { started = r; });
  const worker = new Worker({ queues: queue, lease: '10s', pollMs: 200, handleSignals: false, logger: () => {} })
    .task(task, async (job) => {
      started();
      for (const end = Date.now() + 30_000; Date.now() < end;) {
        await sleep(50);
        if (await job.heartbeat()) throw new Cancelled();
      }
      return { finished: 'without seeing the cancel' };
    });
  const id = await enqueue(db, task);
  const cancel = running.then(() => db.query('select conveyor.cancel_run($1)', [id]));
  await drain(worker);
  await cancel;
  assert.equal(await status(id), 'cancelled');
  assert.deepEqual(await outcomes(id), ['stopped']);
});

test('stop gives the run in hand and the unstarted ones back', async () => {
  const queue = newQueue();
  const task = await define(queue, 'held');
  const interrupted = [];
  const worker = new Worker({ queues: queue, batch: 5, lease: '10s', graceMs: 300, pollMs: 200, handleSignals: false, logger: () => {} })
    .task(task, async (job) => {
      worker.stop(); // as SIGTERM would
      try {
        for (;;) { await sleep(50); await job.heartbeat(); }
      } catch (err) {
        if (err instanceof Interrupted) interrupted.push(job.runId);
        throw err;
      }
    });
  const ids = await enqueueMany(db, task, [{}, {}, {}, {}, {}]);
  await worker.run();
  assert.equal(interrupted.length, 1, 'only the first run started');
  const { rows } = await db.query('select status::text as s, failures from conveyor.runs where id = any($1::text[]::conveyor.ulid[])', [ids]);
  assert.deepEqual(rows, Array(5).fill({ s: 'queued', failures: 0 }));
  const n = (await one("select count(*)::int as n from conveyor.attempts where run_id = any($1::text[]::conveyor.ulid[]) and outcome = 'interrupted'", [ids])).n;
  assert.equal(n, 5);
});

test('a stale lease is reported and the worker goes on', async () => {
  const queue = newQueue();
  const task = await define(queue, 'late', ", max_attempts => 3, delay => '100ms'");
  const finished = [];
  const worker = new Worker({ queues: queue, lease: '1s', pollMs: 200, handleSignals: false, logger: () => {}, onFinished: (f) => finished.push(f) })
    .task(task, async (job) => {
      if (job.attempt === 1) { // no heartbeat past the lease: tick ends it as crashed
        for (const end = Date.now() + 20_000; (await one('select attempts from conveyor.runs where id = $1', [job.runId])).attempts === 0;) {
          assert.ok(Date.now() < end, 'tick did not expire the lease');
          await sleep(100);
        }
      }
      return { attempt: job.attempt };
    });
  const id = await enqueue(db, task);
  await drain(worker);
  assert.deepEqual(await outcomes(id), ['crashed', 'succeeded']);
  assert.deepEqual(finished.map((f) => [f.outcome, f.status]), [['succeeded', null], ['succeeded', 'succeeded']]);
});

test('bad options are refused before anything runs', () => {
  assert.throws(() => new Worker({ queues: '' }), RangeError);
  assert.throws(() => new Worker({ queues: 'q', batch: 0 }), RangeError);
  assert.throws(() => new Worker({ queues: 'q', lease: {} }), TypeError);
});

for (const listen of [false, true]) {
  test(`through PgBouncer in transaction mode (${listen ? 'LISTEN on a direct session' : 'polling'})`,
    { skip: !process.env.CONVEYOR_PGBOUNCER_PORT && 'CONVEYOR_PGBOUNCER_PORT is not set' }, async () => {
      const pooled = { port: Number(process.env.CONVEYOR_PGBOUNCER_PORT), host: process.env.CONVEYOR_PGBOUNCER_HOST ?? process.env.PGHOST };
      const queue = newQueue();
      const task = await define(queue, 'pooled', ", max_attempts => 2, delay => '100ms'");
      const worker = new Worker({ connection: pooled, queues: queue, batch: 3, pollMs: 300, pooled: true,
        listenConnection: listen ? {} : null, handleSignals: false, logger: () => {} })
        .task(task, async (job) => {
          if (job.attempt === 1 && job.payload.n % 2) throw new Fail('odd ones fail once');
          await job.heartbeat();
          return { n: job.payload.n };
        });
      const producer = new pg.Client(pooled);
      await producer.connect();
      let ids;
      try {
        await producer.query('begin');
        ids = await enqueueMany(producer, task, Array.from({ length: 12 }, (_, n) => ({ n })));
        await producer.query('commit');
      } finally {
        await producer.end();
      }
      await drain(worker);
      assert.equal((await one("select count(*)::int as n from conveyor.runs where queue = $1 and status = 'succeeded'", [queue])).n, 12);
      assert.deepEqual(await outcomes(ids[1]), ['failed', 'succeeded']);
    });
}

test('a claimed run has typed fields', async () => {
  const queue = newQueue();
  const task = await define(queue, 'typed');
  const seen = [];
  const worker = new Worker({ queues: queue, pollMs: 200, handleSignals: false, logger: () => {} })
    .task(task, async (job) => {
      seen.push(job.run);
      // a running parent enqueues its child
      if (job.payload.p) await enqueue(db, task, { c: 1 }, { parentRunId: job.runId, priority: 7 });
    });
  const parent = await enqueue(db, task, { p: 1 });
  await drain(worker);
  const child = seen.find((r) => r.parentRunId);
  assert.equal(child.parentRunId, parent);
  assert.equal(child.priority, 7);
  assert.deepEqual(child.payload, { c: 1 });
  assert.ok(child.leaseExpiresAt instanceof Date);
  assert.equal(child.attempt, 1);
  assert.equal(child.queue, queue);
  assert.ok(Object.isFrozen(child));
});

test('the rest of a batch keeps its leases while a long handler heartbeats', async () => {
  const queue = newQueue();
  const task = await define(queue, 'batch');
  const worker = new Worker({ queues: queue, batch: 3, lease: '2s', pollMs: 200, handleSignals: false, logger: () => {} })
    .task(task, async (job) => {
      if (job.payload.n === 0) for (let i = 0; i < 10; i += 1) { await sleep(500); await job.heartbeat(); }
      return { n: job.payload.n };
    });
  const ids = await enqueueMany(db, task, [{ n: 0 }, { n: 1 }, { n: 2 }]);
  await drain(worker);
  for (const id of ids) assert.deepEqual(await outcomes(id), ['succeeded'], id);
});

test('a result that is not JSON fails the attempt, not the worker', async () => {
  const queue = newQueue();
  const bad = await define(queue, 'bad');
  const good = await define(queue, 'good');
  const worker = new Worker({ queues: queue, batch: 2, pollMs: 200, handleSignals: false, logger: () => {} })
    .task(bad, () => ({ big: 10n }))
    .task(good, () => ({ ok: true }));
  const b = await enqueue(db, bad);
  const g = await enqueue(db, good);
  await drain(worker);
  assert.equal(await status(b), 'failed');
  assert.equal(await status(g), 'succeeded');
  assert.match((await one('select error from conveyor.runs where id = $1', [b])).error.message, /result is not JSON/);
});
