import { createHash } from 'node:crypto';
import { Client } from 'pg';
import { createTestKey } from '@test/support/pipeline';
import { startApiOnly, type ApiOnly } from '@test/support/api-only';
import { IdempotencyKeyPurge } from '../../apps/api/src/idempotency/idempotency-purge';

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
  /** Waits until `n` statements of this database wait on a row lock (the tests hold a container's). */
  const waitForLockWaiters = async (n: number, until: number) => {
    const waiting = async () =>
      (
        await a.ds.query(
          `SELECT count(*)::int AS n FROM pg_stat_activity
           WHERE datname = current_database() AND wait_event_type = 'Lock'`,
        )
      )[0].n as number;
    while ((await waiting()) < n) {
      if (Date.now() > until) throw new Error(`fewer than ${n} requests ever waited on the container lock`);
      await new Promise((r) => setTimeout(r, 20));
    }
  };
  /** Runs `fn` while another connection holds container `id`'s row lock, until `fn` calls `release`. */
  const withContainerLocked = async (id: string, fn: (release: () => Promise<void>) => Promise<void>) => {
    const blocker = new Client({ connectionString: a.databaseUrl });
    await blocker.connect();
    try {
      await blocker.query('BEGIN');
      await blocker.query(`SELECT id FROM containers WHERE id = $1 FOR UPDATE`, [id]);
      await fn(async () => void (await blocker.query('COMMIT')));
    } finally {
      await blocker.query('ROLLBACK').catch(() => undefined);
      await blocker.end();
    }
  };
  const startJobs = async (id: string) =>
    (
      await a.ds.query(
        `SELECT count(*)::int AS n FROM jobs WHERE container_id = $1 AND kind = 'container.start'`,
        [id],
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

  it('takes a body-less request and the same with {} (or its id in upper case, or a trailing slash) as one request', async () => {
    const made = await create('k-shape-create', body('idem-shape'));
    expect(made.status).toBe(202);
    const id: string = made.body.container.id;
    const start = (path: string, b?: object) => {
      const r = a.http().post(path).set(a.auth()).set('Idempotency-Key', 'k-shape');
      return b === undefined ? r : r.send(b);
    };
    const first = await start(`/v1/containers/${id}/start`);
    expect(first.status).toBe(202);
    for (const [path, b] of [
      [`/v1/containers/${id}/start`, {}],
      [`/v1/containers/${id.toUpperCase()}/start`, undefined],
      [`/v1/containers/${id}/start/`, {}],
    ] as [string, object | undefined][]) {
      const again = await start(path, b);
      expect({ path, status: again.status, replayed: again.headers['idempotent-replayed'] }).toEqual({
        path,
        status: 202,
        replayed: 'true',
      });
      expect(again.body).toEqual(first.body);
    }
    expect(await startJobs(id)).toBe(1);
    // Another container, or another action, is another request.
    const other = await create('k-shape-other', body('idem-shape-2'));
    expect((await start(`/v1/containers/${other.body.container.id}/start`)).body.code).toBe(
      'IDEMPOTENCY_KEY_REUSED',
    );
    expect((await start(`/v1/containers/${id}/stop`)).body.code).toBe('IDEMPOTENCY_KEY_REUSED');
  });

  it('replays a key stored under the earlier fingerprint (a retry across the upgrade that changed it)', async () => {
    const id = (await create('k-legacy-create', body('idem-legacy'))).body.container.id as string;
    const [{ key_id: scope }] = await a.ds.query(
      `SELECT scope AS key_id FROM idempotency_keys WHERE key = $1`,
      ['k-legacy-create'],
    );
    // As the API wrote it before: method, URL and the body as parsed (none: null).
    const legacy = createHash('sha256').update(`POST /v1/containers/${id}/stop\nnull`).digest('hex');
    await a.ds.query(
      `INSERT INTO idempotency_keys (scope, key, request_hash, method, path, state, response_status, response_headers,
                                     response_body, expires_at)
       VALUES ($1, 'k-legacy', $2, 'POST', $3, 'done', 202, '{}', '{"stored": true}', now() + interval '1 day')`,
      [scope, legacy, `/v1/containers/${id}/stop`],
    );
    const again = await a
      .http()
      .post(`/v1/containers/${id}/stop`)
      .set(a.auth())
      .set('Idempotency-Key', 'k-legacy');
    expect({ status: again.status, body: again.body }).toEqual({ status: 202, body: { stored: true } });
    // Another request under that key is still refused.
    const other = await a
      .http()
      .post(`/v1/containers/${id}/start`)
      .set(a.auth())
      .set('Idempotency-Key', 'k-legacy');
    expect(other.body.code).toBe('IDEMPOTENCY_KEY_REUSED');
  });

  it('refuses a key still in flight with 409, then replays its answer once it is done', async () => {
    const made = await create('k-setup', body('idem-3'));
    expect(made.status).toBe(202);
    const id = made.body.container.id as string;
    // Hold the container's row lock from another connection: the start request waits on it, in flight.
    await withContainerLocked(id, async (release) => {
      const start = () =>
        a.http().post(`/v1/containers/${id}/start`).set(a.auth()).set('Idempotency-Key', 'k-flight').send({});
      const slow = start().then((r) => r); // supertest sends on then()
      const end = Date.now() + 10_000;
      while ((await keyRow('k-flight'))[0]?.state !== 'in_flight') {
        if (Date.now() > end) throw new Error('the first request never claimed its key');
        await new Promise((r) => setTimeout(r, 20));
      }
      // It is really waiting on the lock (not done yet): it locks the container's row.
      await waitForLockWaiters(1, end);
      const second = await start();
      expect(second.status).toBe(409);
      expect(second.headers['content-type']).toMatch(/^application\/problem\+json/);
      expect(second.body.code).toBe('IDEMPOTENCY_KEY_IN_FLIGHT');
      await release();
      const first = await slow;
      expect(first.status).toBe(202);
      const third = await start();
      expect(third.status).toBe(202);
      expect(third.headers['idempotent-replayed']).toBe('true');
      expect(third.body.job.id).toBe(first.body.job.id);
      expect(await startJobs(id)).toBe(1);
    });
  }, 30_000);

  it('writes nothing for a request whose key was taken over while it ran: one job, one answer', async () => {
    const made = await create('k-setup-over', body('idem-over'));
    const id = made.body.container.id as string;
    await withContainerLocked(id, async (release) => {
      const start = () =>
        a.http().post(`/v1/containers/${id}/start`).set(a.auth()).set('Idempotency-Key', 'k-over').send({});
      const end = Date.now() + 10_000;
      const first = start().then((r) => r);
      await waitForLockWaiters(1, end);
      // The first request looks abandoned (its key is older than the takeover age): a retry takes it over
      // and waits on the same lock.
      await a.ds.query(
        `UPDATE idempotency_keys SET created_at = now() - interval '10 minutes' WHERE key = 'k-over'`,
      );
      const retry = start().then((r) => r);
      await waitForLockWaiters(2, end);
      await release();
      const answers = await Promise.all([first, retry]);
      // The first gets the lock first, cannot store its answer (the key is no longer its own) and rolls
      // back its job with it; the retry is accepted.
      expect(answers.map((r) => r.status)).toEqual([409, 202]);
      expect(answers[0].body.code).toBe('IDEMPOTENCY_KEY_IN_FLIGHT');
      const replay = await start();
      expect(replay.headers['idempotent-replayed']).toBe('true');
      expect(replay.body.job.id).toBe(answers[1].body.job.id);
      expect(await startJobs(id)).toBe(1);
    });
  }, 30_000);

  it("stores every write's answer in the transaction that wrote the request", async () => {
    // No crash between the request's commit and its stored answer can leave a job without its answer
    // (a retry would run it again): the key row and the request's audit event are written by one
    // transaction (the same xmin), for every write endpoint.
    const sameTx = async (key: string, audit: string, subject: string) => {
      const [row] = await a.ds.query(
        `SELECT k.state, k.xmin::text AS k_tx, e.xmin::text AS e_tx
         FROM idempotency_keys k, audit_events e
         WHERE k.key = $1 AND e.action = $2 AND e.subject_id = $3 ORDER BY e.id DESC LIMIT 1`,
        [key, audit, subject],
      );
      expect(row).toBeDefined();
      expect(row.state).toBe('done');
      expect(row.k_tx).toBe(row.e_tx);
    };
    const send = (method: 'post' | 'patch' | 'delete', path: string, key: string, b: object = {}) =>
      a.http()[method](path).set(a.auth()).set('Idempotency-Key', key).send(b);

    const made = await create('k-tx-create', body('idem-tx'));
    expect(made.status).toBe(202);
    const id = made.body.container.id as string;
    await sameTx('k-tx-create', 'container.create.requested', id);
    // The create job never runs here (no worker): the container's target state is what allows the rest.
    const start = await send('post', `/v1/containers/${id}/start`, 'k-tx-start');
    expect(start.status).toBe(202);
    await sameTx('k-tx-start', 'container.start.requested', id);
    const resize = await send('patch', `/v1/containers/${id}`, 'k-tx-resize', { memoryBytes: 96 * MiB });
    expect(resize.status).toBe(202);
    await sameTx('k-tx-resize', 'container.resize.requested', id);
    const cancel = await send('post', `/v1/jobs/${resize.body.job.id}/cancel`, 'k-tx-cancel');
    expect(cancel.status).toBe(200);
    await sameTx('k-tx-cancel', 'job.cancelled', id);
    const retry = await send('post', `/v1/jobs/${resize.body.job.id}/retry`, 'k-tx-retry');
    expect(retry.status).toBe(202);
    await sameTx('k-tx-retry', 'job.retry.requested', id);
    const destroy = await send('delete', `/v1/containers/${id}`, 'k-tx-destroy');
    expect(destroy.status).toBe(202);
    await sameTx('k-tx-destroy', 'container.destroy.requested', id);
    const tpl = await send('post', '/v1/templates', 'k-tx-template', {
      name: 'idem-tx-t',
      source: 'builtin:busybox',
    });
    expect(tpl.status).toBe(202);
    await sameTx('k-tx-template', 'template.import.requested', tpl.body.template.id);
    const drain = await send('post', `/v1/hosts/${a.hostId}/drain`, 'k-tx-drain');
    expect(drain.status).toBe(200);
    await sameTx('k-tx-drain', 'host.drain', a.hostId);
    const undrain = await send('post', `/v1/hosts/${a.hostId}/undrain`, 'k-tx-undrain');
    expect(undrain.status).toBe(200);
    await sameTx('k-tx-undrain', 'host.undrain', a.hostId);
    // And each replays what it answered.
    const again = await send('patch', `/v1/containers/${id}`, 'k-tx-resize', { memoryBytes: 96 * MiB });
    expect(again.headers['idempotent-replayed']).toBe('true');
    expect(again.headers.location).toBe(`/v1/jobs/${resize.body.job.id}`);
    expect(again.body).toEqual(resize.body);
    const drainAgain = await send('post', `/v1/hosts/${a.hostId}/drain`, 'k-tx-drain');
    expect(drainAgain.body).toEqual(drain.body);
  });

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

  it('removes expired keys (in batches), and only those', async () => {
    expect((await create('k-purge-live', body('idem-purge'))).status).toBe(202);
    for (const k of ['k-purge-1', 'k-purge-2', 'k-purge-3']) {
      await a.ds.query(
        `INSERT INTO idempotency_keys (scope, key, request_hash, method, path, state, created_at, expires_at)
         VALUES ('test', $1, 'h', 'POST', '/v1/containers', 'done', now() - interval '25 hours',
                 now() - interval '1 hour')`,
        [k],
      );
    }
    const purge = a.api.get(IdempotencyKeyPurge);
    expect(await purge.purge(2)).toBe(3);
    expect(await keyRow('k-purge-1')).toEqual([]);
    expect(await keyRow('k-purge-3')).toEqual([]);
    expect((await keyRow('k-purge-live'))[0].state).toBe('done');
    // Still answered from the store: the live key was not touched.
    const again = await create('k-purge-live', body('idem-purge'));
    expect(again.headers['idempotent-replayed']).toBe('true');
    expect(await purge.purge()).toBe(0);
  });

  it('refuses a malformed key with 400, nothing written', async () => {
    const before = await a.counts();
    const res = await create('bad key with spaces', body('idem-8'));
    expect(res.status).toBe(400);
    expect(res.body.code).toBe('INVALID_IDEMPOTENCY_KEY');
    expect(await a.counts()).toEqual(before);
  });
});
