import { Injectable } from '@nestjs/common';
import { InjectDataSource } from '@nestjs/typeorm';
import { randomUUID } from 'node:crypto';
import type { DataSource, EntityManager, EntitySubscriberInterface, TransactionCommitEvent } from 'typeorm';
import { preparedQuery, type SqlTx } from '@berth/db';
import {
  hostQueueName,
  maxAttemptsFor,
  parseJobPayload,
  type JobKind,
  type QueuedJobData,
} from '@berth/jobs';
import type { Principal } from '../auth/principal';
import type { JobRow } from './job-view';

export interface EnqueueInput {
  kind: JobKind;
  payload: Record<string, unknown>;
  hostId: string;
  containerId?: string | null;
  tenantId?: string | null;
  principal: Principal;
  /**
   * An audit event for the request itself (e.g. `container.start.requested`), written just before the job's
   * `job.queued` event, in the same statement (the caller saves a round trip).
   */
  requested?: { action: string; data: Record<string, unknown> };
  /** The container's new target state, set with its job sequence (requires `containerId`). */
  targetState?: string;
}

/** The job as inserted, and the container row's `updated_at` when `targetState` changed it. */
export type EnqueuedJob = JobRow & { container_updated_at?: Date | null };

/** An outbox row as written by the enqueuer (what a relay publishes). */
export interface OutboxRow {
  id: string;
  queue: string;
  job_name: string;
  job_id: string;
  payload: QueuedJobData & { bullJobId?: string };
}

/** Where a transaction's deferred notifications wait for its commit (TypeORM's per-QueryRunner `data`). */
const DEFERRED = 'berthDeferredJobNotify';

/**
 * Writes a job inside the caller's transaction: the job row (with its place in the container's FIFO), its
 * `job.queued` audit event and the outbox row the relay publishes to the host's queue. Either all of it
 * commits with the caller's own rows, or none of it: exactly one enqueue per accepted request.
 *
 * Inside a transaction, the notifications (`berth_outbox` for the relays, `berth_job` for the jobs) are
 * sent after the commit rather than by the triggers (see the DeferredNotify migration: a durable
 * notifying commit serializes every other notifying commit behind its WAL flush). The deferral lasts for
 * the rest of the caller's transaction: outbox rows and audit events of the enqueued jobs written after
 * the enqueue are covered; an audit event of another job written after it in the same transaction would
 * wake its waiters only at their next safety re-check.
 */
@Injectable()
export class JobEnqueuer implements EntitySubscriberInterface {
  private readonly committedListeners = new Set<(rows: OutboxRow[]) => void>();

  constructor(@InjectDataSource() private readonly ds: DataSource) {
    // Registered by hand (Nest's documented way for an injected subscriber): commits are broadcast to it.
    ds.subscribers.push(this);
  }

  /**
   * After a top-level commit (not a savepoint release): hands the transaction's outbox rows to the relay of
   * this process, which publishes them at once; without one, wakes the relays of the other processes.
   * No `berth_job` notification for the new jobs: nobody can be waiting for a job that did not exist.
   */
  afterTransactionCommit(event: TransactionCommitEvent): void {
    const qr = event.queryRunner;
    const rows = qr.data?.[DEFERRED] as OutboxRow[] | undefined;
    if (!rows || qr.isTransactionActive) return;
    delete qr.data[DEFERRED];
    this.committed(rows);
  }

  /** The outbox rows of a committed transaction: to this process's relay, else a wake-up for the others. */
  private committed(rows: OutboxRow[]): void {
    if (this.committedListeners.size > 0) {
      for (const fn of this.committedListeners) fn(rows);
      return;
    }
    // Not flushed (nothing to make durable) and not awaited (the request's answer need not wait for it):
    // lost in a crash, the relays' poll publishes the rows anyway.
    preparedQuery(
      this.ds,
      `SELECT set_config('synchronous_commit', 'off', true), pg_notify('berth_outbox', '')`,
    ).catch(() => undefined);
  }

  /**
   * Calls `fn` with the outbox rows of each transaction that enqueued jobs, right after it committed (in
   * this process; other processes learn it from `berth_outbox`). Returns the function that removes it.
   */
  onCommitted(fn: (rows: OutboxRow[]) => void): () => void {
    this.committedListeners.add(fn);
    return () => this.committedListeners.delete(fn);
  }

