import { Controller, Get } from '@nestjs/common';
import { ApiOkResponse, ApiServiceUnavailableResponse } from '@nestjs/swagger';
import { Public } from '../auth/principal';
import { HealthCheck, HealthCheckService } from '@nestjs/terminus';
import { PostgresHealthIndicator } from './postgres-health.indicator';
import { RedisHealthIndicator } from './redis-health.indicator';

/** @nestjs/terminus's answer: overall status and each indicator's. */
const READINESS = {
  type: 'object',
  properties: {
    status: { type: 'string', enum: ['ok', 'error'] },
    info: { type: 'object', additionalProperties: { type: 'object' } },
    error: { type: 'object', additionalProperties: { type: 'object' } },
    details: { type: 'object', additionalProperties: { type: 'object' } },
  },
  required: ['status'],
};

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
  @ApiOkResponse({
    description: 'the process serves HTTP',
    schema: {
      type: 'object',
      properties: { status: { type: 'string', enum: ['ok'] } },
      required: ['status'],
    },
  })
  healthz() {
    return { status: 'ok' };
  }

  /** Readiness: Postgres (with all migrations applied) and Redis reachable; 503 otherwise. */
  @Get('readyz')
  @HealthCheck()
  @ApiOkResponse({ description: 'PostgreSQL (migrated) and Redis answer', schema: READINESS })
  @ApiServiceUnavailableResponse({
    description: 'a dependency does not answer: which, in `error`',
    schema: READINESS,
  })
  readyz() {
    return this.health.check([() => this.postgres.check(), () => this.redis.check()]);
  }
}
