import type { EntityManager } from 'typeorm';
import { hostQueueName, type JobKind, type QueuedJobData } from '@berth/jobs';

/**
 * An outbox row that publishes an existing job again, under BullMQ job id `bullJobId` (a new one: BullMQ
 * ignores an add for an id it still holds), in the caller's transaction; the relay publishes it. For a
 * retried job (`<id>-r<n>`, the API) and a job whose end a dead worker did not record (`<id>-k<n>`, the
 * worker's start-up sweep). The job's row records it as the job's carrier (migration JobCarrier): the
 * worker claims the job only through it from now on, not through an older carrier still in Redis.
 */
export async function publishAgain(
  m: EntityManager,
  job: { id: string; kind: JobKind; host_id: string; params: Record<string, unknown> },
  bullJobId: string,
): Promise<void> {
  const data: QueuedJobData & { bullJobId: string } = {
    jobId: job.id,
    kind: job.kind,
    payload: job.params,
    bullJobId,
  };
  await m.query(`UPDATE jobs SET carrier = $2 WHERE id = $1`, [job.id, bullJobId]);
  await m.query(`INSERT INTO outbox (queue, job_name, job_id, payload) VALUES ($1, $2, $3, $4)`, [
    hostQueueName(job.host_id),
    job.kind,
    job.id,
    JSON.stringify(data),
  ]);
}
