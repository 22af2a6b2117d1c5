import { access } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import type { JobHandler } from '../job-context';

/** How often a gated hold looks for its gate. */
const GATE_POLL_MS = 20;

/** Where a gated no-op looks for its gate (the gate's name is checked by the payload's schema). */
export function noopGatePath(dataRoot: string, gate: string): string {
  return join(dataRoot, 'noop-gates', gate);
}

const exists = (path: string) =>
  access(path).then(
    () => true,
    () => false,
  );

/**
 * Does nothing: measures the pipeline itself (API → outbox → BullMQ → worker → audit). With `holdMs` it holds
 * its worker slot that long and answers when it ran (the worker's clock), so tests can check the slots. With
 * a `gate` as well, the hold ends as soon as the gate's file exists (`opened: true` in the result), so a test
 * decides when a job holding a slot lets go of it.
 */
export const systemNoopJob: JobHandler<'system.noop'> = {
  kind: 'system.noop',
  async run({ payload, dataRoot }) {
    if (payload.holdMs === undefined) return { result: { n: payload.n ?? null } };
    const ranFrom = new Date().toISOString();
    let opened: boolean | undefined;
    if (payload.gate === undefined) await sleep(payload.holdMs);
    else {
      const path = noopGatePath(dataRoot, payload.gate);
      const until = Date.now() + payload.holdMs;
      while (!(opened = await exists(path)) && Date.now() < until)
        await sleep(Math.min(GATE_POLL_MS, Math.max(0, until - Date.now())));
    }
    return {
      result: {
        n: payload.n ?? null,
        ranFrom,
        ranTo: new Date().toISOString(),
        ...(opened !== undefined && { opened }),
      },
    };
  },
};
