import type { EntityManager } from 'typeorm';
import type { ContainerInfo } from '@berth/runtime';

/**
 * Writes what the runtime reports about a container into its row (state, address). When no other job of the
 * container is pending, its target state is its state again: a target left behind by a failure (`error`)
 * or a cancellation would otherwise make the API refuse operations the container now allows.
 */
export async function syncContainerRow(m: EntityManager, info: ContainerInfo): Promise<void> {
  // Lock first, so the next statement's snapshot sees any job the API committed for this container
  // (the API accepts jobs under the same row lock).
  await m.query(`SELECT 1 FROM containers WHERE id = $1 FOR UPDATE`, [info.id]);
  await m.query(
    `UPDATE containers SET state = $2, ip_address = $3, error_code = NULL, version = version + 1, updated_at = now(),
       target_state = CASE WHEN EXISTS (SELECT 1 FROM jobs WHERE container_id = $1
                                          AND state IN ('queued', 'active', 'waiting-retry'))
                      THEN target_state ELSE $2 END
     WHERE id = $1`,
    [info.id, info.status, info.ipAddress],
  );
}

/**
 * After a job failed for good: the container's state is what the runtime says it is (or `error` when it
 * cannot say), and its target state follows, so the next request is checked against reality.
 */
export async function markContainerAfterFailure(
  m: EntityManager,
  id: string,
  state: string,
  code: string,
): Promise<void> {
  await m.query(
    `UPDATE containers SET state = $2, target_state = $2, error_code = $3, version = version + 1, updated_at = now()
     WHERE id = $1`,
    [id, state, code],
  );
}
