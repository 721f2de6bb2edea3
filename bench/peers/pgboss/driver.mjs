// pg-boss benchmark driver. Usage: node driver.mjs <workload> [--jobs N] [--workers W] [--batch B]
// The database (PGDATABASE) is expected to be empty: run.sh drops and recreates it.
import { readFileSync } from 'node:fs';
import { PgBoss } from 'pg-boss';
import pg from 'pg';
import {
  parseArgs, pgConfig, die, now, produce, Ledger, waitUntil, result, sustained,
} from '../common/bench.mjs';

const VERSION = JSON.parse(readFileSync(new URL('./node_modules/pg-boss/package.json', import.meta.url))).version;
const QUEUE = 'bench';
const opts = parseArgs(process.argv.slice(2), 'pgboss');
const timeoutS = Number(process.env.BENCH_TIMEOUT_S || 600);

// Production defaults of pg-boss (maintenance, supervision, scheduling on); the pool is sized
// so every producer or worker has a connection plus headroom for pg-boss's own housekeeping.
const boss = new PgBoss({ ...pgConfig(), max: opts.workers + 4 });
let bossErrors = 0;
boss.on('error', (err) => { bossErrors++; process.stderr.write(`pg-boss error: ${err.message}\n`); });
await boss.start();
// pg-boss >= 10 requires the queue to exist (default policy 'standard'). sustained measures
// latency: its queue has pg-boss 12's notify on (workers woken by LISTEN/NOTIFY, not only polls)
await boss.createQueue(QUEUE, opts.workload === 'sustained' ? { notify: true } : undefined);

let workerBoss = null;
const sql = new pg.Client(pgConfig());
await sql.connect();
const countState = async (state) =>
  Number((await sql.query('select count(*) from pgboss.job where name = $1 and state = $2', [QUEUE, state])).rows[0].count);

const base = { peer: 'pgboss', version: VERSION, workload: opts.label, jobs: opts.jobs, workers: opts.workers };

