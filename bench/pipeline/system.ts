import { spawn, type ChildProcess } from 'node:child_process';
import { chmod, mkdir, rm } from 'node:fs/promises';
import { Agent, request } from 'node:http';
import { extname, join } from 'node:path';
import { Queue } from 'bullmq';
import { Client } from 'pg';
import type { DataSource } from 'typeorm';
import { loadConfig, type BerthConfig } from '@berth/config';
import { checkoutRoot } from '../lib/results';
import { createDataSource } from '@berth/db';
import { bullConnection, hostQueueName } from '@berth/jobs';
import { openHostRuntime, type HostRuntime } from '@berth/runtime';
import { generateApiKey } from '../../apps/api/src/auth/api-keys';
import { removeCgroupParent } from '../lib/berth-host';
import type { BenchMessage, WorkerMessage } from './trace';

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

/**
 * The API (with its outbox relay, listening on loopback) and one worker, each in its own process as in
 * production (./worker-child.ts), + a dedicated database. The bench process holds the clients.
 */
export interface BenchSystem {
  config: BerthConfig;
  /** The bench's own connection to the bench database (reads, the bench's API key). */
  ds: DataSource;
  /** This host's runtime opened in the bench process (direct create + start, cleanup). */
  runtime: HostRuntime;
  /** Environment of the API and worker processes (Berth's config, without the inherited environment). */
  workerEnv: Record<string, string>;
  /** Listens to the API's and the worker's messages (marks, completions). */
  onChildMessage(fn: (m: WorkerMessage) => void): void;
  /** To the API and the worker. */
  sendToChildren(m: BenchMessage): void;
  /**
   * Has the API process submit `n` `system.noop` jobs for this host through its JobEnqueuer, `inflight` at
   * a time, as API key `keyId`; resolves once all are submitted (not run).
   */
  submitNoops(n: number, inflight: number, keyId: string): Promise<void>;
  hostId: string;
  /** `http://127.0.0.1:<port>` of the API. */
  baseUrl: string;
  token: string;
  /** Calls the API with the admin key; answers the status and the parsed JSON body. */
  call(method: string, path: string, body?: unknown): Promise<{ status: number; body: ApiAnswer }>;
  /** Stops API and worker, destroys every container, releases the pool, removes cgroups, data root, DB. */
  close(): Promise<void>;
}

/** ./worker-child, as this file runs: from the sources (ts-node) or compiled (dist/bench, `npm run bench`). */
const COMPILED = extname(__filename) === '.js';
const CHILD = join(__dirname, `worker-child${extname(__filename)}`);

/** A bench child process (./worker-child.ts) with an IPC channel. */
export interface ChildWorker {
  proc: ChildProcess;
  /** The loopback port it listens on (the API). */
  port?: number;
  /** SIGTERM (graceful), SIGKILL after 20 s; resolves on exit. */
  stop(): Promise<void>;
}

/** Spawns ./worker-child.ts with `args`, Berth's config in `env`; resolves once it reports ready. */
export async function spawnChildWorker(
  args: string[],
  env: Record<string, string>,
  onMessage: (m: WorkerMessage) => void,
  readyTimeoutMs = 60_000,
): Promise<ChildWorker> {
  const proc = spawn(
    process.execPath,
    [
      // `node --cpu-prof --cpu-prof-dir=… bench/pipeline.bench.ts` profiles the worker processes too; they
      // get the bench's V8 heap flag (scripts/bench.sh: the API's and worker's production flag), both peers.
      ...process.execArgv.filter((a) => a.startsWith('--cpu-prof') || a.startsWith('--max-semi-space-size')),
      ...(COMPILED ? [] : ['-r', 'ts-node/register/transpile-only', '-r', 'tsconfig-paths/register']),
      CHILD,
      ...args,
    ],
    {
      cwd: checkoutRoot(),
      env: { ...process.env, ...env },
      stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
    },
  );
  const exited = new Promise<void>((r) => proc.once('exit', () => r()));
  let gone = false;
  void exited.then(() => (gone = true));
  const stop = async () => {
    if (gone) return;
    proc.kill('SIGTERM');
    const t = setTimeout(() => proc.kill('SIGKILL'), 20_000);
    await exited;
    clearTimeout(t);
  };
  let port: number | undefined;
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(
      () => reject(new Error(`bench worker ${args[0]} not ready in ${readyTimeoutMs} ms`)),
      readyTimeoutMs,
    );
    proc.on('message', (m: WorkerMessage) => {
      if (m.t === 'ready') {
        port = m.port;
        clearTimeout(timer);
        resolve();
      } else onMessage(m);
    });
    void exited.then(() => {
      clearTimeout(timer);
      reject(new Error(`bench worker ${args[0]} exited before it was ready`));
    });
  }).catch(async (e: unknown) => {
    await stop();
    throw e;
  });
  return { proc, port, stop };
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
 * Boots Berth against its own freshly migrated database: the worker and the API as child processes (as in
 * production, and like test/support/worker-process.ts), the API on a real loopback socket (keep-alive
 * HTTP from this process, as a client on the machine would see it).
 */
