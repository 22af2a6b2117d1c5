import { RuntimeError } from '@berth/runtime';
import type { JobHandler } from '../job-context';

/**
 * Takes a named snapshot of the container's root filesystem. A name is taken once: a snapshot of that
 * name taken before this job (by an earlier job, or outside Berth) holds other data, and answering it as
 * this job's would be silent data loss at the restore. The check that the name is free is recorded before
 * the snapshot is taken, so a retry after a crash between the snapshot and its record knows the snapshot
 * it finds is its own.
 */
export const containerSnapshotJob: JobHandler<'container.snapshot'> = {
  kind: 'container.snapshot',
  // A snapshot that fails (its name taken, say) leaves the container as it was.
  leftAsItWas: () => true,
  async run({ payload, runtime, step }) {
    await step(
      'name-free',
      async () => {
        const taken = await runtime.containers.listSnapshots(payload.containerId);
        if (taken.some((s) => s.name === payload.snapshot))
          throw new RuntimeError(
            'SNAPSHOT_EXISTS',
            `container ${payload.containerId} already has a snapshot ${payload.snapshot}`,
            { containerId: payload.containerId, snapshot: payload.snapshot },
          );
      },
      { recorded: true },
    );
    await step('snapshot', async () => {
      try {
        return await runtime.containers.snapshot(payload.containerId, payload.snapshot);
      } catch (e) {
        // The name was free when this job began (step above), and no other job of the container ran
        // since (FIFO): a snapshot there now is this job's, taken before a crash lost its record.
        if ((e as { code?: string }).code === 'SNAPSHOT_EXISTS') return undefined;
        throw e;
      }
    });
    const snapshots = await runtime.containers.listSnapshots(payload.containerId);
    return { result: { snapshot: payload.snapshot, snapshots: snapshots.map((s) => s.name) } };
  },
};
