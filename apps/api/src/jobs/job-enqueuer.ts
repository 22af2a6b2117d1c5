import { Injectable } from '@nestjs/common';
import type { EntityManager } from 'typeorm';
import { appendAudit } from '@berth/db';
import { hostQueueName, maxAttemptsFor, parseJobPayload, type JobKind } from '@berth/jobs';
import type { Principal } from '../auth/principal';
import type { JobRow } from './job-view';

export interface EnqueueInput {
  kind: JobKind;
  payload: Record<string, unknown>;
  hostId: string;
  containerId?: string | null;
  tenantId?: string | null;
  principal: Principal;
}

/**
 * Writes a job inside the caller's transaction: the job row (with its place in the container's FIFO), its
 * `job.queued` audit event and the outbox row the relay publishes to the host's queue. Either all of it
 * commits with the caller's own rows, or none of it: exactly one enqueue per accepted request.
 */
@Injectable()
export class JobEnqueuer {
  async enqueue(m: EntityManager, input: EnqueueInput): Promise<JobRow> {
    const payload = parseJobPayload(input.kind, input.payload) as Record<string, unknown>;
    let seq: number | null = null;
    if (input.containerId) {
      // TypeORM answers UPDATE … RETURNING with [rows, rowCount].
      const [[row]] = await m.query(
        `UPDATE containers SET job_seq = job_seq + 1 WHERE id = $1 RETURNING job_seq`,
        [input.containerId],
      );
      seq = row.job_seq;
    }
    const [job]: JobRow[] = await m.query(
      `INSERT INTO jobs (kind, state, tenant_id, container_id, host_id, container_seq, params, max_attempts,
                         requested_by, request_id)
       VALUES ($1, 'queued', $2, $3, $4, $5, $6, $7, $8, $9) RETURNING *`,
      [
        input.kind,
        input.tenantId ?? null,
        input.containerId ?? null,
        input.hostId,
        seq,
        JSON.stringify(payload),
        maxAttemptsFor(input.kind),
        input.principal.keyId,
        input.principal.requestId || null,
      ],
    );
    if (input.containerId) {
      await m.query(`UPDATE containers SET last_job_id = $2 WHERE id = $1`, [input.containerId, job.id]);
    }
    await appendAudit(m, {
      actor: input.principal.keyId,
      action: 'job.queued',
      subjectType: input.containerId ? 'container' : 'job',
      subjectId: input.containerId ?? job.id,
      jobId: job.id,
      requestId: input.principal.requestId,
      data: { kind: input.kind, hostId: input.hostId, seq },
    });
    await m.query(`INSERT INTO outbox (queue, job_name, job_id, payload) VALUES ($1, $2, $3, $4)`, [
      hostQueueName(input.hostId),
      input.kind,
      job.id,
      JSON.stringify({ jobId: job.id, kind: input.kind, payload }),
    ]);
    return job;
  }
}