export async function startBenchSystem(o: BenchSystemOptions): Promise<BenchSystem> {
  if (!/^[a-z_][a-z0-9_]*$/.test(o.database)) throw new RangeError(`bad database name ${o.database}`);
  const serverUrl = loadConfig().database.url;
  await recreateDatabase(serverUrl, o.database);
  const url = databaseUrl(serverUrl, o.database);
  await mkdir(o.dataRoot, { recursive: true });
  await chmod(o.dataRoot, 0o711);
  const workerEnv: Record<string, string> = {
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
  };
  const config = loadConfig({ ...process.env, ...workerEnv });
  const ds = createDataSource(url);
  await ds.initialize();
  await ds.runMigrations({ transaction: 'each' });

  let api: ChildWorker | undefined;
  let worker: ChildWorker | undefined;
  let agent: Agent | undefined;
  let runtime: HostRuntime | undefined;
  let hostId: string | undefined;
  const listeners: ((m: WorkerMessage) => void)[] = [];
  /** Noop runs the API process is submitting. */
  const runs = new Map<number, { resolve: () => void; reject: (e: Error) => void }>();
  let nextRun = 0;
  const close = async () => {
    agent?.destroy();
    await api?.stop().catch(() => undefined);
    await worker?.stop().catch(() => undefined);
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
    const fromChild = (m: WorkerMessage) => {
      if (m.t === 'submitted') {
        const run = runs.get(m.run);
        runs.delete(m.run);
        if (m.error) run?.reject(new Error(`noop submissions failed in the API process: ${m.error}`));
        else run?.resolve();
      } else listeners.forEach((fn) => fn(m));
    };
    worker = await spawnChildWorker(['berth'], workerEnv, fromChild);
    // The worker prepared the storage pool and registered the host before it reported ready.
    runtime = await openHostRuntime({
      dataRoot: config.runtime.dataRoot,
      cgroupParent: config.runtime.cgroupParent,
      storageDriver: config.runtime.storageDriver,
    });
    api = await spawnChildWorker(['api'], workerEnv, fromChild);
    const apiProc = api.proc;
    const port = api.port;
    if (!port) throw new Error('the bench API process did not report its port');
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
    const client = (agent = new Agent({ keepAlive: true }));
    const headers = { Authorization: `Bearer ${key.token}`, 'Content-Type': 'application/json' };
    return {
      config,
      ds,
      runtime,
      workerEnv,
      onChildMessage: (fn) => listeners.push(fn),
      sendToChildren: (m) => {
        worker?.proc.send(m);
        apiProc.send(m);
      },
      submitNoops: (n, inflight, keyId) =>
        new Promise<void>((resolve, reject) => {
          const run = nextRun++;
          runs.set(run, { resolve, reject });
          apiProc.send({ t: 'noop', run, n, inflight, hostId: hostId!, keyId } satisfies BenchMessage);
        }),
      hostId,
      baseUrl,
      token: key.token,
      call: (method, path, body) => httpCall(client, `${baseUrl}${path}`, method, headers, body),
      close,
    };
  } catch (e) {
    await close();
    throw e;
  }
}

/**
 * One API request as a billing system's HTTP client makes it: node:http on a keep-alive connection, the
 * JSON body parsed. Not `fetch`: on this VM its stream machinery added 0.7-1.2 ms per request (0.88 vs
 * 0.22 ms against a bare Node server), which the latency figures would have counted as the pipeline's.
 */
function httpCall(
  agent: Agent,
  url: string,
  method: string,
  headers: Record<string, string>,
  body?: unknown,
): Promise<{ status: number; body: ApiAnswer }> {
  const payload = body === undefined ? undefined : JSON.stringify(body);
  return new Promise((resolve, reject) => {
    const req = request(
      url,
      {
        method,
        agent,
        headers:
          payload === undefined ? headers : { ...headers, 'Content-Length': Buffer.byteLength(payload) },
      },
      (res) => {
        let text = '';
        res.setEncoding('utf8');
        res.on('data', (chunk: string) => (text += chunk));
        res.on('end', () => {
          try {
            resolve({ status: res.statusCode ?? 0, body: text ? JSON.parse(text) : null });
          } catch (e) {
            reject(e instanceof Error ? e : new Error(String(e)));
          }
        });
        res.on('error', reject);
      },
    );
    req.on('error', reject);
    req.end(payload);
  });
}
