import { Injectable } from '@nestjs/common';
import { HealthIndicatorService } from '@nestjs/terminus';
import { InjectDataSource } from '@nestjs/typeorm';
import type { DataSource } from 'typeorm';
import { migrationsApplied } from '@berth/db';
import { unreachable } from './unreachable';

/** Postgres is ready when it answers a query and every migration is applied. */
@Injectable()
export class PostgresHealthIndicator {
  constructor(
    @InjectDataSource() private readonly ds: DataSource,
    private readonly health: HealthIndicatorService,
  ) {}

  async check(key = 'postgres') {
    const session = this.health.check(key);
    try {
      if (!this.ds.isInitialized) await this.ds.initialize();
      await this.ds.query('SELECT 1');
      if (!(await migrationsApplied(this.ds))) {
        return session.down({ message: 'migrations pending: run npm run migrate' });
      }
      return session.up();
    } catch (e) {
      // The endpoint is public: the error's code, not its text (addresses, role names, server messages).
      return session.down({ message: unreachable('PostgreSQL', e) });
    }
  }
}
