// Shared helpers for the Node.js peer drivers (pg-boss, graphile-worker).
// No dependencies of its own: each driver passes in what it imported.

export const WORKLOADS = ['enqueue_single', 'enqueue_batch', 'process', 'sustained'];

export function parseArgs(argv, peer) {
  const [label, ...rest] = argv;
  // process_batch<B> is another name for `process --batch B` (it is echoed in the RESULT line).
  const alias = /^process_batch([1-9][0-9]*)$/.exec(label || '');
  const workload = alias ? 'process' : label;
  if (!WORKLOADS.includes(workload)) {
    die(`usage: ${peer} <${WORKLOADS.join('|')}|process_batch<B>> [--jobs N] [--workers W] [--batch B] [--rate R --seconds S --hold 0|1]`);
  }
  const opts = {
    workload, label, jobs: null, workers: 8, batch: alias ? Number(alias[1]) : null, rate: 100, seconds: 60, hold: false,
  };
  for (let i = 0; i < rest.length; i++) {
    const key = rest[i];
    const value = Number(rest[++i]);
    if (key === '--hold') {
      if (value !== 0 && value !== 1) die('--hold needs 0 or 1');
      opts.hold = value === 1;
      continue;
    }
    if (!Number.isInteger(value) || value < 1) die(`${key} needs a positive integer`);
    if (key === '--jobs') opts.jobs = value;
    else if (key === '--rate') opts.rate = value;
    else if (key === '--seconds') opts.seconds = value;
    else if (key === '--workers') opts.workers = value;
    else if (key === '--batch') {
      if (alias && value !== opts.batch) die(`${label} and --batch ${value} disagree`);
      opts.batch = value;
    }
    else die(`unknown option ${key}`);
  }
  opts.jobs ??= workload === 'enqueue_single' ? 20000 : 100000;
  if (workload === 'enqueue_single') opts.batch = 1;
  opts.batch ??= workload === 'enqueue_batch' ? 50 : workload === 'sustained' ? 10 : 1;
  return opts;
}

export function pgConfig() {
  return {
    host: process.env.PGHOST || '/tmp/pgc-peers',
    port: Number(process.env.PGPORT || 55300),
    user: process.env.PGUSER || 'postgres',
    database: process.env.PGDATABASE || 'postgres',
  };
}

export function connectionString() {
  const c = pgConfig();
  // node-postgres takes a Unix socket directory as ?host=/dir
  if (c.host.startsWith('/')) {
    return `postgres://${c.user}@localhost:${c.port}/${c.database}?host=${encodeURIComponent(c.host)}`;
  }
  return `postgres://${c.user}@${c.host}:${c.port}/${c.database}`;
}

export function die(message) {
  process.stderr.write(`FAIL ${message}\n`);
  process.exit(1);
}

export const now = () => performance.now() / 1000;
export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// Split `total` into `parts` near-equal shares.
export function shares(total, parts) {
  return Array.from({ length: parts }, (_, i) => Math.floor(total / parts) + (i < total % parts ? 1 : 0));
}

// Run `producers` concurrent async loops; each calls `step(count)` until its share of `total`
// items is done, where `step` enqueues `count` (<= chunk) items and resolves when they are committed.
export async function produce(total, producers, chunk, step) {
  let sent = 0;
  await Promise.all(shares(total, producers).map(async (share) => {
    for (let left = share; left > 0;) {
      const n = Math.min(chunk, left);
      await step(n, sent);
      sent += n;
      left -= n;
    }
  }));
  return sent;
}

// Counts handler executions per job id; a second execution of an id is a failure.
export class Ledger {
  constructor() { this.seen = new Set(); this.duplicates = 0; this.waiters = []; }
  record(id) {
    const key = String(id);
    if (this.seen.has(key)) this.duplicates++;
    else this.seen.add(key);
    for (const w of this.waiters.splice(0)) w.check();
  }
  get count() { return this.seen.size; }
  // Resolves once `n` distinct ids have been handled (or rejects after timeoutS).
  reached(n, timeoutS) {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`timeout: handled ${this.count} of ${n} jobs in ${timeoutS}s`)), timeoutS * 1000);
      const w = { check: () => { if (this.count >= n) { clearTimeout(timer); resolve(); } else this.waiters.push(w); } };
      w.check();
    });
  }
}

// Polls `countDone()` (a query on the peer's own tables) until it returns `n`.
export async function waitUntil(countDone, n, timeoutS, intervalMs = 20) {
  const deadline = now() + timeoutS;
  let done = await countDone();
  while (done !== n) {
    if (done > n) throw new Error(`peer reports ${done} completed jobs, more than the ${n} enqueued`);
    if (now() > deadline) throw new Error(`timeout: peer reports ${done} of ${n} jobs completed after ${timeoutS}s`);
    await sleep(intervalMs);
    done = await countDone();
  }
  return done;
}

