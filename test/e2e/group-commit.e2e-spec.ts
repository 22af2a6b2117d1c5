import { Queue } from 'bullmq';
import { Client } from 'pg';
import type { EntityManager } from 'typeorm';
import type { ContainerInfo } from '@berth/runtime';
import { bullConnection, hostQueueName } from '@berth/jobs';
import { JobEnqueuer } from '../../apps/api/src/jobs/job-enqueuer';
import { JobsService } from '../../apps/api/src/jobs/jobs.service';
import { JobStore } from '../../apps/worker/src/jobs/job-store';
import type { Principal } from '../../apps/api/src/auth/principal';
import { describeKernel } from '@test/support/kernel';
import { testConfig } from '@test/support/config';
import { startPipeline, waitJob, type Pipeline } from '@test/support/pipeline';
import { importBusybox } from '@test/support/worker-process';

/**
 * Group commit (libs/db createBatcher) on the real PostgreSQL: requests' enqueues written together
 * (JobEnqueuer.submit), and the worker's claims and completions written together (JobStore). Rows written
 * by one statement share one transaction id (`xmin`), which is what the tests look at.
 */
describeKernel(
  'group commit: enqueues, claims and completions written together',
  { root: true, programs: ['busybox', 'nsenter'] },
  () => {
    let p: Pipeline;
    let enqueuer: JobEnqueuer;
    let idleHost: string;
    let queue: Queue;
    const template = `bb-gc-${process.pid}`;
    const principal: Principal = {
      keyId: 'test:group-commit',
      tenantId: null,
      scopes: ['admin'],
      requestId: '',
    };

    beforeAll(async () => {
      p = await startPipeline('groupcommit');
      enqueuer = p.api.get(JobEnqueuer);
      const [{ id: hostId }] = await p.ds.query(`SELECT id FROM hosts WHERE name = $1`, [p.hostName]);
      await importBusybox(p, template, hostId);
      // A host no worker consumes (and placement skips): its jobs wait for the test to claim them by hand.
      [{ id: idleHost }] = await p.ds.query(
        `INSERT INTO hosts (name, draining, cpu_count, memory_bytes, kernel_version, cgroup_version)
       VALUES ('group-commit-idle', true, 1, 1073741824, 'test', 1) RETURNING id`,
      );
      queue = new Queue(hostQueueName(idleHost), {
        connection: bullConnection(testConfig(p.env).redis.url),
        prefix: p.env.BULLMQ_PREFIX,
      });
    }, 120_000);
    afterAll(async () => {
      await queue?.obliterate({ force: true }).catch(() => undefined);
      await queue?.close();
      await p?.close();
    }, 120_000);

    /** A running container's row on the idle host (no worker behind it); its id. */
    const runningContainer = async (name: string): Promise<string> =>
      (
        await p.ds.query(
          `INSERT INTO containers (name, host_id, state, target_state, cpus, memory_bytes, disk_bytes, pids_max)
           VALUES ($1, $2, 'running', 'running', 0.1, 33554432, 67108864, 64) RETURNING id`,
          [`${name}-${process.pid}`, idleHost],
        )
      )[0].id;

    /** A no-op job of container `containerId` on the idle host. */
    const noopOf = async (containerId: string) =>
      (await enqueuer.submit({
        kind: 'system.noop',
        payload: { n: 1 },
        hostId: idleHost,
        containerId,
        principal,
      }))!;

    /** `count` no-op jobs for the idle host, submitted at once (one statement); their ids. */
    const noops = async (count: number) =>
      (
        await Promise.all(
          Array.from({ length: count }, (_, n) =>
            enqueuer.submit({ kind: 'system.noop', payload: { n }, hostId: idleHost, principal }),
          ),
        )
      ).map((j) => j!.id);

    const xmins = async (table: string, ids: string[]) =>
      (
        await p.ds.query(`SELECT DISTINCT xmin::text AS x FROM ${table} WHERE id = ANY($1::uuid[])`, [ids])
      ).map((r: { x: string }) => r.x);

    it('writes concurrent requests in one statement, each with its audit event and outbox row', async () => {
      const jobs = await Promise.all(
        Array.from({ length: 12 }, (_, n) =>
          enqueuer.submit({ kind: 'system.noop', payload: { n }, hostId: idleHost, principal }),
        ),
      );
      const ids = jobs.map((j) => j!.id);
      expect(new Set(ids).size).toBe(12);
      // The same tick's requests are one batch: one transaction wrote all twelve jobs.
      expect(await xmins('jobs', ids)).toHaveLength(1);
      const queued = await p.ds.query(
        `SELECT job_id FROM audit_events WHERE action = 'job.queued' AND job_id = ANY($1::uuid[])`,
        [ids],
      );
      expect(queued).toHaveLength(12);
      // Handed to the relay at the commit: each is in the host's BullMQ queue under its own id.
      for (const id of ids) {
        const deadline = Date.now() + 10_000;
        while (!(await queue.getJob(id))) {
          if (Date.now() > deadline) throw new Error(`job ${id} was never published`);
          await new Promise((r) => setTimeout(r, 20));
        }
      }
    });

    it('claims and completes concurrent jobs in one statement each, every job exactly once', async () => {
      const ids = await noops(3);
      const store = p.worker.get(JobStore);
      const claims = await Promise.all(ids.map((id) => store.claim(id, 1, id)));
      for (const [k, c] of claims.entries()) {
        expect(c.job?.id).toBe(ids[k]);
        expect(c).toMatchObject({ activated: true, blocked: false });
        expect(c.doneSteps.size).toBe(0);
      }
      expect(await xmins('jobs', ids)).toHaveLength(1);
      // A claim of an unknown job answers "not known" without disturbing the others of its batch.
      const [unknown, again] = await Promise.all([
        store.claim('00000000-0000-4000-8000-000000000000', 1, '00000000-0000-4000-8000-000000000000'),
        store.claim(ids[0], 2, ids[0]),
      ]);
      expect(unknown.job).toBeNull();
      expect(again).toMatchObject({ activated: true, job: { id: ids[0], state: 'active' } });

      await Promise.all(
        claims.map((c, n) => store.complete(c.job!, { result: { n } }, n === 0 ? ['first', 'second'] : [])),
      );
      const rows = await p.ds.query(
        `SELECT id, state, result FROM jobs WHERE id = ANY($1::uuid[]) ORDER BY result->>'n'`,
        [ids],
      );
      expect(rows.map((r: { state: string }) => r.state)).toEqual(['completed', 'completed', 'completed']);
      expect(rows.map((r: { result: unknown }) => r.result)).toEqual([{ n: 0 }, { n: 1 }, { n: 2 }]);
      expect(await xmins('jobs', ids)).toHaveLength(1);
      // Each job's events: one active per claim, its step records in order before its one completion.
      const events = await p.ds.query(
        `SELECT job_id, action, data->>'step' AS step FROM audit_events
       WHERE job_id = ANY($1::uuid[]) AND action <> 'job.queued' ORDER BY id`,
        [ids],
      );
      const of = (id: string) =>
        events
          .filter((e: { job_id: string }) => e.job_id === id)
          .map((e: { action: string; step: string | null }) => e.step ?? e.action);
      expect(of(ids[0])).toEqual(['job.active', 'job.active', 'first', 'second', 'job.completed']);
      expect(of(ids[1])).toEqual(['job.active', 'job.completed']);
      expect(of(ids[2])).toEqual(['job.active', 'job.completed']);
      // Written again (as a batch retried input by input would): nothing changes, nothing is recorded twice.
      await store.complete(claims[2].job!, { result: { n: 99 } });
      const [rewritten] = await p.ds.query(`SELECT result FROM jobs WHERE id = $1`, [ids[2]]);
      expect(rewritten.result).toEqual({ n: 2 });
      const completions = await p.ds.query(
        `SELECT count(*)::int AS n FROM audit_events WHERE job_id = $1 AND action = 'job.completed'`,
        [ids[2]],
      );
      expect(completions).toEqual([{ n: 1 }]);
    });

    it('writes claims and completions made at the same moment in one statement, a job once per statement', async () => {
      const ids = await noops(4);
      const store = p.worker.get(JobStore);
      const [a, b] = await Promise.all([store.claim(ids[0], 1, ids[0]), store.claim(ids[1], 1, ids[1])]);
      // Completions of two jobs and claims of two others, all made in one tick: one statement, one commit.
      await Promise.all([
        store.complete(a.job!, { result: { n: 0 } }),
        store.complete(b.job!, { result: { n: 1 } }),
        store.claim(ids[2], 1, ids[2]),
        store.claim(ids[3], 1, ids[3]),
      ]);
      expect(await xmins('jobs', ids)).toHaveLength(1);
      const states = await p.ds.query(`SELECT id, state FROM jobs WHERE id = ANY($1::uuid[])`, [ids]);
      const stateOf = (id: string) => states.find((r: { id: string }) => r.id === id).state;
      expect(ids.map(stateOf)).toEqual(['completed', 'completed', 'active', 'active']);

      // The same job completed and claimed again at once (a redelivery racing its first run): the claim
      // goes in the statement after the completion, and finds the job ended.
      const c = (await store.claim(ids[2], 1, ids[2])).job!;
      const [, again] = await Promise.all([
        store.complete(c, { result: { n: 2 } }),
        store.claim(ids[2], 2, ids[2]),
      ]);
      expect(again).toMatchObject({ activated: false, job: { id: ids[2], state: 'completed' } });
      const events = await p.ds.query(
        `SELECT action FROM audit_events WHERE job_id = $1 AND action <> 'job.queued' ORDER BY id`,
        [ids[2]],
      );
      expect(events.map((e: { action: string }) => e.action)).toEqual([
        'job.active',
        'job.active',
        'job.completed',
      ]);
    });

    it("claims a container's next job in the statement that completes the previous one (FIFO holds)", async () => {
      const containerId = await runningContainer('gc-fifo');
      const submit = (n: number) =>
        enqueuer.submit({ kind: 'system.noop', payload: { n }, hostId: idleHost, containerId, principal });
      const first = (await submit(1))!;
      const second = (await submit(2))!;
      const third = (await submit(3))!;
      const store = p.worker.get(JobStore);
      const a = await store.claim(first.id, 1, `${first.id}-bull`);
      expect(a).toMatchObject({ activated: true, blocked: false });
      // While the first is unfinished, the second waits its turn.
      expect(await store.claim(second.id, 1, second.id)).toMatchObject({ activated: false, blocked: true });
      // The first's end and the second's claim in one statement: the end no longer blocks the claim.
      const [, b] = await Promise.all([
        store.complete(a.job!, { result: {} }),
        store.claim(second.id, 1, second.id),
      ]);
      expect(b).toMatchObject({ activated: true, blocked: false });
      expect(await xmins('jobs', [first.id, second.id])).toHaveLength(1);
      // Not the second's end in the same statement: the third still waits for the second.
      expect(await store.claim(third.id, 1, third.id)).toMatchObject({ activated: false, blocked: true });
      const active = await p.ds.query(
        `SELECT job_id, data->>'bullJobId' AS bull FROM audit_events
         WHERE action = 'job.active' AND job_id = ANY($1::uuid[]) ORDER BY id`,
        [[first.id, second.id, third.id]],
      );
      expect(active).toEqual([
        { job_id: first.id, bull: `${first.id}-bull` },
        { job_id: second.id, bull: second.id },
      ]);
    });

    it('a retry resumes after the steps done, unless jobs of its container were accepted after it; only its newest carrier claims it', async () => {
      const containerId = await runningContainer('gc-retry');
      const jobs = p.api.get(JobsService);
      const store = p.worker.get(JobStore);
      const failure = { code: 'TEST', message: 'failed by the test', step: 'second' };
      const submit = async (n: number) =>
        (await enqueuer.submit({
          kind: 'system.noop',
          payload: { n },
          hostId: idleHost,
          containerId,
          principal,
        }))!;
      const job = await submit(1);
      const first = await store.claim(job.id, 1, job.id);
      expect(first.activated).toBe(true);
      await store.stepDone(first.job!, 'first');
      await store.fail(first.job!, failure, job.id);

      // Nothing accepted since: the retry resumes after `first`, through its new carrier only.
      expect((await jobs.retry(job.id, principal)).state).toBe('queued');
      expect(await store.claim(job.id, 1, job.id)).toMatchObject({ superseded: true, activated: false });
      const again = await store.claim(job.id, 1, `${job.id}-r1`);
      expect(again).toMatchObject({ activated: true, superseded: false });
      expect([...again.doneSteps]).toEqual(['first']);
      await store.fail(again.job!, failure, `${job.id}-r1`);

      // Another job of the container accepted and run since: what `first` did may be undone.
      const other = await submit(2);
      const o = await store.claim(other.id, 1, other.id);
      expect(o.activated).toBe(true);
      await store.complete(o.job!, { result: {} });
      await jobs.retry(job.id, principal);
      const fresh = await store.claim(job.id, 1, `${job.id}-r2`);
      expect(fresh).toMatchObject({ activated: true, blocked: false });
      expect([...fresh.doneSteps]).toEqual([]);
      const requested = await p.ds.query(
        `SELECT data->>'fresh' AS fresh FROM audit_events
         WHERE job_id = $1 AND action = 'job.retry.requested' ORDER BY id`,
        [job.id],
      );
      expect(requested).toEqual([{ fresh: 'false' }, { fresh: 'true' }]);
      await store.complete(fresh.job!, { result: {} });
    });

    it('records the failure or retry of a job whose claim a crash of PostgreSQL took back, through its carrier only', async () => {
      const store = p.worker.get(JobStore);
      const failure = { code: 'TEST', message: 'failed by the test', step: null };
      const [lost, carried, done] = await noops(3);
      for (const id of [lost, carried, done]) expect((await store.claim(id, 1, id)).activated).toBe(true);
      // What crash recovery restores when a claim's relaxed commit was lost: the job as it was before it.
      await p.ds.query(
        `UPDATE jobs SET state = 'queued', attempts = 0, started_at = NULL WHERE id = ANY($1::uuid[])`,
        [[lost, carried]],
      );
      await p.ds.query(`UPDATE jobs SET carrier = $2 WHERE id = $1`, [carried, `${carried}-k1`]);
      await store.complete((await store.load(done))!, { result: {} });
      const row = async (id: string) =>
        (await p.ds.query(`SELECT state, error_code FROM jobs WHERE id = $1`, [id]))[0];
      const actions = async (id: string) =>
        (
          await p.ds.query(
            `SELECT action FROM audit_events WHERE job_id = $1 AND action <> 'job.queued' ORDER BY id`,
            [id],
          )
        ).map((e: { action: string }) => e.action);

      // Its handler failed (transient, then for good) after the crash: recorded, not dropped because the
      // row no longer says `active` (BullMQ would end the job while PostgreSQL kept it pending).
      await store.waitingRetry((await store.load(lost))!, failure, 1, 1_000, lost);
      expect(await row(lost)).toEqual({ state: 'waiting-retry', error_code: 'TEST' });
      await store.fail((await store.load(lost))!, failure, lost);
      expect(await row(lost)).toEqual({ state: 'failed', error_code: 'TEST' });
      expect(await actions(lost)).toEqual(['job.active', 'job.retry', 'job.failed']);

      // Through an older BullMQ job of it: nothing; through its carrier: recorded.
      await store.fail((await store.load(carried))!, failure, carried);
      expect(await row(carried)).toEqual({ state: 'queued', error_code: null });
      await store.fail((await store.load(carried))!, failure, `${carried}-k1`);
      expect(await row(carried)).toEqual({ state: 'failed', error_code: 'TEST' });

      // An ended job keeps its end.
      await store.fail((await store.load(done))!, failure, done);
      await store.waitingRetry((await store.load(done))!, failure, 1, 1_000, done);
      expect(await row(done)).toEqual({ state: 'completed', error_code: null });
      expect(await actions(done)).toEqual(['job.active', 'job.completed']);
    });

    it('a step record, a retry or a completion written again (its first answer lost) is recorded once, and the completion still projects the target state', async () => {
      const containerId = await runningContainer('gc-again');
      const store = p.worker.get(JobStore);
      const failure = { code: 'TEST', message: 'failed by the test', step: 'one' };
      const job = await noopOf(containerId);
      const count = async (action: string) =>
        (
          await p.ds.query(`SELECT count(*)::int AS n FROM audit_events WHERE job_id = $1 AND action = $2`, [
            job.id,
            action,
          ])
        )[0].n as number;
      const first = await store.claim(job.id, 1, job.id);
      expect(first.activated).toBe(true);
      // Each write twice, as WrittenBehind retries one whose commit landed but whose answer was lost.
      for (const durable of [false, true]) await store.stepDone(first.job!, 'one', {}, durable);
      await store.stepDone(first.job!, 'two');
      await store.waitingRetry(first.job!, failure, 1, 1_000, job.id);
      await store.waitingRetry((await store.load(job.id))!, failure, 1, 1_000, job.id);
      expect(await count('job.step.done')).toBe(2);
      expect(await count('job.retry')).toBe(1);

      // The next attempt's claim: its own records are its own (the same step again after a fresh retry
      // counts, as the next attempt's retry does).
      const second = await store.claim(job.id, 2, job.id);
      expect(second.activated).toBe(true);
      await store.stepDone(second.job!, 'one');
      await store.waitingRetry(second.job!, failure, 2, 1_000, job.id);
      expect(await count('job.step.done')).toBe(3);
      expect(await count('job.retry')).toBe(2);

      const third = await store.claim(job.id, 3, job.id);
      const outcome = {
        result: {},
        container: { id: containerId, status: 'stopped', ipAddress: null } as unknown as ContainerInfo,
      };
      await store.complete(third.job!, outcome);
      expect(
        await p.ds.query(`SELECT state, target_state FROM containers WHERE id = $1`, [containerId]),
      ).toEqual([{ state: 'stopped', target_state: 'stopped' }]);
      // Its recompute failed after the completion committed (left as the enqueue projected it); the
      // completion's retry finds the job completed, and projects the target state all the same.
      await p.ds.query(`UPDATE containers SET target_state = 'running' WHERE id = $1`, [containerId]);
      await store.complete(third.job!, outcome);
      expect(await p.ds.query(`SELECT target_state FROM containers WHERE id = $1`, [containerId])).toEqual([
        { target_state: 'stopped' },
      ]);
      expect(await count('job.completed')).toBe(1);
    });

    it("applies a completion's own changes once: the completion written again does not write them again", async () => {
      const containerId = await runningContainer('gc-apply');
      const store = p.worker.get(JobStore);
      const job = await noopOf(containerId);
      const { job: claimed } = await store.claim(job.id, 1, job.id);
      // Like a resize's: the container's limits as the handler found them once it ran.
      const outcome = {
        result: {},
        apply: async (m: EntityManager) => {
          await m.query(`UPDATE containers SET memory_bytes = $2 WHERE id = $1`, [
            containerId,
            48 * 1024 * 1024,
          ]);
        },
      };
      await store.complete(claimed!, outcome);
      // The container changes after that end (the next job of it); then the completion is written again
      // (its first commit's answer was lost): the job is completed already, its changes are not written again.
      await p.ds.query(`UPDATE containers SET memory_bytes = $2 WHERE id = $1`, [
        containerId,
        80 * 1024 * 1024,
      ]);
      await store.complete(claimed!, outcome);
      const [row] = await p.ds.query(`SELECT memory_bytes::float AS memory FROM containers WHERE id = $1`, [
        containerId,
      ]);
      expect(row.memory).toBe(80 * 1024 * 1024);
      const completions = await p.ds.query(
        `SELECT count(*)::int AS n FROM audit_events WHERE job_id = $1 AND action = 'job.completed'`,
        [job.id],
      );
      expect(completions).toEqual([{ n: 1 }]);
    });

    it("notifies a job's end with its row, and not its active mark", async () => {
      const job = (await enqueuer.submit({
        kind: 'system.noop',
        payload: { n: 7 },
        hostId: idleHost,
        principal,
      }))!;
      const listener = new Client({ connectionString: testConfig(p.env).database.url });
      const heard: string[] = [];
      listener.on('notification', (n) => {
        if (n.payload?.startsWith(job.id)) heard.push(n.payload.slice(job.id.length + 1));
      });
      await listener.connect();
      try {
        await listener.query('LISTEN berth_job');
        const store = p.worker.get(JobStore);
        const claimed = await store.claim(job.id, 1, job.id);
        expect(claimed.activated).toBe(true);
        await store.complete(claimed.job!, { result: { n: 7 } });
        for (const t0 = Date.now(); heard.length === 0 && Date.now() - t0 < 5_000;)
          await new Promise((r) => setTimeout(r, 10));
        await new Promise((r) => setTimeout(r, 100));
        expect(heard).toHaveLength(1);
        const [action, ...row] = heard[0].split(' ');
        expect(action).toBe('job.completed');
        expect(JSON.parse(row.join(' '))).toMatchObject({ id: job.id, state: 'completed', result: { n: 7 } });
      } finally {
        await listener.end();
      }
    });

    it('writes nothing for a container request whose target state changed after it was checked', async () => {
      const made = await p
        .http()
        .post('/v1/containers')
        .set(p.auth())
        .send({ name: 'gc-guard', template, cpus: 1, memoryBytes: 64 * 1024 * 1024, start: false });
      expect(made.status).toBe(202);
      expect((await waitJob(p, made.body.job.id)).state).toBe('completed');
      const id = made.body.container.id as string;
      const count = async () =>
        (await p.ds.query(`SELECT count(*)::int AS n FROM jobs WHERE container_id = $1`, [id]))[0].n;
      const before = await count();
      /** A request for this container as ContainersService.operate makes it. */
      const operation = (kind: 'container.start' | 'container.stop', targetState: string, expect: string) =>
        enqueuer.submit({
          kind,
          payload: { containerId: id, name: 'gc-guard' },
          hostId: made.body.container.hostId,
          containerId: id,
          principal,
          targetState,
          expectTargetState: expect,
        });
      const refused = await operation('container.start', 'running', 'paused');
      expect(refused).toBeNull();
      expect(await count()).toBe(before);
      const [row] = await p.ds.query(`SELECT target_state, job_seq FROM containers WHERE id = $1`, [id]);
      expect(row.target_state).toBe('stopped');

      // Two requests for one container at once: one job per container per statement, so the second is
      // written after the first, checked against the target state the first left.
      const [start, stop] = await Promise.all([
        operation('container.start', 'running', 'stopped'),
        operation('container.stop', 'stopped', 'running'),
      ]);
      const seqs = await p.ds.query(`SELECT id, container_seq FROM jobs WHERE id = ANY($1::uuid[])`, [
        [start!.id, stop!.id],
      ]);
      const seqOf = (jobId: string) => seqs.find((r: { id: string }) => r.id === jobId).container_seq;
      expect(seqOf(stop!.id)).toBe(seqOf(start!.id) + 1);
      expect(await xmins('jobs', [start!.id, stop!.id])).toHaveLength(2);
      for (const j of [start!.id, stop!.id]) expect((await waitJob(p, j)).state).toBe('completed');
      const [after] = await p.ds.query(`SELECT state, target_state FROM containers WHERE id = $1`, [id]);
      expect(after).toEqual({ state: 'stopped', target_state: 'stopped' });
    }, 60_000);

    it('checks an operation again when its container changed meanwhile; one that keeps changing gets 409', async () => {
      const [{ id }] = await p.ds.query(`SELECT id FROM containers WHERE name = 'gc-guard'`);
      const jobsOf = async () =>
        (await p.ds.query(`SELECT count(*)::int AS n FROM jobs WHERE container_id = $1`, [id]))[0].n;
      const submit = enqueuer.submit.bind(enqueuer);
      let calls = 0;
      try {
        // Every guarded write finds the target state changed (as if other requests kept winning).
        enqueuer.submit = async () => {
          calls++;
          return null;
        };
        const before = await jobsOf();
        const refused = await p.http().post(`/v1/containers/${id}/start`).set(p.auth()).send({});
        expect(refused.status).toBe(409);
        expect(refused.body.code).toBe('CONCURRENT_CHANGE');
        expect(calls).toBe(5);
        expect(await jobsOf()).toBe(before);

        // Another request changes the target state between this one's check and its write: the write is
        // refused by its guard, the check is made again on the new row, and the request is accepted.
        calls = 0;
        enqueuer.submit = async (input) => {
          if (++calls === 1)
            await p.ds.query(`UPDATE containers SET target_state = 'error' WHERE id = $1`, [id]);
          return submit(input);
        };
        const destroy = await p.http().delete(`/v1/containers/${id}`).set(p.auth());
        expect(destroy.status).toBe(202);
        expect(calls).toBe(2);
        expect(await jobsOf()).toBe(before + 1);
        expect((await waitJob(p, destroy.body.job.id)).state).toBe('completed');
      } finally {
        enqueuer.submit = submit;
      }
    }, 60_000);
  },
);
