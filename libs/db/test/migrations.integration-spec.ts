import type { DataSource } from 'typeorm';
import { createDataSource, migrations } from '@berth/db';
import { createEmptyDatabase, dropDatabase } from '@test/support/databases';

const TABLES = [
  'api_keys',
  'audit_events',
  'campaigns',
  'containers',
  'hosts',
  'idempotency_keys',
  'jobs',
  'outbox',
  'template_replicas',
  'templates',
  'tenants',
  'webhook_deliveries',
  'webhook_endpoints',
];

describe('migrations', () => {
  const dbName = `berth_migrations_${process.pid}`;
  let ds: DataSource;

  beforeAll(async () => {
    ds = createDataSource(await createEmptyDatabase(dbName));
    await ds.initialize();
  });

  afterAll(async () => {
    await ds?.destroy();
    await dropDatabase(dbName);
  });

  const tables = async (): Promise<string[]> =>
    (
      await ds.query(
        `SELECT table_name FROM information_schema.tables WHERE table_schema = 'public' AND table_name <> 'berth_migrations' ORDER BY 1`,
      )
    ).map((r: { table_name: string }) => r.table_name);

  it('apply on an empty database and create every table', async () => {
    expect(await tables()).toEqual([]);
    const applied = await ds.runMigrations({ transaction: 'each' });
    expect(applied.map((m) => m.name)).toEqual(migrations.map((m) => new m().name));
    expect(await tables()).toEqual(TABLES);
    expect(await ds.showMigrations()).toBe(false);
  });

  it('index no jobs column that a job transition changes (transitions stay HOT updates)', async () => {
    // Every column a transition or the worker's records write (see JobStore and JobsService).
    const changing = [
      'state',
      'attempts',
      'progress',
      'result',
      'error_code',
      'error_message',
      'error_step',
      'started_at',
      'finished_at',
      'updated_at',
    ];
    const indexed: { indexname: string; indexdef: string }[] = await ds.query(
      `SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'public' AND tablename = 'jobs'`,
    );
    expect(indexed.length).toBeGreaterThan(3);
    for (const { indexname, indexdef } of indexed)
      for (const col of changing)
        expect({ indexname, names: new RegExp(`\\b${col}\\b`).test(indexdef) }).toEqual({
          indexname,
          names: false,
        });
    const [{ reloptions }] = await ds.query(`SELECT reloptions FROM pg_class WHERE relname = 'jobs'`);
    expect(reloptions).toEqual(['fillfactor=70']);
    // And the transitions really are HOT on a real row.
    const [host] = await ds.query(
      `INSERT INTO hosts (name, cpu_count, memory_bytes, kernel_version, cgroup_version)
       VALUES ('hot-test', 1, 1, 'test', 1) RETURNING id`,
    );
    const [job] = await ds.query(
      `INSERT INTO jobs (kind, state, host_id, params, max_attempts, requested_by) VALUES ('system.noop', 'queued', $1, '{}', 1, 'test') RETURNING id`,
      [host.id],
    );
    await ds.transaction(async (m) => {
      await m.query(
        `UPDATE jobs SET state = 'active', attempts = 1, started_at = now(), updated_at = now() WHERE id = $1`,
        [job.id],
      );
      await m.query(
        `UPDATE jobs SET state = 'completed', result = '{}', progress = '{"stage":"done","percent":100}', finished_at = now(), updated_at = now() WHERE id = $1`,
        [job.id],
      );
      // This transaction's own counters: both updates were heap-only (no index entry written).
      const [{ n }] = await m.query(`SELECT pg_stat_get_xact_tuples_hot_updated('jobs'::regclass)::int AS n`);
      expect(n).toBe(2);
    });
    await ds.query(`DELETE FROM jobs WHERE id = $1`, [job.id]);
    await ds.query(`DELETE FROM hosts WHERE id = $1`, [host.id]);
  });

  it('index the audit trail only for the ways it is read (each job writes three or more events)', async () => {
    // A job's events walk `id` within the job, a subject's story its subject; GET /v1/audit's forward
    // reading walks the writing transactions' ids (a BRIN index: no btree insertion per event). No time index.
    const rows: { indexname: string; indexdef: string }[] = await ds.query(
      `SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'public' AND tablename = 'audit_events'
        ORDER BY 1`,
    );
    expect(rows.map((r) => r.indexname)).toEqual([
      'audit_events_job_idx',
      'audit_events_pkey',
      'audit_events_subject_idx',
      'audit_events_xact_brin',
    ]);
    expect(rows[3].indexdef).toMatch(/USING brin \(xact\)/);
  });

  it('are a no-op when applied twice', async () => {
    expect(await ds.runMigrations({ transaction: 'each' })).toEqual([]);
  });

  it('revert completely, leaving no table or function behind', async () => {
    for (let i = 0; i < migrations.length; i++) await ds.undoLastMigration({ transaction: 'each' });
    expect(await tables()).toEqual([]);
    const fns = await ds.query(`SELECT proname FROM pg_proc WHERE proname LIKE 'berth_%'`);
    expect(fns).toEqual([]);
    expect(await ds.showMigrations()).toBe(true);
  });
});
