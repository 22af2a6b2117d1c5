import { Injectable } from '@nestjs/common';
import { InjectDataSource } from '@nestjs/typeorm';
import { randomUUID } from 'node:crypto';
import type { DataSource, EntityManager, EntitySubscriberInterface, TransactionCommitEvent } from 'typeorm';
import { createBatcher, PipelinedPool, preparedQuery, type SqlTx } from '@berth/db';
import {
  hostQueueName,
  HOST_QUEUE_PREFIX,
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
  /** The host that runs it; for a container job, by default the container's (read by the statement). */
  hostId?: string;
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
 * Writes jobs: the job row (with its place in the container's FIFO), its `job.queued` audit event (and the
 * request's own, when given) and the outbox row the relay publishes to the host's queue, in one statement
 * (ENQUEUE). `enqueue` writes inside the caller's transaction, so all of it commits with the caller's own
 * rows or none of it; `submit` writes a request that has no other rows, group-committed with the
 * requests submitted meanwhile. Either way: exactly one enqueue per accepted request.
 *
 * The triggers' notifications (`berth_outbox`, `berth_job`) are off for the enqueue's transaction (see
 * the DeferredNotify migration: a durable notifying commit serializes every other notifying commit behind
 * its WAL flush): at the commit the outbox rows go to this process's relay, or a non-durable
 * `berth_outbox` notification wakes the others. Nobody waits on a job that did not exist, so the new jobs
 * send no `berth_job`. The deferral lasts for the rest of a caller's transaction: an audit event of
 * another job written after the enqueue in it would wake its waiters only at their next safety re-check.
 */
@Injectable()
export class JobEnqueuer implements EntitySubscriberInterface {
  private readonly committedListeners = new Set<(rows: OutboxRow[]) => void>();

  constructor(
    @InjectDataSource() private readonly ds: DataSource,
    private readonly hot: PipelinedPool,
  ) {
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
   * Writes a job inside the caller's transaction (`m`): see the class comment and ENQUEUE below. The
   * container row (when `containerId` is set) must be the caller's to change: it is updated without a
   * guard.
   */
  async enqueue(m: EntityManager | SqlTx, input: EnqueueInput): Promise<EnqueuedJob> {
    const item = this.item(input);
    const tx = 'onCommit' in m ? m : undefined;
    const qr = 'onCommit' in m ? undefined : m.queryRunner;
    const [row] = await preparedQuery<EnqueueAnswer>(m, ENQUEUE, [
      item.containerIds,
      JSON.stringify([item.sql]),
      HOST_QUEUE_PREFIX,
    ]);
    if (!row) throw new Error(`enqueue of a ${input.kind} job: its container ${input.containerId} is gone`);
    const { job, outbox } = this.answer(item, row);
    if (tx) tx.onCommit(() => this.committed([outbox]));
    else if (qr?.isTransactionActive) (((qr.data ??= {})[DEFERRED] ??= []) as OutboxRow[]).push(outbox);
    // Outside a transaction the statement was its own, and has committed.
    else this.committed([outbox]);
    return job;
  }

  /**
   * Writes a job on its own (no caller transaction): group commit with the other requests submitted
   * meanwhile (createBatcher: one statement and one commit for all of them; each request's rows are
   * still all or nothing, and a batch that fails is retried request by request). For a container job,
   * `expectTargetState` guards the container row (the caller checked the transition against that target
   * state): answers null, and writes nothing, when the container is gone or its target state changed.
   */
  submit(input: EnqueueInput & { expectTargetState?: string }): Promise<EnqueuedJob | null> {
    return this.submits(this.item(input));
  }

  private readonly submits = createBatcher<EnqueueItem, EnqueuedJob | null>((items) =>
    this.writeItems(items),
  );

  /** Writes `items` with ENQUEUE; a container's second job goes in a statement after its first. */
  private async writeItems(items: readonly EnqueueItem[]): Promise<(EnqueuedJob | null)[]> {
    // One job per container per statement (the UPDATE of its row would count it once): the others wait.
    const seen = new Set<string>();
    const now: EnqueueItem[] = [];
    const later: EnqueueItem[] = [];
    for (const it of items) {
      const c = it.sql.container_id;
      if (c && seen.has(c)) later.push(it);
      else {
        if (c) seen.add(c);
        now.push(it);
      }
    }
    const rows = await this.hot.query<EnqueueAnswer>(ENQUEUE, [
      now.flatMap((it) => it.containerIds),
      JSON.stringify(now.map((it, ord) => ({ ...it.sql, ord }))),
      HOST_QUEUE_PREFIX,
    ]);
    const byId = new Map(rows.map((r) => [r.id, r]));
    const answers = new Map<EnqueueItem, EnqueuedJob | null>();
    const outboxes: OutboxRow[] = [];
    for (const it of now) {
      const row = byId.get(it.sql.id);
      if (!row) {
        answers.set(it, null);
        continue;
      }
      const { job, outbox } = this.answer(it, row);
      answers.set(it, job);
      outboxes.push(outbox);
    }
    if (outboxes.length > 0) this.committed(outboxes);
    if (later.length > 0) {
      const rest = await this.writeItems(later);
      later.forEach((it, k) => answers.set(it, rest[k]));
    }
    return items.map((it) => answers.get(it)!);
  }

  /** An input as the ENQUEUE statement takes it (one element of its `$2`). */
  private item(input: EnqueueInput & { expectTargetState?: string }): EnqueueItem {
    const payload = parseJobPayload(input.kind, input.payload) as Record<string, unknown>;
    if (input.targetState && !input.containerId) throw new TypeError('targetState needs a containerId');
    if (!input.hostId && !input.containerId) throw new TypeError('a job needs a host or a container');
    const id = randomUUID();
    const queued: QueuedJobData = { jobId: id, kind: input.kind, payload };
    const requested = input.requested ?? null;
    return {
      queued,
      containerIds: input.containerId ? [input.containerId] : [],
      sql: {
        id,
        kind: input.kind,
        tenant_id: input.tenantId ?? null,
        container_id: input.containerId ?? null,
        host_id: input.hostId ?? null,
        params: payload,
        max_attempts: maxAttemptsFor(input.kind),
        requested_by: input.principal.keyId,
        request_id: input.principal.requestId || null,
        subject_type: input.containerId ? 'container' : 'job',
        requested_action: requested?.action ?? null,
        requested_data: requested?.data ?? null,
        target_state: input.targetState ?? null,
        expect_target_state: input.expectTargetState ?? null,
        outbox_payload: queued,
      },
    };
  }

  private answer(item: EnqueueItem, row: EnqueueAnswer): { job: EnqueuedJob; outbox: OutboxRow } {
    const { outbox_id: outboxId, ...job } = row;
    const outbox: OutboxRow = {
      id: outboxId,
      queue: hostQueueName(job.host_id!),
      job_name: item.sql.kind,
      job_id: item.sql.id,
      payload: item.queued,
    };
    return { job, outbox };
  }
}

/** One job to write, as the ENQUEUE statement reads it (`jsonb_to_recordset`). */
interface EnqueueItem {
  queued: QueuedJobData;
  containerIds: string[];
  sql: {
    id: string;
    kind: JobKind;
    tenant_id: string | null;
    container_id: string | null;
    /** Null: the container's host. */
    host_id: string | null;
    params: Record<string, unknown>;
    max_attempts: number;
    requested_by: string;
    request_id: string | null;
    subject_type: 'container' | 'job';
    requested_action: string | null;
    requested_data: Record<string, unknown> | null;
    target_state: string | null;
    expect_target_state: string | null;
    outbox_payload: QueuedJobData;
  };
}

type EnqueueAnswer = EnqueuedJob & { outbox_id: string };

/**
 * Jobs in one statement (data-modifying CTEs: one round trip, one commit): for each, its container's
 * sequence number (the UPDATE row-locks the container, so concurrent enqueues for it are numbered in
 * commit order; guarded by `expect_target_state` when given), the job, its audit event(s) and the outbox
 * row. A container job whose container row was not updated is not written (and not answered). A job
 * without a host runs on its container's, and its outbox row goes to that host's queue. `$1`: the
 * container ids again, as an array (`= ANY` lets the planner use the primary key; it cannot size `i`);
 * `$2`: the jobs (EnqueueItem.sql, with `ord`: their order); `$3`: HOST_QUEUE_PREFIX (a host's queue is
 * the prefix and its id). The triggers' notifications are deferred: see the class comment.
 */
const ENQUEUE = `WITH
  deferred AS (SELECT set_config('berth.defer_notify', 'on', true) AS v),
  i AS (SELECT * FROM jsonb_to_recordset($2::jsonb) AS i(
          id uuid, kind text, tenant_id uuid, container_id uuid, host_id uuid, params jsonb, max_attempts int,
          requested_by text, request_id text, subject_type text, requested_action text, requested_data jsonb,
          target_state text, expect_target_state text, outbox_payload jsonb, ord int)),
  c AS (
    UPDATE containers SET job_seq = job_seq + 1, last_job_id = i.id,
           target_state = COALESCE(i.target_state, containers.target_state),
           updated_at = CASE WHEN i.target_state IS NULL THEN containers.updated_at ELSE now() END
    FROM i, deferred
    WHERE containers.id = ANY($1::uuid[]) AND containers.id = i.container_id
      AND (i.expect_target_state IS NULL OR containers.target_state = i.expect_target_state)
    RETURNING i.id AS job_id, containers.job_seq, containers.updated_at, containers.host_id),
  ok AS (SELECT i.* FROM i, deferred
         WHERE i.container_id IS NULL OR EXISTS (SELECT 1 FROM c WHERE c.job_id = i.id)),
  j AS (
    INSERT INTO jobs (id, kind, state, tenant_id, container_id, host_id, container_seq, params, max_attempts,
                      requested_by, request_id)
    SELECT ok.id, ok.kind, 'queued', ok.tenant_id, ok.container_id,
           COALESCE(ok.host_id, (SELECT c.host_id FROM c WHERE c.job_id = ok.id)),
           (SELECT c.job_seq FROM c WHERE c.job_id = ok.id), ok.params, ok.max_attempts, ok.requested_by,
           ok.request_id
    FROM ok ORDER BY ok.ord RETURNING *),
  a AS (
    INSERT INTO audit_events (actor, action, subject_type, subject_id, job_id, request_id, data)
    SELECT ok.requested_by, e.action, ok.subject_type, COALESCE(j.container_id, j.id), e.job_id, ok.request_id,
           e.data
    FROM j JOIN ok ON ok.id = j.id, LATERAL (VALUES
      (0, ok.requested_action, NULL::uuid, COALESCE(ok.requested_data, '{}'::jsonb)),
      (1, 'job.queued', j.id, jsonb_build_object('kind', j.kind, 'hostId', j.host_id, 'seq', j.container_seq))
    ) AS e(ord, action, job_id, data)
    WHERE e.action IS NOT NULL
    ORDER BY ok.ord, e.ord),
  o AS (
    INSERT INTO outbox (queue, job_name, job_id, payload)
    SELECT $3::text || j.host_id, ok.kind, ok.id, ok.outbox_payload FROM ok JOIN j ON j.id = ok.id
    ORDER BY ok.ord RETURNING id, job_id)
  SELECT j.*, (SELECT c.updated_at FROM c WHERE c.job_id = j.id) AS container_updated_at, o.id AS outbox_id
  FROM j JOIN o ON o.job_id = j.id`;
