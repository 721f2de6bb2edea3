// Types of pg-conveyor (src/index.js).
import type { ClientConfig, ClientBase } from 'pg';

/** SQLSTATE of a stale lease: the lease expired and someone else has the run, or it is over. */
export declare const STALE_LEASE: 'CV001';

/** Text such as '30s', '1m30s', '00:05:00', or milliseconds. */
export type Duration = string | number;

/** Not ready yet: the run waits `delay` and is claimed again. Not a failure. Throw or return it. */
export declare class Release extends Error {
  constructor(delay: Duration, reason?: string | null, options?: { meta?: Record<string, unknown> | null });
  readonly delay: Duration;
  readonly reason: string | null;
  readonly meta: Record<string, unknown> | null;
}

/** A failed attempt, retried with the task's backoff while its budget lasts. Throw or return it. */
export declare class Fail extends Error {
  constructor(message: string, options?: { meta?: Record<string, unknown> | null; retryable?: boolean });
  readonly meta: Record<string, unknown> | null;
  readonly retryable: boolean;
}

/** Throw when job.heartbeat() resolved true: the attempt ends stopped, the run cancelled. */
export declare class Cancelled extends Error {
  constructor(message?: string);
}

/** Thrown by job.heartbeat() once the worker is stopping and its grace is over: the run is given back. */
export declare class Interrupted extends Error {
  constructor(message?: string);
}

export declare function duration(value: Duration): string;

export interface EnqueueOptions {
  runAt?: Date | null;
  delay?: Duration | null;
  priority?: number | null;
  queue?: string | null;
  parentRunId?: string | null;
}

/** Enqueue one run on `client`, inside its current transaction. Resolves to the run id. */
export declare function enqueue(client: ClientBase, task: string, payload?: unknown,
  options?: EnqueueOptions & { idempotencyKey?: string | null; key?: string | null }): Promise<string>;

/** Enqueue one run per payload in one statement; the ids in payload order. */
export declare function enqueueMany(client: ClientBase, task: string, payloads: unknown[],
  options?: EnqueueOptions & { idempotencyKeys?: string[] | null; keys?: (string | null)[] | null }): Promise<string[]>;

/** A run a claim gave this worker: the columns of conveyor.claim_runs. */
export interface ClaimedRun {
  readonly runId: string;
  readonly leaseToken: string;
  readonly task: string;
  readonly queue: string;
  readonly payload: any;
  /** the attempt being made: 1 on the first */
  readonly attempt: number;
  readonly failures: number;
  readonly releases: number;
  readonly attemptId: string;
  readonly priority: number;
  readonly parentRunId: string | null;
  readonly leaseExpiresAt: Date;
  readonly timeoutAt: Date | null;
}

export type Outcome = 'succeeded' | 'failed' | 'released' | 'cancelled' | 'returned' | 'stale';

/** How a run this worker had ended; status null: stale lease, nothing recorded. */
export interface Finished {
  run: ClaimedRun;
  outcome: Outcome;
  status: string | null;
}

/** A claimed run as a handler sees it: the ClaimedRun fields, and `run` itself. */
export interface Job extends ClaimedRun {}
export declare class Job {
  readonly run: ClaimedRun;
  heartbeats: number;
  /** Extend the lease; true when an operator asked to cancel the run. */
  heartbeat(extend?: Duration | null): Promise<boolean>;
  /** Append to the attempt's log. */
  log(text: string): Promise<void>;
}

export type Handler = (job: Job) => unknown | Promise<unknown>;

export interface WorkerOptions {
  /** pg ClientConfig ({} takes the PG* variables) */
  connection?: ClientConfig;
  /** a list, or comma-separated text */
  queues?: string | string[];
  batch?: number;
  lease?: Duration;
  /** when idle and no notification comes */
  pollMs?: number;
  /** how long the run in hand may go on after stop() */
  graceMs?: number;
  /** through a transaction pooler: no LISTEN on `connection` */
  pooled?: boolean;
  /** with pooled: a direct session connection used only for LISTEN (else the worker polls) */
  listenConnection?: ClientConfig | null;
  name?: string | null;
  bindSession?: boolean | null;
  tasks?: string[] | null;
  onFinished?: ((finished: Finished) => void) | null;
  logger?: (message: string) => void;
  /** stop on SIGINT/SIGTERM (default true) */
  handleSignals?: boolean;
}

export declare class Worker {
  constructor(options?: WorkerOptions);
  readonly name: string;
  readonly stopping: boolean;
  /** Register the handler of a task. */
  task(name: string, handler: Handler): this;
  run(options?: { drain?: boolean }): Promise<void>;
  stop(): void;
}
