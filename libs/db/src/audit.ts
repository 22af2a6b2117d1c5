import type { EntityManager } from 'typeorm';

export interface AuditInput {
  actor: string;
  action: string;
  subjectType: string;
  subjectId?: string | null;
  jobId?: string | null;
  requestId?: string | null;
  data?: Record<string, unknown>;
}

/** Appends one row to the audit trail, inside the caller's transaction when given its manager. */
export async function appendAudit(manager: EntityManager, input: AuditInput): Promise<void> {
  await manager.query(
    `INSERT INTO audit_events (actor, action, subject_type, subject_id, job_id, request_id, data)
     VALUES ($1, $2, $3, $4, $5, $6, $7)`,
    [
      input.actor,
      input.action,
      input.subjectType,
      input.subjectId ?? null,
      input.jobId ?? null,
      input.requestId ?? null,
      JSON.stringify(input.data ?? {}),
    ],
  );
}
