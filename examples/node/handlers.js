// The demo handlers of the Node.js worker: one async function per task name.
// A handler gets a pg-conveyor job (runId, task, payload, attempt, heartbeat()) and returns the
// run's result (any JSON value), or throws (or returns) Release / Fail, or throws Cancelled.

import { setTimeout as sleep } from 'node:timers/promises';
import { Cancelled, Fail, Release } from 'pg-conveyor';

const HEARTBEAT_MS = Number(process.env.CONVEYOR_HEARTBEAT_SECONDS ?? 1) * 1000;

/** Completes at once with a small result. */
async function ok(job) {
  const { batch, ...echo } = job.payload;
  return { ok: true, by: 'node', echo };
}

/** Fails on attempt 1, succeeds on attempt 2: the task's retry policy (max_attempts 3, delay 1s)
 *  brings it back. */
async function flaky(job) {
  if (job.attempt === 1) {
    throw new Fail('flaky: failing attempt 1 on purpose', { meta: { attempt: job.attempt } });
  }
  return { ok: true, succeeded_on_attempt: job.attempt };
}

/** Releases on attempts 1 and 2 (the thing it waits for is 'not ready'), completes on attempt 3.
 *  A release is not a failure: it spends no retry budget. */
async function wait(job) {
  if (job.attempt < 3) throw new Release('1s', 'not ready');
  return { ok: true, ready_on_attempt: job.attempt };
}

/** Works for payload.seconds (default 2.5), longer than a heartbeat period, extending its lease
 *  with a heartbeat every CONVEYOR_HEARTBEAT_SECONDS. A heartbeat that answers true means an
 *  operator cancelled the run: stop and say so. */
async function slow(job) {
  const seconds = Number(job.payload.seconds ?? 2.5);
  const deadline = Date.now() + seconds * 1000;
  for (let left = deadline - Date.now(); left > 0; left = deadline - Date.now()) {
    await sleep(Math.min(left, HEARTBEAT_MS)); // a slice of the real work
    if (await job.heartbeat('30s')) throw new Cancelled();
  }
  return { ok: true, slept: seconds, heartbeats: job.heartbeats };
}

export const HANDLERS = {
  'node.ok': ok,
  'node.flaky': flaky,
  'node.wait': wait,
  'node.slow': slow,
};
