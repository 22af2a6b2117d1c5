import { JobEnqueuer } from '../../apps/api/src/jobs/job-enqueuer';
import type { Principal } from '../../apps/api/src/auth/principal';
import { describeKernel } from '@test/support/kernel';
import { startPipeline, waitJob, type Pipeline } from '@test/support/pipeline';
import { sleep, startCluster, until, type Cluster } from '@test/support/worker-process';
import { Queue } from 'bullmq';
import Redis from 'ioredis';
import { bullConnection, hostQueueName } from '@berth/jobs';
import { testConfig } from '@test/support/config';

const CONCURRENCY = 2;
const PREFETCH = 2;
const JOBS = 8;
const HOLD_MS = 400;

/**
 * The worker's slots (WORKER_CONCURRENCY) and its claims ahead (WORKER_PREFETCH), with a real worker, Redis
 * and Postgres: jobs that hold their slot (`system.noop` with `holdMs`) run at most CONCURRENCY at once,
 * while up to PREFETCH more are already claimed and say that they wait for a slot.
 */
describeKernel('worker slots: concurrency and claims ahead', { root: true }, () => {
  let p: Pipeline;
  let hostId: string;
  const principal: Principal = { keyId: 'test:slots', tenantId: null, scopes: ['admin'], requestId: '' };

  beforeAll(async () => {
    p = await startPipeline('slots', {
      WORKER_CONCURRENCY: String(CONCURRENCY),
      WORKER_PREFETCH: String(PREFETCH),
    });
    [{ id: hostId }] = await p.ds.query(`SELECT id FROM hosts WHERE name = $1`, [p.hostName]);
  }, 120_000);
  afterAll(() => p?.close(), 60_000);

  /** The most intervals open at one instant ([from, to) in ms). */
  const maxOverlap = (intervals: [number, number][]) => {
    const points = intervals.flatMap(([from, to]) => [
      { t: from, d: 1 },
      { t: to, d: -1 },
    ]);
    points.sort((a, b) => a.t - b.t || a.d - b.d);
    let open = 0;
    let most = 0;
    for (const pt of points) most = Math.max(most, (open += pt.d));
    return most;
  };

  /** Submits `count` slot-holding no-op jobs at once; their ids. */
  const submit = async (count: number) =>
    (
      await Promise.all(
        Array.from({ length: count }, (_, n) =>
          p.api
            .get(JobEnqueuer)
            .submit({ kind: 'system.noop', payload: { n, holdMs: HOLD_MS }, hostId, principal }),
        ),
      )
    ).map((j) => j!.id);

  /**
   * Per job: claimed (its `job.active` event, Postgres's clock) and the handler's run (the worker's clock;
   * one machine, one clock). A job is held by the worker from its claim to the end of its run.
   */
  const timeline = async (ids: string[]) => {
    const ended = await Promise.all(ids.map((id) => waitJob(p, id, 60)));
    for (const j of ended) expect(j).toMatchObject({ state: 'completed' });
    const claims: { job_id: string; at: Date }[] = await p.ds.query(
      `SELECT job_id, occurred_at AS at FROM audit_events WHERE action = 'job.active' AND job_id = ANY($1::uuid[])`,
      [ids],
    );
    expect(claims).toHaveLength(ids.length);
    return ended.map((j) => {
      const r = j.result as { ranFrom: string; ranTo: string };
      const claimed = claims.find((c) => c.job_id === j.id)!.at.getTime();
      return { claimed, ranFrom: Date.parse(r.ranFrom), ranTo: Date.parse(r.ranTo) };
    });
  };

  it('runs at most WORKER_CONCURRENCY jobs at once, with WORKER_PREFETCH more claimed and waiting', async () => {
    const ids = await submit(JOBS);
    // While they run: the progress stages jobs show.
    const stages = new Set<string>();
    const watching = (async () => {
      for (let i = 0; i < 1_000; i++) {
        const rows: { state: string; stage: string | null }[] = await p.ds.query(
          `SELECT state, progress->>'stage' AS stage FROM jobs WHERE id = ANY($1::uuid[])`,
          [ids],
        );
        for (const r of rows) if (r.stage) stages.add(`${r.state}:${r.stage}`);
        if (rows.every((r) => r.state === 'completed')) return;
        await new Promise((r) => setTimeout(r, 20));
      }
    })();
    const t = await timeline(ids);
    await watching;

    // Execution: the handlers' runs never overlap more than the slots (and do fill them).
    expect(maxOverlap(t.map((x) => [x.ranFrom, x.ranTo]))).toBe(CONCURRENCY);
    // Claims ahead: jobs were held (claimed, not yet run to the end) beyond the slots, up to both together;
    // those claimed ahead waited about one hold for their slot, and said so meanwhile…
    expect(maxOverlap(t.map((x) => [x.claimed, x.ranTo]))).toBe(CONCURRENCY + PREFETCH);
    expect(t.filter((x) => x.ranFrom - x.claimed > HOLD_MS / 2).length).toBeGreaterThanOrEqual(PREFETCH);
    expect(stages).toContain('active:waiting for a worker slot');
    // …and that it runs, once it does (a handler without progress of its own would show the wait till its end).
    expect(stages).toContain('active:running');
    // The audit trail has each transition once per job: queued, active, completed.
    const events: { job_id: string; action: string }[] = await p.ds.query(
      `SELECT job_id, action FROM audit_events WHERE job_id = ANY($1::uuid[]) ORDER BY id`,
      [ids],
    );
    for (const id of ids)
      expect(events.filter((e) => e.job_id === id).map((e) => e.action)).toEqual([
        'job.queued',
        'job.active',
        'job.completed',
      ]);
  }, 60_000);

  it('with WORKER_PREFETCH=0 claims no job ahead of a free slot', async () => {
    await p.close();
    p = await startPipeline('slots0', { WORKER_CONCURRENCY: String(CONCURRENCY), WORKER_PREFETCH: '0' });
    [{ id: hostId }] = await p.ds.query(`SELECT id FROM hosts WHERE name = $1`, [p.hostName]);
    const t = await timeline(await submit(4));
    expect(maxOverlap(t.map((x) => [x.ranFrom, x.ranTo]))).toBe(CONCURRENCY);
    expect(maxOverlap(t.map((x) => [x.claimed, x.ranTo]))).toBe(CONCURRENCY);
    for (const x of t) expect(x.ranFrom - x.claimed).toBeLessThan(HOLD_MS / 2);
  }, 120_000);
});

