import { RuntimeError } from '@berth/runtime';
import type { JobHandler } from '../job-context';

/** New CPU, memory and pids limits, live; the row's resources change only once the kernel took them. */
export const containerResizeJob: JobHandler<'container.resize'> = {
  kind: 'container.resize',
  // A refused resize leaves every limit as it was (the runtime undoes what it wrote), unless that undo failed.
  leftAsItWas: (e) => !(e instanceof RuntimeError && e.context.restoreFailed !== undefined),
  async run({ payload, runtime, step }) {
    await step('resize', () => runtime.containers.resize(payload.containerId, payload.resources));
    const info = await runtime.containers.get(payload.containerId);
    const r = info.spec.resources;
    return {
      result: { resources: r, status: info.status },
      apply: async (m) => {
        await m.query(
          `UPDATE containers SET cpus = $2, memory_bytes = $3, pids_max = $4, state = $5, version = version + 1,
                  updated_at = now() WHERE id = $1`,
          [payload.containerId, r.cpus, r.memoryBytes, r.pidsMax, info.status],
        );
      },
    };
  },
};
