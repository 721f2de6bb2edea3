#!/usr/bin/env node
// A pg_conveyor worker in Node.js: claims runs of QUEUES and runs the handlers of handlers.js.
//
//   node worker.js QUEUES [--drain] [--batch N]
//
// Connects with the usual PG* variables. See conveyor-worker.js for what it does.

import { parseArgs } from 'node:util';
import { Worker } from './conveyor-worker.js';
import { HANDLERS } from './handlers.js';

const { values, positionals } = parseArgs({
  allowPositionals: true,
  options: { drain: { type: 'boolean', default: false }, batch: { type: 'string' } },
});
if (positionals.length !== 1) {
  process.stderr.write('usage: node worker.js QUEUES [--drain] [--batch N]\n');
  process.exit(2);
}
const worker = new Worker(positionals[0], HANDLERS, { drain: values.drain });
if (values.batch) worker.batch = Number(values.batch);
try {
  await worker.run();
  process.exit(0);
} catch (err) {
  worker.log(`fatal: ${err.stack ?? err}`);
  process.exit(1);
}
