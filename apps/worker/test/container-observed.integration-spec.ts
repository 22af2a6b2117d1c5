import type { DataSource } from 'typeorm';
import { createDataSource, PipelinedPool } from '@berth/db';
import { testConfig } from '@test/support/config';
import { JobStore } from '../src/jobs/job-store';

/**
 * The guards of an observation written while the worker runs (ContainerObserver → JobStore.observed with
 * `idle`): the kernel was read after the row, so a row written since (a job's end) or a job `active` now
 * (it owns the container's state) leaves the row to the job.
 */
describe('JobStore.observed: what the host has, unless a job owns the container', () => {
  let ds: DataSource;
  let hot: PipelinedPool;
  let store: JobStore;

  beforeAll(async () => {
    const config = testConfig();
    ds = createDataSource(config.database.url);
    await ds.initialize();
    hot = new PipelinedPool(config);
    store = new JobStore(ds, hot);
  });
  afterAll(async () => {
    await hot.onApplicationShutdown();
    await ds.destroy();
  });

  /** A container Postgres records as running, and its row's version. */
  async function runningContainer(): Promise<{ id: string; version: number }> {
    const [row] = await ds.query(
      `INSERT INTO containers (name, state, target_state, cpus, memory_bytes, disk_bytes, pids_max)
       VALUES ('observed-' || substr(md5(random()::text), 1, 12), 'running', 'running', 1, 1048576, 1048576, 64)
       RETURNING id, version`,
    );
    return row;
  }

  const row = async (id: string) =>
    (
      (await ds.query(`SELECT state, target_state, version FROM containers WHERE id = $1`, [id])) as {
        state: string;
        target_state: string;
        version: number;
      }[]
    )[0];

  const observedEvents = async (id: string) =>
    (
      await ds.query(
        `SELECT data FROM audit_events WHERE subject_id = $1 AND action = 'container.observed' ORDER BY id`,
        [id],
      )
    ).map((r: { data: unknown }) => r.data);

  it('writes the state the host has, with its event and target state, when the row is as it was read', async () => {
    const c = await runningContainer();
    expect(await store.observed(c.id, 'running', 'stopped', {}, { version: c.version })).toBe(true);
    expect(await row(c.id)).toEqual({ state: 'stopped', target_state: 'stopped', version: c.version + 1 });
    expect(await observedEvents(c.id)).toEqual([{ from: 'running', to: 'stopped' }]);
  });

  it('leaves a row written since it was read (a job ended between that read and the kernel read)', async () => {
    const c = await runningContainer();
    // A restart ended meanwhile: the row says running again, one version on; the kernel read may predate it.
    await ds.query(`UPDATE containers SET version = version + 1 WHERE id = $1`, [c.id]);
    expect(await store.observed(c.id, 'running', 'stopped', {}, { version: c.version })).toBe(false);
    expect(await row(c.id)).toMatchObject({ state: 'running', version: c.version + 1 });
    expect(await observedEvents(c.id)).toEqual([]);
  });

  it('leaves a container whose job is active, and writes it once the job has ended', async () => {
    const c = await runningContainer();
    const [job] = await ds.query(
      `INSERT INTO jobs (kind, state, container_id, container_seq, requested_by)
       VALUES ('container.stop', 'active', $1, 1, 'test') RETURNING id`,
      [c.id],
    );
    expect(await store.observed(c.id, 'running', 'stopped', {}, { version: c.version })).toBe(false);
    expect(await row(c.id)).toMatchObject({ state: 'running', version: c.version });
    expect(await observedEvents(c.id)).toEqual([]);
    // Waiting for its retry the job runs nothing: the host's state is the truth again.
    await ds.query(`UPDATE jobs SET state = 'waiting-retry' WHERE id = $1`, [job.id]);
    expect(await store.observed(c.id, 'running', 'stopped', {}, { version: c.version })).toBe(true);
    expect(await row(c.id)).toMatchObject({ state: 'stopped', version: c.version + 1 });
  });

  it('without `idle` (a job writing what its failed attempt left) the active job does not hold it back', async () => {
    const c = await runningContainer();
    await ds.query(
      `INSERT INTO jobs (kind, state, container_id, container_seq, requested_by)
       VALUES ('container.restart', 'active', $1, 1, 'test')`,
      [c.id],
    );
    expect(await store.observed(c.id, 'running', 'stopped', { afterAttemptOf: 'x' })).toBe(true);
    expect(await observedEvents(c.id)).toEqual([{ from: 'running', to: 'stopped', afterAttemptOf: 'x' }]);
  });
});
