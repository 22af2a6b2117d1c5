import { parseArgs } from 'node:util';
import { loadConfig } from '@berth/config';
import { createDataSource } from '../data-source';

const USAGE = 'usage: npm run migrate -- [up|down|status]';

/** `npm run migrate -- up|down|status`: applies, reverts (one step) or lists the schema migrations. */
async function main(): Promise<number> {
  const { positionals } = parseArgs({ allowPositionals: true, options: {} });
  const command = positionals[0] ?? 'up';
  if (positionals.length > 1 || !['up', 'down', 'status'].includes(command)) {
    console.error(USAGE);
    return 2;
  }
  const ds = createDataSource(loadConfig().database.url);
  await ds.initialize();
  try {
    if (command === 'up') {
      const done = await ds.runMigrations({ transaction: 'each' });
      console.log(done.length ? `applied: ${done.map((m) => m.name).join(', ')}` : 'schema is up to date');
    } else if (command === 'down') {
      await ds.undoLastMigration({ transaction: 'each' });
      console.log('reverted the last migration');
    } else {
      console.log((await ds.showMigrations()) ? 'pending migrations' : 'schema is up to date');
    }
  } finally {
    await ds.destroy();
  }
  return 0;
}

main().then(
  (code) => (process.exitCode = code),
  (e: unknown) => {
    console.error(e instanceof Error ? e.message : e);
    process.exitCode = 1;
  },
);
