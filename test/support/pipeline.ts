import type { INestApplication, INestApplicationContext } from '@nestjs/common';
import { mkdtempSync, chmodSync, mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import request from 'supertest';
import type { DataSource } from 'typeorm';
import { createDataSource } from '@berth/db';
import { wipeHostRuntime } from '@berth/runtime';
import { createApiApp } from '../../apps/api/src/bootstrap';
import { generateApiKey } from '../../apps/api/src/auth/api-keys';
import { createWorker } from '../../apps/worker/src/bootstrap';
import { HostRuntimeService } from '../../apps/worker/src/runtime/host-runtime.service';
import { noopGatePath } from '../../apps/worker/src/jobs/system-noop/system-noop.job';
import { testConfig } from './config';
import { removeTestCgroupParent } from '@berth/runtime/cgroups/testing/kernel-processes';

/**
 * The whole system in one test process: the API (with its outbox relay), one worker for a simulated host
 * (own host name, data root, cgroup parent, BullMQ prefix), a real Postgres and Redis, the real kernel.
 */
export interface Pipeline {
  api: INestApplication;
  worker: INestApplicationContext;
  ds: DataSource;
  token: string;
  hostName: string;
  dataRoot: string;
  cgroupParent: string;
  env: Record<string, string>;
  http(): ReturnType<typeof request>;
  auth(): { Authorization: string };
  close(): Promise<void>;
}

/** Opens a gated `system.noop`'s gate (payload `gate`) on the host of `dataRoot`: its hold ends within a poll. */
export function openNoopGate(dataRoot: string, gate: string): void {
  const path = noopGatePath(dataRoot, gate);
  mkdirSync(dirname(path), { recursive: true });
  writeFileSync(path, '');
}

export async function createTestKey(
  ds: DataSource,
  scopes = ['admin'],
  tenantId: string | null = null,
): Promise<string> {
  const key = generateApiKey();
  await ds.query(
    `INSERT INTO api_keys (name, prefix, secret_hash, scopes, tenant_id) VALUES ('test', $1, $2, $3, $4)`,
    [key.prefix, key.secretHash, scopes, tenantId],
  );
  return key.token;
}

export async function startPipeline(tag: string, extraEnv: Record<string, string> = {}): Promise<Pipeline> {
  const dataRoot = mkdtempSync(join(tmpdir(), `berth-e2e-${tag}-`));
  chmodSync(dataRoot, 0o711);
  const hostName = `e2e-${tag}-${process.pid}`;
  const cgroupParent = `berth-e2e-${tag}-${process.pid}`;
  const env = {
    BERTH_HOST_NAME: hostName,
    BERTH_DATA_ROOT: dataRoot,
    BERTH_CGROUP_PARENT: cgroupParent,
    BULLMQ_PREFIX: `e2e-${tag}-${process.pid}`,
    ADMIN_KEY_FILE: join(dataRoot, 'admin.key'),
    OUTBOX_POLL_MS: '500',
    HEARTBEAT_INTERVAL_MS: '1000',
    WORKER_CONCURRENCY: '4',
    WORKER_LOCK_MS: '5000',
    SHUTDOWN_GRACE_MS: '5000',
    ...extraEnv,
  };
  const config = testConfig(env);
  const ds = createDataSource(config.database.url);
  await ds.initialize();
  const worker = await createWorker(config);
  await worker.init();
  const api = await createApiApp(config);
  await api.init();
  const token = await createTestKey(ds);
  return {
    api,
    worker,
    ds,
    token,
    hostName,
    dataRoot,
    cgroupParent,
    env,
    http: () => request(api.getHttpServer()),
    auth: () => ({ Authorization: `Bearer ${token}` }),
    async close() {
      await api.close();
      const rt = await worker.get(HostRuntimeService).get();
      await worker.close();
      await wipeHostRuntime(rt);
      await ds.destroy();
      removeTestCgroupParent(cgroupParent);
      rmSync(dataRoot, { recursive: true, force: true });
    },
  };
}

/** Waits for a job to end through the API's long-poll and returns it. */
export async function waitJob(
  p: Pipeline,
  jobId: string,
  timeoutS = 60,
): Promise<{ state: string; [k: string]: unknown }> {
  const res = await p.http().get(`/v1/jobs/${jobId}/wait?timeout=${timeoutS}`).set(p.auth());
  if (res.status !== 200) throw new Error(`wait ${jobId}: ${res.status} ${JSON.stringify(res.body)}`);
  return res.body;
}
