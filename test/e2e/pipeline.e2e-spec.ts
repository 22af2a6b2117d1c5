import { existsSync, readFileSync, readlinkSync } from 'node:fs';
import { RuntimeError } from '@berth/runtime';
import { describeKernel } from '@test/support/kernel';
import { startPipeline, waitJob, type Pipeline } from '@test/support/pipeline';
import { until } from '@test/support/worker-process';
import { HostRuntimeService } from '../../apps/worker/src/runtime/host-runtime.service';

const MiB = 1024 * 1024;

describeKernel(
  'pipeline: API → outbox → BullMQ → worker → kernel',
  { root: true, programs: ['busybox', 'nsenter'] },
  () => {
    let p: Pipeline;
    let id: string;
    const cg = (c: string, f: string) => `/sys/fs/cgroup/${c}/${p.cgroupParent}/${id}/${f}`;

    beforeAll(async () => {
      p = await startPipeline('main');
      const res = await p
        .http()
        .post('/v1/templates')
        .set(p.auth())
        .send({ name: 'busybox', source: 'builtin:busybox' });
      expect(res.status).toBe(202);
      for (const j of res.body.jobs) expect((await waitJob(p, j.id)).state).toBe('completed');
    }, 120_000);
    afterAll(() => p?.close(), 60_000);

    async function accepted(res: {
      status: number;
      body: { job: { id: string } };
      headers: Record<string, string>;
    }) {
      expect(res.status).toBe(202);
      expect(res.headers.location).toBe(`/v1/jobs/${res.body.job.id}`);
      const job = await waitJob(p, res.body.job.id);
      expect(job).toMatchObject({ state: 'completed' });
      return job;
    }

    it('lists the imported template, ready on this host, with the size of its root filesystem', async () => {
      const list = (await p.http().get('/v1/templates').set(p.auth())).body as {
        name: string;
        sizeBytes: number;
        replicas: { state: string }[];
      }[];
      const busybox = list.find((t) => t.name === 'busybox')!;
      expect(busybox.replicas.map((r) => r.state)).toContain('ready');
      // A static busybox and a few scripts: more than 500 KiB, less than 50 MiB.
      expect(busybox.sizeBytes).toBeGreaterThan(500 * 1024);
      expect(busybox.sizeBytes).toBeLessThan(50 * MiB);
      // Imported again where it already is (nothing made): its size is read from what the host has.
      await p.ds.query(`UPDATE templates SET size_bytes = 0 WHERE name = 'busybox'`);
      const again = await p
        .http()
        .post('/v1/templates')
        .set(p.auth())
        .send({ name: 'busybox', source: 'builtin:busybox' });
      for (const j of again.body.jobs) expect((await waitJob(p, j.id)).state).toBe('completed');
      const [{ size }] = await p.ds.query(
        `SELECT size_bytes::float AS size FROM templates WHERE name = 'busybox'`,
      );
      expect(size).toBe(busybox.sizeBytes);
    });

    it('creates and starts a container that really runs on the host', async () => {
      const res = await p
        .http()
        .post('/v1/containers')
        .set(p.auth())
        .send({ name: 'web1', template: 'busybox', cpus: 1, memoryBytes: 128 * MiB, pidsMax: 128 });
      id = res.body.container.id;
      const job = await accepted(res);
      const pid = (job.result as { initPid: number }).initPid;
      const c = await p.http().get(`/v1/containers/${id}`).set(p.auth());
      expect(c.body).toMatchObject({ state: 'running', targetState: 'running', name: 'web1' });
      expect(readlinkSync(`/proc/${pid}/ns/pid`)).not.toBe(readlinkSync('/proc/self/ns/pid'));
      expect(readFileSync(cg('pids', 'cgroup.procs'), 'utf8')).toContain(String(pid));
      // The job's own story, in order: each step recorded once, before the end (records are written
      // behind the steps, the last ones with the completion), and the final progress.
      const events = (await p.http().get(`/v1/jobs/${job.id}`).set(p.auth())).body.events as {
        action: string;
        data: { step?: string };
      }[];
      expect(events.map((e) => (e.action === 'job.step.done' ? `step ${e.data.step}` : e.action))).toEqual([
        'job.queued',
        'job.active',
        'step create',
        'step start',
        'job.completed',
      ]);
      expect(job.progress).toEqual({ stage: 'done', percent: 100 });
    }, 60_000);

    it('stops and starts, checked against the kernel', async () => {
      await accepted(await p.http().post(`/v1/containers/${id}/stop`).set(p.auth()).send({}));
      expect(readFileSync(cg('pids', 'cgroup.procs'), 'utf8').trim()).toBe('');
      expect((await p.http().get(`/v1/containers/${id}`).set(p.auth())).body.state).toBe('stopped');
      const job = await accepted(await p.http().post(`/v1/containers/${id}/start`).set(p.auth()).send({}));
      const pid = (job.result as { initPid: number }).initPid;
      expect(readFileSync(cg('pids', 'cgroup.procs'), 'utf8')).toContain(String(pid));
    }, 60_000);

    it('restarts: a new init in the cgroup, the old one gone; stop and start recorded as its two steps', async () => {
      const before = (await p.http().get(`/v1/containers/${id}`).set(p.auth())).body;
      const oldPid = (await p.ds.query(`SELECT result FROM jobs WHERE id = $1`, [before.lastJobId]))[0].result
        .initPid as number;
      const job = await accepted(await p.http().post(`/v1/containers/${id}/restart`).set(p.auth()).send({}));
      const pid = (job.result as { initPid: number }).initPid;
      expect(pid).not.toBe(oldPid);
      const procs = readFileSync(cg('pids', 'cgroup.procs'), 'utf8').split('\n');
      expect(procs).toContain(String(pid));
      expect(procs).not.toContain(String(oldPid));
      const steps: { step: string }[] = await p.ds.query(
        `SELECT data->>'step' AS step FROM audit_events WHERE job_id = $1 AND action = 'job.step.done' ORDER BY id`,
        [job.id],
      );
      expect(steps.map((s) => s.step)).toEqual(['stop', 'start']);
    }, 60_000);

    it("a step's record refused once is written again, before the next step's: none is ever recorded alone", async () => {
      // The first record of a `stop` step is refused (PostgreSQL away for a moment, say).
      const fn = `berth_refuse_step_${process.pid}`;
      await p.ds.query(`CREATE SEQUENCE ${fn}`);
      await p.ds.query(`CREATE FUNCTION ${fn}() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN IF nextval('${fn}') = 1 THEN RAISE EXCEPTION 'step record refused by the test'; END IF; RETURN NEW; END $$`);
      await p.ds.query(`CREATE TRIGGER ${fn} BEFORE INSERT ON audit_events FOR EACH ROW
        WHEN (NEW.action = 'job.step.done' AND NEW.data->>'step' = 'stop') EXECUTE FUNCTION ${fn}()`);
      try {
        const job = await accepted(
          await p.http().post(`/v1/containers/${id}/restart`).set(p.auth()).send({}),
        );
        const steps: { step: string }[] = await p.ds.query(
          `SELECT data->>'step' AS step FROM audit_events WHERE job_id = $1 AND action = 'job.step.done' ORDER BY id`,
          [job.id],
        );
        expect(steps.map((s) => s.step)).toEqual(['stop', 'start']);
        const [{ last_value: tries }] = await p.ds.query(`SELECT last_value FROM ${fn}`);
        expect(Number(tries)).toBeGreaterThanOrEqual(2);
      } finally {
        await p.ds.query(`DROP TRIGGER IF EXISTS ${fn} ON audit_events`);
        await p.ds.query(`DROP FUNCTION IF EXISTS ${fn}()`);
        await p.ds.query(`DROP SEQUENCE IF EXISTS ${fn}`);
      }
    }, 60_000);

    it('resizes live and pauses/resumes, checked in the cgroup', async () => {
      await accepted(
        await p
          .http()
          .patch(`/v1/containers/${id}`)
          .set(p.auth())
          .send({ memoryBytes: 96 * MiB, cpus: 0.5 }),
      );
      expect(readFileSync(cg('memory', 'memory.limit_in_bytes'), 'utf8').trim()).toBe(String(96 * MiB));
      expect(readFileSync(cg('cpu', 'cpu.cfs_quota_us'), 'utf8').trim()).toBe('50000');
      const c = (await p.http().get(`/v1/containers/${id}`).set(p.auth())).body;
      expect(c.resources).toMatchObject({ memoryBytes: 96 * MiB, cpus: 0.5 });
      // Its hold ended with the job: the host counts the container at its new limits, as it counts the rest.
      const [held] = await p.ds.query(
        `SELECT held_cpus::float AS cpus, held_memory_bytes::bigint::float AS mem FROM containers WHERE id = $1`,
        [id],
      );
      expect(held).toEqual({ cpus: 0, mem: 0 });
      const [counted] = await p.ds.query(
        `SELECT h.reserved_memory_bytes::float AS reserved, h.reserved_cpus::float AS cpus,
                (SELECT sum(memory_bytes)::float FROM containers WHERE host_id = h.id AND destroyed_at IS NULL) AS sum,
                (SELECT sum(cpus)::float FROM containers WHERE host_id = h.id AND destroyed_at IS NULL) AS cpu_sum
         FROM hosts h JOIN containers c ON c.host_id = h.id WHERE c.id = $1`,
        [id],
      );
      expect(counted.reserved).toBe(counted.sum);
      expect(counted.cpus).toBe(counted.cpu_sum);
      await accepted(await p.http().post(`/v1/containers/${id}/pause`).set(p.auth()).send({}));
      expect(readFileSync(cg('freezer', 'freezer.state'), 'utf8').trim()).toBe('FROZEN');
      await accepted(await p.http().post(`/v1/containers/${id}/resume`).set(p.auth()).send({}));
      expect(readFileSync(cg('freezer', 'freezer.state'), 'utf8').trim()).toBe('THAWED');
    }, 60_000);

    it('a resize the kernel refuses leaves the container running at its old limits, and not marked in error', async () => {
      const rt = await p.worker.get(HostRuntimeService).get();
      // 24 MiB in the container's tmpfs /dev/shm: charged to its memory cgroup, not reclaimable (no swap).
      expect(
        (await rt.containers.exec(id, ['dd', 'if=/dev/zero', 'of=/dev/shm/held', 'bs=1M', 'count=24'])).code,
      ).toBe(0);
      try {
        const res = await p
          .http()
          .patch(`/v1/containers/${id}`)
          .set(p.auth())
          .send({ memoryBytes: 16 * MiB });
        expect(res.status).toBe(202);
        expect(await waitJob(p, res.body.job.id)).toMatchObject({
          state: 'failed',
          error: { code: 'CGROUP_LIMIT_REJECTED', step: 'resize' },
        });
      } finally {
        await rt.containers.exec(id, ['rm', '/dev/shm/held']);
      }
      expect(readFileSync(cg('memory', 'memory.limit_in_bytes'), 'utf8').trim()).toBe(String(96 * MiB));
      const c = (await p.http().get(`/v1/containers/${id}`).set(p.auth())).body;
      expect(c).toMatchObject({
        state: 'running',
        targetState: 'running',
        errorCode: null,
        resources: { memoryBytes: 96 * MiB, cpus: 0.5 },
      });
    }, 60_000);

    it('a start that fails for good marks the container with its code, until a job of it succeeds', async () => {
      await accepted(await p.http().post(`/v1/containers/${id}/stop`).set(p.auth()).send({}));
      const rt = await p.worker.get(HostRuntimeService).get();
      const containers = rt.containers as { start: typeof rt.containers.start };
      containers.start = () => Promise.reject(new RuntimeError('KERNEL_EPERM', 'start refused by the test'));
      try {
        const res = await p.http().post(`/v1/containers/${id}/start`).set(p.auth()).send({});
        expect(res.status).toBe(202);
        expect(await waitJob(p, res.body.job.id)).toMatchObject({
          state: 'failed',
          error: { code: 'KERNEL_EPERM' },
        });
      } finally {
        delete (containers as Partial<typeof containers>).start; // the prototype's again
      }
      const failed = (await p.http().get(`/v1/containers/${id}`).set(p.auth())).body;
      expect(failed).toMatchObject({ state: 'stopped', targetState: 'stopped', errorCode: 'KERNEL_EPERM' });
      await accepted(await p.http().post(`/v1/containers/${id}/start`).set(p.auth()).send({}));
      const started = (await p.http().get(`/v1/containers/${id}`).set(p.auth())).body;
      expect(started).toMatchObject({ state: 'running', errorCode: null });
    }, 60_000);

    it('snapshots under a name once: the same name again is 409, one taken outside Berth fails the job', async () => {
      const snapshot = (name: string) =>
        p.http().post(`/v1/containers/${id}/snapshots`).set(p.auth()).send({ name });
      const rt = await p.worker.get(HostRuntimeService).get();
      const job = await accepted(await snapshot('before'));
      expect(job.result).toMatchObject({ snapshot: 'before', snapshots: ['before'] });
      expect((await rt.containers.listSnapshots(id)).map((s) => s.name)).toEqual(['before']);

      const jobs = async () =>
        (await p.ds.query(`SELECT count(*)::int AS n FROM jobs WHERE container_id = $1`, [id]))[0].n;
      const before = await jobs();
      const again = await snapshot('before');
      expect(again.status).toBe(409);
      expect(again.body.code).toBe('SNAPSHOT_EXISTS');
      expect(await jobs()).toBe(before);

      // A name Berth does not know is taken on the host: the job must not answer that snapshot as its own.
      await rt.containers.snapshot(id, 'outside');
      const res = await snapshot('outside');
      expect(res.status).toBe(202);
      const failed = await waitJob(p, res.body.job.id);
      expect(failed).toMatchObject({
        state: 'failed',
        error: { code: 'SNAPSHOT_EXISTS', step: 'name-free' },
      });
      expect((await p.http().get(`/v1/containers/${id}`).set(p.auth())).body.state).toBe('running');
    }, 60_000);

    it('a restart cancelled while it waits for its retry leaves the container as the kernel has it', async () => {
      // The restart's stop works; its start fails (a transient error, injected into the worker's runtime in
      // this process) and the job waits to retry.
      const rt = await p.worker.get(HostRuntimeService).get();
      const containers = rt.containers as { start: typeof rt.containers.start };
      containers.start = () => Promise.reject(new RuntimeError('KERNEL_ERROR', 'start refused by the test'));
      let jobId: string;
      try {
        const res = await p.http().post(`/v1/containers/${id}/restart`).set(p.auth()).send({});
        expect(res.status).toBe(202);
        jobId = res.body.job.id;
        await until('the restart to wait for its retry', async () => {
          const [j] = await p.ds.query(`SELECT state FROM jobs WHERE id = $1`, [jobId]);
          return j.state === 'waiting-retry' ? true : undefined;
        });
        const cancelled = await p.http().post(`/v1/jobs/${jobId}/cancel`).set(p.auth()).send({});
        expect(cancelled.body).toMatchObject({ state: 'cancelled' });
      } finally {
        delete (containers as Partial<typeof containers>).start; // the prototype's again
      }
      expect((await rt.containers.get(id)).status).toBe('stopped');
      const c = (await p.http().get(`/v1/containers/${id}`).set(p.auth())).body;
      expect(c).toMatchObject({ state: 'stopped', targetState: 'stopped' });
      // So a start is accepted (the row said `running` before: 409) and runs it again.
      await accepted(await p.http().post(`/v1/containers/${id}/start`).set(p.auth()).send({}));
      expect((await rt.containers.get(id)).status).toBe('running');
    }, 60_000);

    it('refuses a transition the state machine does not allow with 409 and no job', async () => {
      const before = (
        await p.ds.query(`SELECT count(*)::int AS n FROM jobs WHERE container_id = $1`, [id])
      )[0].n;
      const res = await p.http().post(`/v1/containers/${id}/resume`).set(p.auth()).send({});
      expect(res.status).toBe(409);
      expect(res.headers['content-type']).toMatch(/application\/problem\+json/);
      expect(res.body.code).toBe('INVALID_TRANSITION');
      const after = (await p.ds.query(`SELECT count(*)::int AS n FROM jobs WHERE container_id = $1`, [id]))[0]
        .n;
      expect(after).toBe(before);
    });

    it('destroys: nothing left on the host, the audit trail tells the whole story', async () => {
      await accepted(await p.http().delete(`/v1/containers/${id}`).set(p.auth()));
      expect(existsSync(`/sys/fs/cgroup/pids/${p.cgroupParent}/${id}`)).toBe(false);
      expect((await p.http().get(`/v1/containers/${id}`).set(p.auth())).body.state).toBe('destroyed');
      const audit = (await p.http().get(`/v1/audit?subject=${id}`).set(p.auth())).body as {
        action: string;
      }[];
      const actions = audit.map((a) => a.action);
      expect(actions[0]).toBe('container.create.requested');
      expect(actions).toEqual(
        expect.arrayContaining(['job.queued', 'job.active', 'job.step.done', 'job.completed']),
      );
      // create, stop, start, restart, restart, resize, pause, resume, stop, start, snapshot, start, destroy;
      // the refused resize, the start refused by the test and the second snapshot failed, the third restart
      // was cancelled
      expect(actions.filter((a) => a === 'job.completed')).toHaveLength(13);
      expect(actions.filter((a) => a === 'job.failed')).toHaveLength(3);
    });
  },
);
