import { readdirSync, rmSync, statfsSync } from 'node:fs';
import { join } from 'node:path';
import { JobEnqueuer } from '../../apps/api/src/jobs/job-enqueuer';
import { describeKernel } from '@test/support/kernel';
import {
  importBusybox,
  jobEvents,
  sleep,
  startCluster,
  until,
  type Cluster,
  type WorkerProcess,
} from '@test/support/worker-process';

const MiB = 1024 * 1024;
const TiB = 1024 * 1024 * MiB;
const OFFLINE_AFTER_MS = 2_000;

describeKernel('placement and host liveness', { root: true, programs: ['busybox', 'nsenter'] }, () => {
  let c: Cluster;
  let w: WorkerProcess;
  let hostId: string;
  const template = `bb-place-${process.pid}`;
  const small = { template, cpus: 0.1, memoryBytes: 32 * MiB, diskBytes: 64 * MiB, pidsMax: 64 };
  type HostView = { id: string; capacity: { diskBytes: number } };
  let n = 0;
  const name = () => `place-${n++}-${process.pid}`;

  beforeAll(async () => {
    c = await startCluster('place', { HOST_OFFLINE_AFTER_MS: String(OFFLINE_AFTER_MS) });
    w = await c.startWorker();
    hostId = await c.hostId();
    await importBusybox(c, template, hostId);
  }, 180_000);
  afterAll(() => c?.close(), 120_000);

  const create = (body: object) => c.http().post('/v1/containers').set(c.auth()).send(body);
  const wait = async (jobId: string) =>
    (await c.http().get(`/v1/jobs/${jobId}/wait?timeout=60`).set(c.auth())).body;
  const myHost = async () =>
    ((await c.http().get('/v1/hosts').set(c.auth())).body as { id: string }[]).find(
      (h) => h.id === hostId,
    ) as { id: string; state: string; draining: boolean; lastHeartbeatAt: string };

  async function counts() {
    const [r] = await c.ds.query(
      `SELECT (SELECT count(*) FROM containers)::int AS containers, (SELECT count(*) FROM jobs)::int AS jobs,
                (SELECT count(*) FROM outbox)::int AS outbox`,
    );
    return r;
  }

  /** A refused create: 503 problem NO_CAPACITY whose detail says why, and no row written anywhere. */
  async function expectRefused(body: object, why: RegExp) {
    const before = await counts();
    const res = await create({ name: name(), ...small, ...body });
    expect(res.status).toBe(503);
    expect(res.headers['content-type']).toMatch(/application\/problem\+json/);
    expect(res.body.code).toBe('NO_CAPACITY');
    expect(`${res.body.detail} ${JSON.stringify(res.body.reasons ?? [])}`).toMatch(why);
    expect(await counts()).toEqual(before);
    return res.body;
  }

  /** A create no host could ever take: 422 EXCEEDS_HOST_CAPACITY with each host's size, nothing written. */
  async function expectTooLarge(body: object, why: RegExp) {
    const before = await counts();
    const res = await create({ name: name(), ...small, ...body });
    expect({ status: res.status, code: res.body.code }).toEqual({
      status: 422,
      code: 'EXCEEDS_HOST_CAPACITY',
    });
    expect(`${res.body.detail} ${JSON.stringify(res.body.reasons ?? [])}`).toMatch(why);
    expect(await counts()).toEqual(before);
    return res.body;
  }

  it("a host's disk capacity is its storage pool's, not the filesystem the pool's image sits on", async () => {
    const host = ((await c.http().get('/v1/hosts').set(c.auth())).body as HostView[]).find(
      (h) => h.id === hostId,
    )!;
    const pool = statfsSync(join(c.dataRoot, 'storage', 'btrfs', 'pool'));
    const under = statfsSync(c.dataRoot);
    expect(pool.blocks * pool.bsize).toBeLessThan(under.blocks * under.bsize);
    expect(host.capacity.diskBytes).toBe(pool.blocks * pool.bsize);
  });

  it('no host fits now: 503 NO_CAPACITY with the reason per host, nothing written; larger than the host: 422', async () => {
    const [{ total }] = await c.ds.query(`SELECT memory_bytes AS total FROM hosts WHERE id = $1`, [hostId]);
    const half = Math.floor(Number(total) / 2) + MiB;
    const holder = await create({ name: name(), ...small, memoryBytes: half, start: false });
    expect(holder.status).toBe(202);
    // Run (its outbox row published) before the refusals count what they left unwritten.
    expect(await wait(holder.body.job.id)).toMatchObject({ state: 'completed' });
    const body = await expectRefused({ memoryBytes: half }, /not enough memory/);
    expect(body.reasons).toEqual(
      expect.arrayContaining([expect.stringMatching(new RegExp(`^${c.hostName}: not enough memory`))]),
    );
    // Larger than the host, whatever it frees: 422, not a 503 a client would retry for ever.
    const memory = await expectTooLarge({ memoryBytes: TiB }, /no online host is large enough/);
    expect(memory.reasons).toEqual([`${c.hostName}: has ${total} bytes of memory`]);
    // CPU is checked before memory: a limit above the host's cores (the runtime would refuse it; CPU is
    // overcommitted across containers, not within one).
    const cpu = await expectTooLarge({ cpus: 1024, memoryBytes: TiB }, /has \d+ CPUs/);
    expect(cpu.reasons).toEqual([expect.stringMatching(new RegExp(`^${c.hostName}: has \\d+ CPUs$`))]);
    const del = await c.http().delete(`/v1/containers/${holder.body.container.id}`).set(c.auth());
    expect(await wait(del.body.job.id)).toMatchObject({ state: 'completed' });
  }, 60_000);

  it('creates racing for the last room: exactly as many are accepted as fit, the others get 503', async () => {
    const [{ free }] = await c.ds.query(
      `SELECT h.memory_bytes - COALESCE((SELECT sum(memory_bytes) FROM containers
                                         WHERE host_id = h.id AND destroyed_at IS NULL), 0) AS free
       FROM hosts h WHERE h.id = $1`,
      [hostId],
    );
    // Two of these fit in what is free, three do not.
    const memoryBytes = Math.floor(Number(free) / 3) + 1;
    const answers = await Promise.all(
      Array.from({ length: 6 }, () => create({ name: name(), ...small, memoryBytes, start: false })),
    );
    const statuses = answers.map((r) => r.status).sort();
    expect(statuses).toEqual([202, 202, 503, 503, 503, 503]);
    for (const r of answers.filter((a) => a.status === 503)) expect(r.body.code).toBe('NO_CAPACITY');
    const accepted = answers.filter((a) => a.status === 202);
    for (const r of accepted) expect(await wait(r.body.job.id)).toMatchObject({ state: 'completed' });
    // Give the room back for the cases after this one.
    for (const r of accepted) {
      const del = await c.http().delete(`/v1/containers/${r.body.container.id}`).set(c.auth());
      expect(del.status).toBe(202);
      expect(await wait(del.body.job.id)).toMatchObject({ state: 'completed' });
    }
  }, 120_000);

  it('an explicit host is honoured, or refused with the reason; an unknown one is 422', async () => {
    const res = await create({ name: name(), ...small, host: hostId });
    expect(res.status).toBe(202);
    expect(res.body.container.hostId).toBe(hostId);
    expect(await wait(res.body.job.id)).toMatchObject({ state: 'completed', hostId });
    // The request's audit event names the host the placement chose (in the same statement).
    const [requested] = await c.ds.query(
      `SELECT data FROM audit_events WHERE subject_id = $1 AND action = 'container.create.requested'`,
      [res.body.container.id],
    );
    expect(requested.data).toMatchObject({ host: c.hostName, template: small.template, start: true });
    await expectTooLarge(
      { host: hostId, memoryBytes: TiB },
      new RegExp(
        `host ${c.hostName} is too small for this container whatever it frees: has \\d+ bytes of memory`,
      ),
    );
    const before = await counts();
    const unknown = await create({ name: name(), ...small, host: '00000000-0000-4000-8000-000000000000' });
    expect(unknown.status).toBe(422);
    expect(unknown.body.code).toBe('HOST_NOT_FOUND');
    expect(await counts()).toEqual(before);
  }, 60_000);

  it('a draining host gets no new containers until undrained', async () => {
    const drained = await c.http().post(`/v1/hosts/${hostId}/drain`).set(c.auth());
    expect(drained.status).toBe(200);
    expect(drained.body).toMatchObject({ id: hostId, draining: true });
    expect(await myHost()).toMatchObject({ draining: true, state: 'online' });
    await expectRefused({ host: hostId }, new RegExp(`host ${c.hostName} cannot take it: draining`));
    await expectRefused({}, new RegExp(`${c.hostName}: draining`));

    const undrained = await c.http().post(`/v1/hosts/${hostId}/undrain`).set(c.auth());
    expect(undrained.status).toBe(200);
    expect(undrained.body).toMatchObject({ id: hostId, draining: false });
    const res = await create({ name: name(), ...small });
    expect(res.status).toBe(202);
    expect(res.body.container.hostId).toBe(hostId);
    expect(await wait(res.body.job.id)).toMatchObject({ state: 'completed' });
    const audit = await c.ds.query(
      `SELECT action FROM audit_events WHERE subject_id = $1 AND action IN ('host.drain', 'host.undrain') ORDER BY id`,
      [hostId],
    );
    expect(audit.map((a: { action: string }) => a.action)).toEqual(['host.drain', 'host.undrain']);
  }, 60_000);

  it('a host whose heartbeat is stale is offline: no placement, its queued job waits with a reason, and runs once its worker is back', async () => {
    const made = await create({ name: name(), ...small, start: false });
    expect(await wait(made.body.job.id)).toMatchObject({ state: 'completed' });
    const id: string = made.body.container.id;

    // A crash: no graceful shutdown marks the host offline; only its heartbeat stops.
    await w.kill();
    const host = await until(
      'the host to be reported offline',
      async () => {
        const h = await myHost();
        return h.state === 'offline' ? h : undefined;
      },
      OFFLINE_AFTER_MS * 5,
    );
    expect(Date.now() - Date.parse(host.lastHeartbeatAt)).toBeGreaterThanOrEqual(OFFLINE_AFTER_MS);
    await expectRefused({ host: hostId }, new RegExp(`host ${c.hostName} cannot take it: offline`));
    await expectRefused({}, new RegExp(`${c.hostName}: offline`));

    // Operations on its containers are still accepted: they wait for the host.
    const started = await c.http().post(`/v1/containers/${id}/start`).set(c.auth()).send({});
    expect(started.status).toBe(202);
    const jobId: string = started.body.job.id;
    await sleep(1_500);
    const job = await c.http().get(`/v1/jobs/${jobId}`).set(c.auth());
    expect(job.body).toMatchObject({
      state: 'queued',
      waitingReason: `waiting for host ${c.hostName}: offline since ${host.lastHeartbeatAt}`,
    });
    expect((await jobEvents(c.ds, jobId)).map((e) => e.action)).toEqual(['job.queued']);

    w = await c.startWorker();
    expect(await wait(jobId)).toMatchObject({ state: 'completed', result: { status: 'running' } });
    expect((await c.http().get(`/v1/containers/${id}`).set(c.auth())).body.state).toBe('running');
    expect(await myHost()).toMatchObject({ state: 'online' });
    const after = await c.http().get(`/v1/jobs/${jobId}`).set(c.auth());
    expect(after.body.waitingReason).toBeUndefined();
  }, 120_000);

  it('a job that was running when its host went away says so too, and runs again once the host is back', async () => {
    const job = (await c.api.get(JobEnqueuer).submit({
      kind: 'system.noop',
      payload: { n: 5, holdMs: 5_000 },
      hostId,
      principal: { keyId: 'test:place', tenantId: null, scopes: ['admin'], requestId: '' },
    }))!;
    await until('the job to run', async () => {
      const [r] = await c.ds.query(`SELECT state FROM jobs WHERE id = $1`, [job.id]);
      return r.state === 'active';
    });
    await w.kill();
    await until(
      'the host to be offline',
      async () => (await myHost()).state === 'offline',
      OFFLINE_AFTER_MS * 5,
    );
    const seen = await c.http().get(`/v1/jobs/${job.id}`).set(c.auth());
    expect(seen.body.state).toBe('active');
    expect(seen.body.waitingReason).toMatch(new RegExp(`^waiting for host ${c.hostName}: offline since `));
    w = await c.startWorker();
    const res = await c.http().get(`/v1/jobs/${job.id}/wait?timeout=60`).set(c.auth());
    expect(res.body).toMatchObject({ state: 'completed', result: { n: 5 } });
    expect(res.body.waitingReason).toBeUndefined();
  }, 90_000);

  it('one host name, one machine: a worker of another machine cannot take a live host, and a worker whose host was taken stops', async () => {
    // The live worker's row, as if it ran on another machine (cloned VMs keep their hostname).
    await c.ds.query(`UPDATE hosts SET machine_id = 'another-machine' WHERE id = $1`, [hostId]);
    // (A data root of its own, as on another machine: this one's is held by the live worker.)
    const elsewhere = {
      BERTH_DATA_ROOT: `${c.dataRoot}-elsewhere`,
      BERTH_CGROUP_PARENT: `${c.cgroupParent}x`,
    };
    await expect(c.startWorker(elsewhere)).rejects.toThrow(
      new RegExp(`host name ${c.hostName} is held by a live worker on another machine \\(another-machine`),
    );
    expect(w.proc.exitCode).toBeNull();
    expect(await myHost()).toMatchObject({ state: 'online' });
    // Refused before its runtime opened: no storage pool there (only the data root its lock made).
    expect(readdirSync(elsewhere.BERTH_DATA_ROOT)).toEqual(['lock.id']);
    rmSync(elsewhere.BERTH_DATA_ROOT, { recursive: true });

    // Another worker takes the row while this one lives (it had stopped heartbeating long enough): this
    // one stops at its next heartbeat, and leaves the row to the other (no offline mark).
    const [{ instance }] = await c.ds.query(
      `WITH u AS (UPDATE hosts SET instance_id = gen_random_uuid() WHERE id = $1 RETURNING instance_id)
       SELECT instance_id AS instance FROM u`,
      [hostId],
    );
    const exited = await Promise.race([w.exited, sleep(10_000).then(() => null)]);
    expect(exited).not.toBeNull();
    expect(w.output()).toMatch(/another worker took this host over: stopping/);
    const [row] = await c.ds.query(`SELECT instance_id, state FROM hosts WHERE id = $1`, [hostId]);
    expect(row).toEqual({ instance_id: instance, state: 'online' });

    // Once that holder is gone (offline), a worker of this machine takes the host again and runs its jobs.
    await until(
      'the host to be offline',
      async () => (await myHost()).state === 'offline',
      OFFLINE_AFTER_MS * 5,
    );
    w = await c.startWorker();
    const made = await create({ name: name(), ...small, start: false });
    expect(await wait(made.body.job.id)).toMatchObject({ state: 'completed' });
  }, 60_000);
});
