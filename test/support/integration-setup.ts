import { Client } from 'pg';
import { loadConfig } from '../../libs/config/src';
import { createDataSource } from '../../libs/db/src/data-source';

/**
 * Integration/e2e global setup: a fresh `<db>_test` database on the configured server, migrated once.
 * Tests read its URL from BERTH_TEST_DATABASE_URL (see test/support/config.ts).
 */
export default async function setup(): Promise<void> {
  const base = new URL(loadConfig().database.url);
  const testDb = `${base.pathname.slice(1)}_test`;
  const admin = new Client({ connectionString: base.toString() });
  await admin.connect();
  try {
    await admin.query(`DROP DATABASE IF EXISTS "${testDb}" WITH (FORCE)`);
    await admin.query(`CREATE DATABASE "${testDb}"`);
  } finally {
    await admin.end();
  }
  const url = new URL(base.toString());
  url.pathname = `/${testDb}`;
  const ds = createDataSource(url.toString());
  await ds.initialize();
  await ds.runMigrations({ transaction: 'each' });
  await ds.destroy();
  process.env.BERTH_TEST_DATABASE_URL = url.toString();
}
