import type { DataSource } from 'typeorm';
import type { BerthConfig } from '@berth/config';
import { createDataSource, PgListener } from '@berth/db';

/** PgListener against the real PostgreSQL: channels share one connection, fan out, and survive a drop. */
describe('PgListener', () => {
  const url = process.env.BERTH_TEST_DATABASE_URL!;
  const a = `pgl_a_${process.pid}`;
  const b = `pgl_b_${process.pid}`;
  let ds: DataSource;
  let listener: PgListener;

  beforeAll(async () => {
    ds = createDataSource(url);
    await ds.initialize();
  });
  afterAll(() => ds.destroy());
  beforeEach(() => {
    listener = new PgListener({ database: { url } } as BerthConfig);
  });
  afterEach(() => listener.onApplicationShutdown());

  const until = async (what: string, ok: () => boolean, ms = 5_000) => {
    for (const t0 = Date.now(); !ok(); await new Promise((r) => setTimeout(r, 10)))
      if (Date.now() - t0 > ms) throw new Error(`timed out waiting for ${what}`);
  };
  const notify = (channel: string, payload: string) =>
    ds.query(`SELECT pg_notify($1, $2)`, [channel, payload]);

  it('delivers each channel to its own subscribers, all over one connection', async () => {
    const got: string[] = [];
    let opened = 0;
    listener.listen(a, { notify: (p) => got.push(`a1:${p}`), listening: () => opened++ });
    listener.listen(a, { notify: (p) => got.push(`a2:${p}`) });
    const stopB = listener.listen(b, { notify: (p) => got.push(`b:${p}`) });
    await until('the connection', () => listener.backendPid !== undefined && opened === 1);
    // One backend ran this test's LISTENs (two connections would show two, each with its last LISTEN).
    const [{ connections }] = await ds.query(
      `SELECT count(*)::int AS connections FROM pg_stat_activity WHERE query LIKE $1`,
      [`LISTEN pgl\\_%\\_${process.pid}`],
    );
    expect(connections).toBe(1);
    await notify(a, 'x');
    await notify(b, 'y');
    await until('three deliveries', () => got.length === 3);
    expect(got.sort()).toEqual(['a1:x', 'a2:x', 'b:y']);
    // Unsubscribed: no longer called (a's subscribers still are).
    stopB();
    await notify(b, 'z');
    await notify(a, 'w');
    await until('two more', () => got.length === 5);
    await new Promise((r) => setTimeout(r, 100));
    expect(got.slice(3).sort()).toEqual(['a1:w', 'a2:w']);
  });

  it('reconnects after the connection is killed, listens on every channel again and says so', async () => {
    const got: string[] = [];
    const opened = { a: 0, b: 0 };
    listener.listen(a, { notify: (p) => got.push(`a:${p}`), listening: () => opened.a++ });
    listener.listen(b, { notify: (p) => got.push(`b:${p}`), listening: () => opened.b++ });
    await until('the connection', () => opened.a === 1 && opened.b === 1);
    const first = listener.backendPid;
    await ds.query(`SELECT pg_terminate_backend($1)`, [first]);
    // Subscribers re-check what they wait for: whatever was notified while it was down is lost.
    await until('the reconnection', () => opened.a === 2 && opened.b === 2, 10_000);
    expect(listener.backendPid).not.toBe(first);
    await notify(a, 'again');
    await notify(b, 'again');
    await until('both deliveries', () => got.length === 2);
    expect(got.sort()).toEqual(['a:again', 'b:again']);
  });

  it('refuses a channel name that is not a plain identifier', () => {
    expect(() => listener.listen('x; DROP TABLE jobs', { notify: () => undefined })).toThrow(TypeError);
  });
});
