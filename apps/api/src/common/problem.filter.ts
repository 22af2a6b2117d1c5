import {
  ArgumentsHost,
  Catch,
  type ExceptionFilter,
  HttpException,
  HttpStatus,
  Logger,
  NotFoundException,
  Optional,
} from '@nestjs/common';
import { HttpAdapterHost } from '@nestjs/core';
import type { Request, Response } from 'express';
import { ZodError } from 'zod';
import { ApiError } from './api-error';
import type { ErrorCode } from './error-codes';

interface Problem {
  type: string;
  title: string;
  status: number;
  code: string;
  detail: string;
  instance?: string;
  [key: string]: unknown;
}

const CODE_BY_STATUS: Record<number, ErrorCode> = {
  400: 'BAD_REQUEST',
  401: 'UNAUTHORIZED',
  403: 'FORBIDDEN',
  404: 'NOT_FOUND',
  405: 'METHOD_NOT_ALLOWED',
  409: 'CONFLICT',
  413: 'PAYLOAD_TOO_LARGE',
  415: 'UNSUPPORTED_MEDIA_TYPE',
  422: 'UNPROCESSABLE',
  429: 'TOO_MANY_REQUESTS',
  503: 'UNAVAILABLE',
};

/** Runtime error codes that are the caller's fault, when they surface through the API. */
const RUNTIME_CODES: Partial<Record<ErrorCode | string, HttpStatus>> = {
  INVALID_ARGUMENT: HttpStatus.BAD_REQUEST,
  INVALID_NAME: HttpStatus.BAD_REQUEST,
  INVALID_SIZE: HttpStatus.BAD_REQUEST,
  INVALID_PATH: HttpStatus.BAD_REQUEST,
  UNSAFE_ARCHIVE: HttpStatus.BAD_REQUEST,
};

/**
 * The one exception filter: every error leaves as RFC 9457 problem+json with a stable `code`. Unknown
 * errors are logged and answered as 500 without internals.
 */
@Catch()
export class ProblemFilter implements ExceptionFilter {
  private readonly log = new Logger('ProblemFilter');

  constructor(@Optional() private readonly adapter?: HttpAdapterHost) {}

  catch(exception: unknown, host: ArgumentsHost): void {
    const ctx = host.switchToHttp();
    const res = ctx.getResponse<Response>();
    const req = ctx.getRequest<Request>();
    const allowed = this.otherMethods(exception, req);
    if (allowed && req.method === 'OPTIONS' && !res.headersSent) {
      // What the path takes, without a body (RFC 9110 §9.3.7).
      res.setHeader('Allow', [...allowed, 'OPTIONS'].join(', '));
      res.status(HttpStatus.NO_CONTENT).end();
      return;
    }
    const problem: Problem = allowed
      ? {
          type: 'about:blank',
          title: 'METHOD_NOT_ALLOWED',
          status: HttpStatus.METHOD_NOT_ALLOWED,
          code: 'METHOD_NOT_ALLOWED',
          detail: `${req.method} is not allowed on ${req.path}: ${allowed.join(', ')}`,
        }
      : this.toProblem(exception);
    if (allowed) res.setHeader('Allow', allowed.join(', '));
    problem.instance = req.originalUrl;
    if (problem.status >= 500 && !(exception instanceof ApiError)) this.log.error(exception);
    if (res.headersSent) return;
    // RFC 9110: a 401 names its scheme (the queue board's middleware asks for Basic itself).
    if (problem.status === 401 && !res.getHeader('WWW-Authenticate'))
      res.setHeader('WWW-Authenticate', 'Bearer realm="Berth"');
    res.status(problem.status).type('application/problem+json').send(JSON.stringify(problem));
  }