describeKernel('worker slots: shutdown hands back the jobs claimed ahead', { root: true }, () => {
  let c: Cluster;
  const principal: Principal = { keyId: 'test:slots-stop', tenantId: null, scopes: ['admin'], requestId: '' };
  beforeAll(async () => {
    c = await startCluster('slotsstop', { WORKER_CONCURRENCY: '1', WORKER_PREFETCH: '2' });
  }, 120_000);
  afterAll(() => c?.close(), 60_000);

  /** The job rows: state and progress stage. */
  const rows = async (ids: string[]) =>
    (await c.ds.query(`SELECT id, state, progress->>'stage' AS stage FROM jobs WHERE id = ANY($1::uuid[])`, [
      ids,
    ])) as { id: string; state: string; stage: string | null }[];

  let gates = 0;
  /**
   * A worker with one slot, three slot-holding jobs: one running, two claimed ahead and waiting. Each job
   * holds its slot until the test opens its gate (`open(id)`; `openAll()`), however slow the machine.
   */
  async function oneRunningTwoWaiting(env: Record<string, string> = {}) {
    const w = await c.startWorker(env);
    const hostId = await c.hostId();
    const enqueuer = c.api.get(JobEnqueuer);
    const ids: string[] = [];
    const gateOf = new Map<string, string>();
    // One after the other, so that the first one is the one running.
    for (let n = 0; n < 3; n++) {
      const gate = `slots-${++gates}`;
      const id = (await enqueuer.submit({
        kind: 'system.noop',
        payload: { n, holdMs: 60_000, gate },
        hostId,
        principal,
      }))!.id;
      ids.push(id);
      gateOf.set(id, gate);
    }
    // All three claimed, two of them waiting for the one slot.
    await until(
      'three jobs claimed, two waiting for the slot',
      async () => {
        const r = await rows(ids);
        return r.filter((x) => x.state === 'active' && x.stage === 'waiting for a worker slot').length ===
          2 && r.every((x) => x.state === 'active')
          ? r
          : undefined;
      },
      20_000,
    );
    const waiting = (await rows(ids)).filter((x) => x.stage === 'waiting for a worker slot').map((x) => x.id);
    const open = (id: string) => c.openNoopGate(gateOf.get(id)!);
    return {
      w,
      ids,
      waiting,
      running: ids.find((id) => !waiting.includes(id))!,
      open,
      openAll: () => ids.forEach(open),
    };
  }

  /** Waits for each job's end through the API; each must be completed. */
  async function allCompleted(ids: string[]) {
    for (const id of ids) {
      const res = await c.http().get(`/v1/jobs/${id}/wait?timeout=30`).set(c.auth());
      expect(res.body).toMatchObject({ state: 'completed' });
    }
  }

  /** The audit actions of each job, in order. */
  async function actionsOf(ids: string[]) {
    const events: { job_id: string; action: string }[] = await c.ds.query(
      `SELECT job_id, action FROM audit_events WHERE job_id = ANY($1::uuid[]) ORDER BY id`,
      [ids],
    );
    return (id: string) => events.filter((e) => e.job_id === id).map((e) => e.action);
  }

  it('SIGTERM: the running job finishes and is recorded; the waiting ones are not started, are cancellable, and run on the next worker', async () => {
    const { w, ids, waiting, running, open } = await oneRunningTwoWaiting();
    // The running job lets go of its slot only once the shutdown has handed back the two waiting ones.
    w.proc.kill('SIGTERM');
    await until(
      'both waiting jobs handed back',
      async () => (w.output().match(/handed back at shutdown before it started/g) ?? []).length === 2,
    );
    open(running);
    await w.exited;

    const after = await rows(ids);
    expect(after.find((x) => x.id === running)!.state).toBe('completed');
    const queue = await c.queue();
    for (const id of waiting) {
      // Not run: still `active` in Postgres (claimed), and back in BullMQ's queue, not held by anybody.
      expect(after.find((x) => x.id === id)!.state).toBe('active');
      expect(['delayed', 'waiting', 'prioritized']).toContain(await (await queue.getJob(id))!.getState());
    }

    // Handed back, not started: still cancellable while no worker has it.
    const [gone, kept] = waiting;
    const cancel = (id: string) => c.http().post(`/v1/jobs/${id}/cancel`).set(c.auth()).send({});
    expect((await cancel(gone)).body).toMatchObject({ state: 'cancelled' });

    // The next worker has a free slot for the other one: claimed again, it starts at once, and from its
    // claim on it is no longer "waiting" (nor cancellable) while it runs.
    const w2 = await c.startWorker({ WORKER_CONCURRENCY: '2' });
    await until('the handed-back job claimed again', async () => {
      const [{ n }] = await c.ds.query(
        `SELECT count(*)::int AS n FROM audit_events WHERE job_id = $1 AND action = 'job.active'`,
        [kept],
      );
      return n === 2;
    });
    const refused = await cancel(kept);
    expect({ status: refused.status, code: refused.body.code }).toEqual({
      status: 409,
      code: 'JOB_NOT_CANCELLABLE',
    });
    expect((await rows([kept]))[0].state).toBe('active'); // refused while it runs, not for having ended
    open(kept);
    await allCompleted([running, kept]);
    const of = await actionsOf(ids);
    expect(of(running)).toEqual(['job.queued', 'job.active', 'job.completed']);
    // Claimed by both workers, run and completed once.
    expect(of(kept)).toEqual(['job.queued', 'job.active', 'job.active', 'job.completed']);
    // Cancelled while handed back: the next worker let it go without running it.
    expect(of(gone)).toEqual(['job.queued', 'job.active', 'job.cancelled']);
    expect((await c.ds.query(`SELECT result FROM jobs WHERE id = $1`, [gone]))[0].result).toBeNull();
    await w2.stop();
  }, 90_000);

  it('SIGTERM with a job running past the shutdown grace: the worker exits at the grace, and the job runs on the next worker', async () => {
    const HOLD = 10_000;
    const w = await c.startWorker({ SHUTDOWN_GRACE_MS: '500', WORKER_LOCK_MS: '2000' });
    const job = await c.api
      .get(JobEnqueuer)
      .submit({ kind: 'system.noop', payload: { n: 99, holdMs: HOLD }, hostId: await c.hostId(), principal });
    await until('the long job running', async () => {
      const [r] = await rows([job!.id]);
      return r.state === 'active' && r.stage !== 'waiting for a worker slot';
    });
    const t0 = Date.now();
    await w.stop();
    // Not the rest of the job's 10 s: the grace, and the rest of the shutdown.
    expect(Date.now() - t0).toBeLessThan(HOLD / 2);
    expect(w.output()).toMatch(/shutdown grace over with jobs still running/);
    expect((await rows([job!.id]))[0].state).toBe('active');

    // Its BullMQ job stalls (its lock lapses): the next worker runs it to its end, recorded once.
    const w2 = await c.startWorker({ WORKER_LOCK_MS: '2000' });
    const res = await c.http().get(`/v1/jobs/${job!.id}/wait?timeout=60`).set(c.auth());
    expect(res.body).toMatchObject({ state: 'completed', result: { n: 99 } });
    const of = await actionsOf([job!.id]);
    expect(of(job!.id)).toEqual(['job.queued', 'job.active', 'job.active', 'job.completed']);
    await w2.stop();
  }, 90_000);

  it('a job that keeps losing its worker is recorded as failed past WORKER_MAX_STALLED, not run again for ever', async () => {
    const env = { WORKER_LOCK_MS: '1000', WORKER_MAX_STALLED: '1' };
    let w = await c.startWorker(env);
    const job = (await c.api.get(JobEnqueuer).submit({
      kind: 'system.noop',
      payload: { n: 77, holdMs: 30_000 },
      hostId: await c.hostId(),
      principal,
    }))!;
    const runs = async () =>
      (
        await c.ds.query(
          `SELECT count(*)::int AS n FROM audit_events WHERE job_id = $1 AND action = 'job.active'`,
          [job.id],
        )
      )[0].n as number;
    // Its worker dies mid-run twice: the first loss runs it again, the second is one too many.
    await until('the first run', async () => (await runs()) === 1);
    await w.kill();
    w = await c.startWorker(env);
    await until('the run again after the first loss', async () => (await runs()) === 2, 20_000);
    await w.kill();
    w = await c.startWorker(env);
    const res = await c.http().get(`/v1/jobs/${job.id}/wait?timeout=30`).set(c.auth());
    expect(res.body).toMatchObject({ state: 'failed', error: { code: 'WORKER_LOST' } });
    expect(res.body.error.message).toMatch(/more than 1 times/);
    const of = await actionsOf([job.id]);
    expect(of(job.id)).toEqual(['job.queued', 'job.active', 'job.active', 'job.failed']);
    // And a worker started later leaves it failed (its start-up sweep does not requeue it).
    await w.stop();
    w = await c.startWorker(env);
    expect((await rows([job.id]))[0].state).toBe('failed');
    await w.stop();
  }, 90_000);

  it('a job waiting for a slot can be cancelled and never runs; a running one cannot', async () => {
    const { w, ids, waiting, running, openAll } = await oneRunningTwoWaiting();
    const cancel = (id: string) => c.http().post(`/v1/jobs/${id}/cancel`).set(c.auth()).send({});
    const refused = await cancel(running);
    expect(refused.status).toBe(409);
    expect(refused.body).toMatchObject({ code: 'JOB_NOT_CANCELLABLE' });
    const [gone, kept] = waiting;
    const cancelled = await cancel(gone);
    expect(cancelled.status).toBe(200);
    expect(cancelled.body).toMatchObject({ id: gone, state: 'cancelled' });

    openAll();
    await allCompleted([running, kept]);
    const queue = await c.queue();
    const bull = await until('the worker to let go of the cancelled job', async () => {
      const j = await queue.getJob(gone);
      return j && (await j.getState()) === 'completed' ? j : undefined;
    });
    expect(bull.returnvalue).toEqual({ skipped: 'cancelled' });
    const [row] = await c.ds.query(`SELECT state, result FROM jobs WHERE id = $1`, [gone]);
    expect(row).toEqual({ state: 'cancelled', result: null }); // never ran
    const of = await actionsOf(ids);
    expect(of(gone)).toEqual(['job.queued', 'job.active', 'job.cancelled']);
    expect(of(kept)).toEqual(['job.queued', 'job.active', 'job.completed']);
    await w.stop();
  }, 90_000);

  it('past the grace, a stopping worker holds its data root until it exits: a worker started meanwhile is refused', async () => {
    const w = await c.startWorker({ SHUTDOWN_GRACE_MS: '500', WORKER_LOCK_MS: '2000' });
    const hostId = await c.hostId();
    const job = await c.api
      .get(JobEnqueuer)
      .submit({ kind: 'system.noop', payload: { n: 98, holdMs: 10_000 }, hostId, principal });
    await until('the long job running', async () => {
      const [r] = await rows([job!.id]);
      return r.state === 'active' && r.stage !== 'waiting for a worker slot';
    });
    // The host's offline mark, at the end of the shutdown, waits for this row lock: the process lives on
    // past the grace with its job still running.
    const lock = c.ds.createQueryRunner();
    await lock.connect();
    try {
      await lock.startTransaction();
      await lock.query(`SELECT 1 FROM hosts WHERE id = $1 FOR UPDATE`, [hostId]);
      w.proc.kill('SIGTERM');
      await until('the grace over', async () => /shutdown grace over/.test(w.output()));
      await expect(c.startWorker({ WORKER_LOCK_MS: '2000' })).rejects.toThrow(
        new RegExp(`data root \\S+ is in use by another process \\(the worker, pid ${w.pid}\\)`),
      );
      expect(w.proc.exitCode).toBeNull();
      expect(w.proc.signalCode).toBeNull();
    } finally {
      await lock.rollbackTransaction();
      await lock.release();
    }
    await w.exited;
    // Once it is gone, the next worker takes the data root and runs the job to its end, recorded once.
    const w2 = await c.startWorker({ WORKER_LOCK_MS: '2000' });
    const res = await c.http().get(`/v1/jobs/${job!.id}/wait?timeout=60`).set(c.auth());
    expect(res.body).toMatchObject({ state: 'completed', result: { n: 98 } });
    await w2.stop();
  }, 90_000);

  it('a job claimed ahead whose claim a crash of PostgreSQL took back runs once its slot frees (not let go as cancelled)', async () => {
    const { w, ids, waiting, running, openAll } = await oneRunningTwoWaiting();
    const [lost, kept] = waiting;
    // The claim and the waiting notice are relaxed commits: what crash recovery restores when both are lost
    // (the shared PostgreSQL cannot be crashed here; its `job.active` event stays in the trail).
    await c.ds.query(
      `UPDATE jobs SET state = 'queued', attempts = 0, started_at = NULL, progress = NULL WHERE id = $1`,
      [lost],
    );
    // Let go as cancelled, its BullMQ job would end while PostgreSQL says `queued`: nothing would run it.
    openAll();
    await allCompleted(ids);
    const of = await actionsOf(ids);
    expect(of(lost)).toEqual(['job.queued', 'job.active', 'job.active', 'job.completed']);
    for (const id of [running, kept]) expect(of(id)).toEqual(['job.queued', 'job.active', 'job.completed']);
    await w.stop();
  }, 90_000);

  it('the start-up sweep puts back in the queue a pending job whose BullMQ job has ended, and leaves the others', async () => {
    // No worker runs (one ran, so the host is known): two jobs wait in BullMQ; one's BullMQ job then goes
    // (as one completed as "skipped" and removed since would), while PostgreSQL still says `queued`.
    await (await c.startWorker()).stop();
    const hostId = await c.hostId();
    const enqueuer = c.api.get(JobEnqueuer);
    const submit = async (n: number) =>
      (await enqueuer.submit({ kind: 'system.noop', payload: { n }, hostId, principal }))!.id;
    const [gone, waiting] = [await submit(31), await submit(32)];
    const queue = await c.queue();
    const bullJob = async (id: string) => {
      const j = await queue.getJob(id);
      return j ? { j, state: await j.getState() } : undefined;
    };
    await until('both published', async () =>
      (await bullJob(gone)) && (await bullJob(waiting)) ? true : undefined,
    );
    await (await queue.getJob(gone))!.remove();

    const w = await c.startWorker();
    await allCompleted([gone, waiting]);
    const of = await actionsOf([gone, waiting]);
    expect(of(gone)).toEqual(['job.queued', 'job.requeued', 'job.active', 'job.completed']);
    expect(of(waiting)).toEqual(['job.queued', 'job.active', 'job.completed']);
    const [requeued] = await c.ds.query(
      `SELECT data FROM audit_events WHERE job_id = $1 AND action = 'job.requeued'`,
      [gone],
    );
    expect(requeued.data).toMatchObject({ bullJobId: gone, nextBullJobId: `${gone}-k1` });
    expect(requeued.data.reason).toMatch(/is unknown but its end was not recorded/);
    await w.stop();
  }, 90_000);

  it('a job lost while it waited for a slot does not count as lost mid-run: past WORKER_MAX_STALLED it is requeued, not failed', async () => {
    // No loss allowed: the first one fails the job that was running, not those that only waited behind it
    // (BullMQ counts theirs too: behind a job that keeps killing its worker they would fail unrun).
    const env = { WORKER_MAX_STALLED: '0' };
    const { w, ids, waiting, running, openAll } = await oneRunningTwoWaiting(env);
    await w.kill();
    const w2 = await c.startWorker(env);
    openAll();
    const ended = async (id: string) =>
      (await c.http().get(`/v1/jobs/${id}/wait?timeout=30`).set(c.auth())).body as {
        state: string;
        error?: { code: string };
      };
    expect(await ended(running)).toMatchObject({ state: 'failed', error: { code: 'WORKER_LOST' } });
    for (const id of waiting) expect(await ended(id)).toMatchObject({ state: 'completed' });
    const of = await actionsOf(ids);
    expect(of(running)).toEqual(['job.queued', 'job.active', 'job.failed']);
    for (const id of waiting)
      expect(of(id)).toEqual(['job.queued', 'job.active', 'job.requeued', 'job.active', 'job.completed']);
    await w2.stop();
  }, 90_000);

  it('a running worker also puts back in the queue a pending job whose BullMQ job is gone (a write Redis lost)', async () => {
    const w = await c.startWorker({
      WORKER_CONCURRENCY: '1',
      WORKER_PREFETCH: '0',
      WORKER_SWEEP_INTERVAL_MS: '1000',
    });
    const hostId = await c.hostId();
    const enqueuer = c.api.get(JobEnqueuer);
    const submit = async (payload: { n: number; holdMs?: number; gate?: string }) =>
      (await enqueuer.submit({ kind: 'system.noop', payload, hostId, principal }))!.id;
    // The one slot held: the next job waits in BullMQ's queue, published.
    const holder = await submit({ n: 41, holdMs: 60_000, gate: 'sweep-hold' });
    await until('the holder running', async () => (await rows([holder]))[0].state === 'active');
    const lost = await submit({ n: 42 });
    const queue = await c.queue();
    const bull = await until('the job published', async () => queue.getJob(lost));
    await bull.remove();
    await until(
      'the lost job requeued by the running worker',
      async () => (await actionsOf([lost]))(lost).includes('job.requeued'),
      15_000,
    );
    c.openNoopGate('sweep-hold');
    await allCompleted([holder, lost]);
    const of = await actionsOf([holder, lost]);
    expect(of(lost)).toEqual(['job.queued', 'job.requeued', 'job.active', 'job.completed']);
    // The job it ran meanwhile (its BullMQ job active, then its end written behind) was left alone.
    expect(of(holder)).toEqual(['job.queued', 'job.active', 'job.completed']);
    await w.stop();
  }, 90_000);

  it('SIGKILL with jobs claimed ahead: after a restart every job runs to its end and is completed once', async () => {
    const { w, ids, openAll } = await oneRunningTwoWaiting();
    await w.kill();
    expect((await rows(ids)).every((x) => x.state === 'active')).toBe(true);
    // The dead worker's BullMQ jobs are stalled (their locks expire): the next worker takes all three again.
    const w2 = await c.startWorker();
    openAll();
    await allCompleted(ids);
    const of = await actionsOf(ids);
    for (const id of ids) {
      expect(of(id).filter((a) => a === 'job.completed')).toHaveLength(1);
      expect(of(id).filter((a) => a === 'job.failed')).toHaveLength(0);
    }
    await w2.stop();
  }, 90_000);
});

