import type { INestApplicationContext } from '@nestjs/common';
import type { NestExpressApplication } from '@nestjs/platform-express';
import { chmod, mkdir, rm } from 'node:fs/promises';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { Queue } from 'bullmq';
import { Client } from 'pg';
import type { DataSource } from 'typeorm';
import { loadConfig, type BerthConfig } from '@berth/config';
import { createDataSource } from '@berth/db';
import { bullConnection, hostQueueName } from '@berth/jobs';
import type { HostRuntime } from '@berth/runtime';
import { generateApiKey } from '../../apps/api/src/auth/api-keys';
import { createApiApp } from '../../apps/api/src/bootstrap';
import { createWorker } from '../../apps/worker/src/bootstrap';
import { HostRuntimeService } from '../../apps/worker/src/runtime/host-runtime.service';
import { removeCgroupParent } from '../lib/berth-host';

/** Where and under which names the bench's own Berth lives (all removed by `BenchSystem.close()`). */
export interface BenchSystemOptions {
  /** Data root of the bench's simulated host (created mode 0711, removed at the end). */
  dataRoot: string;
  /** Its cgroup parent (must start with `berth`). */
  cgroupParent: string;
  /** Database created (dropped first if it exists) and migrated on the configured server. */
  database: string;
  /** BullMQ prefix of every queue of this run. */
  bullPrefix: string;
  hostName: string;
  workerConcurrency: number;
  /** Extra environment for the Berth config (e.g. OUTBOX_POLL_MS). */
  env?: Record<string, string>;
}

/** The fields of the API's answers the bench reads (a job, a container, an accepted write). */
export interface ApiAnswer {
  job?: { id: string };
  jobs?: { id: string }[];
  container?: { id: string };
  state?: string;
  error?: { code?: string; message?: string } | null;
}

/** API (listening on loopback) + one worker + a dedicated database, booted in this process. */
export interface BenchSystem {
  config: BerthConfig;
  api: NestExpressApplication;
  worker: INestApplicationContext;
  /** The bench's own connection to the bench database (for reads and for driving the enqueuer). */
  ds: DataSource;
  runtime: HostRuntime;
  hostId: string;
  /** `http://127.0.0.1:<port>` of the API. */
  baseUrl: string;
  token: string;
  /** Calls the API with the admin key; answers the status and the parsed JSON body. */
  call(method: string, path: string, body?: unknown): Promise<{ status: number; body: ApiAnswer }>;
  /** Stops API and worker, destroys every container, releases the pool, removes cgroups, data root, DB. */
  close(): Promise<void>;
}

function databaseUrl(base: string, name: string): string {
  const u = new URL(base);
  u.pathname = `/${name}`;
  return u.toString();
}

async function recreateDatabase(serverUrl: string, name: string): Promise<void> {
  const admin = new Client({ connectionString: serverUrl });
  await admin.connect();
  try {
    await admin.query(`DROP DATABASE IF EXISTS "${name}" WITH (FORCE)`);
    await admin.query(`CREATE DATABASE "${name}"`);
  } finally {
    await admin.end();
  }
}

async function dropDatabase(serverUrl: string, name: string): Promise<void> {
  const admin = new Client({ connectionString: serverUrl });
  await admin.connect();
  try {
    await admin.query(`DROP DATABASE IF EXISTS "${name}" WITH (FORCE)`);
  } finally {
    await admin.end();
  }
}

/**
 * Boots Berth the way test/support/pipeline.ts does, but against its own freshly migrated database and
 * with the API on a real loopback socket (keep-alive HTTP, as a client would see it).
 */
