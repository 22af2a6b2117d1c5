import type { EntityManager } from 'typeorm';
import { projectTargetState, type ContainerState, type PendingContainerJob } from '@berth/jobs';

/**
 * Sets a container's target state to its state (`state`, or the one in its row) projected through its
 * pending jobs (see projectTargetState). Locks the container row first: the API accepts jobs under the same
 * lock, so none is missed.
 */
export async function recomputeTargetState(
  m: EntityManager,
  containerId: string,
  state?: string,
): Promise<string> {
  const [row] = await m.query(`SELECT state FROM containers WHERE id = $1 FOR UPDATE`, [containerId]);
  const pending: { kind: PendingContainerJob['kind']; start: boolean | null }[] = await m.query(
    `SELECT kind, (params->>'start')::boolean AS start FROM jobs
     WHERE container_id = $1 AND state IN ('queued', 'active', 'waiting-retry') ORDER BY container_seq`,
    [containerId],
  );
  const target = projectTargetState(
    (state ?? row.state) as ContainerState,
    pending.map((p) => ({ kind: p.kind, start: p.start ?? undefined })),
  );
  await m.query(`UPDATE containers SET target_state = $2 WHERE id = $1`, [containerId, target]);
  return target;
}
