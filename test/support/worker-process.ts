import type { INestApplication } from '@nestjs/common';
import { spawn, type ChildProcess } from 'node:child_process';
import { chmodSync, existsSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { Queue } from 'bullmq';
import request from 'supertest';
import type { DataSource } from 'typeorm';
import { createDataSource } from '@berth/db';
import { bullConnection, hostQueueName } from '@berth/jobs';
import { openHostRuntime, type HostRuntime, wipeHostRuntime } from '@berth/runtime';
import { createApiApp } from '../../apps/api/src/bootstrap';
import { testConfig } from './config';
import { createTestKey, openNoopGate } from './pipeline';
import { removeTestCgroupParent } from '@berth/runtime/cgroups/testing/kernel-processes';

const ROOT = resolve(__dirname, '..', '..');

/** A worker running as its own process (so a test can SIGKILL it like a crash would). */
export interface WorkerProcess {
  proc: ChildProcess;
  pid: number;
  /** Resolves when the process has exited (with its code or signal). */
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  /** Its stdout and stderr so far (bounded), for failure messages. */
  output(): string;
  /** SIGTERM (graceful: finishes or hands back active jobs, marks the host offline) and waits for the exit. */
  stop(): Promise<void>;
  /** SIGKILL: a crash. Waits for the exit. */
  kill(): Promise<void>;
}

/**
 * The API in the test process (with its outbox relay) and this host's worker as a child process, against the
 * test database, Redis and the real kernel. One simulated host: unique host name, data root, cgroup parent
 * and BullMQ prefix per suite.
 */
export interface Cluster {
  api: INestApplication;
  ds: DataSource;
  token: string;
  hostName: string;
  dataRoot: string;
  cgroupParent: string;
  prefix: string;
  /** Environment of the worker processes (without the inherited process environment). */
  env: Record<string, string>;
  http(): ReturnType<typeof request>;
  auth(): { Authorization: string };
  /** Spawns a worker for this host and resolves once it consumes its queue. */
  startWorker(extraEnv?: Record<string, string>): Promise<WorkerProcess>;
  /** The host id (registered by the first worker). */
  hostId(): Promise<string>;
  /**
   * This host's runtime opened in the test process (to inspect containers, cgroups and volumes, and to clean
   * up). Open it only after a worker prepared the storage pool.
   */
  runtime(): Promise<HostRuntime>;
  /** A BullMQ queue handle for this host's queue (same prefix as the worker's). */
  queue(): Promise<Queue>;
  /** Opens a gated `system.noop`'s gate (payload `gate`): its hold ends within a poll (≈ 20 ms). */
  openNoopGate(gate: string): void;
  close(): Promise<void>;
}

export async function startCluster(tag: string, extraEnv: Record<string, string> = {}): Promise<Cluster> {
  const dataRoot = mkdtempSync(join(tmpdir(), `berth-e2e-${tag}-`));
  chmodSync(dataRoot, 0o711);
  const hostName = `e2e-${tag}-${process.pid}`;
  const cgroupParent = `berth-e2e-${tag}-${process.pid}`;
  const prefix = `e2e-${tag}-${process.pid}`;
  const env: Record<string, string> = {
    BERTH_HOST_NAME: hostName,
    BERTH_DATA_ROOT: dataRoot,
    BERTH_CGROUP_PARENT: cgroupParent,
    BULLMQ_PREFIX: prefix,
    ADMIN_KEY_FILE: join(dataRoot, 'admin.key'),
    OUTBOX_POLL_MS: '500',
    HEARTBEAT_INTERVAL_MS: '300',
    WORKER_CONCURRENCY: '4',
    WORKER_LOCK_MS: '2000',
    SHUTDOWN_GRACE_MS: '5000',
    ...extraEnv,
  };
  const config = testConfig(env);
  const ds = createDataSource(config.database.url);
  await ds.initialize();
  const api = await createApiApp(config);
  await api.init();
  const token = await createTestKey(ds);
  const workers = new Set<WorkerProcess>();
  let rt: Promise<HostRuntime> | undefined;
  const runtime = () =>
    (rt ??= openHostRuntime({ dataRoot, cgroupParent, storageDriver: config.runtime.storageDriver }));
  let q: Queue | undefined;

  const hostId = async (): Promise<string> => {
    const [row] = await ds.query(`SELECT id FROM hosts WHERE name = $1`, [hostName]);
    if (!row) throw new Error(`host ${hostName} is not registered: start a worker first`);
    return row.id;
  };

  return {
    api,
    ds,
    token,
    hostName,
    dataRoot,
    cgroupParent,
    prefix,
    env,
    http: () => request(api.getHttpServer()),
    auth: () => ({ Authorization: `Bearer ${token}` }),
    async startWorker(more = {}) {
      const w = await spawnWorker({ ...env, ...more, DATABASE_URL: config.database.url });
      workers.add(w);
      void w.exited.then(() => workers.delete(w));
      return w;
    },
    hostId,
    runtime,
    async queue() {
      q ??= new Queue(hostQueueName(await hostId()), {
        connection: bullConnection(config.redis.url),
        prefix,
      });
      return q;
    },
    openNoopGate: (gate) => openNoopGate(dataRoot, gate),
    async close() {
      await api.close();
      for (const w of [...workers]) await w.stop();
      await q?.obliterate({ force: true }).catch(() => undefined);
      await q?.close();
      if (existsSync(join(dataRoot, 'storage')) || rt) {
        await wipeHostRuntime(await runtime());
      }
      // A crashed worker leaves its host `online` with a stale heartbeat: later suites must not pick it.
      await ds.query(`UPDATE hosts SET state = 'offline' WHERE name = $1`, [hostName]);
      await ds.destroy();
      removeTestCgroupParent(cgroupParent);
      rmSync(dataRoot, { recursive: true, force: true });
    },
  };
}

/** Spawns `apps/worker/src/main.ts` with `env` on top of this process's environment; resolves once ready. */
export async function spawnWorker(
  env: Record<string, string>,
  readyTimeoutMs = 60_000,
): Promise<WorkerProcess> {
  const proc = spawn(
    process.execPath,
    [
      '-r',
      'ts-node/register/transpile-only',
      '-r',
      'tsconfig-paths/register',
      join(ROOT, 'apps', 'worker', 'src', 'main.ts'),
    ],
    {
      cwd: ROOT,
      env: { ...process.env, LOG_LEVEL: 'info', NODE_ENV: 'test', ...env },
      stdio: ['ignore', 'pipe', 'pipe'],
    },
  );
  let out = '';
  const append = (b: Buffer) => {
    out += b.toString();
    if (out.length > 200_000) out = out.slice(-100_000);
  };
  proc.stdout!.on('data', append);
  proc.stderr!.on('data', append);
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((res) =>
    proc.once('exit', (code, signal) => res({ code, signal })),
  );
  let done = false;
  void exited.then(() => (done = true));
  const w: WorkerProcess = {
    proc,
    pid: proc.pid!,
    exited,
    output: () => out,
    async stop() {
      if (done) return;
      proc.kill('SIGTERM');
      const t = setTimeout(() => proc.kill('SIGKILL'), 20_000);
      await exited;
      clearTimeout(t);
    },
    async kill() {
      if (done) return;
      proc.kill('SIGKILL');
      await exited;
    },
  };
  const end = Date.now() + readyTimeoutMs;
  while (!out.includes('consuming host queue')) {
    if (done) throw new Error(`worker exited before it was ready:\n${out.slice(-4000)}`);
    if (Date.now() > end) {
      await w.kill();
      throw new Error(`worker not ready after ${readyTimeoutMs} ms:\n${out.slice(-4000)}`);
    }
    await sleep(50);
  }
  return w;
}

export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** Polls `fn` every `everyMs` until it returns a truthy value; throws after `timeoutMs`. */
export async function until<T>(
  what: string,
  fn: () => Promise<T | undefined | null | false>,
  timeoutMs = 30_000,
  everyMs = 50,
): Promise<T> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > end) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(everyMs);
  }
}

