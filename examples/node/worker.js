#!/usr/bin/env node
// A pg_conveyor worker in Node.js, on the pg-conveyor package (clients/node): claims runs of
// QUEUES and runs the handlers of handlers.js.
//
//   node worker.js QUEUES [--drain] [--batch N]
//
// Connects with the usual PG* variables. Settings (environment): CONVEYOR_BATCH (10),
// CONVEYOR_LEASE ('30s'), CONVEYOR_POLL_SECONDS (5), CONVEYOR_GRACE (5), CONVEYOR_POOLED (1 behind
// a transaction pooler such as PgBouncer: the worker polls). SIGINT/SIGTERM: no more claims; the
// run in hand may finish within the grace, then it and the claimed runs not started are given
// back. One line per finished run on stdout.

import { parseArgs } from 'node:util';
import { Worker } from 'pg-conveyor';
import { HANDLERS } from './handlers.js';

const { values, positionals } = parseArgs({
  allowPositionals: true,
  options: { drain: { type: 'boolean', default: false }, batch: { type: 'string' } },
});
if (positionals.length !== 1) {
  process.stderr.write('usage: node worker.js QUEUES [--drain] [--batch N]\n');
  process.exit(2);
}
const clock = () => new Date().toTimeString().slice(0, 8);
const worker = new Worker({
  queues: positionals[0],
  batch: Number(values.batch ?? process.env.CONVEYOR_BATCH ?? 10),
  lease: process.env.CONVEYOR_LEASE ?? '30s',
  pollMs: Number(process.env.CONVEYOR_POLL_SECONDS ?? 5) * 1000,
  graceMs: Number(process.env.CONVEYOR_GRACE ?? 5) * 1000,
  pooled: !['', '0'].includes(process.env.CONVEYOR_POOLED ?? ''),
  logger: (m) => process.stderr.write(`${clock()} ${m}\n`),
  onFinished: ({ run, outcome, status }) => process.stdout.write(
    `${clock()} run ${run.runId} ${run.task} attempt ${run.attempt}: ${outcome} -> ${status ?? 'stale lease, not recorded'}\n`),
});
for (const [task, handler] of Object.entries(HANDLERS)) worker.task(task, handler);
try {
  await worker.run({ drain: values.drain });
  process.exit(0);
} catch (err) {
  process.stderr.write(`${clock()} fatal: ${err.stack ?? err}\n`);
  process.exit(1);
}
