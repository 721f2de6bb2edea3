#!/usr/bin/env node
// Define the Node.js demo tasks and enqueue COUNT runs of each into the queue `node`.
//
//   node producer.js [--count N] [--batch TAG]
//
// Connects with the usual PG* variables. Every payload carries {"batch": TAG, "n": i}, so one
// batch's runs can be told from earlier ones (TAG defaults to the current time).

import { parseArgs } from 'node:util';
import pg from 'pg';
import { enqueue } from 'pg-conveyor';

const QUEUE = 'node';
const { values } = parseArgs({
  options: {
    count: { type: 'string', default: '3' },
    batch: { type: 'string', default: `node-${Math.floor(Date.now() / 1000)}` },
  },
});
const count = Number(values.count);

const client = new pg.Client(); // PGHOST, PGPORT, PGUSER, PGDATABASE, PGPASSWORD
await client.connect();
try {
  await client.query('begin');
  // define_task is create-or-replace: running the producer again is harmless
  await client.query('select conveyor.define_task($1, queue => $2)', ['node.ok', QUEUE]);
  await client.query("select conveyor.define_task($1, queue => $2, max_attempts => 3, delay => '1s')", ['node.flaky', QUEUE]);
  await client.query('select conveyor.define_task($1, queue => $2)', ['node.wait', QUEUE]);
  await client.query('select conveyor.define_task($1, queue => $2)', ['node.slow', QUEUE]);

  for (const task of ['node.ok', 'node.flaky', 'node.wait', 'node.slow']) {
    const ids = [];
    for (let n = 1; n <= count; n++) {
      const payload = { batch: values.batch, n, ...(task === 'node.slow' ? { seconds: 2.5 } : {}) };
      // in this transaction: the run id is its 26-character text
      ids.push(await enqueue(client, task, payload));
    }
    console.log(`enqueued ${ids.length} x ${task}: ${ids.join(', ')}`);
  }
  await client.query('commit'); // the runs become claimable (and workers are woken) here
} catch (err) {
  await client.query('rollback');
  throw err;
} finally {
  await client.end();
}
