import { Injectable } from '@nestjs/common';
import { InjectDataSource } from '@nestjs/typeorm';
import type { DataSource, EntityManager } from 'typeorm';
import { appendAudit } from '@berth/db';
import type { JobKind } from '@berth/jobs';

export interface StoredJob {
  id: string;
  kind: JobKind;
  state: string;
  container_id: string | null;
  host_id: string;
  container_seq: number | null;
  params: Record<string, unknown>;
  attempts: number;
  max_attempts: number;
}

export interface JobFailure {
  code: string;
  message: string;
  step: string | null;
}

const ACTOR = 'system:worker';

/** The worker's writes to Postgres: every job transition with its audit event, in one transaction each. */
@Injectable()
export class JobStore {
  constructor(@InjectDataSource() private readonly ds: DataSource) {}

  async load(id: string): Promise<StoredJob | null> {
    const [row] = await this.ds.query(`SELECT * FROM jobs WHERE id = $1`, [id]);
    return row ?? null;
  }

  /** True when an earlier job of the same container has not finished (per-container FIFO). */
  async hasEarlierUnfinished(job: StoredJob): Promise<boolean> {
    if (!job.container_id || job.container_seq === null) return false;
    const rows = await this.ds.query(
      `SELECT 1 FROM jobs WHERE container_id = $1 AND container_seq < $2
         AND state IN ('queued', 'active', 'waiting-retry') LIMIT 1`,
      [job.container_id, job.container_seq],
    );
    return rows.length > 0;
  }

  private audit(m: EntityManager, job: StoredJob, action: string, data: Record<string, unknown> = {}) {
    return appendAudit(m, {
      actor: ACTOR,
      action,
      subjectType: job.container_id ? 'container' : 'job',
      subjectId: job.container_id ?? job.id,
      jobId: job.id,
      data: { kind: job.kind, ...data },
    });
  }

  /**
   * A transaction whose commit does not wait for the WAL flush (`synchronous_commit = off` for it alone):
   * ~5 ms less per write on a disk with slow fsync, on every job's critical path. Only for records whose
   * loss in a Postgres crash repeats what the pipeline already repeats safely: the `active` mark (the job
   * still counts as unfinished), progress, a finished step (steps are idempotent; a lost record re-runs
   * the step, like a worker crash between step and record does). Terminal transitions (completed, failed,
   * retry) stay synchronous, and the WAL is sequential: once they are durable, so is every record before.
   */
  private relaxed<T>(fn: (m: EntityManager) => Promise<T>): Promise<T> {
    return this.ds.transaction(async (m) => {
      await m.query(`SET LOCAL synchronous_commit = off`);
      return fn(m);
    });
  }

  async markActive(job: StoredJob, attempt: number): Promise<void> {
    await this.relaxed(async (m) => {
      await m.query(
        `UPDATE jobs SET state = 'active', attempts = $2, started_at = COALESCE(started_at, now()), updated_at = now()
         WHERE id = $1`,
        [job.id, attempt],
      );
      await this.audit(m, job, 'job.active', { attempt });
    });
  }

  async doneSteps(jobId: string): Promise<Set<string>> {
    const rows: { step: string }[] = await this.ds.query(
      `SELECT data->>'step' AS step FROM audit_events WHERE job_id = $1 AND action = 'job.step.done'`,
      [jobId],
    );
    return new Set(rows.map((r) => r.step));
  }

  async stepDone(job: StoredJob, step: string, data: Record<string, unknown> = {}): Promise<void> {
    await this.relaxed((m) => this.audit(m, job, 'job.step.done', { step, ...data }));
  }

  /** Progress is a relaxed write too, in one statement (one round trip instead of a 4-statement transaction). */
  async progress(jobId: string, stage: string, percent: number): Promise<void> {
    // set_config(…, true) lasts until the end of this statement's own (implicit) transaction, commit included.
    await this.ds.query(
      `WITH relaxed AS (SELECT set_config('synchronous_commit', 'off', true))
       UPDATE jobs SET progress = $2, updated_at = now() FROM relaxed WHERE id = $1`,
      [jobId, JSON.stringify({ stage, percent })],
    );
  }

  /** The job succeeded: its row, the container's row (via `apply`) and the audit event, atomically. */
  async complete(
    job: StoredJob,
    result: Record<string, unknown>,
    apply?: (m: EntityManager) => Promise<void>,
  ): Promise<void> {
    await this.ds.transaction(async (m) => {
      await m.query(
        `UPDATE jobs SET state = 'completed', result = $2, progress = '{"stage":"done","percent":100}',
                error_code = NULL, error_message = NULL, error_step = NULL, finished_at = now(), updated_at = now()
         WHERE id = $1`,
        [job.id, JSON.stringify(result)],
      );
      if (apply) await apply(m);
      await this.audit(m, job, 'job.completed', { result });
    });
  }

  async waitingRetry(job: StoredJob, failure: JobFailure, attempt: number, delayMs: number): Promise<void> {
    await this.ds.transaction(async (m) => {
      await m.query(
        `UPDATE jobs SET state = 'waiting-retry', error_code = $2, error_message = $3, error_step = $4, updated_at = now()
         WHERE id = $1`,
        [job.id, failure.code, failure.message, failure.step],
      );
      await this.audit(m, job, 'job.retry', { attempt, delayMs, error: failure });
    });
  }

  async fail(
    job: StoredJob,
    failure: JobFailure,
    apply?: (m: EntityManager) => Promise<void>,
  ): Promise<void> {
    await this.ds.transaction(async (m) => {
      await m.query(
        `UPDATE jobs SET state = 'failed', error_code = $2, error_message = $3, error_step = $4, finished_at = now(),
                updated_at = now() WHERE id = $1`,
        [job.id, failure.code, failure.message, failure.step],
      );
      if (apply) await apply(m);
      await this.audit(m, job, 'job.failed', { error: failure });
    });
  }
}
