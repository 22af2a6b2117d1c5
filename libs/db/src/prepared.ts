import { createHash } from 'node:crypto';
import type { Pool, PoolClient, QueryResultRow } from 'pg';
import { DataSource, type EntityManager } from 'typeorm';
import type { SqlTx } from './pipelined-tx';

/** Statement text → its prepared statement's name (the same text always gets the same name). */
const names = new Map<string, string>();

/** The prepared statement name of `text` (the same text always gets the same name). */
export function statementName(text: string): string {
  let name = names.get(text);
  if (!name) {
    name = `berth_${createHash('sha1').update(text).digest('hex').slice(0, 16)}`;
    names.set(text, name);
  }
  return name;
}

/** The pg pool behind a TypeORM DataSource (TypeORM's Postgres driver keeps it as `master`). */
function poolOf(ds: DataSource): Pool {
  const pool = (ds.driver as unknown as { master?: Pool }).master;
  if (!pool) throw new Error('preparedQuery needs an initialized Postgres DataSource');
  return pool;
}

/**
 * Runs `text` as a named prepared statement on the connection `on` works with: the connection of the
 * EntityManager's transaction or of the SqlTx, or any connection of the DataSource's pool. Each connection parses and
 * plans a statement once, then only binds and executes it: on the hot paths (enqueue, claim, job
 * transitions) planning the CTEs cost as much PostgreSQL CPU as running them. Only for fixed statement
 * texts (parameters in `params`, never spliced into `text`): every distinct text stays prepared on every
 * connection for the connection's life.
 */
export async function preparedQuery<T extends QueryResultRow = Record<string, unknown>>(
  on: DataSource | EntityManager | SqlTx,
  text: string,
  params: unknown[] = [],
): Promise<T[]> {
  if ('onCommit' in on) return on.query<T>(text, params);
  const query = { name: statementName(text), text, values: params };
  if (on instanceof DataSource) return (await poolOf(on).query<T>(query)).rows;
  const qr = on.queryRunner;
  if (qr && !qr.isReleased) {
    const client = (await qr.connect()) as PoolClient;
    return (await client.query<T>(query)).rows;
  }
  return (await poolOf(on.connection).query<T>(query)).rows;
}
