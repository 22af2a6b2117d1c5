import { createParamDecorator, type ExecutionContext, SetMetadata } from '@nestjs/common';
import type { Request } from 'express';
import type { IdempotencyClaim } from '../idempotency/idempotency-claim';

/** Who is calling: the API key's id (the audit trail's actor), its tenant and scopes. */
export interface Principal {
  keyId: string;
  tenantId: string | null;
  scopes: string[];
  /** The request id (X-Request-Id), for the audit trail. */
  requestId: string;
  /**
   * The request's Idempotency-Key, when it has one: a write stores its answer with it inside its own
   * transaction (see IdempotencyClaim).
   */
  idempotency?: IdempotencyClaim;
}

export type AuthedRequest = Request & { principal?: Principal; id?: string };

export const IS_PUBLIC = 'berth:public';
/** Marks an endpoint that needs no API key (health only). */
export const Public = () => SetMetadata(IS_PUBLIC, true);

export const ADMIN_ONLY = 'berth:admin-only';
/** Marks an endpoint only admin keys (scope `admin`) may call: others get 403. */
export const AdminOnly = () => SetMetadata(ADMIN_ONLY, true);

/** Whether the key has the `admin` scope (the key made at first start has it; tenant keys will not). */
export const isAdmin = (p: Principal): boolean => p.scopes.includes('admin');

export const CurrentPrincipal = createParamDecorator((_: unknown, ctx: ExecutionContext): Principal => {
  const req = ctx.switchToHttp().getRequest<AuthedRequest>();
  if (!req.principal) throw new Error('no principal on an authenticated route');
  return req.principal;
});
