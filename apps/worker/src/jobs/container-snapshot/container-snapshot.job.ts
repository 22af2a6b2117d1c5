import type { JobHandler } from '../job-context';

export const containerSnapshotJob: JobHandler<'container.snapshot'> = {
  kind: 'container.snapshot',
  async run({ payload, runtime, step }) {
    await step('snapshot', async () => {
      try {
        return await runtime.containers.snapshot(payload.containerId, payload.snapshot);
      } catch (e) {
        // A crash after the snapshot but before its step was recorded: the snapshot is there, the step is done.
        if ((e as { code?: string }).code === 'SNAPSHOT_EXISTS') return undefined;
        throw e;
      }
    });
    const snapshots = await runtime.containers.listSnapshots(payload.containerId);
    return { result: { snapshot: payload.snapshot, snapshots: snapshots.map((s) => s.name) } };
  },
};
