import { Client } from 'pg';
import type { DataSource } from 'typeorm';
import { createDataSource, migrations } from '@berth/db';

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
  const base = new URL(process.env.BERTH_TEST_DATABASE_URL!);
  const dbName = `berth_migrations_${process.pid}`;
  let admin: Client;
  let ds: DataSource;

  beforeAll(async () => {
    admin = new Client({ connectionString: base.toString() });
    await admin.connect();
    await admin.query(`DROP DATABASE IF EXISTS ${dbName} WITH (FORCE)`);
    await admin.query(`CREATE DATABASE ${dbName}`);
    const url = new URL(base.toString());
    url.pathname = `/${dbName}`;
    ds = createDataSource(url.toString());
    await ds.initialize();
  });

  afterAll(async () => {
    await ds?.destroy();
    await admin.query(`DROP DATABASE IF EXISTS ${dbName} WITH (FORCE)`);
    await admin.end();
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
