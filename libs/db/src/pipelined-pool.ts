import { Inject, Injectable, type OnApplicationShutdown } from '@nestjs/common';
import type { Pool, QueryResultRow } from 'pg';
import { BERTH_CONFIG, type BerthConfig } from '@berth/config';
import { createPipelinedPool, pipelinedTransaction, type SqlTx } from './pipelined-tx';
import { statementName } from './prepared';

/**
 * The app's connections for its hot, latency-critical statements (see createPipelinedPool): pipelined
 * transactions (the API's create) and single prepared statements (group-committed enqueues, the worker's
 * claims and completions). Separate from TypeORM's pool; opened on first use.
 */
@Injectable()
export class PipelinedPool implements OnApplicationShutdown {
  private pool?: Pool;

  constructor(@Inject(BERTH_CONFIG) private readonly config: BerthConfig) {}

  private get(): Pool {
    return (this.pool ??= createPipelinedPool(this.config.database.url));
  }

  transaction<T>(fn: (tx: SqlTx) => Promise<T>): Promise<T> {
    return pipelinedTransaction(this.get(), fn);
  }

  /** `text` as a named prepared statement, on its own (its own implicit transaction). */
  async query<T extends QueryResultRow = Record<string, unknown>>(
    text: string,
    params: unknown[] = [],
  ): Promise<T[]> {
    return (await this.get().query<T>({ name: statementName(text), text, values: params })).rows;
  }

  async onApplicationShutdown(): Promise<void> {
    await this.pool?.end().catch(() => undefined);
  }
}
