import type { JobHandler } from '../job-context';

/** Does nothing: measures the pipeline itself (API → outbox → BullMQ → worker → audit). */
export const systemNoopJob: JobHandler<'system.noop'> = {
  kind: 'system.noop',
  async run({ payload }) {
    return { result: { n: payload.n ?? null } };
  },
};
