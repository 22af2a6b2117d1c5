import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';

/**
 * API keys look like `berth_<prefix>_<secret>`: the prefix (12 hex chars) is stored in clear to find the
 * row, the secret (256 random bits) only as its SHA-256 (a slow KDF buys nothing for random secrets).
 */
export interface GeneratedKey {
  token: string;
  prefix: string;
  secretHash: string;
}

export function generateApiKey(): GeneratedKey {
  const prefix = randomBytes(6).toString('hex');
  const secret = randomBytes(32).toString('base64url');
  return { token: `berth_${prefix}_${secret}`, prefix, secretHash: hashSecret(secret) };
}

export function hashSecret(secret: string): string {
  return createHash('sha256').update(secret).digest('hex');
}

/** Splits a bearer token; null when it does not have the shape of a Berth key. */
export function parseApiKey(token: string): { prefix: string; secret: string } | null {
  const m = /^berth_([0-9a-f]{12})_([A-Za-z0-9_-]{43})$/.exec(token);
  return m ? { prefix: m[1], secret: m[2] } : null;
}

export function secretMatches(secret: string, storedHash: string): boolean {
  const a = Buffer.from(hashSecret(secret), 'hex');
  const b = Buffer.from(storedHash, 'hex');
  return a.length === b.length && timingSafeEqual(a, b);
}
