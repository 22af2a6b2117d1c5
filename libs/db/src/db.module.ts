import { Global, Module } from '@nestjs/common';
import { TypeOrmModule } from '@nestjs/typeorm';
import { BERTH_CONFIG, type BerthConfig } from '@berth/config';
import { dataSourceOptions } from './data-source';
import { PgListener } from './pg-listener';
import { PipelinedPool } from './pipelined-pool';

/**
 * TypeORM for the apps, configured from BerthConfig, the pool of the hot statements (PipelinedPool) and
 * the process's LISTEN connection (PgListener), for every module. Migrations are run by `npm run migrate`, not here.
 */
@Global()
@Module({
  imports: [
    TypeOrmModule.forRootAsync({
      inject: [BERTH_CONFIG],
      useFactory: (config: BerthConfig) => ({
        ...dataSourceOptions(config.database.url),
        migrationsRun: false,
        // Let the app boot while Postgres is down: readiness reports it, the pool reconnects when back.
        retryAttempts: 0,
      }),
    }),
  ],
  providers: [PipelinedPool, PgListener],
  exports: [TypeOrmModule, PipelinedPool, PgListener],
})
export class DbModule {}
