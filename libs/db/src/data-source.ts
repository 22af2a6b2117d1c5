import { DataSource, type DataSourceOptions } from 'typeorm';
import { entities } from './entities';
import { migrations } from './migrations';

/**
 * TypeORM options for Berth's database. Schema changes only ever come from migrations: `synchronize` is
 * off everywhere, tests included, so tests run against the same schema as production.
 */
export function dataSourceOptions(
  url: string,
  overrides: Partial<DataSourceOptions> = {},
): DataSourceOptions {
  return {
    type: 'postgres',
    url,
    entities,
    migrations,
    migrationsTableName: 'berth_migrations',
    migrationsTransactionMode: 'each',
    synchronize: false,
    logging: false,
    // Fail fast when Postgres is away instead of queueing requests forever (readiness depends on it).
    extra: { connectionTimeoutMillis: 3_000, query_timeout: 15_000, max: 20 },
    ...overrides,
  } as DataSourceOptions;
}

export function createDataSource(url: string, overrides: Partial<DataSourceOptions> = {}): DataSource {
  return new DataSource(dataSourceOptions(url, overrides));
}

/** True when every known migration has been applied to the database. */
export async function migrationsApplied(ds: DataSource): Promise<boolean> {
  return !(await ds.showMigrations());
}
