import { randomUUID } from 'node:crypto';
import { createServer, type AddressInfo } from 'node:net';
import { startPipeline, waitJob, type Pipeline } from '@test/support/pipeline';
import { sample } from '@test/support/prometheus';
import { until } from '@test/support/worker-process';
import { JobEnqueuer } from '../../apps/api/src/jobs/job-enqueuer';

/** A loopback port nobody listens on right now. */
async function freePort(): Promise<number> {
  const s = createServer();
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
  const { port } = s.address() as AddressInfo;
  await new Promise<void>((r) => s.close(() => r()));
  return port;
}

describe('Worker metrics (WORKER_METRICS_PORT)', () => {
  let c: Pipeline;
  let port: number;

  beforeAll(async () => {
    port = await freePort();
    c = await startPipeline('wmetrics', { WORKER_METRICS_PORT: String(port) });
  }, 120_000);
  afterAll(() => c?.close(), 60_000);

  const scrape = async () => {
    const res = await fetch(`http://127.0.0.1:${port}/metrics`, { signal: AbortSignal.timeout(5_000) });
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toMatch(/^text\/plain/);
    return res.text();
  };

  it('counts the jobs it ran by kind and outcome, with the time in their handlers', async () => {
    const host = c.hostName;
    const before = await scrape();
    expect(sample(before, 'berth_worker_slots', { host })).toBe(Number(c.env.WORKER_CONCURRENCY ?? 4));
    expect(sample(before, 'berth_worker_slots_busy', { host })).toBe(0);
    expect(sample(before, 'process_resident_memory_bytes', { host })).toBeGreaterThan(0);
    const [{ id: hostId }] = await c.ds.query(`SELECT id FROM hosts WHERE name = $1`, [host]);
    const enqueuer = c.api.get(JobEnqueuer);
    const principal = { keyId: 'test:metrics', tenantId: null, scopes: ['admin'], requestId: '' };
    const noops = await Promise.all(
      [1, 2, 3].map((n) =>
        enqueuer.submit({ kind: 'system.noop', payload: { n, holdMs: 50 }, hostId, principal }),
      ),
    );
    // A start for a container this host does not have: the runtime's NOT_FOUND fails it at once.
    const ghost = await enqueuer.submit({
      kind: 'container.start',
      payload: { containerId: randomUUID(), name: 'ghost' },
      hostId,
      principal,
    });
    for (const job of noops) expect((await waitJob(c, job!.id)).state).toBe('completed');
    expect((await waitJob(c, ghost!.id)).state).toBe('failed');

    // A failure is counted once its record is written (JobRunner awaits it), so the API can answer the job
    // failed a moment before the worker counts it: the scrape that has it.
    const failedStarts = (text: string) =>
      sample(text, 'berth_worker_jobs_total', { host, kind: 'container.start', outcome: 'failed' }) ?? 0;
    const after = await until('the failed start to be counted', async () => {
      const text = await scrape();
      return failedStarts(text) > 0 ? text : undefined;
    });
    const runs = (kind: string, outcome: string) =>
      sample(after, 'berth_worker_jobs_total', { host, kind, outcome }) ?? 0;
    expect(runs('system.noop', 'completed')).toBe(
      (sample(before, 'berth_worker_jobs_total', { host, kind: 'system.noop', outcome: 'completed' }) ?? 0) +
        3,
    );
    expect(runs('container.start', 'failed')).toBe(1);
    const held = sample(after, 'berth_worker_job_duration_seconds_sum', {
      host,
      kind: 'system.noop',
      outcome: 'completed',
    });
    expect(held).toBeGreaterThanOrEqual(0.15); // three handlers that each held their slot 50 ms
    expect(sample(after, 'berth_worker_slots_busy', { host })).toBe(0);
    expect(sample(after, 'berth_worker_jobs_waiting_for_slot', { host })).toBe(0);
  }, 60_000);

  it('serves nothing else', async () => {
    const res = await fetch(`http://127.0.0.1:${port}/other`, { signal: AbortSignal.timeout(5_000) });
    expect(res.status).toBe(404);
  });
});
