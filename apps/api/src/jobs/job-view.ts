import type { JobKind } from '@berth/jobs';

/** A job row as the API shows it. */
export interface JobView {
  id: string;
  kind: JobKind;
  state: string;
  containerId: string | null;
  hostId: string | null;
  params: Record<string, unknown>;
  result: Record<string, unknown> | null;
  progress: { stage: string; percent: number } | null;
  error: { code: string; message: string | null; step: string | null } | null;
  attempts: number;
  maxAttempts: number;
  requestedBy: string;
  createdAt: string;
  startedAt: string | null;
  finishedAt: string | null;
  /** Why a queued job is not running yet (e.g. its host is offline). */
  waitingReason?: string;
}

export interface JobRow {
  id: string;
  kind: JobKind;
  state: string;
  container_id: string | null;
  host_id: string | null;
  /** Its place in its container's FIFO. */
  container_seq?: number | null;
  params: Record<string, unknown>;
  result: Record<string, unknown> | null;
  progress: { stage: string; percent: number } | null;
  error_code: string | null;
  error_message: string | null;
  error_step: string | null;
  attempts: number;
  max_attempts: number;
  requested_by: string;
  created_at: Date;
  started_at: Date | null;
  finished_at: Date | null;
}

export const FINAL_JOB_STATES = ['completed', 'failed', 'cancelled'];

/** Where a job is read: the `Location` of every answer that accepted one. */
export function jobLocation(id: string): string {
  return `/v1/jobs/${id}`;
}

export function toJobView(r: JobRow): JobView {
  return {
    id: r.id,
    kind: r.kind,
    state: r.state,
    containerId: r.container_id,
    hostId: r.host_id,
    params: r.params,
    result: r.result,
    progress: r.progress,
    error: r.error_code ? { code: r.error_code, message: r.error_message, step: r.error_step } : null,
    attempts: r.attempts,
    maxAttempts: r.max_attempts,
    requestedBy: r.requested_by,
    createdAt: r.created_at.toISOString(),
    startedAt: r.started_at?.toISOString() ?? null,
    finishedAt: r.finished_at?.toISOString() ?? null,
  };
}
