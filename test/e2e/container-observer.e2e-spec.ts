import { readFileSync } from 'node:fs';
import type { HostRuntime } from '@berth/runtime';
import { JobEnqueuer } from '../../apps/api/src/jobs/job-enqueuer';
import { describeKernel } from '@test/support/kernel';
import {
  importBusybox,
  sleep,
  startCluster,
  until,
  type Cluster,
  type WorkerProcess,
} from '@test/support/worker-process';

const MiB = 1024 * 1024;
const INTERVAL_MS = 200;

/**
 * A container that stops from inside while the worker runs (`poweroff -f` in it, its init killed) is seen
 * as stopped by the worker's periodic observation (ContainerObserver), and can be started again through the
 * API; a container whose job is `active` is left to its job.
 */
describeKernel(
  'container observer: the kernel is compared with Postgres while the worker runs',
  { root: true, programs: ['busybox', 'nsenter'] },
  () => {
    let c: Cluster;
    let w: WorkerProcess;
    let rt: HostRuntime;
    let hostId: string;
    const template = `bb-observe-${process.pid}`;

    beforeAll(async () => {
      // One slot and one job claimed ahead: a job can be held `active`, waiting, behind a no-op.
      c = await startCluster('observe', {
        WORKER_OBSERVE_INTERVAL_MS: String(INTERVAL_MS),
        WORKER_CONCURRENCY: '1',
        WORKER_PREFETCH: '1',
      });
      w = await c.startWorker();
      hostId = await c.hostId();
      await importBusybox(c, template, hostId);
      rt = await c.runtime();
    }, 180_000);
    afterAll(() => c?.close(), 120_000);

    async function waitJob(jobId: string) {
      const res = await c.http().get(`/v1/jobs/${jobId}/wait?timeout=60`).set(c.auth());
      return res.body as { state: string; result: { status: string; initPid: number } };
    }

    /** A running container (created and started through the API). */
    async function running(name: string): Promise<string> {
      const res = await c
        .http()
        .post('/v1/containers')
        .set(c.auth())
        .send({ name: `${name}-${process.pid}`, template, cpus: 0.1, memoryBytes: 32 * MiB, pidsMax: 64 });
      expect(res.status).toBe(202);
      expect(await waitJob(res.body.job.id)).toMatchObject({ state: 'completed' });
      expect((await rt.containers.get(res.body.container.id)).status).toBe('running');
      return res.body.container.id;
    }

    const container = async (id: string) =>
      (await c.http().get(`/v1/containers/${id}`).set(c.auth())).body as {
        state: string;
        targetState: string;
      };

    const observedEvents = async (id: string) =>
      (
        (await c.http().get(`/v1/audit?subject=${id}`).set(c.auth())).body as {
          action: string;
          data: unknown;
        }[]
      )
        .filter((e) => e.action === 'container.observed')
        .map((e) => e.data);

    /** Kills the container's init from the host, as the OOM killer would. */
    async function killInit(id: string): Promise<void> {
      const { init } = await rt.containers.get(id);
      process.kill(init!.pid, 'SIGKILL');
      await until('init to be gone', async () => (await rt.containers.get(id)).status === 'stopped', 5_000);
    }

    /** Starts it through the API and checks against the kernel that it runs again. */
    async function startsAgain(id: string): Promise<void> {
      const started = await c.http().post(`/v1/containers/${id}/start`).set(c.auth()).send({});
      expect(started.status).toBe(202);
      const job = await waitJob(started.body.job.id);
      expect(job).toMatchObject({ state: 'completed', result: { status: 'running' } });
      const info = await rt.containers.get(id);
      expect(info.status).toBe('running');
      expect(info.init!.pid).toBe(job.result.initPid);
      const procs = readFileSync(`/sys/fs/cgroup/pids/${c.cgroupParent}/${id}/cgroup.procs`, 'utf8');
      expect(procs.split('\n')).toContain(String(info.init!.pid));
      expect(await container(id)).toMatchObject({ state: 'running', targetState: 'running' });
    }

    it('an init killed from the host: the API says stopped at the next passes, and a start brings it back', async () => {
      const id = await running('killed');
      await killInit(id);
      // A pass every INTERVAL_MS, or 20 times a pass's duration when that is longer (seconds on a loaded
      // machine): the next passes, whenever they come.
      await until('the API to say stopped', async () => (await container(id)).state === 'stopped', 30_000);
      expect(await container(id)).toMatchObject({ state: 'stopped', targetState: 'stopped' });
      expect(await observedEvents(id)).toEqual([{ from: 'running', to: 'stopped' }]);
      await startsAgain(id);
      // Running again as its start recorded it: nothing more to observe.
      await sleep(3 * INTERVAL_MS);
      expect(await observedEvents(id)).toHaveLength(1);
    }, 120_000);

    it('`poweroff -f` inside: seen stopped; a stop is refused as for any stopped container; a start brings it back', async () => {
      const id = await running('poweroff');
      // The container's processes die with its init: the exec itself may end by a signal.
      await rt.containers.exec(id, ['poweroff', '-f'], { timeoutMs: 10_000 }).catch(() => undefined);
      await until('the API to say stopped', async () => (await container(id)).state === 'stopped', 30_000);
      expect(await observedEvents(id)).toEqual([{ from: 'running', to: 'stopped' }]);
      expect((await rt.containers.get(id)).status).toBe('stopped');
      const stop = await c.http().post(`/v1/containers/${id}/stop`).set(c.auth()).send({});
      expect(stop.status).toBe(409);
      expect(stop.body).toMatchObject({ code: 'INVALID_TRANSITION' });
      await startsAgain(id);
    }, 120_000);

    it('a stop accepted while the row still said running completes on the dead container', async () => {
      const id = await running('stop-late');
      // Frozen, the worker neither observes nor takes jobs while the stop is accepted against `running`.
      w.proc.kill('SIGSTOP');
      let stop;
      try {
        await killInit(id);
        stop = await c.http().post(`/v1/containers/${id}/stop`).set(c.auth()).send({});
      } finally {
        w.proc.kill('SIGCONT');
      }
      expect(stop.status).toBe(202);
      // Whichever comes first, the observation or the stop, the container ends stopped and startable.
      expect(await waitJob(stop.body.job.id)).toMatchObject({
        state: 'completed',
        result: { status: 'stopped' },
      });
      expect(await container(id)).toMatchObject({ state: 'stopped', targetState: 'stopped' });
      await startsAgain(id);
    }, 120_000);

    it('a container whose job is active is not observed mid-job; one without a job is, meanwhile', async () => {
      const held = await running('held');
      const free = await running('free');
      const enqueuer = c.api.get(JobEnqueuer);
      // The one slot held by a no-op (until its gate opens); the stop of `held` is claimed ahead (`active`)
      // and waits behind it.
      const noop = await enqueuer.submit({
        kind: 'system.noop',
        payload: { n: 1, holdMs: 60_000, gate: 'observe-held' },
        hostId,
        principal: { keyId: 'test:observe', tenantId: null, scopes: ['admin'], requestId: '' },
      });
      const state = async (jobId: string) =>
        ((await c.ds.query(`SELECT state FROM jobs WHERE id = $1`, [jobId])) as { state: string }[])[0]
          ?.state;
      await until('the no-op to run', async () => (await state(noop!.id)) === 'active', 10_000);
      const stop = await c.http().post(`/v1/containers/${held}/stop`).set(c.auth()).send({});
      expect(stop.status).toBe(202);
      await until('the stop to be claimed', async () => (await state(stop.body.job.id)) === 'active', 5_000);

      await killInit(held);
      await killInit(free);
      // `free` is observed: the passes run; then several more pass over `held`.
      // (Passes come every INTERVAL_MS, or 20 times a pass's duration when that is longer: seconds on a
      // loaded machine.)
      await until(
        'the free one to be observed',
        async () => (await container(free)).state === 'stopped',
        30_000,
      );
      await sleep(5 * INTERVAL_MS);
      expect(await state(stop.body.job.id)).toBe('active');
      expect(await state(noop!.id)).toBe('active');
      expect(await container(held)).toMatchObject({ state: 'running', targetState: 'stopped' });
      expect(await observedEvents(held)).toEqual([]);

      // The stop's end writes the container as it left it: stopped, by its job, not observed.
      c.openNoopGate('observe-held');
      expect(await waitJob(stop.body.job.id)).toMatchObject({
        state: 'completed',
        result: { status: 'stopped' },
      });
      expect(await container(held)).toMatchObject({ state: 'stopped', targetState: 'stopped' });
      await sleep(3 * INTERVAL_MS);
      expect(await observedEvents(held)).toEqual([]);
      expect(await observedEvents(free)).toEqual([{ from: 'running', to: 'stopped' }]);
    }, 120_000);
  },
);
