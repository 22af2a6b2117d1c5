import { Client } from 'pg';
import { createDataSource } from '@berth/db';

/** Runs `fn` with a connection to the test server (BERTH_TEST_DATABASE_URL), as the database admin. */
async function onServer(fn: (admin: Client) => Promise<void>): Promise<void> {
  const admin = new Client({ connectionString: process.env.BERTH_TEST_DATABASE_URL! });
  await admin.connect();
  try {
    await fn(admin);
  } finally {
    await admin.end();
  }
}

/**
 * Creates `name` on the test server, empty (dropped first if a killed run left it); returns its URL. For
 * suites that need a database of their own (migrations, placement counters, an API whose hosts must not
 * meet other suites'). `name` is the suite's own constant plus its pid, never input.
 */
export async function createEmptyDatabase(name: string): Promise<string> {
  await onServer(async (admin) => {
    await dropOn(admin, name);
    await admin.query(`CREATE DATABASE "${name}"`);
  });
  const url = new URL(process.env.BERTH_TEST_DATABASE_URL!);
  url.pathname = `/${name}`;
  return url.toString();
}

/** Creates `name` on the test server, empty and migrated; returns its URL. */
export async function createMigratedDatabase(name: string): Promise<string> {
  const url = await createEmptyDatabase(name);
  const ds = createDataSource(url);
  await ds.initialize();
  await ds.runMigrations({ transaction: 'each' });
  await ds.destroy();
  return url;
}

export async function dropDatabase(name: string): Promise<void> {
  await onServer((admin) => dropOn(admin, name));
}

/**
 * DROP DATABASE … WITH (FORCE), tried again for a few seconds when it may not end a backend there: an
 * autovacuum worker in it (it runs as no role the test role may signal: 42501, "must be a member of the
 * role whose process is being terminated") ends by itself within moments.
 */
async function dropOn(admin: Client, name: string): Promise<void> {
  for (let attempt = 1; ; attempt++) {
    try {
      await admin.query(`DROP DATABASE IF EXISTS "${name}" WITH (FORCE)`);
      return;
    } catch (e) {
      if ((e as { code?: string }).code !== '42501' || attempt >= 50) throw e;
      await new Promise((r) => setTimeout(r, 100));
    }
  }
}
