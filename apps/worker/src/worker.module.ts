import { type DynamicModule, Module } from '@nestjs/common';
import { LoggerModule } from 'nestjs-pino';
import { ConfigModule, loggerParams, type BerthConfig } from '@berth/config';
import { DbModule } from '@berth/db';
import { HostRegistrationService } from './host/host-registration.service';
import { ContainerObserver } from './jobs/container-observer.service';
import { JobRunner } from './jobs/job-runner.service';
import { JobStore } from './jobs/job-store';
import { WorkerMetrics } from './metrics/worker-metrics';
import { HostRuntimeService } from './runtime/host-runtime.service';

@Module({})
export class WorkerModule {
  static forRoot(config: BerthConfig): DynamicModule {
    return {
      module: WorkerModule,
      imports: [ConfigModule.forRoot(config), LoggerModule.forRoot(loggerParams(config, 'worker')), DbModule],
      providers: [
        HostRegistrationService,
        HostRuntimeService,
        JobStore,
        ContainerObserver,
        JobRunner,
        WorkerMetrics,
      ],
      exports: [HostRegistrationService, HostRuntimeService, JobRunner, WorkerMetrics],
    };
  }
}
