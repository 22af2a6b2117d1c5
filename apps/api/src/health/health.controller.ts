import { Controller, Get } from '@nestjs/common';
import { Public } from '../auth/principal';
import { HealthCheck, HealthCheckService } from '@nestjs/terminus';
import { PostgresHealthIndicator } from './postgres-health.indicator';
import { RedisHealthIndicator } from './redis-health.indicator';

@Public()
@Controller()
export class HealthController {
  constructor(
    private readonly health: HealthCheckService,
    private readonly postgres: PostgresHealthIndicator,
    private readonly redis: RedisHealthIndicator,
  ) {}

  /** Liveness: the process is up and serving HTTP. */
  @Get('healthz')
  healthz() {
    return { status: 'ok' };
  }

  /** Readiness: Postgres (with all migrations applied) and Redis reachable; 503 otherwise. */
  @Get('readyz')
  @HealthCheck()
  readyz() {
    return this.health.check([() => this.postgres.check(), () => this.redis.check()]);
  }
}
