import 'reflect-metadata';
import { ConfigError, loadConfig } from '@berth/config';
import { createApiApp } from './bootstrap';

async function main(): Promise<void> {
  const config = loadConfig();
  const app = await createApiApp(config);
  await app.listen(config.api.port, config.api.host);
}

main().catch((e: unknown) => {
  // Before the logger exists (bad config) print plainly; the message names each bad variable.
  console.error(e instanceof ConfigError ? e.message : e);
  process.exit(1);
});
