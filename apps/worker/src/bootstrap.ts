import { NestFactory } from '@nestjs/core';
import type { INestApplicationContext } from '@nestjs/common';
import { Logger } from 'nestjs-pino';
import type { BerthConfig } from '@berth/config';
import { WorkerModule } from './worker.module';

/** The worker is a Nest application context (no HTTP server of its own). */
export async function createWorker(config: BerthConfig): Promise<INestApplicationContext> {
  const app = await NestFactory.createApplicationContext(WorkerModule.forRoot(config), { bufferLogs: true });
  app.useLogger(app.get(Logger));
  app.enableShutdownHooks();
  return app;
}
