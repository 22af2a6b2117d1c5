import { availableParallelism } from 'node:os';
import * as path from 'node:path';
import { RuntimeError } from './errors';

/**
 * Input validation shared by the runtime, the CLI and the API edge. Pure functions: they throw a
 * RuntimeError with a stable code or return the validated (normalised) value, and touch nothing.
 */

/** DNS label (RFC 1123), lower case only: what DESIGN.md §8 requires of container names. */
const DNS_LABEL = /^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/;

/**
 * Template names: a DNS label that may also hold `.` and `_` inside (`debian-12.7-web`, `alpine_3.20`).
 * They start and end with a letter or digit, so `.`/`..` and hidden names are impossible, and may not hold
 * two dots in a row. Max 63 characters: a template name becomes a directory and a btrfs subvolume name.
 */
const TEMPLATE_NAME = /^[a-z0-9]([a-z0-9._-]{0,61}[a-z0-9])?$/;

/** Linux PID_MAX_LIMIT on 64-bit: a pids.max above it means nothing. */
export const PIDS_MAX_LIMIT = 4_194_304;

function describeValue(value: unknown): string {
  if (typeof value === 'string') return JSON.stringify(value.length > 80 ? `${value.slice(0, 80)}…` : value);
  return String(value);
}

/**
 * Asserts that `name` is a valid container name (a lower-case DNS label, 1–63 characters).
 * @throws RuntimeError INVALID_NAME otherwise (including non-strings).
 */
export function assertContainerName(name: unknown): asserts name is string {
  if (typeof name !== 'string' || !DNS_LABEL.test(name)) {
    throw new RuntimeError(
      'INVALID_NAME',
      `invalid container name ${describeValue(name)}: use 1-63 characters a-z, 0-9 and '-', starting and ending with a letter or digit`,
      { name: typeof name === 'string' ? name : String(name) },
    );
  }
}

/**
 * Asserts that `name` is a valid template name: like a container name, plus `.` and `_` inside, never two
 * dots in a row.
 * @throws RuntimeError INVALID_NAME otherwise (including non-strings).
 */
export function assertTemplateName(name: unknown): asserts name is string {
  if (typeof name !== 'string' || !TEMPLATE_NAME.test(name) || name.includes('..')) {
    throw new RuntimeError(
      'INVALID_NAME',
      `invalid template name ${describeValue(name)}: use 1-63 characters a-z, 0-9, '-', '.', '_', starting and ending with a letter or digit`,
      { name: typeof name === 'string' ? name : String(name) },
    );
  }
}

const UNIT_SHIFT: Record<string, bigint> = { '': 0n, K: 10n, M: 20n, G: 30n, T: 40n, P: 50n, E: 60n };

/**
 * Parses a size into bytes. Accepts a positive safe integer (bytes) or a string: a number (decimals allowed
 * when the result is a whole number of bytes) and an optional binary unit `K`, `M`, `G`, `T`, `P`, `E`
 * written as `M`, `MB`, `MiB` (any case): all units are powers of 1024, `1G` = `1GiB` = `1GB`. A bare
 * number or `B` suffix means bytes.
 * @throws RuntimeError INVALID_SIZE for zero, negatives, fractions of a byte, garbage, or a result above
 *   Number.MAX_SAFE_INTEGER.
 */
export function parseSize(input: unknown): number {
  const bad = (why: string): RuntimeError =>
    new RuntimeError('INVALID_SIZE', `invalid size ${describeValue(input)}: ${why}`, {
      input: String(input),
    });

  if (typeof input === 'number') {
    if (!Number.isSafeInteger(input)) throw bad('bytes must be a whole number up to 2^53-1');
    if (input <= 0) throw bad('must be greater than zero');
    return input;
  }
  if (typeof input !== 'string') throw bad('expected a number of bytes or a string like "512M"');
  const m = /^\s*(\d{1,30})(?:\.(\d{1,30}))?\s*(?:([KMGTPE])(?:I?B)?|B)?\s*$/i.exec(input);
  if (!m)
    throw bad('expected a number with an optional unit K, M, G, T, P, E (binary), e.g. "512M" or "1GiB"');
  const whole = m[1];
  const frac = m[2] ?? '';
  const shift = UNIT_SHIFT[(m[3] ?? '').toUpperCase()];
  // Exact arithmetic in BigInt: "1.5G" is exactly 1610612736, "0.1K" is 102.4 bytes and is refused.
  const scale = 10n ** BigInt(frac.length);
  const numerator = BigInt(whole + frac) << shift;
  if (numerator % scale !== 0n) throw bad('is not a whole number of bytes');
  const bytes = numerator / scale;
  if (bytes <= 0n) throw bad('must be greater than zero');
  if (bytes > BigInt(Number.MAX_SAFE_INTEGER)) throw bad('is too large');
  return Number(bytes);
}

