import {
  type CallHandler,
  type ExecutionContext,
  HttpStatus,
  Inject,
  Injectable,
  type NestInterceptor,
} from '@nestjs/common';
import { HTTP_CODE_METADATA } from '@nestjs/common/constants';
import { InjectDataSource } from '@nestjs/typeorm';
import { createHash } from 'node:crypto';
import type { Response } from 'express';
import { from, lastValueFrom, type Observable } from 'rxjs';
import type { DataSource } from 'typeorm';
import { BERTH_CONFIG, type BerthConfig } from '@berth/config';
import type { AuthedRequest } from '../auth/principal';
import { ApiError } from '../common/api-error';
import { IdempotencyClaim } from './idempotency-claim';

const KEY_RE = /^[\x21-\x7e]{1,255}$/;
/** An in-flight key older than this belonged to a request that died with its process: it may be taken over. */
const ABANDONED_AFTER_S = 120;

/** Canonical JSON (sorted keys) so that the same body in another key order is the same request. */
function canonical(v: unknown): string {
  if (Array.isArray(v)) return `[${v.map(canonical).join(',')}]`;
  if (v && typeof v === 'object') {
    return `{${Object.keys(v as object)
      .sort()
      .map((k) => `${JSON.stringify(k)}:${canonical((v as Record<string, unknown>)[k])}`)
      .join(',')}}`;
  }
  return JSON.stringify(v ?? null);
}

const UUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

/**
 * What makes two requests the same request, as the handler sees them: the method, the route and its
 * parameters (an id in upper case names the same container; a trailing slash the same route), and the
 * body, where none is the same as `{}` (a client may send either for a body-less action such as a stop).
 */
export function requestIdentity(req: {
  method: string;
  originalUrl: string;
  route?: { path?: unknown };
  params?: Record<string, unknown>;
  body?: unknown;
}): string {
  const route = typeof req.route?.path === 'string' ? req.route.path : null;
  const params = Object.fromEntries(
    Object.entries(req.params ?? {}).map(([k, v]) => [
      k,
      typeof v === 'string' && UUID_RE.test(v) ? v.toLowerCase() : v,
    ]),
  );
  const target = route ? `${route} ${canonical(params)}` : req.originalUrl.split('?')[0];
  return `${req.method} ${target}\n${canonical(req.body ?? {})}`;
}

/**
 * `Idempotency-Key` on POST/PATCH/DELETE: the first request with a key runs and its answer is stored;
 * the same key with the same request gets the stored answer again (Idempotent-Replayed: true); with a
 * different request `422`; while the first is still running `409`. Keys are kept IDEMPOTENCY_TTL_HOURS
 * (≥ 24 h). A request that fails releases its key, so a corrected retry can use it.
 *
 * The key is claimed (`in_flight`) by a statement of its own before the request runs; the answer is
 * stored by the request's own transaction (IdempotencyClaim, on `Principal.idempotency`), so that no crash
 * can leave a job written without its answer. A write whose service does not store it gets it stored
 * here, after its commit: only right for a write that may run twice (every write endpoint stores its own).
 */
@Injectable()
export class IdempotencyInterceptor implements NestInterceptor {
  constructor(
    @InjectDataSource() private readonly ds: DataSource,
    @Inject(BERTH_CONFIG) private readonly config: BerthConfig,
  ) {}

  intercept(ctx: ExecutionContext, next: CallHandler): Observable<unknown> {
    const req = ctx.switchToHttp().getRequest<AuthedRequest>();
    const key = req.headers['idempotency-key'];
    if (!['POST', 'PATCH', 'DELETE'].includes(req.method) || key === undefined || !req.principal) {
      return next.handle();
    }
    return from(this.handle(ctx, next, req, String(key)));
  }

