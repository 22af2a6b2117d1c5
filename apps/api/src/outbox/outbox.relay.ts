import {
  Inject,
  Injectable,
  Logger,
  type OnApplicationBootstrap,
  type OnApplicationShutdown,
} from '@nestjs/common';
import { InjectDataSource } from '@nestjs/typeorm';
import { type JobsOptions, Queue } from 'bullmq';
import type { DataSource } from 'typeorm';
import { BERTH_CONFIG, type BerthConfig } from '@berth/config';
import { PgListener, preparedQuery } from '@berth/db';
import { bullConnection, isJobKind, jobOptionsFor, type JobKind, type QueuedJobData } from '@berth/jobs';
import { JobEnqueuer, type OutboxRow } from '../jobs/job-enqueuer';

/** The session advisory lock one draining relay holds, and the rows a drain publishes at a time. */
const DRAIN_LOCK = 'berth.outbox-drain';
const DRAIN_BATCH = 100;

/**
 * Publishes outbox rows to BullMQ, then deletes them (the jobs and their audit events are the record).
 *
 * - Fast path: the rows this process's own enqueues committed are handed over in-process at their commit
 *   and published at once, without reading them back; concurrent commits coalesce into one `addBulk`.
 * - Drain: every row still in the table, in batches, by one relay at a time (any number may run), woken
 *   by LISTEN/NOTIFY on `berth_outbox` (other processes' enqueues, retries), by a fast-path failure, and
 *   by a slow poll as the safety net (a process killed between its commit and its publish).
 *
 * A row is published with BullMQ jobId = our job id, then deleted: a crash between the two publishes it
 * again, which BullMQ ignores for an existing jobId (and the worker skips a job that Postgres already
 * records as finished).
 */
@Injectable()
export class OutboxRelay implements OnApplicationBootstrap, OnApplicationShutdown {
  private readonly log = new Logger(OutboxRelay.name);
  private readonly queues = new Map<string, Queue>();
  private stopListening?: () => void;
  private timer?: NodeJS.Timeout;
  private draining = false;
  private again = false;
  private stopped = false;
  /** Test hook: called after a row is published and before it is deleted (simulates a crash there). */
  afterPublish?: (row: OutboxRow) => void | Promise<void>;

  private stopLocal?: () => void;
  /** Fast path: committed rows waiting for the `addBulk` in flight, and published rows to delete. */
  private readonly committed: OutboxRow[] = [];
  private publishing = false;
  private readonly published: string[] = [];
  private forgetting = false;

  constructor(
    @InjectDataSource() private readonly ds: DataSource,
    @Inject(BERTH_CONFIG) private readonly config: BerthConfig,
    private readonly enqueuer: JobEnqueuer,
    private readonly listener: PgListener,
  ) {}

  async onApplicationBootstrap(): Promise<void> {
    // Jobs enqueued by this process: handed over at their commit (NOTIFY covers the other processes).
    this.stopLocal = this.enqueuer.onCommitted((rows) => this.publishCommitted(rows));
    this.timer = setInterval(() => this.kick(), this.config.outbox.pollMs);
    // Other processes' enqueues; (re)listening drains what was committed while the connection was down.
    this.stopListening = this.listener.listen('berth_outbox', {
      notify: () => this.kick(),
      listening: () => this.kick(),
    });
    this.kick();
  }

  /** Requests a drain; concurrent requests coalesce into one more pass. */
  kick(): void {
    if (this.stopped) return;
    if (this.draining) {
      this.again = true;
      return;
    }
    this.draining = true;
    void this.drain()
      .catch((e: unknown) =>
        this.log.warn(`outbox drain failed: ${e instanceof Error ? e.message : String(e)}`),
      )
      .finally(() => {
        this.draining = false;
        if (this.again) {
          this.again = false;
          this.kick();
        }
      });
  }

  /**
   * Fast path for rows this process just committed: published at once (rows committed while an `addBulk`
   * is in flight go together in the next one), then deleted in the background. A failure leaves the rows
   * in the table and wakes the drain.
   */
  private publishCommitted(rows: OutboxRow[]): void {
    if (this.stopped) return;
    this.committed.push(...rows);
    if (this.publishing) return;
    this.publishing = true;
    void (async () => {
      try {
        while (this.committed.length > 0 && !this.stopped) {
          const batch = this.committed.splice(0);
          try {
            await this.publish(batch);
            if (this.afterPublish) for (const row of batch) await this.afterPublish(row);
            this.forget(batch.map((r) => r.id));
          } catch (e) {
            this.log.warn(
              `outbox publish failed, the drain retries: ${e instanceof Error ? e.message : String(e)}`,
            );
            this.kick();
          }
        }
      } finally {
        this.publishing = false;
      }
    })();
  }

