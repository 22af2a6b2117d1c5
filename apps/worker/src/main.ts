import 'reflect-metadata';
import { ConfigError, loadConfig } from '@berth/config';
import { RuntimeError } from '@berth/runtime';
import { createWorker } from './bootstrap';

async function main(): Promise<void> {
  const config = loadConfig();
  await createWorker(config);
}

main().catch((e: unknown) => {
  // A bad setting, or a fact of the host (its data root held by another worker): one line says it.
  if (e instanceof ConfigError) console.error(e.message);
  else if (e instanceof RuntimeError && e.code === 'WRONG_STATE')
    console.error(`worker: ${e.code}: ${e.message}`);
  else console.error(e);
  process.exit(1);
});
