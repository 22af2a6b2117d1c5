import {
  Inject,
  Injectable,
  Logger,
  type OnApplicationBootstrap,
  type OnApplicationShutdown,
} from '@nestjs/common';
import { InjectDataSource } from '@nestjs/typeorm';
import { type JobsOptions, Queue } from 'bullmq';
import { Client } from 'pg';
import type { DataSource } from 'typeorm';
import { BERTH_CONFIG, type BerthConfig } from '@berth/config';
import { bullConnection, isJobKind, jobOptionsFor, type JobKind, type QueuedJobData } from '@berth/jobs';
import { JobEnqueuer } from '../jobs/job-enqueuer';

interface OutboxRow {
  id: string;
  queue: string;
  job_name: string;
  job_id: string;
  payload: QueuedJobData & { bullJobId?: string };
}

/**
 * Publishes outbox rows to BullMQ. Woken by LISTEN/NOTIFY on `berth_outbox` (and in-process right after
 * this process's own enqueues commit), with a slow poll as a safety net. Any number of relays may run: each claims rows with FOR UPDATE SKIP LOCKED. A row is published with
 * BullMQ jobId = our job id, then marked published in the same transaction that held the lock: a crash
 * between the two publishes it again, which BullMQ ignores for an existing jobId (and the worker skips a
 * job that Postgres already records as finished).
 */
@Injectable()
export class OutboxRelay implements OnApplicationBootstrap, OnApplicationShutdown {
  private readonly log = new Logger(OutboxRelay.name);
  private readonly queues = new Map<string, Queue>();
  private listener?: Client;
  private timer?: NodeJS.Timeout;
  private draining = false;
  private again = false;
  private stopped = false;
  /** Test hook: called after a row is published and before it is marked (simulates a crash there). */
  afterPublish?: (row: OutboxRow) => void | Promise<void>;

  private stopLocal?: () => void;

  constructor(
    @InjectDataSource() private readonly ds: DataSource,
    @Inject(BERTH_CONFIG) private readonly config: BerthConfig,
    private readonly enqueuer: JobEnqueuer,
  ) {}

  async onApplicationBootstrap(): Promise<void> {
    // Jobs enqueued by this process: woken in-process at their commit (NOTIFY covers the other processes).
    this.stopLocal = this.enqueuer.onCommitted(() => this.kick());
    this.timer = setInterval(() => this.kick(), this.config.outbox.pollMs);
    void this.listen();
    this.kick();
  }

  private async listen(): Promise<void> {
    if (this.stopped) return;
    const client = new Client({ connectionString: this.config.database.url });
    client.on('notification', () => this.kick());
    client.on('error', () => {
      this.listener = undefined;
      client.end().catch(() => undefined);
      setTimeout(() => void this.listen(), 1_000);
    });
    try {
      await client.connect();
      await client.query('LISTEN berth_outbox');
      this.listener = client;
      this.kick();
    } catch {
      client.end().catch(() => undefined);
      if (!this.stopped) setTimeout(() => void this.listen(), 1_000);
    }
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

  /** Publishes every unpublished row, in batches. Returns the number published. */
  async drain(): Promise<number> {
    let total = 0;
    for (;;) {
      const n = await this.ds.transaction(async (m) => {
        const rows: OutboxRow[] = await m.query(
          `SELECT id, queue, job_name, job_id, payload FROM outbox WHERE published_at IS NULL
           ORDER BY id LIMIT 100 FOR UPDATE SKIP LOCKED`,
        );
        await this.publish(rows);
        if (this.afterPublish) for (const row of rows) await this.afterPublish(row);
        if (rows.length > 0) {
          // The mark need not wait for the WAL flush: losing it in a Postgres crash only publishes the rows
          // again, which is harmless (see above). Set after publishing, off the path to the worker.
          await m.query(`SET LOCAL synchronous_commit = off`);
          await m.query(
            `UPDATE outbox SET published_at = now(), attempts = attempts + 1 WHERE id = ANY($1)`,
            [rows.map((r) => r.id)],
          );
        }
        return rows.length;
      });
      total += n;
      if (n < 100) return total;
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
    await this.listener?.end().catch(() => undefined);
    await Promise.all([...this.queues.values()].map((q) => q.close().catch(() => undefined)));
  }
}