/**
 * Asserts that a byte amount fits the host (e.g. a memory limit no larger than the host's memory).
 * @throws RuntimeError INVALID_SIZE when `bytes` is not a positive safe integer or exceeds `hostBytes`.
 */
export function assertWithinHost(bytes: number, hostBytes: number, what = 'size'): void {
  if (!Number.isSafeInteger(bytes) || bytes <= 0) {
    throw new RuntimeError(
      'INVALID_SIZE',
      `invalid ${what} ${describeValue(bytes)}: must be a positive whole number of bytes`,
      {
        bytes,
      },
    );
  }
  if (bytes > hostBytes) {
    throw new RuntimeError('INVALID_SIZE', `${what} ${bytes} bytes exceeds the host's ${hostBytes} bytes`, {
      bytes,
      hostBytes,
    });
  }
}

/**
 * Asserts a CPU allowance: a finite number greater than 0 (fractions allowed: 0.5 = half a core) and at
 * most the host's cores (default: `os.availableParallelism()`).
 * @throws RuntimeError INVALID_ARGUMENT otherwise.
 */
export function assertCpus(n: unknown, hostCores: number = availableParallelism()): asserts n is number {
  if (typeof n !== 'number' || !Number.isFinite(n) || n <= 0) {
    throw new RuntimeError(
      'INVALID_ARGUMENT',
      `invalid cpus ${describeValue(n)}: must be a number greater than 0`,
      {
        cpus: n,
      },
    );
  }
  // Below 1 ms of quota per 100 ms period the kernel refuses the value (cpu.cfs_quota_us minimum is 1000).
  if (n < 0.01) {
    throw new RuntimeError('INVALID_ARGUMENT', `invalid cpus ${n}: must be at least 0.01`, { cpus: n });
  }
  if (n > hostCores) {
    throw new RuntimeError('INVALID_ARGUMENT', `cpus ${n} exceeds the host's ${hostCores} cores`, {
      cpus: n,
      hostCores,
    });
  }
}

/**
 * Asserts a pids limit: a whole number from 1 to PIDS_MAX_LIMIT (4194304).
 * @throws RuntimeError INVALID_ARGUMENT otherwise.
 */
export function assertPidsMax(n: unknown): asserts n is number {
  if (typeof n !== 'number' || !Number.isSafeInteger(n) || n < 1 || n > PIDS_MAX_LIMIT) {
    throw new RuntimeError(
      'INVALID_ARGUMENT',
      `invalid pids limit ${describeValue(n)}: must be a whole number from 1 to ${PIDS_MAX_LIMIT}`,
      { pidsMax: n },
    );
  }
}

/**
 * Joins relative path parts onto an absolute `root` and guarantees the result stays inside it (or is the
 * root itself). Purely lexical: it does not resolve symlinks, so callers that open the result inside a
 * tree that untrusted code can write (a container rootfs) must still guard against symlinks.
 * @throws RuntimeError INVALID_PATH when the root is not absolute, or a part is not a string, is absolute,
 *   holds a NUL byte or a `..` component, or the result escapes the root.
 */
export function safeJoin(root: string, ...parts: string[]): string {
  const bad = (why: string, part?: unknown): RuntimeError =>
    new RuntimeError('INVALID_PATH', `unsafe path under ${describeValue(root)}: ${why}`, {
      root,
      ...(part === undefined ? {} : { part: String(part) }),
    });
  if (typeof root !== 'string' || !path.isAbsolute(root) || root.includes('\0'))
    throw bad('root must be absolute');
  for (const part of parts) {
    if (typeof part !== 'string') throw bad('path parts must be strings', part);
    if (part.includes('\0')) throw bad('NUL byte in path', part);
    if (path.isAbsolute(part)) throw bad(`absolute part ${describeValue(part)}`, part);
    if (part.split('/').includes('..')) throw bad(`'..' in ${describeValue(part)}`, part);
  }
  const base = path.resolve(root);
  const joined = path.resolve(base, ...parts);
  const inside = joined === base || joined.startsWith(base === '/' ? '/' : `${base}/`);
  if (!inside) throw bad(`${describeValue(joined)} escapes the root`);
  return joined;
}
