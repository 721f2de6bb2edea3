// Shared helpers for the Node.js peer drivers (pg-boss, graphile-worker).
// No dependencies of its own: each driver passes in what it imported.

export const WORKLOADS = ['enqueue_single', 'enqueue_batch', 'process'];

export function parseArgs(argv, peer) {
  const [label, ...rest] = argv;
  // process_batch<B> is another name for `process --batch B` (it is echoed in the RESULT line).
  const alias = /^process_batch([1-9][0-9]*)$/.exec(label || '');
  const workload = alias ? 'process' : label;
  if (!WORKLOADS.includes(workload)) {
    die(`usage: ${peer} <${WORKLOADS.join('|')}|process_batch<B>> [--jobs N] [--workers W] [--batch B]`);
  }
  const opts = { workload, label, jobs: null, workers: 8, batch: alias ? Number(alias[1]) : null };
  for (let i = 0; i < rest.length; i++) {
    const key = rest[i];
    const value = Number(rest[++i]);
    if (!Number.isInteger(value) || value < 1) die(`${key} needs a positive integer`);
    if (key === '--jobs') opts.jobs = value;
    else if (key === '--workers') opts.workers = value;
    else if (key === '--batch') {
      if (alias && value !== opts.batch) die(`${label} and --batch ${value} disagree`);
      opts.batch = value;
    }
    else die(`unknown option ${key}`);
  }
  opts.jobs ??= workload === 'enqueue_single' ? 20000 : 100000;
  if (workload === 'enqueue_single') opts.batch = 1;
  opts.batch ??= workload === 'enqueue_batch' ? 50 : 1;
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

export function result(fields, seconds) {
  const perSecond = Math.round(fields.jobs / seconds);
  // system= is the key scripts/bench-report.sh groups by; peer= says the same.
  const parts = Object.entries({ system: fields.peer, ...fields, seconds: seconds.toFixed(2), per_second: perSecond })
    .map(([k, v]) => `${k}=${String(v).replace(/\s+/g, '')}`);
  process.stdout.write(`RESULT ${parts.join(' ')}\n`);
}
