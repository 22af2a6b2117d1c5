import type { INestApplication } from '@nestjs/common';
import { Queue } from 'bullmq';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import request from 'supertest';
import type { DataSource } from 'typeorm';
import type { BerthConfig } from '@berth/config';
import { createDataSource } from '@berth/db';
import { bullConnection, hostQueueName } from '@berth/jobs';
import { createApiApp } from '../../apps/api/src/bootstrap';
import { testConfig } from './config';
import { createMigratedDatabase, dropDatabase } from './databases';
import { createTestKey } from './pipeline';

export { createMigratedDatabase, dropDatabase } from './databases';

const GiB = 1024 * 1024 * 1024;

/**
 * The API alone (no worker, no kernel) on a database of its own, so that the hosts it invents never
 * attract placement or template imports of suites running beside it. It has one live host (`hostId`, its
 * heartbeat fresh) with the template `template` ready there, and an admin key (`token`).
 */
export interface ApiOnly {
  api: INestApplication;
  ds: DataSource;
  config: BerthConfig;
  /** The migrated database's URL (for a second connection, e.g. to hold a row lock). */
  databaseUrl: string;
  token: string;
  hostId: string;
  template: string;
  dir: string;
  http(): ReturnType<typeof request>;
  auth(token?: string): { Authorization: string };
  /** `POST /v1/containers` with the admin key: a small container on `template`, not started. */
  createStopped(name: string): request.Test;
  /** Inserts another host row (no worker behind it); fresh heartbeat unless `stale`. */
  addHost(name: string, opts?: { stale?: boolean }): Promise<string>;
  /**
   * Row counts of containers and jobs, and outbox rows ever written (the relay deletes a row once it is
   * published, so its sequence counts them): a refused request must leave all three unchanged.
   */
  counts(): Promise<{ containers: number; jobs: number; outbox: number }>;
  /** Closes the Nest app alone (as SIGTERM does); `close` then cleans up the rest. */
  closeApi(): Promise<void>;
  close(): Promise<void>;
}

export async function startApiOnly(tag: string, env: Record<string, string> = {}): Promise<ApiOnly> {
  const dbName = `berth_${tag}_${process.pid}`;
  const databaseUrl = await createMigratedDatabase(dbName);
  const dir = mkdtempSync(join(tmpdir(), `berth-${tag}-`));
  const config = testConfig({
    DATABASE_URL: databaseUrl,
    BULLMQ_PREFIX: `${tag}-${process.pid}`,
    ADMIN_KEY_FILE: join(dir, 'admin.key'),
    OUTBOX_POLL_MS: '500',
    HOST_OFFLINE_AFTER_MS: '60000',
    ...env,
  });
  const ds = createDataSource(databaseUrl);
  await ds.initialize();
  const token = await createTestKey(ds);
  const hosts: string[] = [];
  const addHost = async (name: string, opts: { stale?: boolean } = {}) => {
    const [{ id }] = await ds.query(
      `INSERT INTO hosts (name, cpu_count, memory_bytes, disk_bytes, kernel_version, cgroup_version,
                          storage_drivers, last_heartbeat_at)
       VALUES ($1, 4, $2, $3, '6.0.0-test', 1, '{dir}', now() - make_interval(secs => $4)) RETURNING id`,
      [name, 8 * GiB, 100 * GiB, opts.stale ? 3600 : 0],
    );
    hosts.push(id);
    return id as string;
  };
  const hostId = await addHost(`${tag}-h1`);
  const template = 'edge-tpl';
  const [{ id: templateId }] = await ds.query(
    `INSERT INTO templates (name, source) VALUES ($1, 'builtin:busybox') RETURNING id`,
    [template],
  );
  await ds.query(
    `INSERT INTO template_replicas (template_id, host_id, state, storage_driver) VALUES ($1, $2, 'ready', 'dir')`,
    [templateId, hostId],
  );
  const api = await createApiApp(config);
  await api.init();
  let apiClosed: Promise<void> | undefined;
  return {
    api,
    ds,
    config,
    databaseUrl,
    token,
    hostId,
    template,
    dir,
    http: () => request(api.getHttpServer()),
    auth: (t = token) => ({ Authorization: `Bearer ${t}` }),
    createStopped: (name) =>
      request(api.getHttpServer())
        .post('/v1/containers')
        .set({ Authorization: `Bearer ${token}` })
        .send({ name, template, cpus: 1, memoryBytes: 64 * 1024 * 1024, start: false }),
    addHost,
    async counts() {
      const [r] = await ds.query(
        `SELECT (SELECT count(*) FROM containers)::int AS containers, (SELECT count(*) FROM jobs)::int AS jobs,
                (SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM outbox_id_seq)::int AS outbox`,
      );
      return r;
    },
    closeApi() {
      apiClosed ??= api.close();
      return apiClosed;
    },
    async close() {
      await (apiClosed ??= api.close());
      await ds.destroy();
      // The relay published to queues no worker consumes: remove them from Redis.
      for (const id of hosts) {
        const q = new Queue(hostQueueName(id), {
          connection: bullConnection(config.redis.url),
          prefix: config.redis.bullPrefix,
        });
        await q.obliterate({ force: true });
        await q.close();
      }
      await dropDatabase(dbName);
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
