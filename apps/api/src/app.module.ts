import { type DynamicModule, Module } from '@nestjs/common';
import { LoggerModule } from 'nestjs-pino';
import { ConfigModule, loggerParams, type BerthConfig } from '@berth/config';
import { DbModule } from '@berth/db';
import { HealthModule } from './health/health.module';

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
      ],
    };
  }
}