  /** Deletes published rows (skipping any another delete holds), coalesced like publishes. */
  private forget(ids: string[]): void {
    this.published.push(...ids);
    if (this.forgetting) return;
    this.forgetting = true;
    void (async () => {
      try {
        while (this.published.length > 0) {
          const batch = this.published.splice(0);
          // Not durable: a row that comes back after a Postgres crash is only published again (see above).
          await preparedQuery(
            this.ds,
            `WITH relaxed AS (SELECT set_config('synchronous_commit', 'off', true) AS v),
             r AS (SELECT id FROM outbox WHERE id = ANY($1::bigint[]) FOR UPDATE SKIP LOCKED)
             DELETE FROM outbox o USING r, relaxed WHERE o.id = r.id`,
            [batch],
          ).catch((e: unknown) =>
            this.log.warn(
              `outbox cleanup failed, the drain retries: ${e instanceof Error ? e.message : String(e)}`,
            ),
          );
        }
      } finally {
        this.forgetting = false;
      }
    })();
  }

  /**
   * Publishes every row still in the table, in batches. Returns the number published. One relay at a
   * time drains (a session advisory lock; another one's pass takes what is there); none holds a transaction
   * while it waits for Redis: a transaction with an id left open through a Redis outage would hold back
   * the audit trail's readers (they wait for the oldest open transaction) and vacuum for as long.
   */
  async drain(): Promise<number> {
    const runner = this.ds.createQueryRunner();
    await runner.connect();
    try {
      const [{ locked }] = await runner.query(`SELECT pg_try_advisory_lock(hashtext($1)) AS locked`, [
        DRAIN_LOCK,
      ]);
      if (!locked) return 0;
      try {
        let total = 0;
        for (;;) {
          const rows: OutboxRow[] = await runner.query(
            `SELECT id, queue, job_name, job_id, payload FROM outbox ORDER BY id LIMIT ${DRAIN_BATCH}`,
          );
          await this.publish(rows);
          if (this.afterPublish) for (const row of rows) await this.afterPublish(row);
          if (rows.length > 0) {
            // The delete need not wait for the WAL flush: losing it in a Postgres crash only publishes the
            // rows again, which is harmless (see above).
            await runner.query(
              `WITH relaxed AS (SELECT set_config('synchronous_commit', 'off', true) AS v)
               DELETE FROM outbox USING relaxed WHERE id = ANY($1::bigint[])`,
              [rows.map((r) => r.id)],
            );
          }
          total += rows.length;
          if (rows.length < DRAIN_BATCH) return total;
        }
      } finally {
        await runner.query(`SELECT pg_advisory_unlock(hashtext($1))`, [DRAIN_LOCK]);
      }
    } finally {
      await runner.release();
    }
  }

  /**
   * Adds the rows' jobs to their queues, one `addBulk` (one Redis round trip) per queue rather than one
   * `add` per row: under load a batch holds many rows. Each job keeps its own jobId, so a republished row
   * is still a no-op in BullMQ.
   */
  private async publish(rows: OutboxRow[]): Promise<void> {
    const byQueue = new Map<string, { name: JobKind; data: QueuedJobData; opts: JobsOptions }[]>();
    for (const row of rows) {
      const kind = row.job_name;
      if (!isJobKind(kind)) throw new Error(`outbox row ${row.id} has unknown job kind ${kind}`);
      const bullJobId = row.payload.bullJobId ?? row.job_id;
      const jobs = byQueue.get(row.queue) ?? [];
      jobs.push({ name: kind, data: row.payload, opts: jobOptionsFor(kind, bullJobId) });
      byQueue.set(row.queue, jobs);
    }
    for (const [queue, jobs] of byQueue) {
      if (jobs.length === 1) await this.queue(queue).add(jobs[0].name, jobs[0].data, jobs[0].opts);
      else await this.queue(queue).addBulk(jobs);
    }
  }

  queue(name: string): Queue {
    let q = this.queues.get(name);
    if (!q) {
      q = new Queue(name, {
        connection: bullConnection(this.config.redis.url),
        prefix: this.config.redis.bullPrefix,
      });
      q.on('error', (e) => this.log.warn(`queue ${name}: ${e.message}`));
      this.queues.set(name, q);
    }
    return q;
  }

  async onApplicationShutdown(): Promise<void> {
    this.stopped = true;
    this.stopLocal?.();
    if (this.timer) clearInterval(this.timer);
    this.stopListening?.();
    await Promise.all([...this.queues.values()].map((q) => q.close().catch(() => undefined)));
  }
}
