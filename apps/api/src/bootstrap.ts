import { BadRequestException, HttpStatus, ValidationPipe } from '@nestjs/common';
import { NestFactory } from '@nestjs/core';
import type { NestExpressApplication } from '@nestjs/platform-express';
import { DocumentBuilder, SwaggerModule } from '@nestjs/swagger';
import type { NextFunction, Request, Response } from 'express';
import { Logger } from 'nestjs-pino';
import type { BerthConfig } from '@berth/config';
import { AppModule } from './app.module';
import { ApiKeyService } from './auth/api-key.service';
import { unauthorized } from './auth/auth.guard';
import { ApiError } from './common/api-error';
import { answerClientError } from './common/client-error';
import { validationMessages } from './common/validation-messages';
import { HttpDrain } from './common/http-drain';
import { MetricsService } from './ops/metrics.service';
import { QUEUE_BOARD_PATH, QueueBoard } from './ops/queue-board';

function hasBody(req: Request): boolean {
  const length = req.headers['content-length'];
  return req.headers['transfer-encoding'] !== undefined || (length !== undefined && length !== '0');
}

/** body-parser's errors as problems with a stable code (anything else passes on unchanged). */
function bodyParserProblem(err: unknown): unknown {
  const e = err as { type?: string; status?: number; message?: string };
  switch (e?.type) {
    case 'entity.parse.failed':
      return new ApiError(
        HttpStatus.BAD_REQUEST,
        'MALFORMED_JSON',
        `the body is not valid JSON: ${e.message}`,
      );
    case 'entity.too.large':
      return new ApiError(
        HttpStatus.PAYLOAD_TOO_LARGE,
        'PAYLOAD_TOO_LARGE',
        'the body is larger than the limit',
      );
    case 'encoding.unsupported':
    case 'charset.unsupported':
      return new ApiError(
        HttpStatus.UNSUPPORTED_MEDIA_TYPE,
        'UNSUPPORTED_MEDIA_TYPE',
        e.message ?? 'unsupported',
      );
    default:
      return err;
  }
}

/**
 * How deep a JSON body may nest. Ours nest two levels; Nest's ValidationPipe walks a body recursively
 * (stripProtoKeys), and a few thousand levels, well within the size limit, overflowed its stack (a 500).
 */
export const BODY_MAX_DEPTH = 32;

/**
 * What makes a parsed JSON body unfit to go further, or null: nesting deeper than `max` objects/arrays, or a
 * string (key or value) that is not well-formed Unicode (a lone surrogate, which JSON's `\ud800` escapes
 * can spell and PostgreSQL's `jsonb` and `text` refuse: a 500 deep in a handler instead of a 400 here).
 * Walked without recursion.
 */
const LONE_SURROGATE = /\p{Surrogate}/u; // in `u` mode a pair is one code point: only a lone half matches

function bodyProblem(value: unknown, max: number): string | null {
  const stack: [unknown, number][] = [[value, 1]];
  while (stack.length > 0) {
    const [v, depth] = stack.pop()!;
    if (typeof v === 'string') {
      if (LONE_SURROGATE.test(v)) return 'a string in the body is not valid Unicode (a lone surrogate)';
      continue;
    }
    if (v === null || typeof v !== 'object') continue;
    if (depth > max) return `the body nests deeper than ${max} levels`;
    for (const [key, child] of Object.entries(v)) {
      if (LONE_SURROGATE.test(key)) return 'a key in the body is not valid Unicode (a lone surrogate)';
      stack.push([child, depth + 1]);
    }
  }
  return null;
}