// The RESULT line of `fields` (system= first: the key scripts/bench-report.sh groups by; peer=
// says the same). Values lose their white space, so each field stays one word.
function printResult(fields) {
  const parts = Object.entries({ system: fields.peer, ...fields }).map(([k, v]) => `${k}=${String(v).replace(/\s+/g, '')}`);
  process.stdout.write(`RESULT ${parts.join(' ')}\n`);
}

export function result(fields, seconds) {
  printResult({ ...fields, seconds: seconds.toFixed(2), per_second: Math.round(fields.jobs / seconds) });
}

// Microseconds since the epoch, to carry in a payload from producer to handler.
export const epochMicros = () => Math.round((performance.timeOrigin + performance.now()) * 1000);

function percentile(sorted, p) {
  return sorted.length ? sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))] : 0;
}

// The held-snapshot workload, as pg_conveyor's `sustained` (bench/driver): 4 producers offer
// `opts.rate` jobs a second for `opts.seconds`, each job carrying its enqueue time (payload
// {t}); the peer's workers run meanwhile and each handler call records enqueue -> start. With
// `opts.hold` a REPEATABLE READ transaction (`holdQuery` takes its snapshot) is open from before
// the load to after the figures. Prints processed jobs/s, p50/p99 and the dead tuples of the
// peer's tables (those of `schema` that have any, and their total) at the end.
//   enqueue(payload): one job, resolves when committed
//   startWorkers(onJob): starts the peer's workers; each handler calls onJob(payload)
//   stopWorkers(): stops them
export async function sustained({ opts, base, pg, enqueue, startWorkers, stopWorkers, holdQuery, schema, knob }) {
  const holder = new pg.Client(pgConfig());
  await holder.connect();
  try {
    if (opts.hold) await holder.query(`begin isolation level repeatable read; ${holdQuery}`);
    const latencies = [];
    let processed = 0;
    await startWorkers((payload) => {
      processed++;
      if (payload && Number.isFinite(payload.t)) latencies.push((epochMicros() - payload.t) / 1000);
    });
    let stop = false;
    let offered = 0;
    const perProducer = opts.rate / 4;
    const t0 = now();
    const producers = Promise.all(Array.from({ length: 4 }, async () => {
      for (let n = 0; !stop; n++) {
        const wait = t0 + n / perProducer - now();
        if (wait > 0) await sleep(wait * 1000);
        if (stop) break;
        await enqueue({ t: epochMicros() });
        offered++;
      }
    })).catch((err) => { stop = true; throw err; });
    // (a producer's failure ends the window at once, and the run with it)
    for (const end = now() + opts.seconds; !stop && now() < end;) await sleep(Math.min(200, (end - now()) * 1000));
    stop = true;
    const counted = processed;
    await producers;
    await stopWorkers();
    latencies.sort((a, b) => a - b);
    await sleep(1500); // statistics are flushed about once a second
    const dead = (await holder.query(
      `select relname::text as name, n_dead_tup::bigint as dead, pg_total_relation_size(relid) / 1024 / 1024 as mb
         from pg_stat_user_tables where schemaname = $1 and n_dead_tup > 0 order by relname`, [schema])).rows;
    if (opts.hold) await holder.query('commit');
    const perSecond = Math.round(counted / opts.seconds);
    const { jobs: _jobs, ...about } = base; // (a sustained run has a rate, not a number of jobs)
    const fields = {
      ...about, hold: opts.hold ? 1 : 0, rate: opts.rate, seconds: opts.seconds, per_second: perSecond,
      offered, p50_ms: percentile(latencies, 0.5).toFixed(1), p99_ms: percentile(latencies, 0.99).toFixed(1),
      dead_total: dead.reduce((sum, d) => sum + Number(d.dead), 0),
      ...Object.fromEntries(dead.map((d) => [`dead_${d.name}`, d.dead])),
      ...Object.fromEntries(dead.map((d) => [`mb_${d.name}`, d.mb])),
      knob,
    };
    process.stderr.write(`${base.peer} sustained (${opts.hold ? 'a REPEATABLE READ snapshot held' : 'no snapshot held'}): `
      + `offered ${opts.rate} jobs/s for ${opts.seconds}s (${offered} enqueued), processed ${perSecond} jobs/s, `
      + `p50 ${fields.p50_ms} ms, p99 ${fields.p99_ms} ms; dead tuples ${dead.map((d) => `${d.name} ${d.dead}`).join(', ')}\n`);
    printResult(fields);
  } finally {
    await holder.end().catch(() => {});
  }
}
