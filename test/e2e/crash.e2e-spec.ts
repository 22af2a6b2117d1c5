import { existsSync, readFileSync } from 'node:fs';
import type { HostRuntime } from '@berth/runtime';
import { describeKernel } from '@test/support/kernel';
import {
  childCgroups,
  importBusybox,
  jobEvents,
  sleep,
  startCluster,
  type Cluster,
  type WorkerProcess,
} from '@test/support/worker-process';

const MiB = 1024 * 1024;

/** Start time of a pid (field 22 of /proc/<pid>/stat), or null when it is gone. */
function startTimeOf(pid: number): string | null {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19];
  } catch {
    return null;
  }
}

describeKernel(
  'crash: the worker SIGKILLed in the middle of a container.create',
  { root: true, programs: ['busybox', 'nsenter'] },
  () => {
    let c: Cluster;
    let w: WorkerProcess;
    let rt: HostRuntime;
    const template = `bb-crash-${process.pid}`;
    const survivors: { id: string; pid: number; start: string }[] = [];

    beforeAll(async () => {
      c = await startCluster('crash', { WORKER_LOCK_MS: '2000' });
      w = await c.startWorker();
      await importBusybox(c, template, await c.hostId());
      rt = await c.runtime();
    }, 180_000);
    afterAll(() => c?.close(), 120_000);

    async function create(name: string): Promise<{ id: string; jobId: string }> {
      const res = await c
        .http()
        .post('/v1/containers')
        .set(c.auth())
        .send({ name, template, cpus: 0.1, memoryBytes: 32 * MiB, pidsMax: 64 });
      expect(res.status).toBe(202);
      return { id: res.body.container.id, jobId: res.body.job.id };
    }

    /**
     * Freezes the worker (SIGSTOP: nothing more happens in it) the moment the job's audit trail satisfies
     * `when`, reads what the job had done by then, and SIGKILLs it.
     */
    async function killWhen(
      jobId: string,
      when: (actions: string[]) => boolean,
      everyMs = 2,
    ): Promise<string[]> {
      const end = Date.now() + 30_000;
      const steps = async () =>
        (await jobEvents(c.ds, jobId)).map((e) =>
          e.action === 'job.step.done' ? `step ${String(e.data.step)}` : e.action,
        );
      // A predicate that ignores the events (a file on disk) is polled without a database round trip.
      const cheap = when.length === 0;
      while (!when(cheap ? [] : await steps())) {
        if (Date.now() > end) throw new Error(`job ${jobId} never reached the kill point`);
        await (everyMs > 0 ? sleep(everyMs) : new Promise((r) => setImmediate(r)));
      }
      w.proc.kill('SIGSTOP');
      const atKill = await steps();
      await w.kill();
      return atKill;
    }

    async function waitJob(jobId: string) {
      const res = await c.http().get(`/v1/jobs/${jobId}/wait?timeout=90`).set(c.auth());
      return res.body as { state: string; result: { initPid: number } };
    }

    /** Exactly once: one completion, one container record, cgroup and volume per container, no orphans. */
    async function expectExactlyOnce(id: string, jobId: string) {
      const job = await waitJob(jobId);
      expect(job.state).toBe('completed');
      const events = await jobEvents(c.ds, jobId);
      expect(events.filter((e) => e.action === 'job.completed')).toHaveLength(1);
      expect(events.filter((e) => e.action === 'job.failed')).toHaveLength(0);

      const containers = await rt.containers.list();
      expect(containers.filter((x) => x.id === id)).toHaveLength(1);
      expect(containers.find((x) => x.id === id)!.status).toBe('running');
      const ids = containers.map((x) => x.id).sort();
      expect(childCgroups(c.cgroupParent)).toEqual(ids);
      expect((await rt.storage.list()).sort()).toEqual(ids);
      const report = await rt.containers.reconcile();
      expect(report).toMatchObject({
        orphanCgroups: [],
        orphanVolumes: [],
        orphanVeths: [],
        orphanAddresses: [],
        halfCreated: [],
        deadInits: [],
      });

      const api = await c.http().get(`/v1/containers/${id}`).set(c.auth());
      expect(api.body).toMatchObject({ state: 'running' });
      const pid = job.result.initPid;
      expect(readFileSync(`/sys/fs/cgroup/pids/${c.cgroupParent}/${id}/cgroup.procs`, 'utf8')).toContain(
        String(pid),
      );
      survivors.push({ id, pid, start: startTimeOf(pid)! });
      return events;
    }

    /** Containers started before a crash are still the same processes after it. */
    function expectSurvivorsRunning() {
      for (const s of survivors) {
        expect({ id: s.id, start: startTimeOf(s.pid) }).toEqual({ id: s.id, start: s.start });
        expect(existsSync(`/sys/fs/cgroup/pids/${c.cgroupParent}/${s.id}`)).toBe(true);
      }
    }

    it('killed as soon as the job is active (inside the create step): a new worker completes it once', async () => {
      const { id, jobId } = await create(`crash-a-${process.pid}`);
      const atKill = await killWhen(jobId, (a) => a.includes('job.active'));
      expect(atKill).not.toContain('step start');
      expect(atKill).not.toContain('job.completed');
      w = await c.startWorker();
      await expectExactlyOnce(id, jobId);
    }, 120_000);

    it('killed after the create step, before start: the new worker resumes at start, the running container survives', async () => {
      const { id, jobId } = await create(`crash-b-${process.pid}`);
      const atKill = await killWhen(jobId, (a) => a.includes('step create'));
      expect(atKill).not.toContain('step start');
      // The record of the finished step is what the retry resumes from; it exists on the host now.
      expect((await rt.containers.list()).map((x) => x.id)).toContain(id);
      expectSurvivorsRunning();
      w = await c.startWorker();
      const events = await expectExactlyOnce(id, jobId);
      // Resumed after the finished step: `create` recorded once, `start` once.
      const steps = events.filter((e) => e.action === 'job.step.done').map((e) => e.data.step);
      expect(steps.filter((s) => s === 'create')).toHaveLength(1);
      expect(steps.filter((s) => s === 'start')).toHaveLength(1);
      expectSurvivorsRunning();
    }, 120_000);

    it('killed once init is launched, around the record of its start step: the container keeps running, not started twice', async () => {
      const { id, jobId } = await create(`crash-c-${process.pid}`);
      const initFile = `${rt.containers.store.stateDir(id)}/init.pid`;
      const atKill = await killWhen(jobId, () => existsSync(initFile), 0);
      // Init runs; usually the step that launched it is not recorded yet (the retry must then find init running
      // and not launch a second one). On a fast run the record can land before the worker is stopped; the
      // invariants below hold either way.
      expect(atKill).toContain('step create');
      const { pid } = JSON.parse(readFileSync(initFile, 'utf8')) as { pid: number };
      const start = startTimeOf(pid);
      expect(start).not.toBeNull();
      w = await c.startWorker();
      const events = await expectExactlyOnce(id, jobId);
      // The same init: the retried start step found it running (idempotent) instead of launching another.
      expect(survivors[survivors.length - 1]).toMatchObject({ id, pid, start });
      expect(events.filter((e) => e.action === 'job.step.done' && e.data.step === 'create')).toHaveLength(1);
      expectSurvivorsRunning();
    }, 120_000);

    it('destroys everything through the API afterwards: nothing is left on the host', async () => {
      // A failed case above may have left its worker killed: this one needs a live worker.
      if (w.proc.exitCode !== null || w.proc.signalCode !== null) w = await c.startWorker();
      const ids = survivors.map((s) => s.id);
      for (const id of ids) {
        const res = await c.http().delete(`/v1/containers/${id}`).set(c.auth());
        expect(res.status).toBe(202);
        expect((await waitJob(res.body.job.id)).state).toBe('completed');
      }
      expect(await rt.containers.list()).toEqual([]);
      expect(childCgroups(c.cgroupParent)).toEqual([]);
      expect(await rt.storage.list()).toEqual([]);
    }, 120_000);
  },
);
