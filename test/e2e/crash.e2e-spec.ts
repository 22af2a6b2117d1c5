import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { HostRuntime } from '@berth/runtime';
import { JobEnqueuer } from '../../apps/api/src/jobs/job-enqueuer';
import { describeKernel } from '@test/support/kernel';
import {
  childCgroups,
  importBusybox,
  jobEvents,
  sleep,
  startCluster,
  until,
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
    // A case that failed between its kill and the new worker's start leaves no worker: the next starts one
    // (instead of failing too, for want of a worker).
    beforeEach(async () => {
      if (w && (w.proc.exitCode !== null || w.proc.signalCode !== null)) w = await c.startWorker();
    }, 60_000);

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
      how: 'kill' | 'stop' = 'kill',
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
      if (how === 'stop') {
        // Graceful: SIGTERM at once (no freeze), and what the job had done when it arrived.
        const stopping = w.stop();
        const atStop = await steps();
        await stopping;
        return atStop;
      }
      w.proc.kill('SIGSTOP');
      const atKill = await steps();
      await w.kill();
      return atKill;
    }

    /**
     * Runs `fn` (which kills the worker) while the container's row is locked, so that no job of it can end in
     * PostgreSQL meanwhile (a job's end updates that row in the same statement). Then the dead worker's
     * statement waiting for the lock dies with it (PostgreSQL would otherwise run it once the lock goes).
     */
    async function whileContainerRowLocked<T>(id: string, fn: () => Promise<T>): Promise<T> {
      const lock = c.ds.createQueryRunner();
      await lock.connect();
      try {
        await lock.startTransaction();
        await lock.query(`SELECT 1 FROM containers WHERE id = $1 FOR UPDATE`, [id]);
        const [{ pid: lockPid }] = await lock.query(`SELECT pg_backend_pid() AS pid`);
        const out = await fn();
        await lock.query(
          `SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE $1 = ANY(pg_blocking_pids(pid))`,
          [lockPid],
        );
        await lock.rollbackTransaction();
        return out;
      } finally {
        await lock.release();
      }
    }

    async function waitJob(jobId: string) {
      const res = await c.http().get(`/v1/jobs/${jobId}/wait?timeout=90`).set(c.auth());
      return res.body as { state: string; result: { initPid: number } };
    }

    /**
     * Exactly once: one completion, one container record, cgroup and volume per container, no orphans.
     * `endMayBeLost`: the kill may have come after BullMQ recorded the job's end and before PostgreSQL did
     * (the completion is written behind); the next worker's start-up sweep then requeues it once, and the
     * run that follows resumes after the recorded steps (case e tests that path on purpose).
     */
    async function expectExactlyOnce(id: string, jobId: string, endMayBeLost = false) {
      const job = await waitJob(jobId);
      expect(job.state).toBe('completed');
      const events = await jobEvents(c.ds, jobId);
      expect(events.filter((e) => e.action === 'job.completed')).toHaveLength(1);
      expect(events.filter((e) => e.action === 'job.failed')).toHaveLength(0);
      // Killed mid-run, its BullMQ job stayed active: BullMQ hands it back, the start-up sweep leaves it alone.
      const requeued = events.filter((e) => e.action === 'job.requeued');
      if (endMayBeLost && requeued.length > 0) {
        expect(requeued).toHaveLength(1);
        expect(requeued[0].data.reason).toMatch(/is completed but its end was not recorded/);
      } else {
        expect(requeued).toHaveLength(0);
      }

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
      // The job cannot end in PostgreSQL before the kill, however late the test sees init's file (on a loaded
      // machine the whole job can run in between: it ended in CI once).
      const atKill = await whileContainerRowLocked(id, () => killWhen(jobId, () => existsSync(initFile), 0));
      // Init runs; usually the step that launched it is not recorded yet (the retry must then find init running
      // and not launch a second one). On a fast run the record can land before the worker is stopped; the
      // invariants below hold either way. The create step's record is written behind it too: usually
      // committed by now, but on a loaded machine still on its way (the retry then runs create again, which
      // finds the container made and changes nothing). Its end in BullMQ may be recorded (see
      // expectExactlyOnce), in PostgreSQL it is not.
      expect(atKill).not.toContain('job.completed');
      const { pid } = JSON.parse(readFileSync(initFile, 'utf8')) as { pid: number };
      const start = startTimeOf(pid);
      expect(start).not.toBeNull();
      w = await c.startWorker();
      // Stopped that late, the job may have ended in BullMQ already (its record still on its way).
      const events = await expectExactlyOnce(id, jobId, true);
      // The same init: the retried start step found it running (idempotent) instead of launching another.
      expect(survivors[survivors.length - 1]).toMatchObject({ id, pid, start });
      expect(events.filter((e) => e.action === 'job.step.done' && e.data.step === 'create')).toHaveLength(1);
      expectSurvivorsRunning();
    }, 120_000);

    it('SIGTERM while a create runs: the worker finishes the job and records it, then marks its host offline and exits', async () => {
      const { id, jobId } = await create(`crash-d-${process.pid}`);
      const hostId = await c.hostId();
      // The running worker is recorded in its data root (what `wipe` refuses to empty under it)...
      const owner = join(c.dataRoot, 'worker.pid');
      expect(JSON.parse(readFileSync(owner, 'utf8'))).toMatchObject({ pid: w.proc.pid });
      const atStop = await killWhen(jobId, (a) => a.includes('job.active'), 2, 'stop');
      // ...until it stops.
      expect(existsSync(owner)).toBe(false);
      expect(atStop).not.toContain('job.completed');
      // Recorded by the stopping worker itself: no other worker runs on this host now.
      const [job] = await c.ds.query(`SELECT state FROM jobs WHERE id = $1`, [jobId]);
      expect(job.state).toBe('completed');
      const [host] = await c.ds.query(`SELECT state FROM hosts WHERE id = $1`, [hostId]);
      expect(host.state).toBe('offline');
      const stopped = await c.ds.query(
        `SELECT data FROM audit_events WHERE subject_id = $1 AND action = 'host.stopped' ORDER BY id DESC LIMIT 1`,
        [hostId],
      );
      expect(stopped[0]?.data).toEqual({ signal: 'SIGTERM' });
      // In that order: the host went offline once its jobs were done, not while they ran.
      const [marks] = await c.ds.query(
        `SELECT (SELECT max(id) FROM audit_events WHERE job_id = $1 AND action = 'job.completed') AS completed,
                (SELECT max(id) FROM audit_events WHERE subject_id = $2 AND action = 'host.stopped') AS stopped`,
        [jobId, hostId],
      );
      expect(Number(marks.stopped)).toBeGreaterThan(Number(marks.completed));
      w = await c.startWorker();
      await expectExactlyOnce(id, jobId);
      expectSurvivorsRunning();
    }, 120_000);

    it('killed after BullMQ recorded a stop as done but before Postgres did: the next worker runs it again, recorded once', async () => {
      const { id, jobId: created } = await create(`crash-e-${process.pid}`);
      expect((await waitJob(created)).state).toBe('completed');
      // The worker frozen while the stop is accepted, so that the container row is locked before it runs.
      w.proc.kill('SIGSTOP');
      const res = await c.http().post(`/v1/containers/${id}/stop`).set(c.auth()).send({});
      expect(res.status).toBe(202);
      const jobId: string = res.body.job.id;
      // The job's end syncs the container row: it waits for this lock, after BullMQ was told the job is done.
      await whileContainerRowLocked(id, async () => {
        w.proc.kill('SIGCONT');
        const queue = await c.queue();
        for (const t0 = Date.now(); (await (await queue.getJob(jobId))?.getState()) !== 'completed';) {
          if (Date.now() - t0 > 30_000) throw new Error(`BullMQ never completed job ${jobId}`);
          await sleep(10);
        }
        await w.kill();
      });
      // BullMQ: done. Postgres: still active, the container row as before. The kernel: stopped.
      const [before] = await c.ds.query(`SELECT state FROM jobs WHERE id = $1`, [jobId]);
      expect(before.state).toBe('active');
      expect((await rt.containers.get(id)).status).toBe('stopped');

      w = await c.startWorker();
      const job = await waitJob(jobId);
      expect(job.state).toBe('completed');
      const events = (await jobEvents(c.ds, jobId)).map((e) => e.action);
      expect(events.filter((a) => a === 'job.completed')).toHaveLength(1);
      expect(events.filter((a) => a === 'job.requeued')).toHaveLength(1);
      expect(events.filter((a) => a === 'job.active')).toHaveLength(2);
      const [requeued] = (await jobEvents(c.ds, jobId)).filter((e) => e.action === 'job.requeued');
      expect(requeued.data).toMatchObject({ bullJobId: jobId, nextBullJobId: `${jobId}-k1` });
      const api = await c.http().get(`/v1/containers/${id}`).set(c.auth());
      expect(api.body).toMatchObject({ state: 'stopped' });
      expect((await rt.containers.get(id)).status).toBe('stopped');

      const destroyed = await c.http().delete(`/v1/containers/${id}`).set(c.auth());
      expect(destroyed.status).toBe(202);
      expect((await waitJob(destroyed.body.job.id)).state).toBe('completed');
      expectSurvivorsRunning();
    }, 120_000);

    /**
     * Runs `fn` with a trigger on `jobs` that calls `body` (plpgsql) for the updates `when` selects (and,
     * with `whenInserted`, for the inserts it selects: TG_OP tells them apart), and a sequence of the same
     * name the body may count with; a no-op job submitted with `n` is its target.
     */
    async function withJobTrigger(
      name: string,
      body: string,
      when: string,
      fn: (submitNoop: (n: number) => Promise<string>, trigger: string) => Promise<void>,
      whenInserted?: string,
    ) {
      const trigger = `berth_${name}_${process.pid}`;
      await c.ds.query(`CREATE SEQUENCE ${trigger}`);
      await c.ds.query(`CREATE FUNCTION ${trigger}() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN ${body.replaceAll('$seq', trigger)} END $$`);
      await c.ds.query(`CREATE TRIGGER ${trigger} BEFORE UPDATE ON jobs FOR EACH ROW
        WHEN (${when}) EXECUTE FUNCTION ${trigger}()`);
      if (whenInserted)
        await c.ds.query(`CREATE TRIGGER ${trigger}_ins BEFORE INSERT ON jobs FOR EACH ROW
          WHEN (${whenInserted}) EXECUTE FUNCTION ${trigger}()`);
      const submitNoop = async (n: number) =>
        (await c.api.get(JobEnqueuer).submit({
          kind: 'system.noop',
          payload: { n },
          hostId: await c.hostId(),
          principal: { keyId: 'test:crash', tenantId: null, scopes: ['admin'], requestId: '' },
        }))!.id;
      try {
        await fn(submitNoop, trigger);
      } finally {
        await c.ds.query(`DROP TRIGGER IF EXISTS ${trigger}_ins ON jobs`);
        await c.ds.query(`DROP TRIGGER IF EXISTS ${trigger} ON jobs`);
        await c.ds.query(`DROP FUNCTION IF EXISTS ${trigger}()`);
        await c.ds.query(`DROP SEQUENCE IF EXISTS ${trigger}`);
      }
    }

    it('an end that Postgres refuses (not only is it away) is retried, then the job is recorded as failed', async () => {
      // A trigger refuses this one job's completion, as a constraint would; its failure goes through.
      await withJobTrigger(
        'refuse_end',
        `RAISE EXCEPTION 'end refused by the test';`,
        `NEW.state = 'completed' AND NEW.result->>'n' = '-4242'`,
        async (submitNoop) => {
          const id = await submitNoop(-4242);
          const ended = await c.http().get(`/v1/jobs/${id}/wait?timeout=30`).set(c.auth());
          expect(ended.body).toMatchObject({ state: 'failed', error: { code: 'END_NOT_RECORDED' } });
          expect(ended.body.error.message).toMatch(/its end could not be recorded: end refused by the test/);
          const events = (await jobEvents(c.ds, id)).map((e) => e.action);
          expect(events).toEqual(['job.queued', 'job.active', 'job.failed']);
        },
      );
    }, 60_000);

    it('a create whose end PostgreSQL refuses: the job fails END_NOT_RECORDED, the container is as the kernel has it', async () => {
      await withJobTrigger(
        'refuse_create_end',
        `RAISE EXCEPTION 'create end refused by the test';`,
        `NEW.state = 'completed' AND NEW.kind = 'container.create' AND NEW.params->>'name' = 'refused-end'`,
        async () => {
          const { id, jobId } = await create('refused-end');
          const ended = await waitJob(jobId);
          expect(ended).toMatchObject({ state: 'failed', error: { code: 'END_NOT_RECORDED' } });
          // It ran: the container runs, and its row says so (not `error`, as for a create that failed).
          expect((await rt.containers.get(id)).status).toBe('running');
          const row = (await c.http().get(`/v1/containers/${id}`).set(c.auth())).body;
          expect(row).toMatchObject({ state: 'running', targetState: 'running' });
          const init = (await rt.containers.get(id)).init!;
          survivors.push({ id, pid: init.pid, start: startTimeOf(init.pid)! });
        },
      );
    }, 60_000);

    it('a failure whose record fails at first is retried until written: the job does not stay active', async () => {
      // The job is written with a payload its schema refuses (a permanent failure; system.noop has a single
      // attempt), and the first two writes of its failure are refused. Unretried, BullMQ would end the job
      // while PostgreSQL kept it `active` for as long as the worker lives.
      await withJobTrigger(
        'refuse_fail',
        `IF TG_OP = 'INSERT' THEN NEW.params := NEW.params || '{"bogus": true}'::jsonb;
         ELSIF NEW.state = 'failed' AND nextval('$seq') <= 2 THEN RAISE EXCEPTION 'failure refused by the test';
         END IF; RETURN NEW;`,
        `OLD.params->>'n' = '-4545'`,
        async (submitNoop, trigger) => {
          const id = await submitNoop(-4545);
          const ended = await c.http().get(`/v1/jobs/${id}/wait?timeout=20`).set(c.auth());
          expect(ended.body).toMatchObject({ state: 'failed', error: { code: 'INVALID_PAYLOAD' } });
          const events = (await jobEvents(c.ds, id)).map((e) => e.action);
          expect(events).toEqual(['job.queued', 'job.active', 'job.failed']);
          // Three writes of the failure: two refused, the third went through.
          const [{ last_value: writes }] = await c.ds.query(`SELECT last_value FROM ${trigger}`);
          expect(Number(writes)).toBe(3);
        },
        `NEW.params->>'n' = '-4545'`,
      );
    }, 60_000);

    it('a failure PostgreSQL refuses for good is recorded bare (its code) instead of retried for ever', async () => {
      await withJobTrigger(
        'refuse_failure_text',
        `IF TG_OP = 'INSERT' THEN NEW.params := NEW.params || '{"bogus": true}'::jsonb;
         ELSIF NEW.state = 'failed' AND NEW.error_message NOT LIKE '%full record was refused%' THEN
           RAISE EXCEPTION 'failure refused by the test';
         END IF; RETURN NEW;`,
        `OLD.params->>'n' = '-4646'`,
        async (submitNoop) => {
          const id = await submitNoop(-4646);
          const ended = await c.http().get(`/v1/jobs/${id}/wait?timeout=20`).set(c.auth());
          expect(ended.body).toMatchObject({ state: 'failed', error: { code: 'INVALID_PAYLOAD' } });
          expect(ended.body.error.message).toMatch(/full record was refused/);
        },
        `NEW.params->>'n' = '-4646'`,
      );
    }, 60_000);

    it('a claim that fails (PostgreSQL away or refusing) uses up no attempt: the job is handed back and runs', async () => {
      // The first three claims of this one job fail; system.noop has a single attempt, which a failed
      // claim counted as the job's failure would end in BullMQ while PostgreSQL still says `queued`.
      await withJobTrigger(
        'refuse_claim',
        `IF nextval('$seq') <= 3 THEN RAISE EXCEPTION 'claim refused by the test'; END IF; RETURN NEW;`,
        `NEW.state = 'active' AND NEW.params->>'n' = '-4343'`,
        async (submitNoop, seq) => {
          const id = await submitNoop(-4343);
          const ended = await c.http().get(`/v1/jobs/${id}/wait?timeout=30`).set(c.auth());
          expect(ended.body).toMatchObject({ state: 'completed', attempts: 1, result: { n: -4343 } });
          const events = (await jobEvents(c.ds, id)).map((e) => e.action);
          expect(events).toEqual(['job.queued', 'job.active', 'job.completed']);
          // Four claims: three refused, the fourth went through.
          const [{ last_value: claims }] = await c.ds.query(`SELECT last_value FROM ${seq}`);
          expect(Number(claims)).toBe(4);
        },
      );
    }, 60_000);

    it('a job whose claim a crash of PostgreSQL took back while it ran, then failed for good, is recorded as failed', async () => {
      // The job is written with a payload its schema refuses (a permanent failure); its failure's record is
      // held back (a deadlock's SQLSTATE: retried) while the row says `active`. The test then resets the row
      // to what crash recovery restores when the claim's relaxed commit is lost: `queued` again.
      await withJobTrigger(
        'lost_claim_fail',
        `IF TG_OP = 'INSERT' THEN NEW.params := NEW.params || '{"bogus": true}'::jsonb;
         ELSIF NEW.state = 'failed' AND OLD.state = 'active' THEN
           PERFORM nextval('$seq');
           RAISE EXCEPTION 'failure held back by the test' USING ERRCODE = '40P01';
         END IF; RETURN NEW;`,
        `OLD.params->>'n' = '-4848'`,
        async (submitNoop, seq) => {
          const id = await submitNoop(-4848);
          await until('the failure to be held back', async () =>
            (await c.ds.query(`SELECT is_called FROM ${seq}`))[0].is_called ? true : undefined,
          );
          await c.ds.query(
            `UPDATE jobs SET state = 'queued', attempts = 0, started_at = NULL WHERE id = $1`,
            [id],
          );
          // Dropped because the row no longer says `active`, the failure would leave the job `queued` while
          // BullMQ ended it: nothing would run it again, and `wait` would never answer.
          const ended = await c.http().get(`/v1/jobs/${id}/wait?timeout=20`).set(c.auth());
          expect(ended.body).toMatchObject({ state: 'failed', error: { code: 'INVALID_PAYLOAD' } });
          const events = (await jobEvents(c.ds, id)).map((e) => e.action);
          expect(events).toEqual(['job.queued', 'job.active', 'job.failed']);
        },
        `NEW.params->>'n' = '-4848'`,
      );
    }, 60_000);

    it('a second worker on the same data root is refused at its start, touching nothing; the first goes on', async () => {
      const hostId = await c.hostId();
      const hostEvents = async () =>
        (await c.ds.query(`SELECT count(*)::int AS n FROM audit_events WHERE subject_id = $1`, [hostId]))[0]
          .n;
      const before = await hostEvents();
      // It would reconcile the data root (removing what the first is half-way through creating) and run
      // the host's jobs a second time.
      await expect(c.startWorker()).rejects.toThrow(
        new RegExp(`data root \\S+ is in use by another process \\(the worker, pid ${w.pid}\\)`),
      );
      // Not registered: no `host.registered`, no heartbeat's state change.
      expect(await hostEvents()).toBe(before);
      const { id, jobId } = await create(`crash-f-${process.pid}`);
      await expectExactlyOnce(id, jobId);
      expectSurvivorsRunning();
    }, 120_000);

    it('destroys everything through the API afterwards: nothing is left on the host', async () => {
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
