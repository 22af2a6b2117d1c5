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
    await admin.query(`DROP DATABASE IF EXISTS "${name}" WITH (FORCE)`);
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
  await onServer((admin) =>
    admin.query(`DROP DATABASE IF EXISTS "${name}" WITH (FORCE)`).then(() => undefined),
  );
}