describeKernel('worker: a job handed out again while it still runs', { root: true }, () => {
  let p: Pipeline;
  let hostId: string;
  const principal: Principal = { keyId: 'test:lapse', tenantId: null, scopes: ['admin'], requestId: '' };

  // Stalled jobs are looked for every WORKER_LOCK_MS: a lapsed lock is noticed within a second.
  beforeAll(async () => {
    p = await startPipeline('lapse', { WORKER_LOCK_MS: '1000' });
    [{ id: hostId }] = await p.ds.query(`SELECT id FROM hosts WHERE name = $1`, [p.hostName]);
  }, 120_000);
  afterAll(() => p?.close(), 60_000);

  /** The job's audit actions, in order. */
  const jobActions = async (id: string) =>
    (
      (await p.ds.query(`SELECT action FROM audit_events WHERE job_id = $1 ORDER BY id`, [id])) as {
        action: string;
      }[]
    ).map((e) => e.action);

  /** The copy BullMQ handed out, looking again once the run ended, found the job completed: let go unrun. */
  async function expectCopyLetGo(id: string) {
    const config = testConfig(p.env);
    const queue = new Queue(hostQueueName(hostId), {
      connection: bullConnection(config.redis.url),
      prefix: config.redis.bullPrefix,
    });
    try {
      const bull = await until('the copy to be let go', async () => {
        const j = await queue.getJob(id);
        return j && (await j.getState()) === 'completed' && j.returnvalue ? j : undefined;
      });
      expect(bull.returnvalue).toEqual({ skipped: 'completed' });
    } finally {
      await queue.close();
    }
  }

  /** Its BullMQ lock lapses (as after an event-loop or Redis stall): BullMQ's stalled check hands it out again. */
  async function lapseLock(id: string) {
    const config = testConfig(p.env);
    const redis = new Redis(config.redis.url);
    try {
      expect(await redis.del(`${config.redis.bullPrefix}:${hostQueueName(hostId)}:${id}:lock`)).toBe(1);
    } finally {
      redis.disconnect();
    }
  }

  it('runs it once: the copy waits for the run in progress instead of running beside it', async () => {
    const job = await p.api
      .get(JobEnqueuer)
      .submit({ kind: 'system.noop', payload: { n: 7, holdMs: 3_000 }, hostId, principal });
    const id = job!.id;
    const actions = () => jobActions(id);
    await until('the job to be claimed', async () =>
      (await actions()).includes('job.active') ? true : undefined,
    );
    // The lock lapses (as after an event-loop or Redis stall): BullMQ's stalled check hands the job out again.
    await lapseLock(id);
    expect((await waitJob(p, id)).state).toBe('completed');
    expect(await actions()).toEqual(['job.queued', 'job.active', 'job.completed']);
    // The copy, looking again once the run ended, finds the job completed and lets it go unrun.
    await expectCopyLetGo(id);
    expect(await actions()).toEqual(['job.queued', 'job.active', 'job.completed']);
  }, 60_000);

  it('runs it once when its end is still being written: the copy waits for that end, not only for the handler', async () => {
    // A trigger holds the job's completion back (a deadlock's SQLSTATE: retried, not refused) until the
    // test drops it; a sequence counts the completions it held back.
    const hold = `berth_hold_end_${process.pid}`;
    await p.ds.query(`CREATE SEQUENCE ${hold}`);
    await p.ds.query(`CREATE FUNCTION ${hold}() RETURNS trigger LANGUAGE plpgsql AS $$
      BEGIN PERFORM nextval('${hold}');
        RAISE EXCEPTION 'completion held back by the test' USING ERRCODE = '40P01'; END $$`);
    await p.ds.query(`CREATE TRIGGER ${hold} BEFORE UPDATE ON jobs FOR EACH ROW
      WHEN (NEW.state = 'completed' AND NEW.params->>'n' = '-4747') EXECUTE FUNCTION ${hold}()`);
    try {
      const job = await p.api
        .get(JobEnqueuer)
        .submit({ kind: 'system.noop', payload: { n: -4747, holdMs: 1_500 }, hostId, principal });
      const id = job!.id;
      const actions = () => jobActions(id);
      await until('the job to be claimed', async () =>
        (await actions()).includes('job.active') ? true : undefined,
      );
      // Its lock lapses while it runs: BullMQ hands out a copy, which waits while the first run goes on.
      await lapseLock(id);
      // The handler returned; its end is held back. The copy looks again every second meanwhile.
      await until(
        'the completion to be held back',
        async () => ((await p.ds.query(`SELECT is_called FROM ${hold}`))[0].is_called ? true : undefined),
        10_000,
      );
      await sleep(3_000);
      expect(await actions()).toEqual(['job.queued', 'job.active']);
      await p.ds.query(`DROP TRIGGER ${hold} ON jobs`);
      expect((await waitJob(p, id)).state).toBe('completed');
      await expectCopyLetGo(id);
      expect(await actions()).toEqual(['job.queued', 'job.active', 'job.completed']);
    } finally {
      await p.ds.query(`DROP TRIGGER IF EXISTS ${hold} ON jobs`);
      await p.ds.query(`DROP FUNCTION IF EXISTS ${hold}()`);
      await p.ds.query(`DROP SEQUENCE IF EXISTS ${hold}`);
    }
  }, 60_000);
});
