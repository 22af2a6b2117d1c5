import { Inject, Injectable, Logger, type OnApplicationBootstrap } from '@nestjs/common';
import { InjectDataSource } from '@nestjs/typeorm';
import type { NextFunction, Request, RequestHandler, Response } from 'express';
import { mkdir, writeFile } from 'node:fs/promises';
import { dirname } from 'node:path';
import type { DataSource } from 'typeorm';
import { BERTH_CONFIG, type BerthConfig } from '@berth/config';
import { appendAudit, preparedQuery } from '@berth/db';
import { generateApiKey, parseApiKey, secretMatches } from './api-keys';
import type { Principal } from './principal';

/** What a key grants, as found by its lookup (a request's Principal adds the request's own fields). */
export type KeyGrant = Pick<Principal, 'keyId' | 'tenantId' | 'scopes'>;

/** The lookup started for a request as its headers arrived (ApiKeyService.lookupEarly). */
const EARLY = Symbol('berth.earlyKeyLookup');
type WithEarlyLookup = Request & { [EARLY]?: { token: string; grant: Promise<KeyGrant | null> } };

/** The token of an `Authorization: Bearer …` header, else null. */
export function bearerToken(header: string | undefined): string | null {
  const m = /^Bearer\s+(\S+)$/i.exec(header ?? '');
  return m ? m[1] : null;
}

/** Verifies API keys and, on the very first start, creates the admin key (local mode). */
@Injectable()
export class ApiKeyService implements OnApplicationBootstrap {
  private readonly log = new Logger(ApiKeyService.name);

  constructor(
    @InjectDataSource() private readonly ds: DataSource,
    @Inject(BERTH_CONFIG) private readonly config: BerthConfig,
  ) {}

  /**
   * Express middleware, mounted first: starts looking up a request's bearer key as soon as its headers are
   * in, so that the PostgreSQL round trip runs while the body is read and parsed; the guard then awaits it
   * (`principalFor`). A request refused before the guard (bad body, unknown route) leaves the answer
   * unused. The lookup reads the key's current row, as the guard's own would: a revocation is seen by
   * every request whose headers arrive after it commits.
   */
  lookupEarly(): RequestHandler {
    return (req: Request, _res: Response, next: NextFunction) => {
      const token = bearerToken(req.headers.authorization);
      if (token) {
        const grant = this.lookup(token);
        // Handled here too: a request refused before its guard never awaits it.
        grant.catch(() => undefined);
        (req as WithEarlyLookup)[EARLY] = { token, grant };
      }
      next();
    };
  }

  /**
   * The principal of `token` for `req` (the early lookup's answer when it looked up this token), or null
   * when the token is unknown, malformed or revoked.
   */
  async principalFor(req: Request, token: string, requestId: string): Promise<Principal | null> {
    const early = (req as WithEarlyLookup)[EARLY];
    const grant = await (early?.token === token ? early.grant : this.lookup(token));
    return grant && { ...grant, requestId };
  }

  /** Whether `req` carries a valid API key (its early lookup's answer when there is one). */
  async authenticates(req: Request): Promise<boolean> {
    const token = bearerToken(req.headers.authorization);
    return token !== null && (await this.principalFor(req, token, '')) !== null;
  }

  /** What a bearer token grants, or null when it is unknown, malformed or revoked. */
  private async lookup(token: string): Promise<KeyGrant | null> {
    const parsed = parseApiKey(token);
    if (!parsed) return null;
    // Every request asks this: a prepared statement (parsed and planned once per connection).
    const rows = await preparedQuery<{
      id: string;
      tenant_id: string | null;
      scopes: string[];
      secret_hash: string;
    }>(
      this.ds,
      `SELECT id, tenant_id, scopes, secret_hash FROM api_keys WHERE prefix = $1 AND revoked_at IS NULL`,
      [parsed.prefix],
    );
    const row = rows[0];
    if (!row || !secretMatches(parsed.secret, row.secret_hash)) return null;
    return { keyId: row.id, tenantId: row.tenant_id, scopes: row.scopes };
  }

  /**
   * First start: when no key exists, create an admin key and write it (0600) where the CLI, the README's
   * commands and tests read it. Two APIs starting at once create one key (advisory lock).
   */
  async onApplicationBootstrap(): Promise<void> {
    try {
      await this.bootstrapAdminKey();
    } catch (e) {
      // Postgres may be down at boot; readiness says so. The key is created on a later start.
      this.log.warn(`admin key bootstrap skipped: ${e instanceof Error ? e.message : String(e)}`);
    }
  }

  async bootstrapAdminKey(): Promise<string | null> {
    return this.ds.transaction(async (m) => {
      await m.query(`SELECT pg_advisory_xact_lock(hashtext('berth.admin-key'))`);
      const [{ count }] = await m.query(`SELECT count(*)::int AS count FROM api_keys`);
      if (count > 0) return null;
      const key = generateApiKey();
      const [{ id }] = await m.query(
        `INSERT INTO api_keys (name, prefix, secret_hash, scopes) VALUES ('admin', $1, $2, '{admin}') RETURNING id`,
        [key.prefix, key.secretHash],
      );
      await appendAudit(m, {
        actor: 'system:api',
        action: 'api_key.created',
        subjectType: 'api_key',
        subjectId: id,
        data: { name: 'admin', scopes: ['admin'], bootstrap: true },
      });
      const file = this.config.api.adminKeyFile;
      await mkdir(dirname(file), { recursive: true, mode: 0o700 });
      await writeFile(file, `${key.token}\n`, { mode: 0o600 });
      this.log.log(`created the admin API key (first start); it is in ${file}`);
      return key.token;
    });
  }
}
