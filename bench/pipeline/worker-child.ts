/**
 * The bench's child processes (spawned by ./system.ts and ../pipeline.bench.ts with an IPC channel), so
 * that Berth's API and the consumers run in their own processes as in production, apart from the bench's
 * clients:
 *
 *   worker-child.ts api            Berth's API (apps/api, configured from the environment like
 *                                  apps/api/src/main.ts) on a loopback port it reports, with the relay's
 *                                  trace; on request it submits noop jobs through its JobEnqueuer
 *   worker-child.ts berth          Berth's worker (apps/worker, configured like apps/worker/src/main.ts),
 *                                  with the trace of ./trace.ts installed
 *   worker-child.ts raw <queue> <concurrency>
 *                                  a bare BullMQ Worker with a no-op processor (the raw peer)
 *
 * They report readiness, completions and marks over IPC, and stop on SIGTERM.
 */
import 'reflect-metadata';
import type { AddressInfo } from 'node:net';
import { Worker } from 'bullmq';
import { loadConfig } from '@berth/config';
import { bullConnection } from '@berth/jobs';
import { createApiApp } from '../../apps/api/src/bootstrap';
import { JobEnqueuer } from '../../apps/api/src/jobs/job-enqueuer';
import { OutboxRelay } from '../../apps/api/src/outbox/outbox.relay';
import { createWorker } from '../../apps/worker/src/bootstrap';
import { JobStore } from '../../apps/worker/src/jobs/job-store';
import { HostRuntimeService } from '../../apps/worker/src/runtime/host-runtime.service';
import { runLanes } from './lanes';
import { installApiTrace, installWorkerTrace, type BenchMessage, type WorkerMessage } from './trace';

const send = (m: WorkerMessage) => {
  if (process.connected) process.send!(m);
};

async function berth(): Promise<void> {
  const config = loadConfig();
  // Consuming from here on, but the bench submits nothing before `ready`: the trace sees every job.
  const app = await createWorker(config);
  const rt = await app.get(HostRuntimeService).get();
  const trace = installWorkerTrace(app.get(JobStore), rt, send);
  process.on('message', (m: BenchMessage) => {
    if (m.t === 'detailed') trace.setDetailed(m.value);
  });
  send({ t: 'ready' });
}

async function api(): Promise<void> {
  const config = loadConfig();
  const app = await createApiApp(config);
  await app.listen(0, '127.0.0.1');
  const trace = installApiTrace(app.get(OutboxRelay), send);
  const enqueuer = app.get(JobEnqueuer);
  process.on('message', (m: BenchMessage) => {
    if (m.t === 'detailed') trace.setDetailed(m.value);
    else if (m.t === 'noop') {
      const principal = { keyId: m.keyId, tenantId: null, scopes: ['admin'], requestId: '' };
      // As the API's container operations write a request's job (JobEnqueuer.submit: group commit).
      runLanes(m.n, m.inflight, (i) =>
        enqueuer.submit({ kind: 'system.noop', payload: { n: i }, hostId: m.hostId, principal }),
      ).then(
        () => send({ t: 'submitted', run: m.run }),
        (e: unknown) =>
          send({ t: 'submitted', run: m.run, error: e instanceof Error ? e.message : String(e) }),
      );
    }
  });
  send({ t: 'ready', port: (app.getHttpServer().address() as AddressInfo).port });
}

async function raw(queue: string, concurrency: number): Promise<void> {
  const config = loadConfig();
  let completed = 0;
  const flush = () => {
    send({ t: 'completed', n: completed });
    completed = 0;
  };
  const worker = new Worker(queue, async (job) => ({ n: (job.data as { n: number }).n }), {
    connection: bullConnection(config.redis.url),
    prefix: config.redis.bullPrefix,
    concurrency,
  });
  worker.on('completed', () => {
    if (completed++ === 0) setImmediate(flush);
  });
  process.once('SIGTERM', () => {
    void worker.close().finally(() => process.exit(0));
  });
  await worker.waitUntilReady();
  send({ t: 'ready' });
}

const [mode, queue, concurrency] = process.argv.slice(2);
(mode === 'raw' ? raw(queue, Number(concurrency)) : mode === 'api' ? api() : berth()).catch((e: unknown) => {
  process.stderr.write(`bench worker: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}\n`);
  process.exit(1);
});
