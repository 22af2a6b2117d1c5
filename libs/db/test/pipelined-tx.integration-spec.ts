import type { Pool } from 'pg';
import type { DataSource } from 'typeorm';
import {
  createDataSource,
  createPipelinedPool,
  pipelinedTransaction,
  preparedQuery,
  statementName,
} from '@berth/db';

/** pipelinedTransaction and preparedQuery against the real PostgreSQL (the hot paths' building blocks). */
describe('pipelined transactions and prepared statements', () => {
  let ds: DataSource;
  let pool: Pool;
  const table = `pipelined_tx_${process.pid}`;

  beforeAll(async () => {
    ds = createDataSource(process.env.BERTH_TEST_DATABASE_URL!);
    await ds.initialize();
    pool = createPipelinedPool(process.env.BERTH_TEST_DATABASE_URL!, 2);
    await ds.query(`CREATE TABLE ${table} (id int PRIMARY KEY, v text NOT NULL)`);
  });
  afterAll(async () => {
    await ds.query(`DROP TABLE IF EXISTS ${table}`);
    await pool.end();
    await ds.destroy();
  });
  const rows = () => ds.query(`SELECT id, v FROM ${table} ORDER BY id`);

  it('runs its prepared statements on their generic plan (no planning per execution), by key', async () => {
    const client = await pool.connect();
    try {
      const text = `SELECT id FROM ${table} WHERE id = ANY($1::int[])`;
      // Left to itself, PostgreSQL would keep a custom plan for an array parameter: planned every time.
      for (let k = 0; k < 8; k++)
        await client.query({ name: statementName(text), text, values: [[k, k + 1]] });
      const [plans] = (
        await client.query(`SELECT generic_plans, custom_plans FROM pg_prepared_statements WHERE name = $1`, [
          statementName(text),
        ])
      ).rows;
      expect(plans).toEqual({ generic_plans: '8', custom_plans: '0' });
      // Made while the table is tiny, that plan still looks rows up by key (no scan of the whole table to
      // grow with it): the pool's planner settings.
      const explained = await client.query(`EXPLAIN EXECUTE ${statementName(text)}('{1,2}')`);
      const plan = explained.rows.map((r: { 'QUERY PLAN': string }) => r['QUERY PLAN']).join('\n');
      expect(plan).toMatch(/(Index (Only )?Scan using|Bitmap Index Scan on) pipelined_tx_\d+_pkey/);
      expect(plan).not.toMatch(/Seq Scan/);
    } finally {
      client.release();
    }
  });

  it('compiles nothing with JIT, even a plan that has to scan a table (its cost counts as switched off)', async () => {
    const client = await pool.connect();
    try {
      // No index can serve this filter: the scan stays, at the cost PostgreSQL gives a disabled path.
      const text = `SELECT count(*) FROM ${table} WHERE v <> $1`;
      await client.query({ name: statementName(text), text, values: ['x'] });
      const explained = await client.query(`EXPLAIN (ANALYZE) EXECUTE ${statementName(text)}('x')`);
      const plan = explained.rows.map((r: { 'QUERY PLAN': string }) => r['QUERY PLAN']).join('\n');
      expect(plan).toMatch(/Seq Scan/);
      expect(plan).not.toMatch(/JIT/);
    } finally {
      client.release();
    }
  });

  it('commits statements sent without waiting for each other, in order, then runs onCommit', async () => {
    const committed: string[] = [];
    const result = await pipelinedTransaction(pool, async (tx) => {
      tx.onCommit(() => committed.push('after commit'));
      const a = tx.query(`INSERT INTO ${table} (id, v) VALUES ($1, $2) RETURNING id`, [1, 'a']);
      // Sees the row the statement before it wrote: same transaction, answered in order.
      const b = tx.query<{ n: number }>(`SELECT count(*)::int AS n FROM ${table} WHERE id = $1`, [1]);
      const [[{ id }], [{ n }]] = await Promise.all([a, b]);
      // Not visible outside before the commit, and onCommit has not run.
      expect(await rows()).toEqual([]);
      expect(committed).toEqual([]);
      return { id, n };
    });
    expect(result).toEqual({ id: 1, n: 1 });
    expect(committed).toEqual(['after commit']);
    expect(await rows()).toEqual([{ id: 1, v: 'a' }]);
  });

  it('commit() sends the COMMIT behind the statements in flight; a failed one turns it into a rollback', async () => {
    const committed: string[] = [];
    await pipelinedTransaction(pool, async (tx) => {
      tx.onCommit(() => committed.push('after commit'));
      const a = tx.query(`INSERT INTO ${table} (id, v) VALUES ($1, $2)`, [10, 'early']);
      tx.commit();
      await a;
    });
    expect(committed).toEqual(['after commit']);
    expect(await ds.query(`SELECT v FROM ${table} WHERE id = 10`)).toEqual([{ v: 'early' }]);

    const failed = pipelinedTransaction(pool, async (tx) => {
      tx.onCommit(() => committed.push('never'));
      const ok = tx.query(`INSERT INTO ${table} (id, v) VALUES ($1, $2)`, [11, 'lost']);
      const dup = tx.query(`INSERT INTO ${table} (id, v) VALUES ($1, $2)`, [10, 'duplicate']);
      tx.commit();
      const [, d] = await Promise.allSettled([ok, dup]);
      if (d.status === 'rejected') throw d.reason;
    });
    await expect(failed).rejects.toMatchObject({ code: '23505' });
    expect(committed).toEqual(['after commit']);
    expect(await ds.query(`SELECT id FROM ${table} WHERE id = 11`)).toEqual([]);
    // The connection went back to the pool usable: the next transaction on it works.
    await pipelinedTransaction(pool, (tx) => tx.query(`DELETE FROM ${table} WHERE id = 10`));
    expect(await ds.query(`SELECT id FROM ${table} WHERE id = 10`)).toEqual([]);
  });

  it('rolls everything back when fn throws, and onCommit never runs', async () => {
    const committed: string[] = [];
    await expect(
      pipelinedTransaction(pool, async (tx) => {
        tx.onCommit(() => committed.push('x'));
        await tx.query(`INSERT INTO ${table} (id, v) VALUES ($1, $2)`, [2, 'b']);
        throw new Error('refused');
      }),
    ).rejects.toThrow('refused');
    expect(committed).toEqual([]);
    expect(await rows()).toEqual([{ id: 1, v: 'a' }]);
  });

  it('a failed statement that fn swallowed makes the commit an error, not a silent rollback', async () => {
    await expect(
      pipelinedTransaction(pool, async (tx) => {
        const dup = tx.query(`INSERT INTO ${table} (id, v) VALUES ($1, $2)`, [1, 'dup']);
        const next = tx.query(`INSERT INTO ${table} (id, v) VALUES ($1, $2)`, [3, 'c']);
        const [d, n] = await Promise.allSettled([dup, next]);
        expect(d).toMatchObject({ status: 'rejected', reason: { code: '23505' } });
        // The statement after the failed one fails too: the transaction is aborted.
        expect(n).toMatchObject({ status: 'rejected', reason: { code: '25P02' } });
      }),
    ).rejects.toThrow(/rolled back at commit/);
    expect(await rows()).toEqual([{ id: 1, v: 'a' }]);
    // The connections are still good for the next transaction.
    await pipelinedTransaction(pool, (tx) => tx.query(`INSERT INTO ${table} (id, v) VALUES (4, 'd')`));
    expect(await rows()).toEqual([
      { id: 1, v: 'a' },
      { id: 4, v: 'd' },
    ]);
  });

  it('preparedQuery runs the same text as one prepared statement, on the pool and in a transaction', async () => {
    const text = `SELECT v FROM ${table} WHERE id = $1`;
    expect(await preparedQuery(ds, text, [1])).toEqual([{ v: 'a' }]);
    expect(await preparedQuery(ds, text, [4])).toEqual([{ v: 'd' }]);
    await ds.transaction(async (m) => {
      await m.query(`UPDATE ${table} SET v = 'in-tx' WHERE id = 1`);
      // The transaction's own connection: sees its uncommitted write.
      expect(await preparedQuery(m, text, [1])).toEqual([{ v: 'in-tx' }]);
      expect(await preparedQuery(m, text, [4])).toEqual([{ v: 'd' }]);
      // Prepared once on this connection and reused, under Berth's name for it.
      const prepared = await m.query(`SELECT name FROM pg_prepared_statements WHERE statement = $1`, [text]);
      expect(prepared).toEqual([{ name: expect.stringMatching(/^berth_[0-9a-f]{16}$/) }]);
      await m.query(`UPDATE ${table} SET v = 'a' WHERE id = 1`);
    });
  });
});
