import { Inject, Injectable, type OnApplicationShutdown } from '@nestjs/common';
import type { Pool } from 'pg';
import { BERTH_CONFIG, type BerthConfig } from '@berth/config';
import { createPipelinedPool, pipelinedTransaction, type SqlTx } from '@berth/db';

/** The API's pipelined connections (libs/db pipelinedTransaction), for its latency-critical writes. */
@Injectable()
export class PipelinedPool implements OnApplicationShutdown {
  private pool?: Pool;

  constructor(@Inject(BERTH_CONFIG) private readonly config: BerthConfig) {}

  transaction<T>(fn: (tx: SqlTx) => Promise<T>): Promise<T> {
    this.pool ??= createPipelinedPool(this.config.database.url);
    return pipelinedTransaction(this.pool, fn);
  }

  async onApplicationShutdown(): Promise<void> {
    await this.pool?.end().catch(() => undefined);
  }
}