/** Audit events of a job, oldest first (straight from the table: the API's view of them is tested elsewhere). */
export async function jobEvents(
  ds: DataSource,
  jobId: string,
): Promise<{ id: string; action: string; at: Date; data: Record<string, unknown> }[]> {
  const rows = await ds.query(
    `SELECT id, action, occurred_at AS at, data FROM audit_events WHERE job_id = $1 ORDER BY id`,
    [jobId],
  );
  return rows;
}

/** Names of the child cgroups under `parent` in the v1 pids hierarchy (one per container). */
export function childCgroups(parent: string): string[] {
  const p = `/sys/fs/cgroup/pids/${parent}`;
  if (!existsSync(p)) return [];
  return readdirSync(p, { withFileTypes: true })
    .filter((d) => d.isDirectory())
    .map((d) => d.name)
    .sort();
}

/** Imports the busybox template under `name` on one host through the API and waits for it. */
export async function importBusybox(
  c: { http(): ReturnType<typeof request>; auth(): { Authorization: string } },
  name: string,
  hostId: string,
): Promise<void> {
  const res = await c
    .http()
    .post('/v1/templates')
    .set(c.auth())
    .send({ name, source: 'builtin:busybox', host: hostId });
  if (res.status !== 202) throw new Error(`template import: ${res.status} ${JSON.stringify(res.body)}`);
  for (const j of res.body.jobs) {
    const w = await c.http().get(`/v1/jobs/${j.id}/wait?timeout=120`).set(c.auth());
    if (w.body.state !== 'completed') throw new Error(`template import job: ${JSON.stringify(w.body)}`);
  }
}
