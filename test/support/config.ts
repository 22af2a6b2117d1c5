import { loadConfig, type BerthConfig } from '@berth/config';

/** Config for integration tests: the migrated test database, quiet logs, and any overrides. */
export function testConfig(overrides: Record<string, string> = {}): BerthConfig {
  const url = process.env.BERTH_TEST_DATABASE_URL;
  if (!url)
    throw new Error('BERTH_TEST_DATABASE_URL is not set: run integration tests through jest projects');
  return loadConfig({ ...process.env, DATABASE_URL: url, LOG_LEVEL: 'silent', ...overrides });
}
