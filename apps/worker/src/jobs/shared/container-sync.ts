import type { EntityManager } from 'typeorm';
import { recomputeTargetState } from '@berth/db';

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
