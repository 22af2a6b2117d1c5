import { type CanActivate, type ExecutionContext, HttpStatus, Injectable } from '@nestjs/common';
import { Reflector } from '@nestjs/core';
import { ApiError } from '../common/api-error';
import { ApiKeyService, bearerToken } from './api-key.service';
import { ADMIN_ONLY, type AuthedRequest, IS_PUBLIC, isAdmin } from './principal';

/** The answer to a request without a valid API key (missing, malformed, unknown or revoked). */
export function unauthorized(): ApiError {
  return new ApiError(
    HttpStatus.UNAUTHORIZED,
    'UNAUTHORIZED',
    'a valid API key is required (Authorization: Bearer …)',
  );
}

/**
 * Every endpoint needs `Authorization: Bearer <api key>`, except those marked @Public (health); those
 * marked @AdminOnly (metrics) need an admin key.
 */
@Injectable()
export class AuthGuard implements CanActivate {
  constructor(
    private readonly reflector: Reflector,
    private readonly keys: ApiKeyService,
  ) {}

  async canActivate(ctx: ExecutionContext): Promise<boolean> {
    if (this.reflector.getAllAndOverride<boolean>(IS_PUBLIC, [ctx.getHandler(), ctx.getClass()])) return true;
    const req = ctx.switchToHttp().getRequest<AuthedRequest>();
    const token = bearerToken(req.headers.authorization);
    // Usually looked up already while the body was read (ApiKeyService.lookupEarly).
    const principal = token ? await this.keys.principalFor(req, token, String(req.id ?? '')) : null;
    if (!principal) throw unauthorized();
    if (
      !isAdmin(principal) &&
      this.reflector.getAllAndOverride<boolean>(ADMIN_ONLY, [ctx.getHandler(), ctx.getClass()])
    ) {
      throw new ApiError(HttpStatus.FORBIDDEN, 'FORBIDDEN', 'this endpoint needs an admin API key');
    }
    req.principal = principal;
    return true;
  }
}
