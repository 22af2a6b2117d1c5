/**
 * The bench's worker processes (spawned by ./system.ts and ../pipeline.bench.ts with an IPC channel), so
 * that the consumers run in their own process as in production, on both sides of the comparison:
 *
 *   worker-child.ts berth          Berth's worker (apps/worker, configured from the environment like
 *                                  apps/worker/src/main.ts), with the trace of ./trace.ts installed
 *   worker-child.ts raw <queue> <concurrency>
 *                                  a bare BullMQ Worker with a no-op processor (the raw peer)
 *
 * Both report completions (and Berth's worker the per-job marks) over IPC, and stop on SIGTERM.
 */
import 'reflect-metadata';
import { Worker } from 'bullmq';
import { loadConfig } from '@berth/config';
import { bullConnection } from '@berth/jobs';
import { createWorker } from '../../apps/worker/src/bootstrap';
import { JobStore } from '../../apps/worker/src/jobs/job-store';
import { HostRuntimeService } from '../../apps/worker/src/runtime/host-runtime.service';
import { installWorkerTrace, type BenchMessage, type WorkerMessage } from './trace';

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
(mode === 'raw' ? raw(queue, Number(concurrency)) : berth()).catch((e: unknown) => {
  process.stderr.write(`bench worker: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}\n`);
  process.exit(1);
});
