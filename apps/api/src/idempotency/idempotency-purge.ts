import { Injectable, Logger, type OnApplicationBootstrap, type OnApplicationShutdown } from '@nestjs/common';
import { InjectDataSource } from '@nestjs/typeorm';
import type { DataSource } from 'typeorm';

/** How often expired keys are removed (a key outlives its expiry by at most this much). */
const PURGE_EVERY_MS = 10 * 60_000;
const BATCH = 1_000;

/**
 * Removes Idempotency-Keys past their expiry (IDEMPOTENCY_TTL_HOURS), at start and every ten minutes, so
 * the table holds about a day of keyed requests instead of all of them. In batches (short transactions),
 * skipping rows a request holds; every API process runs it, and they skip each other's rows.
 */
@Injectable()
export class IdempotencyKeyPurge implements OnApplicationBootstrap, OnApplicationShutdown {
  private readonly log = new Logger(IdempotencyKeyPurge.name);
  private timer?: NodeJS.Timeout;

  constructor(@InjectDataSource() private readonly ds: DataSource) {}

  onApplicationBootstrap(): void {
    const run = () =>
      void this.purge().catch((e: unknown) =>
        this.log.warn(`idempotency key purge failed: ${e instanceof Error ? e.message : String(e)}`),
      );
    this.timer = setInterval(run, PURGE_EVERY_MS).unref();
    run();
  }

  onApplicationShutdown(): void {
    if (this.timer) clearInterval(this.timer);
  }

  /** Deletes every expired key, `batch` at a time; returns how many. */
  async purge(batch = BATCH): Promise<number> {
    let total = 0;
    for (;;) {
      const [, n] = (await this.ds.query(
        `WITH doomed AS (
           SELECT scope, key FROM idempotency_keys WHERE expires_at < now()
           ORDER BY expires_at LIMIT $1 FOR UPDATE SKIP LOCKED)
         DELETE FROM idempotency_keys k USING doomed d WHERE k.scope = d.scope AND k.key = d.key`,
        [batch],
      )) as [unknown, number];
      total += n;
      if (n < batch) return total;
    }
  }
}