  /**
   * For the router's own 404 (no route for this method and path): the methods the path has, when it has
   * routes under other methods (answered 405 with `Allow`, RFC 9110), else null (a 404 it stays).
   */
  private otherMethods(e: unknown, req: Request): string[] | null {
    if (!(e instanceof NotFoundException) || e.message !== `Cannot ${req.method} ${req.originalUrl}`)
      return null;
    type Layer = { route?: { methods: Record<string, boolean> }; match(path: string): unknown };
    const app = this.adapter?.httpAdapter?.getInstance<{ router?: { stack: Layer[] } }>();
    const methods = new Set<string>();
    for (const layer of app?.router?.stack ?? []) {
      if (!layer.route || !layer.match(req.path)) continue;
      const on = Object.keys(layer.route.methods)
        .filter((m) => layer.route!.methods[m])
        .map((m) => m.toUpperCase());
      // A route for every method (a catch-all, e.g. the not-found handler's) says nothing about this path.
      if (on.includes('_ALL') || on.length > 8) continue;
      for (const m of on) methods.add(m);
    }
    if (methods.has('GET')) methods.add('HEAD');
    return methods.size > 0 && !methods.has(req.method) ? [...methods].sort() : null;
  }

  private toProblem(e: unknown): Problem {
    if (e instanceof ApiError) {
      return {
        type: `about:blank`,
        title: e.code,
        status: e.status,
        code: e.code,
        detail: e.message,
        ...e.extra,
      };
    }
    if (e instanceof HttpException) {
      const status = e.getStatus();
      const body = e.getResponse();
      const fromBody = typeof body === 'object' && body !== null ? (body as Record<string, unknown>) : {};
      const message = Array.isArray(fromBody.message) ? fromBody.message : undefined;
      const code =
        (typeof fromBody.code === 'string' && fromBody.code) ||
        (message ? 'VALIDATION_FAILED' : CODE_BY_STATUS[status]) ||
        'ERROR';
      return {
        type: 'about:blank',
        // The title is the code, as in every other problem (ProblemDto).
        title: code,
        status,
        code,
        detail: message
          ? message.join('; ')
          : typeof fromBody.message === 'string'
            ? fromBody.message
            : e.message,
        ...(message ? { errors: message } : {}),
        // Structured details some exceptions carry (e.g. readiness: which dependency is down).
        ...Object.fromEntries(
          Object.entries(fromBody).filter(
            ([k, v]) => !['message', 'statusCode', 'status', 'code'].includes(k) && typeof v === 'object',
          ),
        ),
      };
    }
    // A job's payload schema refused what the request's validation let through: still the caller's input.
    if (e instanceof ZodError) {
      const errors = e.issues.map((i) => `${i.path.join('.') || 'body'}: ${i.message}`);
      return {
        type: 'about:blank',
        title: 'VALIDATION_FAILED',
        status: HttpStatus.BAD_REQUEST,
        code: 'VALIDATION_FAILED',
        detail: errors.join('; '),
        errors,
      };
    }
    // body-parser errors (malformed JSON, too large) carry a status and a type.
    const anyErr = e as { status?: number; type?: string; message?: string; code?: string };
    if (typeof anyErr?.status === 'number' && anyErr.status >= 400 && anyErr.status < 500) {
      const code =
        anyErr.type === 'entity.parse.failed'
          ? 'MALFORMED_JSON'
          : anyErr.type === 'entity.too.large'
            ? 'PAYLOAD_TOO_LARGE'
            : (CODE_BY_STATUS[anyErr.status] ?? 'BAD_REQUEST');
      return {
        type: 'about:blank',
        title: code,
        status: anyErr.status,
        code,
        detail: anyErr.message ?? code,
      };
    }
    if (typeof anyErr?.code === 'string' && RUNTIME_CODES[anyErr.code]) {
      const status = RUNTIME_CODES[anyErr.code]!;
      return {
        type: 'about:blank',
        title: anyErr.code,
        status,
        code: anyErr.code,
        detail: anyErr.message ?? '',
      };
    }
    return {
      type: 'about:blank',
      title: 'INTERNAL',
      status: 500,
      code: 'INTERNAL',
      detail: 'internal error',
    };
  }
}