try {
  if (opts.workload === 'enqueue_single') {
    const t0 = now();
    await produce(opts.jobs, opts.workers, 1, (_n, i) => boss.send(QUEUE, { i }));
    const seconds = now() - t0;
    const created = await countState('created');
    if (created !== opts.jobs) throw new Error(`pgboss.job has ${created} created jobs, expected ${opts.jobs}`);
    result({ ...base, batch: 1, knob: 'send()_per_job', verified: `created=${created}` }, seconds);
  } else if (opts.workload === 'enqueue_batch') {
    const t0 = now();
    await produce(opts.jobs, opts.workers, opts.batch,
      (n, i) => boss.insert(QUEUE, Array.from({ length: n }, (_, k) => ({ data: { i: i + k } }))));
    const seconds = now() - t0;
    const created = await countState('created');
    if (created !== opts.jobs) throw new Error(`pgboss.job has ${created} created jobs, expected ${opts.jobs}`);
    result({ ...base, batch: opts.batch, knob: `insert(${opts.batch}_jobs)`, verified: `created=${created}` }, seconds);
  } else if (opts.workload === 'sustained') {
    // The held-snapshot workload (common/bench.mjs): send() per job at a fixed rate, workers on
    // their own pg-boss instance, fetching up to --batch (10, as pg_conveyor's) jobs a call
    // (useListenNotify: the instance listens, so the queue's notify wakes its workers)
    workerBoss = new PgBoss({ ...pgConfig(), max: opts.workers + 4, useListenNotify: true });
    workerBoss.on('error', (err) => { bossErrors++; process.stderr.write(`pg-boss worker error: ${err.message}\n`); });
    await workerBoss.start();
    const workOptions = { batchSize: opts.batch, localConcurrency: opts.workers, pollingIntervalSeconds: 0.5, burstWhenBatchFull: true };
    await sustained({
      opts, base, pg,
      enqueue: (payload) => boss.send(QUEUE, payload),
      startWorkers: (onJob) => workerBoss.work(QUEUE, workOptions, async (jobs) => { for (const job of jobs) onJob(job.data); }),
      stopWorkers: () => workerBoss.offWork(QUEUE),
      holdQuery: 'select count(*) from pgboss.job',
      schema: 'pgboss',
      knob: `createQueue(notify),useListenNotify,send()_per_job,work(batchSize=${opts.batch},localConcurrency=${opts.workers},pollingIntervalSeconds=0.5,burstWhenBatchFull)`,
    });
  } else {
    // Pre-enqueue (not timed) with the bulk API.
    await produce(opts.jobs, 4, 1000,
      (n, i) => boss.insert(QUEUE, Array.from({ length: n }, (_, k) => ({ data: { i: i + k } }))));
    const created = await countState('created');
    if (created !== opts.jobs) throw new Error(`pre-enqueue left ${created} jobs, expected ${opts.jobs}`);
    await sql.query('vacuum analyze pgboss.job');
    // Let pg-boss's monitor see the backlog (the queue's ready_count), as it would have in a
    // running system, then start the workers on their own pg-boss instance: its queue cache is
    // what the burstWhenReadyExceeds trigger reads.
    await boss.supervise(QUEUE);
    const ready = Number((await sql.query('select ready_count from pgboss.queue where name = $1', [QUEUE])).rows[0].ready_count);
    if (ready !== opts.jobs) process.stderr.write(`note: pgboss.queue.ready_count = ${ready} before the run\n`);
    workerBoss = new PgBoss({ ...pgConfig(), max: opts.workers + 4 });
    workerBoss.on('error', (err) => { bossErrors++; process.stderr.write(`pg-boss worker error: ${err.message}\n`); });
    await workerBoss.start();

    // work() spawns `localConcurrency` workers; each fetches `batchSize` jobs, runs the handler on
    // the array and completes the batch. By default a worker then sleeps pollingIntervalSeconds
    // (2 s) between fetches; pg-boss's documented backlog setting is a "burst" trigger that makes
    // it fetch continuously while there is work: burstWhenBatchFull for batches (ignored at
    // batchSize 1), burstWhenReadyExceeds (from the queue's cached ready count) otherwise.
    const workOptions = { batchSize: opts.batch, localConcurrency: opts.workers, pollingIntervalSeconds: 0.5 };
    if (opts.batch > 1) workOptions.burstWhenBatchFull = true;
    else workOptions.burstWhenReadyExceeds = 1;
    const ledger = new Ledger();
    const t0 = now();
    await workerBoss.work(QUEUE, workOptions, async (jobs) => { for (const job of jobs) ledger.record(job.id); });
    await ledger.reached(opts.jobs, timeoutS);
    await waitUntil(() => countState('completed'), opts.jobs, timeoutS);
    const seconds = now() - t0;
    await workerBoss.offWork(QUEUE);
    const completed = await countState('completed');
    const other = Number((await sql.query("select count(*) from pgboss.job where name = $1 and state <> 'completed'", [QUEUE])).rows[0].count);
    if (completed !== opts.jobs || other !== 0 || ledger.duplicates !== 0 || ledger.count !== opts.jobs) {
      throw new Error(`verification: completed=${completed} other_states=${other} handled=${ledger.count} duplicates=${ledger.duplicates}`);
    }
    const knob = `work(batchSize=${opts.batch},localConcurrency=${opts.workers},${opts.batch > 1 ? 'burstWhenBatchFull' : 'burstWhenReadyExceeds=1'})`;
    result({ ...base, batch: opts.batch, knob, verified: `completed=${completed}` }, seconds);
  }
  if (bossErrors) throw new Error(`${bossErrors} pg-boss error events`);
} catch (err) {
  die(`peer=pgboss workload=${opts.label}: ${err.stack || err}`);
} finally {
  await sql.end().catch(() => {});
  await workerBoss?.stop({ graceful: true, timeout: 5000 }).catch(() => {});
  await boss.stop({ graceful: true, timeout: 5000 }).catch(() => {});
}
