import { existsSync, readFileSync } from 'node:fs';
import { Queue } from 'bullmq';
import { bullConnection, hostQueueName } from '@berth/jobs';
import { describeKernel } from '@test/support/kernel';
import { startPipeline, waitJob, type Pipeline } from '@test/support/pipeline';
import { testConfig } from '@test/support/config';
import { childCgroups, importBusybox, until } from '@test/support/worker-process';

const MiB = 1024 * 1024;
const CONCURRENCY = 8;
/** WORKER_PREFETCH's default: as many jobs claimed ahead as run at once. */
const PREFETCH = CONCURRENCY;

interface AuditEvent {
  id: string;
  action: string;
  jobId: string | null;
  at: string;
}

describeKernel(
  'per-container FIFO and cross-container concurrency through the real pipeline',
  { root: true, programs: ['busybox', 'nsenter'] },
  () => {
    let p: Pipeline;
    let hostId: string;
    let queue: Queue;
    const template = `bb-fifo-${process.pid}`;
    let chainNo = 0;

    beforeAll(async () => {
      p = await startPipeline('fifo', { WORKER_CONCURRENCY: String(CONCURRENCY) });
      [{ id: hostId }] = await p.ds.query(`SELECT id FROM hosts WHERE name = $1`, [p.hostName]);
      await importBusybox(p, template, hostId);
      queue = new Queue(hostQueueName(hostId), {
        connection: bullConnection(testConfig(p.env).redis.url),
        prefix: p.env.BULLMQ_PREFIX,
      });
    }, 120_000);
    afterAll(async () => {
      await queue?.resume().catch(() => undefined);
      await queue?.obliterate({ force: true }).catch(() => undefined);
      await queue?.close();
      await p?.close();
    }, 120_000);

    const post = (path: string, body: object = {}) => p.http().post(path).set(p.auth()).send(body);

    /** Fires the chain back to back (each request answered before the next, no job awaited) and waits. */
    async function fireChain(name: string, ops: string[]): Promise<{ id: string; jobIds: string[] }> {
      const created = await post('/v1/containers', {
        name,
        template,
        cpus: 0.1,
        memoryBytes: 32 * MiB,
        pidsMax: 64,
        start: false,
      });
      expect(created.status).toBe(202);
      const id: string = created.body.container.id;
      const jobIds: string[] = [created.body.job.id];
      for (const op of ops) {
        const res =
          op === 'destroy'
            ? await p.http().delete(`/v1/containers/${id}`).set(p.auth())
            : await post(`/v1/containers/${id}/${op}`);
        expect({ op, status: res.status, body: res.body }).toMatchObject({ op, status: 202 });
        jobIds.push(res.body.job.id);
      }
      return { id, jobIds };
    }

    it.each([
      ['create + start + stop + destroy', ['start', 'stop', 'destroy']],
      [
        'a longer chain (start, pause, resume, restart, stop, start, stop, destroy)',
        ['start', 'pause', 'resume', 'restart', 'stop', 'start', 'stop', 'destroy'],
      ],
    ])(
      '%s for one container, all queued at once, run one at a time in acceptance order',
      async (_, ops) => {
        // The host queue is paused while the requests are accepted, so every job of the chain is in the queue
        // together when the worker (concurrency 8) looks: only the FIFO can keep them in order.
        await queue.pause();
        const { id, jobIds } = await fireChain(`fifo-${chainNo++}-${process.pid}`, ops);
        await until(
          'every job of the chain published to the host queue',
          async () => (await queue.getJobCountByTypes('wait')) >= jobIds.length,
        );
        await queue.resume();
        for (const j of jobIds) expect(await waitJob(p, j)).toMatchObject({ state: 'completed' });

        const c = await p.http().get(`/v1/containers/${id}`).set(p.auth());
        expect(c.body.state).toBe('destroyed');
        expect(existsSync(`/sys/fs/cgroup/pids/${p.cgroupParent}/${id}`)).toBe(false);

        const audit: AuditEvent[] = (await p.http().get(`/v1/audit?subject=${id}&limit=1000`).set(p.auth()))
          .body;
        const transitions = audit
          .filter((e) => e.action === 'job.active' || e.action === 'job.completed')
          .map((e) => `${e.action === 'job.active' ? 'active' : 'completed'} ${e.jobId}`);
        // Strictly alternating active N / completed N in acceptance order: job N+1 never became active
        // before job N completed, and none ran twice.
        expect(transitions).toEqual(jobIds.flatMap((j) => [`active ${j}`, `completed ${j}`]));
        // Acceptance order is also the FIFO sequence the API gave the jobs.
        const seqs = await p.ds.query(
          `SELECT id, container_seq FROM jobs WHERE container_id = $1 ORDER BY container_seq`,
          [id],
        );
        expect(seqs.map((r: { id: string }) => r.id)).toEqual(jobIds);
      },
      120_000,
    );
    it('50 creates for different containers fired together all complete, concurrently, really running; 50 destroys too', async () => {
      const N = 50;
      const created = await Promise.all(
        Array.from({ length: N }, (_, i) =>
          post('/v1/containers', {
            name: `many-${i}-${process.pid}`,
            template,
            cpus: 0.1,
            memoryBytes: 32 * MiB,
            diskBytes: 64 * MiB,
            pidsMax: 64,
          }),
        ),
      );
      for (const r of created) expect(r.status).toBe(202);
      const ids: string[] = created.map((r) => r.body.container.id);
      const jobs = await Promise.all(created.map((r) => waitJob(p, r.body.job.id, 120)));
      for (const j of jobs) expect(j).toMatchObject({ state: 'completed' });

      // Concurrency: the largest number of jobs active at one instant, from their recorded intervals
      // (`started_at` is the claim: running, or claimed ahead and waiting for a slot; at most
      // WORKER_CONCURRENCY of them run at once, see worker-slots.e2e-spec).
      const rows: { started_at: Date; finished_at: Date }[] = await p.ds.query(
        `SELECT started_at, finished_at FROM jobs WHERE id = ANY($1)`,
        [jobs.map((j) => j.id)],
      );
      const points = rows.flatMap((r) => [
        { t: r.started_at.getTime(), d: 1 },
        { t: r.finished_at.getTime(), d: -1 },
      ]);
      points.sort((a, b) => a.t - b.t || a.d - b.d);
      let active = 0;
      let maxActive = 0;
      for (const pt of points) {
        active += pt.d;
        maxActive = Math.max(maxActive, active);
      }
      expect(maxActive).toBeGreaterThan(1);
      expect(maxActive).toBeLessThanOrEqual(CONCURRENCY + PREFETCH);

      for (const id of ids) {
        const c = await p.http().get(`/v1/containers/${id}`).set(p.auth());
        expect(c.body.state).toBe('running');
        const procs = readFileSync(`/sys/fs/cgroup/pids/${p.cgroupParent}/${id}/cgroup.procs`, 'utf8').trim();
        expect(procs).not.toBe('');
      }

      const destroyed = await Promise.all(
        ids.map((id) => p.http().delete(`/v1/containers/${id}`).set(p.auth())),
      );
      for (const r of destroyed) expect(r.status).toBe(202);
      const ends = await Promise.all(destroyed.map((r) => waitJob(p, r.body.job.id, 120)));
      for (const j of ends) expect(j).toMatchObject({ state: 'completed' });
      for (const id of ids) {
        expect((await p.http().get(`/v1/containers/${id}`).set(p.auth())).body.state).toBe('destroyed');
      }
      expect(childCgroups(p.cgroupParent).filter((n) => ids.includes(n))).toEqual([]);
    }, 300_000);
  },
);
