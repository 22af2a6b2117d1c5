import { Queue, type JobType } from 'bullmq';
import { bullConnection, hostQueueName, type QueuedJobData } from '@berth/jobs';
import { OutboxRelay } from '../../apps/api/src/outbox/outbox.relay';
import { JobEnqueuer } from '../../apps/api/src/jobs/job-enqueuer';
import { describeKernel } from '@test/support/kernel';
import { testConfig } from '@test/support/config';
import { startPipeline, waitJob, type Pipeline } from '@test/support/pipeline';
import { jobEvents, until } from '@test/support/worker-process';

const ALL_STATES: JobType[] = [
  'completed',
  'failed',
  'active',
  'wait',
  'delayed',
  'prioritized',
  'waiting-children',
];

describeKernel(
  'outbox: a relay that dies between publish and delete',
  { root: true, programs: ['busybox', 'nsenter'] },
  () => {
    let p: Pipeline;
    let relay: OutboxRelay;
    let hostId: string;
    let queue: Queue<QueuedJobData>;

    beforeAll(async () => {
      p = await startPipeline('outbox');
      relay = p.api.get(OutboxRelay);
      [{ id: hostId }] = await p.ds.query(`SELECT id FROM hosts WHERE name = $1`, [p.hostName]);
      queue = new Queue(hostQueueName(hostId), {
        connection: bullConnection(testConfig(p.env).redis.url),
        prefix: p.env.BULLMQ_PREFIX,
      });
    }, 120_000);
    afterEach(() => (relay.afterPublish = undefined));
    afterAll(async () => {
      await queue?.resume().catch(() => undefined);
      await queue?.obliterate({ force: true }).catch(() => undefined);
      await queue?.close();
      await p?.close();
    }, 120_000);

    /** A system.noop job written the way the API writes every job: in a transaction, with its outbox row. */
    async function enqueueNoop(n: number): Promise<string> {
      const job = await p.ds.transaction((m) =>
        p.api.get(JobEnqueuer).enqueue(m, {
          kind: 'system.noop',
          payload: { n },
          hostId,
          principal: { keyId: 'test:outbox', tenantId: null, scopes: ['admin'], requestId: '' },
        }),
      );
      return job.id;
    }

    /** Every BullMQ job in the host queue, any state, that carries our job id. */
    async function bullJobsOf(jobId: string) {
      const all = await queue.getJobs(ALL_STATES, 0, -1);
      return all.filter((j) => j?.data?.jobId === jobId);
    }

    /** True once the job's outbox row is gone: the relay deletes a row after it published it. */
    async function outboxDone(jobId: string): Promise<boolean> {
      const rows = await p.ds.query(`SELECT 1 FROM outbox WHERE job_id = $1`, [jobId]);
      return rows.length === 0;
    }

    async function jobState(jobId: string): Promise<string | undefined> {
      return (await p.ds.query(`SELECT state FROM jobs WHERE id = $1`, [jobId]))[0]?.state;
    }

    async function executions(jobId: string) {
      const actions = (await jobEvents(p.ds, jobId)).map((e) => e.action);
      return {
        active: actions.filter((a) => a === 'job.active').length,
        completed: actions.filter((a) => a === 'job.completed').length,
      };
    }

    it('crash after the BullMQ add, job already ran: the republish is a no-op, one job, one execution', async () => {
      const t = { id: '' };
      let calls = 0;
      relay.afterPublish = async (row) => {
        if (row.job_id !== t.id) return;
        calls++;
        if (calls > 1) return;
        // The job is in BullMQ now and the worker runs it; the relay "dies" only after that, before it marks.
        await until('the job to complete', async () => (await jobState(row.job_id)) === 'completed');
        throw new Error('relay crashed between publish and mark');
      };
      const target = (t.id = await enqueueNoop(1));
      await until('the outbox row to be deleted after its publish', () => outboxDone(target));
      expect(calls).toBe(2);
      expect(await waitJob(p, target)).toMatchObject({ state: 'completed', result: { n: 1 } });
      const bull = await bullJobsOf(target);
      expect(bull.map((j) => j.id)).toEqual([target]);
      expect((await queue.getJob(target))?.data.jobId).toBe(target);
      expect(await executions(target)).toEqual({ active: 1, completed: 1 });
    }, 60_000);

    it('crash after the BullMQ add, job still waiting: the republish adds nothing, it runs once', async () => {
      await queue.pause();
      const t = { id: '' };
      let calls = 0;
      relay.afterPublish = (row) => {
        if (row.job_id !== t.id) return;
        calls++;
        if (calls === 1) throw new Error('relay crashed between publish and mark');
      };
      const target = (t.id = await enqueueNoop(2));
      await until('the outbox row to be deleted after its publish', () => outboxDone(target));
      expect(calls).toBe(2);
      // Published twice, queued once: BullMQ keeps one job per jobId.
      expect((await bullJobsOf(target)).map((j) => j.id)).toEqual([target]);
      expect(await queue.getJobCountByTypes('wait')).toBe(1);
      await queue.resume();
      expect(await waitJob(p, target)).toMatchObject({ state: 'completed' });
      expect(await executions(target)).toEqual({ active: 1, completed: 1 });
    }, 60_000);

    it('a drain waiting on Redis holds no transaction open (the audit trail and vacuum would wait for it)', async () => {
      const target = await enqueueNoop(4);
      expect(await waitJob(p, target)).toMatchObject({ state: 'completed' });
      await until('the outbox row to be deleted after its publish', () => outboxDone(target));
      // A row only the drain sees (as one another API process committed): the job's row again.
      await p.ds.query(
        `INSERT INTO outbox (queue, job_name, job_id, payload) VALUES ($1, 'system.noop', $2, $3)`,
        [
          hostQueueName(hostId),
          target,
          JSON.stringify({ jobId: target, kind: 'system.noop', payload: { n: 4 } }),
        ],
      );
      let release!: () => void;
      const released = new Promise<void>((r) => (release = r));
      let held = false;
      relay.afterPublish = async (row) => {
        if (row.job_id !== target) return;
        held = true;
        await released; // as a publish that waits for Redis
      };
      relay.kick();
      try {
        await until('the drain to be held after its publish', async () => held);
        const open = await p.ds.query(
          // A transaction left open while its process waits for something else (a statement running at
          // this moment, e.g. the worker's claim of the republished job, is not one).
          `SELECT pid, state, backend_xid::text AS xid FROM pg_stat_activity
            WHERE datname = current_database() AND pid <> pg_backend_pid()
              AND state LIKE 'idle in transaction%'`,
        );
        expect(open).toEqual([]);
      } finally {
        release();
      }
      await until('the outbox row to be deleted after its publish', () => outboxDone(target));
      expect(await executions(target)).toEqual({ active: 1, completed: 1 });
    }, 60_000);

    it('a republish after Redis dropped the finished job is skipped by the worker: Postgres is the record', async () => {
      const target = await enqueueNoop(3);
      expect(await waitJob(p, target)).toMatchObject({ state: 'completed' });
      await until('the outbox row to be deleted after its publish', () => outboxDone(target));
      // Redis forgot the job (removeOnComplete) and the row is back (e.g. a restored backup).
      await (await queue.getJob(target))!.remove();
      await p.ds.query(
        `INSERT INTO outbox (queue, job_name, job_id, payload) VALUES ($1, 'system.noop', $2, $3)`,
        [
          hostQueueName(hostId),
          target,
          JSON.stringify({ jobId: target, kind: 'system.noop', payload: { n: 3 } }),
        ],
      );
      relay.kick();
      const again = await until(
        'the re-added BullMQ job to be processed',
        async () => {
          const j = await queue.getJob(target);
          return j?.finishedOn ? j : undefined;
        },
        30_000,
      );
      expect(again.returnvalue).toEqual({ skipped: 'completed' });
      expect(await executions(target)).toEqual({ active: 1, completed: 1 });
    }, 60_000);
  },
);