  /** A rollback drops what was deferred. */
  afterTransactionRollback(event: TransactionCommitEvent): void {
    if (event.queryRunner.data && !event.queryRunner.isTransactionActive)
      delete event.queryRunner.data[DEFERRED];
  }

  /**
   * One statement (data-modifying CTEs: one round trip instead of five): the container's sequence number
   * (the UPDATE row-locks the container, so concurrent enqueues for it are numbered in commit order), the
   * job, its audit event(s) and the outbox row. The job id is made here so the container row can point at
   * it in the same statement.
   */
  async enqueue(m: EntityManager | SqlTx, input: EnqueueInput): Promise<EnqueuedJob> {
    const payload = parseJobPayload(input.kind, input.payload) as Record<string, unknown>;
    if (input.targetState && !input.containerId) throw new TypeError('targetState needs a containerId');
    const id = randomUUID();
    const subjectType = input.containerId ? 'container' : 'job';
    const requested = input.requested ?? null;
    const tx = 'onCommit' in m ? m : undefined;
    const qr = 'onCommit' in m ? undefined : m.queryRunner;
    // Outside a transaction the statement is its own (implicit) transaction: the triggers notify at commit.
    const defer = tx !== undefined || qr?.isTransactionActive === true;
    const queue = hostQueueName(input.hostId);
    const queued: QueuedJobData = { jobId: id, kind: input.kind, payload };
    const [{ outbox_id: outboxId, ...job }] = await preparedQuery<EnqueuedJob & { outbox_id: string }>(
      m,
      `WITH ${defer ? `deferred AS (SELECT set_config('berth.defer_notify', 'on', true) AS v),` : ''}
       c AS (
         UPDATE containers SET job_seq = job_seq + 1, last_job_id = $1,
                target_state = COALESCE($14, target_state),
                updated_at = CASE WHEN $14::text IS NULL THEN updated_at ELSE now() END
         WHERE id = $4 RETURNING job_seq, updated_at),
       j AS (
         INSERT INTO jobs (id, kind, state, tenant_id, container_id, host_id, container_seq, params, max_attempts,
                           requested_by, request_id)
         SELECT $1::uuid, $2::text, 'queued', $3::uuid, $4::uuid, $5::uuid, (SELECT job_seq FROM c), $6::jsonb,
                $7::int, $8::text, $9::text
         ${defer ? 'FROM deferred' : ''} RETURNING *),
       a AS (
         INSERT INTO audit_events (actor, action, subject_type, subject_id, job_id, request_id, data)
         SELECT $8, e.action, $11, COALESCE(j.container_id, j.id), e.job_id, $10, e.data
         FROM j, LATERAL (VALUES
           (0, $12::text, NULL::uuid, $13::jsonb),
           (1, 'job.queued', j.id, jsonb_build_object('kind', j.kind, 'hostId', j.host_id, 'seq', j.container_seq))
         ) AS e(ord, action, job_id, data)
         WHERE e.action IS NOT NULL
         ORDER BY e.ord),
       o AS (
         INSERT INTO outbox (queue, job_name, job_id, payload) SELECT $15, j.kind, j.id, $16 FROM j RETURNING id)
       SELECT j.*, (SELECT updated_at FROM c) AS container_updated_at, (SELECT id FROM o) AS outbox_id FROM j`,
      [
        id,
        input.kind,
        input.tenantId ?? null,
        input.containerId ?? null,
        input.hostId,
        JSON.stringify(payload),
        maxAttemptsFor(input.kind),
        input.principal.keyId,
        input.principal.requestId || null,
        input.principal.requestId ?? null,
        subjectType,
        requested?.action ?? null,
        requested ? JSON.stringify(requested.data) : null,
        input.targetState ?? null,
        queue,
        JSON.stringify(queued),
      ],
    );
    const row: OutboxRow = { id: outboxId, queue, job_name: input.kind, job_id: id, payload: queued };
    if (tx) tx.onCommit(() => this.committed([row]));
    else if (qr && defer) (((qr.data ??= {})[DEFERRED] ??= []) as OutboxRow[]).push(row);
    return job;
  }
}
