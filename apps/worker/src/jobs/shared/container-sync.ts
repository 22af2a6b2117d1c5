import type { EntityManager } from 'typeorm';
import { recomputeTargetState } from '@berth/db';

/**
 * After a job failed for good: the container's state is what the runtime says it is (or `error` when it
 * cannot say), and its target state follows through the pending jobs, so the next request is checked
 * against reality. Its `error_code` becomes the failure's code: the container is not what its request
 * asked for (a create that never made it, a start that did not start it). Unless `keptState`: the job was
 * not to change the container's state and its failure left the container as it was (a refused resize:
 * JobHandler.leftAsItWas); a container still in the state its row records is then as the job found it,
 * and its `error_code` stays what it was (the job's own error says why the job failed).
 */
export async function markContainerAfterFailure(
  m: EntityManager,
  id: string,
  state: string,
  code: string,
  { keptState = false }: { keptState?: boolean } = {},
): Promise<void> {
  await m.query(
    `UPDATE containers SET state = $2, version = version + 1, updated_at = now(),
            error_code = CASE WHEN $4 AND state = $2 THEN error_code ELSE $3 END
     WHERE id = $1`,
    [id, state, code, keptState],
  );
  await recomputeTargetState(m, id, state);
}