  private async handle(
    ctx: ExecutionContext,
    next: CallHandler,
    req: AuthedRequest,
    key: string,
  ): Promise<unknown> {
    if (!KEY_RE.test(key)) {
      throw new ApiError(
        HttpStatus.BAD_REQUEST,
        'INVALID_IDEMPOTENCY_KEY',
        'Idempotency-Key must be 1-255 printable ASCII characters',
      );
    }
    const res = ctx.switchToHttp().getResponse<Response>();
    const scope = req.principal!.keyId;
    const path = req.originalUrl.split('?')[0];
    const hash = createHash('sha256').update(requestIdentity(req)).digest('hex');
    const token = await this.claim(scope, key, hash, req.method, path);
    if (token === null) {
      const [row] = await this.ds.query(`SELECT * FROM idempotency_keys WHERE scope = $1 AND key = $2`, [
        scope,
        key,
      ]);
      if (!row) return this.handle(ctx, next, req, key); // released meanwhile: try again
      // A key stored before the fingerprint became requestIdentity (2026-12-02) holds the earlier one: a
      // client's retry across that upgrade (keys live ≥ 24 h) is still the same request.
      const before = createHash('sha256')
        .update(`${req.method} ${req.originalUrl}\n${canonical(req.body)}`)
        .digest('hex');
      if (row.request_hash !== hash && row.request_hash !== before) {
        throw new ApiError(
          HttpStatus.UNPROCESSABLE_ENTITY,
          'IDEMPOTENCY_KEY_REUSED',
          'this Idempotency-Key was used with a different request',
        );
      }
      if (row.state === 'in_flight') {
        throw new ApiError(
          HttpStatus.CONFLICT,
          'IDEMPOTENCY_KEY_IN_FLIGHT',
          'a request with this Idempotency-Key is still being processed',
        );
      }
      res.status(row.response_status);
      for (const [h, v] of Object.entries((row.response_headers ?? {}) as Record<string, string>))
        res.setHeader(h, v);
      res.setHeader('Idempotent-Replayed', 'true');
      return row.response_body;
    }
    const status =
      (Reflect.getMetadata(HTTP_CODE_METADATA, ctx.getHandler()) as number | undefined) ??
      (req.method === 'POST' ? 201 : 200);
    const claim = new IdempotencyClaim(scope, key, token, status);
    req.principal!.idempotency = claim;
    try {
      const body = await lastValueFrom(next.handle(), { defaultValue: undefined });
      if (!claim.stored) {
        const location = res.getHeader('Location');
        await claim.store(this.ds, body, location === undefined ? undefined : String(location));
      }
      return body;
    } catch (e) {
      // Only while it is still this request's and in flight: an answer stored in a transaction that
      // committed stays (whatever failed after it), and a key taken over is the other request's.
      await this.ds.query(
        `DELETE FROM idempotency_keys
         WHERE scope = $1 AND key = $2 AND state = 'in_flight' AND created_at = $3::timestamptz`,
        [scope, key, token],
      );
      throw e;
    }
  }

  /**
   * Inserts the key as in flight; its `created_at` (as text, the claim's token) when this request owns it,
   * null when another does. Expired or abandoned keys are replaced.
   */
  private async claim(
    scope: string,
    key: string,
    hash: string,
    method: string,
    path: string,
  ): Promise<string | null> {
    const rows = await this.ds.query(
      `INSERT INTO idempotency_keys (scope, key, request_hash, method, path, state, expires_at)
       VALUES ($1, $2, $3, $4, $5, 'in_flight', now() + make_interval(hours => $6))
       ON CONFLICT (scope, key) DO UPDATE SET request_hash = EXCLUDED.request_hash, method = EXCLUDED.method,
         path = EXCLUDED.path, state = 'in_flight', response_status = NULL, response_headers = NULL,
         response_body = NULL, created_at = now(), expires_at = EXCLUDED.expires_at
       WHERE idempotency_keys.expires_at < now()
          OR (idempotency_keys.state = 'in_flight' AND idempotency_keys.created_at < now() - make_interval(secs => $7))
       RETURNING created_at::text AS token`,
      [scope, key, hash, method, path, this.config.api.idempotencyTtlHours, ABANDONED_AFTER_S],
    );
    return rows.length > 0 ? (rows[0].token as string) : null;
  }
}
