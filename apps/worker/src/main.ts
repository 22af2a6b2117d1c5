import 'reflect-metadata';
import { ConfigError, loadConfig } from '@berth/config';
import { createWorker } from './bootstrap';

async function main(): Promise<void> {
  const config = loadConfig();
  await createWorker(config);
}

main().catch((e: unknown) => {
  console.error(e instanceof ConfigError ? e.message : e);
  process.exit(1);
});
