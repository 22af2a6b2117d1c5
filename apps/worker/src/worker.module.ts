import { type DynamicModule, Module } from '@nestjs/common';
import { LoggerModule } from 'nestjs-pino';
import { ConfigModule, loggerParams, type BerthConfig } from '@berth/config';
import { DbModule } from '@berth/db';
import { HostRegistrationService } from './host/host-registration.service';

@Module({})
export class WorkerModule {
  static forRoot(config: BerthConfig): DynamicModule {
    return {
      module: WorkerModule,
      imports: [ConfigModule.forRoot(config), LoggerModule.forRoot(loggerParams(config, 'worker')), DbModule],
      providers: [HostRegistrationService],
      exports: [HostRegistrationService],
    };
  }
}
