#!/usr/bin/env node
// Enqueue in the same transaction as the application's own write.
//
//   node app.js [--batch TAG]
//
// An order is inserted into the app table node_orders and a run of node.ok is enqueued for it in
// ONE transaction: commit, and both exist; roll back, and neither does. Exits 1 if that does not
// hold. Connects with the usual PG* variables; run producer.js first (it defines the task).

import { parseArgs } from 'node:util';
import pg from 'pg';
import { enqueue } from 'pg-conveyor';

const { values } = parseArgs({
  options: { batch: { type: 'string', default: `node-${Math.floor(Date.now() / 1000)}` } },
});

class Rollback extends Error {}

/** The application's unit of work: the order row and its run commit or vanish together. */
async function placeOrder(client, ref, { fail = false } = {}) {
  await client.query('begin');
  try {
    const order = await client.query('insert into node_orders (ref, item) values ($1, $2) returning id', [ref, 'book']);
    const orderId = order.rows[0].id;
    // on the same client, inside the same transaction: no commit of its own
    const runId = await enqueue(client, 'node.ok', { batch: values.batch, order_ref: ref, order_id: orderId });
    console.log(`order ${ref}: inserted order ${orderId}, enqueued run ${runId}`);
    if (fail) throw new Rollback(); // e.g. payment declined: the whole transaction is rolled back
    await client.query('commit');
  } catch (err) {
    await client.query('rollback');
    throw err;
  }
}

async function count(client, ref) {
  const { rows } = await client.query(
    `select (select count(*)::int from node_orders where ref = $1) as orders,
            (select count(*)::int from conveyor.runs where task = 'node.ok' and payload->>'order_ref' = $1) as runs`,
    [ref]);
  return [rows[0].orders, rows[0].runs];
}

const client = new pg.Client();
await client.connect();
let ok = true;
try {
  await client.query(`create table if not exists node_orders (
      id bigserial primary key, ref text not null unique, item text not null,
      created_at timestamptz not null default now())`);
  const committed = `${values.batch}-commit`;
  const rolledBack = `${values.batch}-rollback`;
  await placeOrder(client, committed);
  try {
    await placeOrder(client, rolledBack, { fail: true });
  } catch (err) {
    if (!(err instanceof Rollback)) throw err;
    console.log(`order ${rolledBack}: rolled back`);
  }
  for (const [ref, want] of [[committed, [1, 1]], [rolledBack, [0, 0]]]) {
    const got = await count(client, ref);
    const right = got[0] === want[0] && got[1] === want[1];
    console.log(`order ${ref}: ${got[0]} order row(s), ${got[1]} run(s)${right ? '' : `  WRONG, want ${want}`}`);
    ok &&= right;
  }
} finally {
  await client.end();
}
process.exit(ok ? 0 : 1);
