import type { JobsOptions } from 'bullmq';
import type { JobKind } from './job-kinds';

/** Attempts per kind: kernel work may hit transient errors; a no-op never needs a second try. */
const ATTEMPTS: Partial<Record<JobKind, number>> = {
  'container.destroy': 5,
  'system.noop': 1,
};

/**
 * BullMQ options for a job, decided in one place by kind. Postgres is the record, Redis is transport: finished
 * jobs are removed from Redis after a bounded count/age.
 */
export function jobOptionsFor(kind: JobKind, jobId: string): JobsOptions {
  return {
    jobId,
    attempts: ATTEMPTS[kind] ?? 3,
    backoff: { type: 'exponential', delay: 1_000 },
    removeOnComplete: { age: 3_600, count: 1_000 },
    removeOnFail: { age: 24 * 3_600, count: 5_000 },
  };
}

export function maxAttemptsFor(kind: JobKind): number {
  return jobOptionsFor(kind, 'x').attempts ?? 1;
}

/**
 * The progress stage of a job its host's worker claimed ahead of a free slot and that is still waiting for
 * one (WORKER_PREFETCH): such a job has not started and can still be cancelled.
 */
export const SLOT_WAIT_STAGE = 'waiting for a worker slot';
