// Compiled by `npm run typecheck` (tsc --noEmit): the declarations describe a usable API.
import pg from 'pg';
import { Cancelled, Fail, Release, Worker, enqueue, enqueueMany, type Finished, type Job } from '../src/index.js';

async function produce(client: pg.PoolClient): Promise<string[]> {
  const id: string = await enqueue(client, 'emails.send', { to: 'a@example.com' }, { idempotencyKey: 'k', delay: '5s' });
  return [id, ...(await enqueueMany(client, 'emails.send', [{}, {}], { priority: 3 }))];
}

const seen: Finished[] = [];
const worker = new Worker({ queues: ['emails'], batch: 10, lease: '30s', onFinished: (f) => seen.push(f) })
  .task('emails.send', async (job: Job) => {
    if (job.attempt === 1) return new Release('1s', 'not yet');
    if (await job.heartbeat('30s')) throw new Cancelled();
    if (job.payload.bad) throw new Fail('bad payload', { retryable: false, meta: { field: 'bad' } });
    return { sent: job.runId };
  });
void produce;
void worker.run({ drain: true });
