import { setTimeout as sleep } from 'node:timers/promises';
import type { JobHandler } from '../job-context';

/**
 * Does nothing: measures the pipeline itself (API → outbox → BullMQ → worker → audit). With `holdMs` it holds
 * its worker slot that long and answers when it ran (the worker's clock), so tests can check the slots.
 */
export const systemNoopJob: JobHandler<'system.noop'> = {
  kind: 'system.noop',
  async run({ payload }) {
    if (payload.holdMs === undefined) return { result: { n: payload.n ?? null } };
    const ranFrom = new Date().toISOString();
    await sleep(payload.holdMs);
    return { result: { n: payload.n ?? null, ranFrom, ranTo: new Date().toISOString() } };
  },
};
