import { Client } from 'pg';
import { createTestKey } from '@test/support/pipeline';
import { startApiOnly, type ApiOnly } from '@test/support/api-only';

const MiB = 1024 * 1024;
const HOUR_MS = 3_600_000;

describe('Idempotency-Key on writes', () => {
  let a: ApiOnly;

  beforeAll(async () => {
    a = await startApiOnly('idem');
  }, 60_000);
  afterAll(() => a?.close(), 30_000);

  const body = (name: string, extra: object = {}) => ({
    name,
    template: a.template,
    cpus: 1,
    memoryBytes: 64 * MiB,
    start: false,
    ...extra,
  });
  const create = (key: string, b: object, token = a.token) =>
    a.http().post('/v1/containers').set(a.auth(token)).set('Idempotency-Key', key).send(b);
  const jobsOf = async (name: string) =>
    (
      await a.ds.query(
        `SELECT count(*)::int AS n FROM jobs j JOIN containers c ON c.id = j.container_id WHERE c.name = $1`,
        [name],
      )
    )[0].n as number;
  const keyRow = async (key: string) =>
    (await a.ds.query(`SELECT * FROM idempotency_keys WHERE key = $1`, [key])) as {
      state: string;
      created_at: Date;
      expires_at: Date;
      scope: string;
    }[];

  it('answers the same key with the same request with the stored answer, once', async () => {
    const first = await create('k-same', body('idem-1'));
    expect(first.status).toBe(202);
    expect(first.headers['idempotent-replayed']).toBeUndefined();
    // The same request again (keys in another order: the same JSON), several times.
    const reordered = Object.fromEntries(Object.entries(body('idem-1')).reverse());
    for (let i = 0; i < 3; i++) {
      const again = await create('k-same', reordered);
      expect(again.status).toBe(202);
      expect(again.headers['idempotent-replayed']).toBe('true');
      expect(again.headers.location).toBe(`/v1/jobs/${first.body.job.id}`);
      expect(again.body).toEqual(first.body);
    }
    // Without the key the same body is a new request, refused because the name is taken: the replays
    // above were answered from the store, not run again.
    const fresh = await a.http().post('/v1/containers').set(a.auth()).send(body('idem-1'));
    expect(fresh.status).toBe(409);
    expect(fresh.body.code).toBe('CONTAINER_NAME_TAKEN');
    expect(await jobsOf('idem-1')).toBe(1);
    expect(await a.ds.query(`SELECT count(*)::int AS n FROM containers WHERE name = 'idem-1'`)).toEqual([
      { n: 1 },
    ]);
  });

  it('refuses the same key with a different request: 422 IDEMPOTENCY_KEY_REUSED, nothing written', async () => {
    expect((await create('k-reuse', body('idem-2'))).status).toBe(202);
    const before = await a.counts();
    const other = await create('k-reuse', body('idem-2', { cpus: 2 }));
    expect(other.status).toBe(422);
    expect(other.headers['content-type']).toMatch(/^application\/problem\+json/);
    expect(other.body.code).toBe('IDEMPOTENCY_KEY_REUSED');
    // Another path with the same key is another request too.
    const elsewhere = await a
      .http()
      .post(`/v1/templates`)
      .set(a.auth())
      .set('Idempotency-Key', 'k-reuse')
      .send({ name: 'idem-t', source: 'builtin:busybox' });
    expect(elsewhere.status).toBe(422);
    expect(elsewhere.body.code).toBe('IDEMPOTENCY_KEY_REUSED');
    expect(await a.counts()).toEqual(before);
    // The stored answer is still the first one.
    expect((await create('k-reuse', body('idem-2'))).headers['idempotent-replayed']).toBe('true');
  });

  it('refuses a key still in flight with 409, then replays its answer once it is done', async () => {
    const made = await create('k-setup', body('idem-3'));
    expect(made.status).toBe(202);
    const id = made.body.container.id as string;
    // Hold the container's row lock from another connection: the start request waits on it, in flight.
    const blocker = new Client({ connectionString: a.databaseUrl });
    await blocker.connect();
    try {
      await blocker.query('BEGIN');
      await blocker.query(`SELECT id FROM containers WHERE id = $1 FOR UPDATE`, [id]);
      const start = () =>
        a.http().post(`/v1/containers/${id}/start`).set(a.auth()).set('Idempotency-Key', 'k-flight').send({});
      const slow = start().then((r) => r); // supertest sends on then()
      const end = Date.now() + 10_000;
      while ((await keyRow('k-flight'))[0]?.state !== 'in_flight') {
        if (Date.now() > end) throw new Error('the first request never claimed its key');
        await new Promise((r) => setTimeout(r, 20));
      }
      // It is really waiting on the lock (not done yet): its enqueue updates the container's row.
      const lockWaits = async () =>
        (
          await a.ds.query(
            `SELECT count(*)::int AS n FROM pg_stat_activity WHERE datname = current_database()
               AND wait_event_type = 'Lock' AND query LIKE '%UPDATE containers SET job_seq%'`,
          )
        )[0].n as number;
      while ((await lockWaits()) < 1) {
        if (Date.now() > end) throw new Error('the first request never waited on the container lock');
        await new Promise((r) => setTimeout(r, 20));
      }
      const second = await start();
      expect(second.status).toBe(409);
      expect(second.headers['content-type']).toMatch(/^application\/problem\+json/);
      expect(second.body.code).toBe('IDEMPOTENCY_KEY_IN_FLIGHT');
      await blocker.query('COMMIT');
      const first = await slow;
      expect(first.status).toBe(202);
      const third = await start();
      expect(third.status).toBe(202);
      expect(third.headers['idempotent-replayed']).toBe('true');
      expect(third.body.job.id).toBe(first.body.job.id);
      expect(
        await a.ds.query(
          `SELECT count(*)::int AS n FROM jobs WHERE container_id = $1 AND kind = 'container.start'`,
          [id],
        ),
      ).toEqual([{ n: 1 }]);
    } finally {
      await blocker.query('ROLLBACK').catch(() => undefined);
      await blocker.end();
    }
  }, 30_000);

  it('keeps the keys of different API keys apart', async () => {
    const other = await createTestKey(a.ds);
    const mine = await create('k-shared', body('idem-4'));
    const theirs = await create('k-shared', body('idem-5'), other);
    expect(mine.status).toBe(202);
    expect(theirs.status).toBe(202);
    expect(theirs.headers['idempotent-replayed']).toBeUndefined();
    expect(theirs.body.job.id).not.toBe(mine.body.job.id);
    // Each replays its own answer.
    expect((await create('k-shared', body('idem-5'), other)).body.job.id).toBe(theirs.body.job.id);
    expect((await create('k-shared', body('idem-4'))).body.job.id).toBe(mine.body.job.id);
    const rows = await keyRow('k-shared');
    expect(new Set(rows.map((r) => r.scope)).size).toBe(2);
  });

  it('keeps a key at least 24 hours', async () => {
    expect((await create('k-ttl', body('idem-6'))).status).toBe(202);
    const [row] = await keyRow('k-ttl');
    expect(row.state).toBe('done');
    expect(row.expires_at.getTime() - row.created_at.getTime()).toBeGreaterThanOrEqual(24 * HOUR_MS);
    expect(row.expires_at.getTime()).toBeGreaterThanOrEqual(Date.now() + 24 * HOUR_MS - 60_000);
  });

  it('releases the key of a failed request, so a corrected request may use it', async () => {
    const made = await create('k-setup-7', body('idem-7'));
    const id = made.body.container.id as string;
    const pause = await a
      .http()
      .post(`/v1/containers/${id}/pause`)
      .set(a.auth())
      .set('Idempotency-Key', 'k-fail')
      .send({});
    expect(pause.status).toBe(409);
    expect(pause.body.code).toBe('INVALID_TRANSITION');
    expect(await keyRow('k-fail')).toEqual([]);
    // A validation failure releases it too.
    const bad = await create('k-fail', body('IDEM-BAD'));
    expect(bad.status).toBe(400);
    expect(await keyRow('k-fail')).toEqual([]);
    const start = await a
      .http()
      .post(`/v1/containers/${id}/start`)
      .set(a.auth())
      .set('Idempotency-Key', 'k-fail')
      .send({});
    expect(start.status).toBe(202);
    expect(start.headers['idempotent-replayed']).toBeUndefined();
  });

  it('refuses a malformed key with 400, nothing written', async () => {
    const before = await a.counts();
    const res = await create('bad key with spaces', body('idem-8'));
    expect(res.status).toBe(400);
    expect(res.body.code).toBe('INVALID_IDEMPOTENCY_KEY');
    expect(await a.counts()).toEqual(before);
  });
});
