import type { JobHandler } from '../job-context';

/** Removes everything of the container on the host; idempotent, so a retry after a crash finishes the job. */
export const containerDestroyJob: JobHandler<'container.destroy'> = {
  kind: 'container.destroy',
  async run({ payload, runtime, step }) {
    await step('destroy', () => runtime.containers.destroy(payload.containerId));
    return {
      result: { destroyed: true },
      apply: async (m) => {
        await m.query(
          `UPDATE containers SET state = 'destroyed', target_state = 'destroyed', destroyed_at = now(),
                  ip_address = NULL, version = version + 1, updated_at = now() WHERE id = $1`,
          [payload.containerId],
        );
      },
    };
  },
};