/** Builds the API application (used by main.ts and by tests, which pass their own config). */
export async function createApiApp(config: BerthConfig): Promise<NestExpressApplication> {
  const app = await NestFactory.create<NestExpressApplication>(AppModule.forRoot(config), {
    bufferLogs: true,
    bodyParser: false,
  });
  app.useLogger(app.get(Logger));
  // Requests Node's parser refuses (headers too large, not HTTP) get problem+json too; no framework banner.
  app.getHttpServer().on('clientError', answerClientError);
  app.disable('x-powered-by');
  // First, so that every request is timed, refused ones too.
  app.use(app.get(MetricsService).httpMiddleware());
  // Every answer in flight is known when a shutdown begins (HttpDrain).
  app.use(app.get(HttpDrain).middleware);
  // The API key's lookup starts now and runs while the body is read; the guard awaits its answer.
  app.use(app.get(ApiKeyService).lookupEarly());
  // The queue dashboard (admins, read-only): plain Express middleware ahead of Nest's routes.
  app.use(QUEUE_BOARD_PATH, ...app.get(QueueBoard).handlers());
  // A write takes no query parameter (none of ours does): one the client meant (`?dryRun=true`,
  // `?force=true` on a DELETE) must not be silently ignored while the write goes ahead.
  app.use((req: Request, _res: Response, next: NextFunction) => {
    const names = ['GET', 'HEAD', 'OPTIONS'].includes(req.method) ? [] : Object.keys(req.query ?? {});
    next(
      names.length > 0
        ? new ApiError(
            HttpStatus.BAD_REQUEST,
            'VALIDATION_FAILED',
            `a ${req.method} takes no query parameters: ${names.slice(0, 5).join(', ')}`,
          )
        : undefined,
    );
  });
  // Bodies: JSON only, bounded. A body of another type is refused (415) rather than silently read as
  // empty; parser errors get their stable codes here, because Nest turns a JSON SyntaxError into a plain
  // BadRequestException the ProblemFilter could no longer tell from any other 400.
  app.use((req: Request, _res: Response, next: NextFunction) => {
    // A read takes no body: filters sent there (as some HTTP clients allow) would be silently ignored.
    // (By its length: a chunked request with nothing in it, as some clients send, is no body.)
    if (['GET', 'HEAD'].includes(req.method) && Number(req.headers['content-length'] ?? 0) > 0) {
      return next(
        new ApiError(
          HttpStatus.BAD_REQUEST,
          'VALIDATION_FAILED',
          `a ${req.method} takes no body (filters go in the query string)`,
        ),
      );
    }
    if (
      hasBody(req) &&
      !['GET', 'HEAD'].includes(req.method) &&
      !req.is(['application/json', 'application/*+json'])
    ) {
      return next(
        new ApiError(
          HttpStatus.UNSUPPORTED_MEDIA_TYPE,
          'UNSUPPORTED_MEDIA_TYPE',
          `the body must be application/json, not ${req.headers['content-type'] ?? 'untyped'}`,
        ),
      );
    }
    next();
  });
  // The same types the check above lets through: a `+json` body left unread would reach the handlers as {}.
  app.useBodyParser('json', {
    limit: config.api.bodyLimitBytes,
    strict: true,
    type: ['application/json', 'application/*+json'],
  });
  app.use((err: unknown, _req: Request, _res: Response, next: NextFunction) => next(bodyParserProblem(err)));
  app.use((req: Request, _res: Response, next: NextFunction) => {
    const problem = bodyProblem(req.body, BODY_MAX_DEPTH);
    next(problem ? new ApiError(HttpStatus.BAD_REQUEST, 'MALFORMED_JSON', problem) : undefined);
  });
  // A request refused before its guard (its query, its body) is judged for a caller with a valid key
  // only: without one, a /v1 request (none is public) is answered 401 first, as its guard would answer it.
  // The key's early lookup is awaited only on this path; a lookup that fails leaves the refusal as it was.
  const keys = app.get(ApiKeyService);
  app.use((err: unknown, req: Request, _res: Response, next: NextFunction) => {
    if (!(err instanceof ApiError) || !req.path.startsWith('/v1/')) return next(err);
    keys.authenticates(req).then(
      (ok) => next(ok ? err : unauthorized()),
      () => next(err),
    );
  });
  app.useGlobalPipes(
    new ValidationPipe({
      whitelist: true,
      forbidNonWhitelisted: true,
      transform: true,
      forbidUnknownValues: true,
      stopAtFirstError: false,
      // One clear message per mistake (`cpus is required`, `cpus must be a number …`).
      exceptionFactory: (errors) => new BadRequestException(validationMessages(errors)),
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
