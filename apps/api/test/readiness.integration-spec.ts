import type { INestApplication } from '@nestjs/common';
import request from 'supertest';
import { createDataSource } from '@berth/db';
import { testConfig } from '@test/support/config';
import { freePort, TempPostgres, TempRedis } from '@test/support/temp-services';
import { createApiApp } from '../src/bootstrap';

/** Readiness follows the real services: each is stopped and started again under a running API. */
describe('API health and readiness', () => {
  let redis: TempRedis;
  let pg: TempPostgres;
  let app: INestApplication;

  const readyz = () => request(app.getHttpServer()).get('/readyz');
  async function eventually(status: number, timeoutMs = 15_000) {
    const end = Date.now() + timeoutMs;
    let last: request.Response | undefined;
    while (Date.now() < end) {
      last = await readyz();
      if (last.status === status) return last;
      await new Promise((r) => setTimeout(r, 200));
    }
    throw new Error(`readyz stayed ${last?.status}: ${JSON.stringify(last?.body)}`);
  }

  beforeAll(async () => {
    redis = new TempRedis(await freePort());
    pg = new TempPostgres(await freePort());
    await Promise.all([redis.start(), pg.init()]);
    app = await createApiApp(testConfig({ REDIS_URL: redis.url, DATABASE_URL: pg.url }));
    await app.init();
  }, 60_000);

  afterAll(async () => {
    await app?.close();
    await redis?.destroy();
    await pg?.destroy();
  });

  it('answers /healthz while the process is up', async () => {
    const res = await request(app.getHttpServer()).get('/healthz');
    expect(res.status).toBe(200);
    expect(res.body).toEqual({ status: 'ok' });
  });

  it('is not ready while migrations are pending, and ready once applied', async () => {
    const res = await eventually(503);
    expect(res.body.details.postgres).toEqual({
      status: 'down',
      message: expect.stringMatching(/migrations pending/),
    });
    const ds = createDataSource(pg.url);
    await ds.initialize();
    await ds.runMigrations();
    await ds.destroy();
    const ok = await eventually(200);
    expect(ok.body.details).toEqual({ postgres: { status: 'up' }, redis: { status: 'up' } });
  }, 30_000);

  it('goes red when Redis stops and green when it is back', async () => {
    await redis.stop();
    const down = await eventually(503);
    expect(down.body.details.redis.status).toBe('down');
    // Public: the error's code, never its text (no address or port).
    expect(down.body.details.redis.message).toMatch(/^Redis unreachable/);
    expect(JSON.stringify(down.body)).not.toContain(String(redis.port));
    expect(down.body.details.postgres.status).toBe('up');
    await redis.start();
    await eventually(200);
  }, 40_000);

  it('goes red when Postgres stops and green when it is back', async () => {
    await pg.stop();
    const down = await eventually(503);
    expect(down.body.details.postgres.status).toBe('down');
    expect(down.body.details.postgres.message).toMatch(/^PostgreSQL unreachable/);
    expect(JSON.stringify(down.body)).not.toContain(String(pg.port));
    expect(down.body.details.redis.status).toBe('up');
    await pg.start();
    await eventually(200, 30_000);
  }, 60_000);
});
