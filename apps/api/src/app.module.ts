import { type DynamicModule, Module } from '@nestjs/common';
import { APP_FILTER } from '@nestjs/core';
import { LoggerModule } from 'nestjs-pino';
import { ConfigModule, loggerParams, type BerthConfig } from '@berth/config';
import { DbModule } from '@berth/db';
import { AuditController } from './audit/audit.controller';
import { AuthModule } from './auth/auth.module';
import { ProblemFilter } from './common/problem.filter';
import { ContainersController } from './containers/containers.controller';
import { ContainersService } from './containers/containers.service';
import { HealthModule } from './health/health.module';
import { HostsController, HostsService } from './hosts/hosts.controller';
import { IdempotencyModule } from './idempotency/idempotency.module';
import { JobsModule } from './jobs/jobs.module';
import { MetricsController } from './ops/metrics.controller';
import { HttpDrain } from './common/http-drain';
import { MetricsService } from './ops/metrics.service';
import { QueueBoard } from './ops/queue-board';
import { OutboxRelay } from './outbox/outbox.relay';
import { TemplatesController, TemplatesService } from './templates/templates.controller';

@Module({})
export class AppModule {
  static forRoot(config: BerthConfig): DynamicModule {
    return {
      module: AppModule,
      imports: [
        ConfigModule.forRoot(config),
        LoggerModule.forRoot(loggerParams(config, 'api')),
        DbModule,
        HealthModule,
        AuthModule,
        IdempotencyModule,
        JobsModule,
      ],
      controllers: [
        ContainersController,
        TemplatesController,
        HostsController,
        AuditController,
        MetricsController,
      ],
      providers: [
        ContainersService,
        TemplatesService,
        HostsService,
        OutboxRelay,
        MetricsService,
        QueueBoard,
        HttpDrain,
        { provide: APP_FILTER, useClass: ProblemFilter },
      ],
    };
  }
}