export async function startBenchSystem(o: BenchSystemOptions): Promise<BenchSystem> {
  if (!/^[a-z_][a-z0-9_]*$/.test(o.database)) throw new RangeError(`bad database name ${o.database}`);
  const serverUrl = loadConfig().database.url;
  await recreateDatabase(serverUrl, o.database);
  const url = databaseUrl(serverUrl, o.database);
  await mkdir(o.dataRoot, { recursive: true });
  await chmod(o.dataRoot, 0o711);
  const config = loadConfig({
    ...process.env,
    DATABASE_URL: url,
    LOG_LEVEL: 'silent',
    NODE_ENV: 'production',
    BERTH_HOST_NAME: o.hostName,
    BERTH_DATA_ROOT: o.dataRoot,
    BERTH_CGROUP_PARENT: o.cgroupParent,
    BERTH_NETWORK_MODE: 'none',
    BULLMQ_PREFIX: o.bullPrefix,
    ADMIN_KEY_FILE: join(o.dataRoot, 'admin.key'),
    HEARTBEAT_INTERVAL_MS: '1000',
    WORKER_CONCURRENCY: String(o.workerConcurrency),
    SHUTDOWN_GRACE_MS: '5000',
    ...o.env,
  });
  const ds = createDataSource(url);
  await ds.initialize();
  await ds.runMigrations({ transaction: 'each' });

  let api: NestExpressApplication | undefined;
  let worker: INestApplicationContext | undefined;
  let runtime: HostRuntime | undefined;
  let hostId: string | undefined;
  const close = async () => {
    await api?.close().catch(() => undefined);
    if (worker) {
      runtime ??= await worker
        .get(HostRuntimeService)
        .get()
        .catch(() => undefined);
      await worker.close().catch(() => undefined);
    }
    if (runtime) {
      for (const c of await runtime.containers.list().catch(() => []))
        await runtime.containers.destroy(c.id).catch(() => undefined);
      await runtime.containers.reconcile({ remove: true }).catch(() => undefined);
      for (const t of await runtime.templates.list().catch(() => []))
        await runtime.templates.delete(t).catch(() => undefined);
      await runtime.storage.release().catch(() => undefined);
    }
    // Redis: the host queue's keys (BullMQ keeps up to 1,000 finished jobs per queue) go with the run.
    if (hostId) {
      const q = new Queue(hostQueueName(hostId), {
        connection: bullConnection(config.redis.url),
        prefix: config.redis.bullPrefix,
      });
      await q.obliterate({ force: true }).catch(() => undefined);
      await q.close().catch(() => undefined);
    }
    if (ds.isInitialized) await ds.destroy().catch(() => undefined);
    await dropDatabase(serverUrl, o.database).catch(() => undefined);
    await removeCgroupParent(o.cgroupParent);
    await rm(o.dataRoot, { recursive: true, force: true });
  };

  try {
    worker = await createWorker(config);
    await worker.init();
    runtime = await worker.get(HostRuntimeService).get();
    api = await createApiApp(config);
    await api.listen(0, '127.0.0.1');
    const port = (api.getHttpServer().address() as AddressInfo).port;
    const key = generateApiKey();
    await ds.query(`INSERT INTO api_keys (name, prefix, secret_hash, scopes) VALUES ('bench', $1, $2, $3)`, [
      key.prefix,
      key.secretHash,
      ['admin'],
    ]);
    const [host] = await ds.query(`SELECT id FROM hosts WHERE name = $1`, [o.hostName]);
    if (!host) throw new Error(`host ${o.hostName} did not register`);
    hostId = host.id as string;
    const baseUrl = `http://127.0.0.1:${port}`;
    const headers = { Authorization: `Bearer ${key.token}`, 'Content-Type': 'application/json' };
    return {
      config,
      api,
      worker,
      ds,
      runtime,
      hostId,
      baseUrl,
      token: key.token,
      async call(method, path, body) {
        const res = await fetch(`${baseUrl}${path}`, {
          method,
          headers,
          body: body === undefined ? undefined : JSON.stringify(body),
        });
        const text = await res.text();
        return { status: res.status, body: text ? JSON.parse(text) : null };
      },
      close,
    };
  } catch (e) {
    await close();
    throw e;
  }
}
