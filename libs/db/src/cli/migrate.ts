import { Command } from 'commander';
import { loadConfig } from '@berth/config';
import { createDataSource } from '../data-source';

/** `npm run migrate -- up|down|status`: applies, reverts (one step) or lists the schema migrations. */
async function main(): Promise<void> {
  const program = new Command('migrate').description('Berth database migrations');
  const withDs = async (fn: (ds: ReturnType<typeof createDataSource>) => Promise<void>) => {
    const ds = createDataSource(loadConfig().database.url);
    await ds.initialize();
    try {
      await fn(ds);
    } finally {
      await ds.destroy();
    }
  };
  program.command('up', { isDefault: true }).action(() =>
    withDs(async (ds) => {
      const done = await ds.runMigrations({ transaction: 'each' });
      console.log(done.length ? `applied: ${done.map((m) => m.name).join(', ')}` : 'schema is up to date');
    }),
  );
  program.command('down').action(() =>
    withDs(async (ds) => {
      await ds.undoLastMigration({ transaction: 'each' });
      console.log('reverted the last migration');
    }),
  );
  program.command('status').action(() =>
    withDs(async (ds) => {
      console.log((await ds.showMigrations()) ? 'pending migrations' : 'schema is up to date');
    }),
  );
  await program.parseAsync(process.argv);
}

main().catch((e: unknown) => {
  console.error(e instanceof Error ? e.message : e);
  process.exit(1);
});
