import { Pool, type PoolClient, type QueryResult, type QueryResultRow } from 'pg';
import { statementName } from './prepared';

/** A transaction on a pipelined connection (see pipelinedTransaction). */
export interface SqlTx {
  /**
   * Runs `text` as a prepared statement in the transaction. Statements issued without awaiting the
   * previous one are sent together (pipelined) and answered in order; once one fails, the rest of the
   * transaction fails too (PostgreSQL aborts it), so await them together (e.g. Promise.allSettled).
   */
  query<T extends QueryResultRow = Record<string, unknown>>(text: string, params?: unknown[]): Promise<T[]>;
  /** Runs `fn` right after the transaction committed (not after a rollback). */
  onCommit(fn: () => void): void;
  /**
   * Sends the COMMIT now, right behind the statements already sent, instead of after `fn` returns: the
   * commit's round trip overlaps theirs. If one of them fails, PostgreSQL answers the COMMIT with a
   * rollback and the transaction fails. After this, `fn` must only read the answers (a later statement
   * would run outside the transaction, and an error thrown for any other reason cannot undo the commit).
   */
  commit(): void;
}

/**
 * A pg pool whose connections pipeline (pg's `pipeline` mode: queries are written without waiting for
 * the answers of the ones before), for the request paths where every round trip to PostgreSQL shows in
 * the answer's latency. Separate from TypeORM's pool, which keeps pg's one-query-at-a-time default.
 *
 * Its prepared statements always run their generic plan (`plan_cache_mode = force_generic_plan`): the hot
 * statements take their rows as `jsonb` and their keys as `= ANY($n)` arrays, for which PostgreSQL would
 * otherwise keep choosing a custom plan (the generic one estimates more rows) and plan the whole CTE again
 * at every execution, which costs more than running it. A generic plan is kept for the connection's life,
 * though, and one made while a table was small (a new install, a fresh database) scans and hashes the
 * whole table at every execution once it has grown. The hot statements are key lookups by design, so this
 * pool also takes sequential scans, hash joins and merge joins off the planner's menu: its plans are
 * index lookups and nested loops whatever the statistics say. (A statement that must read a whole table
 * still can, through an index, or by a sequential scan when nothing else can: a small table like `hosts`.)
 * JIT compilation is off for the pool: a path the settings above switch off still counts, at a cost of
 * 10^10, and a plan that keeps one (a scan of `hosts`, which has no useful index) would cross
 * `jit_above_cost` and be compiled at every execution (≈ 0.9 s for the placement, measured with 50
 * hosts), for statements that run in a millisecond.
 */
export function createPipelinedPool(url: string, max = 10): Pool {
  return new Pool({
    connectionString: url,
    max,
    pipeline: true,
    options: [
      '-c plan_cache_mode=force_generic_plan',
      '-c enable_seqscan=off',
      '-c enable_hashjoin=off',
      '-c enable_mergejoin=off',
      '-c jit=off',
    ].join(' '),
    connectionTimeoutMillis: 3_000,
    query_timeout: 15_000,
  } as ConstructorParameters<typeof Pool>[0]);
}

/**
 * Runs `fn` in a transaction whose `BEGIN` travels with its first statement and whose `COMMIT` is the
 * only round trip after its last one (or none: see SqlTx.commit). A COMMIT that PostgreSQL answers with
 * ROLLBACK (a statement failed and `fn` went on) is an error, not a silent loss.
 */
export async function pipelinedTransaction<T>(pool: Pool, fn: (tx: SqlTx) => Promise<T>): Promise<T> {
  const client: PoolClient = await pool.connect();
  const committed: (() => void)[] = [];
  let broken: Error | undefined;
  const begin = client.query('BEGIN');
  begin.catch(() => undefined);
  let commit: Promise<QueryResult> | undefined;
  const sendCommit = (): Promise<QueryResult> => {
    if (!commit) {
      commit = client.query('COMMIT');
      commit.catch(() => undefined);
    }
    return commit;
  };
  try {
    const tx: SqlTx = {
      query: async <R extends QueryResultRow>(text: string, params: unknown[] = []) =>
        (await client.query<R>({ name: statementName(text), text, values: params })).rows,
      onCommit: (f) => committed.push(f),
      commit: () => void sendCommit(),
    };
    const result = await fn(tx);
    await begin;
    const end = await sendCommit();
    if (end.command !== 'COMMIT')
      throw new Error('transaction rolled back at commit (a statement in it failed)');
    for (const f of committed) f();
    return result;
  } catch (e) {
    await client.query('ROLLBACK').catch((err: Error) => (broken = err));
    throw e;
  } finally {
    client.release(broken);
  }
}
