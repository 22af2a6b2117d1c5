import { ValidationPipe } from '@nestjs/common';
import { NestFactory } from '@nestjs/core';
import type { NestExpressApplication } from '@nestjs/platform-express';
import { DocumentBuilder, SwaggerModule } from '@nestjs/swagger';
import { Logger } from 'nestjs-pino';
import type { BerthConfig } from '@berth/config';
import { AppModule } from './app.module';

/** Builds the API application (used by main.ts and by tests, which pass their own config). */
export async function createApiApp(config: BerthConfig): Promise<NestExpressApplication> {
  const app = await NestFactory.create<NestExpressApplication>(AppModule.forRoot(config), {
    bufferLogs: true,
    bodyParser: false,
  });
  app.useLogger(app.get(Logger));
  // Bodies: JSON only, bounded; malformed or oversized bodies become 400/413 problems (ProblemFilter).
  app.useBodyParser('json', { limit: config.api.bodyLimitBytes, strict: true });
  app.useGlobalPipes(
    new ValidationPipe({
      whitelist: true,
      forbidNonWhitelisted: true,
      transform: true,
      forbidUnknownValues: true,
      stopAtFirstError: false,
    }),
  );
  app.enableShutdownHooks();
  const doc = new DocumentBuilder()
    .setTitle('Berth API')
    .setDescription(
      'Job-driven control plane for Linux system containers. Every write answers 202 with the job ' +
        '(Location: /v1/jobs/<id>); errors are application/problem+json with a stable `code`. ' +
        'Writes accept an Idempotency-Key header.',
    )
    .setVersion('1')
    .addBearerAuth()
    .build();
  SwaggerModule.setup('docs', app, () => SwaggerModule.createDocument(app, doc), {
    jsonDocumentUrl: 'docs/openapi.json',
  });
  return app;
}
