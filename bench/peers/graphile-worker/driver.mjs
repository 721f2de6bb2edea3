// graphile-worker benchmark driver. Usage: node driver.mjs <workload> [--jobs N] [--workers W] [--batch B]
// The database (PGDATABASE) is expected to be empty: run.sh drops and recreates it.
import { readFileSync } from 'node:fs';
import { Logger, makeWorkerUtils, run } from 'graphile-worker';
import pg from 'pg';
import {
  parseArgs, pgConfig, connectionString, die, now, produce, Ledger, waitUntil, result, sustained,
} from '../common/bench.mjs';

const VERSION = JSON.parse(readFileSync(new URL('./node_modules/graphile-worker/package.json', import.meta.url))).version;
const TASK = 'noop';
const opts = parseArgs(process.argv.slice(2), 'graphile-worker');
const timeoutS = Number(process.env.BENCH_TIMEOUT_S || 600);

// Quiet logger: only warnings and errors, to stderr.
const quietLogger = new Logger(() => (level, message) => {
  if (level === 'error' || level === 'warning') process.stderr.write(`graphile-worker ${level}: ${message}\n`);
});

// graphile-worker's advice: a pool of max(10, concurrency + 2) connections (its default is 10).
const maxPoolSize = Math.max(10, opts.workers + 2);
const shared = { connectionString: connectionString(), maxPoolSize, logger: quietLogger };
const utils = await makeWorkerUtils(shared);
await utils.migrate();

const sql = new pg.Client(pgConfig());
await sql.connect();
const countJobs = async (where = 'true') =>
  Number((await sql.query(`select count(*) from graphile_worker._private_jobs where ${where}`)).rows[0].count);

const base = { peer: 'graphile-worker', version: VERSION, workload: opts.label, jobs: opts.jobs, workers: opts.workers };
let runner = null;

try {
  if (opts.workload === 'enqueue_single') {
    const t0 = now();
    await produce(opts.jobs, opts.workers, 1, (_n, i) => utils.addJob(TASK, { i }));
    const seconds = now() - t0;
    const queued = await countJobs();
    if (queued !== opts.jobs) throw new Error(`graphile_worker has ${queued} jobs, expected ${opts.jobs}`);
    result({ ...base, batch: 1, knob: 'WorkerUtils.addJob()_per_job', verified: `queued=${queued}` }, seconds);
  } else if (opts.workload === 'enqueue_batch') {
    const t0 = now();
    await produce(opts.jobs, opts.workers, opts.batch,
      (n, i) => utils.addJobs(Array.from({ length: n }, (_, k) => ({ identifier: TASK, payload: { i: i + k } }))));
    const seconds = now() - t0;
    const queued = await countJobs();
    if (queued !== opts.jobs) throw new Error(`graphile_worker has ${queued} jobs, expected ${opts.jobs}`);
    result({ ...base, batch: opts.batch, knob: `WorkerUtils.addJobs(${opts.batch}_jobs)`, verified: `queued=${queued}` }, seconds);
  } else if (opts.workload === 'sustained') {
    // The held-snapshot workload (common/bench.mjs): addJob() per job at a fixed rate, the
    // workers on graphile-worker's defaults (LISTEN for new jobs, one job per fetch)
    let failures = 0;
    await sustained({
      opts, base, pg,
      enqueue: (payload) => utils.addJob(TASK, payload),
      startWorkers: async (onJob) => {
        runner = await run({
          ...shared,
          concurrency: opts.workers,
          noHandleSignals: true,
          taskList: { [TASK]: async (payload) => { onJob(payload); } },
        });
        runner.events.on('job:failed', () => { failures++; });
      },
      stopWorkers: async () => { await runner.stop(); runner = null; },
      holdQuery: 'select count(*) from graphile_worker._private_jobs',
      schema: 'graphile_worker',
      knob: `WorkerUtils.addJob()_per_job,run(concurrency=${opts.workers})`,
    });
    if (failures) throw new Error(`${failures} jobs failed`);
  } else {
    // Pre-enqueue (not timed) with the bulk API.
    await produce(opts.jobs, 4, 1000,
      (n, i) => utils.addJobs(Array.from({ length: n }, (_, k) => ({ identifier: TASK, payload: { i: i + k } }))));
    const queued = await countJobs();
    if (queued !== opts.jobs) throw new Error(`pre-enqueue left ${queued} jobs, expected ${opts.jobs}`);
    await sql.query('vacuum analyze graphile_worker._private_jobs');

    // batch 1: graphile-worker's defaults (each of the `concurrency` workers fetches one job and
    // completes it on its own). batch B > 1: the documented batching options
    // (worker.graphile.org/docs/performance#batching): a local queue of B jobs fetched and locked
    // together, and completions batched (completeJobBatchDelay / failJobBatchDelay = 0 ms:
    // calls made in the same tick are merged).
    const preset = { worker: {} };
    let knob = `run(concurrency=${opts.workers})`;
    if (opts.batch > 1) {
      preset.worker.localQueue = { size: opts.batch };
      preset.worker.completeJobBatchDelay = 0;
      preset.worker.failJobBatchDelay = 0;
      knob = `run(concurrency=${opts.workers},localQueue.size=${opts.batch},completeJobBatchDelay=0)`;
    }
    const ledger = new Ledger();
    let failures = 0;
    const t0 = now();
    runner = await run({
      ...shared,
      concurrency: opts.workers,
      noHandleSignals: true,
      preset,
      taskList: { [TASK]: async (_payload, helpers) => { ledger.record(helpers.job.id); } },
    });
    runner.events.on('job:failed', () => { failures++; });
    await ledger.reached(opts.jobs, timeoutS);
    // Success deletes the job row: done when graphile-worker's job table is empty.
    await waitUntil(async () => opts.jobs - await countJobs(), opts.jobs, timeoutS);
    const seconds = now() - t0;
    await runner.stop();
    runner = null;
    const left = await countJobs();
    if (left !== 0 || failures !== 0 || ledger.duplicates !== 0 || ledger.count !== opts.jobs) {
      throw new Error(`verification: jobs_left=${left} failures=${failures} handled=${ledger.count} duplicates=${ledger.duplicates}`);
    }
    result({ ...base, batch: opts.batch, knob, verified: `deleted=${opts.jobs - left},handled_once=${ledger.count}` }, seconds);
  }
} catch (err) {
  die(`peer=graphile-worker workload=${opts.label}: ${err.stack || err}`);
} finally {
  await runner?.stop().catch(() => {});
  await sql.end().catch(() => {});
  await utils.release().catch(() => {});
}
