import { Global, Module } from '@nestjs/common';
import { loadConfig, type BerthConfig } from './config';

export const BERTH_CONFIG = Symbol('BERTH_CONFIG');

/** Provides the validated BerthConfig; apps pass an explicit one in tests. */
@Global()
@Module({})
export class ConfigModule {
  static forRoot(config: BerthConfig = loadConfig()) {
    return {
      module: ConfigModule,
      providers: [{ provide: BERTH_CONFIG, useValue: config }],
      exports: [BERTH_CONFIG],
    };
  }
}
