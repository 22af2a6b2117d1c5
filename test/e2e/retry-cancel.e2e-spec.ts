import { execFileSync } from 'node:child_process';
import {
  chmodSync,
  copyFileSync,
  lchownSync,
  mkdirSync,
  readFileSync,
  symlinkSync,
  writeFileSync,
} from 'node:fs';
import { join } from 'node:path';
import type { HostRuntime } from '@berth/runtime';
import { describeKernel } from '@test/support/kernel';
import {
  importBusybox,
  jobEvents,
  startCluster,
  until,
  type Cluster,
  type WorkerProcess,
} from '@test/support/worker-process';

const MiB = 1024 * 1024;

/** An init whose interpreter is missing: exec fails with ENOENT until /bin/sh exists in the rootfs. */
const INIT = `#!/bin/sh
trap 'exit 0' TERM INT HUP
while :; do
  sleep 2147483647 &
  wait $!
done
`;
const DIRS = ['bin', 'sbin', 'usr', 'etc', 'dev', 'proc', 'sys', 'run', 'tmp', 'root', 'var'];

describeKernel(
  'permanent and transient failures, retry and cancel',
  { root: true, programs: ['busybox', 'nsenter', 'tar'] },
  () => {
    let c: Cluster;
    let w: WorkerProcess;
    let rt: HostRuntime;
    let hostId: string;
    const template = `bb-retry-${process.pid}`;
    let n = 0;
    const name = () => `retry-${n++}-${process.pid}`;

    beforeAll(async () => {
      c = await startCluster('retry');
      w = await c.startWorker();
      hostId = await c.hostId();
      await importBusybox(c, template, hostId);
      rt = await c.runtime();
    }, 180_000);
    afterAll(() => c?.close(), 120_000);

    const create = (body: object) =>
      c
        .http()
        .post('/v1/containers')
        .set(c.auth())
        .send({ name: name(), cpus: 0.1, memoryBytes: 32 * MiB, pidsMax: 64, ...body });
    const wait = async (jobId: string) =>
      (await c.http().get(`/v1/jobs/${jobId}/wait?timeout=60`).set(c.auth())).body;
    const actions = async (jobId: string) => (await jobEvents(c.ds, jobId)).map((e) => e.action);
    const container = async (id: string) => (await c.http().get(`/v1/containers/${id}`).set(c.auth())).body;

    it('a permanent failure (template gone from the host behind Berth’s back) fails at once: attempts 1, code and step', async () => {
      const gone = `gone-${process.pid}`;
      await importBusybox(c, gone, hostId);
      await rt.templates.delete(gone);
      const res = await create({ template: gone });
      expect(res.status).toBe(202);
      const job = await wait(res.body.job.id);
      expect(job).toMatchObject({
        state: 'failed',
        attempts: 1,
        error: { code: 'TEMPLATE_NOT_FOUND', step: 'create' },
      });
      expect(await actions(job.id)).toEqual(['job.queued', 'job.active', 'job.failed']);
      expect(await container(res.body.container.id)).toMatchObject({ state: 'error' });
      expect((await rt.containers.list()).map((x) => x.id)).not.toContain(res.body.container.id);
    }, 60_000);

    it('a transient failure is retried with backoff, then a retry after the fix resumes after the finished step', async () => {
      // A template whose init cannot exec: `create` succeeds, `start` fails with a kernel error (transient).
      const dir = join(c.dataRoot, 'noinit-src');
      const rootfs = join(dir, 'rootfs');
      for (const d of DIRS) mkdirSync(join(rootfs, d), { recursive: true });
      writeFileSync(join(rootfs, 'sbin', 'init'), INIT);
      chmodSync(join(rootfs, 'sbin', 'init'), 0o755);
      const tarball = join(dir, 'noinit.tar');
      execFileSync('tar', ['--numeric-owner', '--owner=0', '--group=0', '-C', rootfs, '-cf', tarball, '.']);
      const noinit = `noinit-${process.pid}`;
      const imp = await c
        .http()
        .post('/v1/templates')
        .set(c.auth())
        .send({ name: noinit, source: 'tarball', path: tarball, host: hostId });
      expect(imp.status).toBe(202);
      expect(await wait(imp.body.jobs[0].id)).toMatchObject({ state: 'completed' });

      const res = await create({ template: noinit });
      expect(res.status).toBe(202);
      const id: string = res.body.container.id;
      const failed = await wait(res.body.job.id);
      expect(failed).toMatchObject({
        state: 'failed',
        attempts: 3,
        maxAttempts: 3,
        error: { code: 'KERNEL_ERROR', step: 'start' },
      });
      const events = await jobEvents(c.ds, failed.id);
      const retries = events.filter((e) => e.action === 'job.retry');
      expect(retries.map((e) => e.data.delayMs)).toEqual([1_000, 2_000]);
      const actives = events.filter((e) => e.action === 'job.active').map((e) => new Date(e.at).getTime());
      expect(actives).toHaveLength(3);
      // Exponential backoff, as recorded: ≥ 1 s before the 2nd attempt, ≥ 2 s before the 3rd.
      expect(actives[1] - actives[0]).toBeGreaterThanOrEqual(950);
      expect(actives[2] - actives[1]).toBeGreaterThanOrEqual(1_950);
      // The create step is done once: later attempts resumed after it.
      const steps = events.filter((e) => e.action === 'job.step.done').map((e) => e.data.step);
      expect(steps).toEqual(['create']);
      expect(await container(id)).toMatchObject({ state: 'error' });

      // The fix, on the host: give the container a shell (busybox) so its init can exec.
      const config = await rt.containers.store.readConfig(id);
      const uid = config?.usernsHostUid ?? 0;
      const mount = await rt.storage.mountSpec(id);
      const root = mount ? /(?:^|,)upperdir=([^,]+)/.exec(mount.options)![1] : rt.storage.rootfsPath(id);
      copyFileSync(
        execFileSync('sh', ['-c', 'command -v busybox']).toString().trim(),
        join(root, 'bin', 'busybox'),
      );
      chmodSync(join(root, 'bin', 'busybox'), 0o755);
      lchownSync(join(root, 'bin', 'busybox'), uid, uid);
      for (const applet of ['sh', 'sleep']) {
        symlinkSync('busybox', join(root, 'bin', applet));
        lchownSync(join(root, 'bin', applet), uid, uid);
      }

      const retried = await c.http().post(`/v1/jobs/${failed.id}/retry`).set(c.auth()).send({});
      expect(retried.status).toBe(202);
      expect(retried.body).toMatchObject({ id: failed.id, state: 'queued', error: null });
      const done = await wait(failed.id);
      expect(done).toMatchObject({ state: 'completed', result: { status: 'running' } });
      const all = await jobEvents(c.ds, failed.id);
      const afterRetry = all
        .slice(all.findIndex((e) => e.action === 'job.retry.requested'))
        .map((e) => (e.action === 'job.step.done' ? `step ${String(e.data.step)}` : e.action));
      expect(afterRetry).toEqual(['job.retry.requested', 'job.active', 'step start', 'job.completed']);
      expect(await container(id)).toMatchObject({ state: 'running' });
      const pid = done.result.initPid as number;
      expect(readFileSync(`/sys/fs/cgroup/pids/${c.cgroupParent}/${id}/cgroup.procs`, 'utf8')).toContain(
        String(pid),
      );
      // The container is back in the state machine: an operation allowed only from `running` is accepted.
      const paused = await c.http().post(`/v1/containers/${id}/pause`).set(c.auth()).send({});
      expect(paused.status).toBe(202);
      expect(await wait(paused.body.job.id)).toMatchObject({ state: 'completed' });
    }, 120_000);

    it('a retried job goes last in its container’s FIFO, runs once (not also by its old BullMQ job), and is checked like a new request', async () => {
      const made = await create({ template });
      expect(await wait(made.body.job.id)).toMatchObject({ state: 'completed' });
      const id: string = made.body.container.id;
      const published = (jobId: string) =>
        until(
          `job ${jobId} to be published`,
          async () => (await c.ds.query(`SELECT 1 FROM outbox WHERE job_id = $1`, [jobId])).length === 0,
        );
      const post = (path: string, body: object = {}) => c.http().post(path).set(c.auth()).send(body);
      const accepted = (res: { status: number; body: { job: { id: string } } }) => {
        expect(res.status).toBe(202);
        return res.body.job.id;
      };

      await w.stop();
      // A resize, published (its BullMQ job waits in the host's queue), then cancelled.
      const resize = accepted(await c.http().patch(`/v1/containers/${id}`).set(c.auth()).send({ cpus: 0.2 }));
      await published(resize);
      expect((await post(`/v1/jobs/${resize}/cancel`)).status).toBe(200);
      // A pause accepted after it; then the resize is retried: it goes after the pause.
      const pause = accepted(await post(`/v1/containers/${id}/pause`));
      const retried = await post(`/v1/jobs/${resize}/retry`);
      expect(retried.status).toBe(202);
      await published(resize);
      // A resume, cancelled; a stop; the resume retried would now resume a stopped container: refused.
      const resume = accepted(await post(`/v1/containers/${id}/resume`));
      expect((await post(`/v1/jobs/${resume}/cancel`)).status).toBe(200);
      const stop = accepted(await post(`/v1/containers/${id}/stop`));
      const refused = await post(`/v1/jobs/${resume}/retry`);
      expect(refused.status).toBe(409);
      expect(refused.body).toMatchObject({ code: 'INVALID_TRANSITION', targetState: 'stopped' });
      expect(refused.headers.location).toBeUndefined();
      const seqs: { id: string; container_seq: number }[] = await c.ds.query(
        `SELECT id, container_seq FROM jobs WHERE id = ANY($1) ORDER BY container_seq`,
        [[resize, pause, stop]],
      );
      expect(seqs.map((r) => r.id)).toEqual([pause, resize, stop]);

      w = await c.startWorker();
      expect(await wait(stop)).toMatchObject({ state: 'completed', result: { status: 'stopped' } });
      for (const j of [pause, resize]) expect(await wait(j)).toMatchObject({ state: 'completed' });
      expect(await wait(resume)).toMatchObject({ state: 'cancelled' });
      // Executed in FIFO order, the retried resize once, after the pause it was retried behind.
      const ran: { job_id: string }[] = await c.ds.query(
        `SELECT job_id FROM audit_events WHERE job_id = ANY($1) AND action = 'job.active' ORDER BY id`,
        [[resize, pause, stop, resume]],
      );
      expect(ran.map((r) => r.job_id)).toEqual([pause, resize, stop]);
      // Its first BullMQ job was still in the queue: it no longer carries the job, and ran nothing.
      const q = await c.queue();
      const old = await until('the old BullMQ job of the resize to end', async () => {
        const j = await q.getJob(resize);
        return j?.finishedOn ? j : undefined;
      });
      expect(old.returnvalue).toEqual({ skipped: 'superseded' });
      expect(await container(id)).toMatchObject({
        state: 'stopped',
        targetState: 'stopped',
        resources: { cpus: 0.2 },
      });
    }, 120_000);

    it('a container that stopped while no worker ran (a reboot) is seen as stopped at the next start, and starts again', async () => {
      const made = await create({ template });
      expect(await wait(made.body.job.id)).toMatchObject({ state: 'completed' });
      const id: string = made.body.container.id;
      await w.stop();
      // What a reboot leaves: the container's init gone, Postgres still saying `running`.
      await rt.containers.stop(id);
      expect(await container(id)).toMatchObject({ state: 'running', targetState: 'running' });
      w = await c.startWorker();
      expect(await container(id)).toMatchObject({ state: 'stopped', targetState: 'stopped' });
      const observed = await c.ds.query(
        `SELECT data FROM audit_events WHERE subject_id = $1 AND action = 'container.observed'`,
        [id],
      );
      expect(observed).toEqual([{ data: { from: 'running', to: 'stopped' } }]);
      const started = await c.http().post(`/v1/containers/${id}/start`).set(c.auth()).send({});
      expect(started.status).toBe(202);
      expect(await wait(started.body.job.id)).toMatchObject({
        state: 'completed',
        result: { status: 'running' },
      });
      expect((await rt.containers.get(id)).status).toBe('running');
    }, 120_000);

    it('cancels a job queued while its host is stopped: the worker never runs it; later jobs are not blocked', async () => {
      const made = await create({ template });
      expect(await wait(made.body.job.id)).toMatchObject({ state: 'completed' });
      const id: string = made.body.container.id;
      const pid = (await rt.containers.get(id)).init!.pid;

      await w.stop();
      const stop = await c.http().post(`/v1/containers/${id}/stop`).set(c.auth()).send({});
      expect(stop.status).toBe(202);
      const jobId: string = stop.body.job.id;
      const queued = await c.http().get(`/v1/jobs/${jobId}`).set(c.auth());
      expect(queued.body.state).toBe('queued');
      expect(queued.body.waitingReason).toMatch(
        new RegExp(`^waiting for host ${c.hostName}: offline since `),
      );
      // Published to the host queue before it is cancelled: the worker will see it.
      await until(
        'the job to be published (its outbox row deleted)',
        async () => (await c.ds.query(`SELECT 1 FROM outbox WHERE job_id = $1`, [jobId])).length === 0,
      );

      const cancelled = await c.http().post(`/v1/jobs/${jobId}/cancel`).set(c.auth()).send({});
      expect(cancelled.status).toBe(200);
      expect(cancelled.body).toMatchObject({ id: jobId, state: 'cancelled' });
      expect(await container(id)).toMatchObject({ state: 'running', targetState: 'running' });

      w = await c.startWorker();
      const q = await c.queue();
      const bull = await until('the worker to take the cancelled job', async () => {
        const j = await q.getJob(jobId);
        return j?.finishedOn ? j : undefined;
      });
      expect(bull.returnvalue).toEqual({ skipped: 'cancelled' });
      expect(await actions(jobId)).toEqual(['job.queued', 'job.cancelled']);
      expect((await rt.containers.get(id)).init?.pid).toBe(pid);

      const again = await c.http().post(`/v1/containers/${id}/stop`).set(c.auth()).send({});
      expect(again.status).toBe(202);
      expect(await wait(again.body.job.id)).toMatchObject({
        state: 'completed',
        result: { status: 'stopped' },
      });

      const late = await c.http().post(`/v1/jobs/${again.body.job.id}/cancel`).set(c.auth()).send({});
      expect(late.status).toBe(409);
      expect(late.headers['content-type']).toMatch(/application\/problem\+json/);
      expect(late.body.code).toBe('JOB_NOT_CANCELLABLE');
      const rerun = await c.http().post(`/v1/jobs/${again.body.job.id}/retry`).set(c.auth()).send({});
      expect(rerun.status).toBe(409);
      expect(rerun.body.code).toBe('JOB_NOT_RETRYABLE');
    }, 120_000);
  },
);
