import type { EntityManager } from 'typeorm';
import { recomputeTargetState } from '@berth/db';
import type { ContainerInfo } from '@berth/runtime';

/**
 * Writes what the runtime reports about a container into its row (state, address), and its target state:
 * that state projected through the container's pending jobs.
 */
export async function syncContainerRow(m: EntityManager, info: ContainerInfo): Promise<void> {
  await m.query(
    `UPDATE containers SET state = $2, ip_address = $3, error_code = NULL, version = version + 1, updated_at = now()
     WHERE id = $1`,
    [info.id, info.status, info.ipAddress],
  );
  await recomputeTargetState(m, info.id, info.status);
}

/**
 * After a job failed for good: the container's state is what the runtime says it is (or `error` when it
 * cannot say), and its target state follows through the pending jobs, so the next request is checked
 * against reality.
 */
export async function markContainerAfterFailure(
  m: EntityManager,
  id: string,
  state: string,
  code: string,
): Promise<void> {
  await m.query(
    `UPDATE containers SET state = $2, error_code = $3, version = version + 1, updated_at = now() WHERE id = $1`,
    [id, state, code],
  );
  await recomputeTargetState(m, id, state);
}
