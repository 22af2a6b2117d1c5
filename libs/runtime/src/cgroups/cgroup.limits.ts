import { InvalidArgumentError } from '../common/errors';
import { CgroupLimits } from './cgroup.driver';

/** CFS period for cpu quotas, in microseconds (the kernel's default). */
export const CPU_PERIOD_US = 100_000;
const MIN_QUOTA_US = 1_000; // the kernel refuses quotas below 1 ms
const MIN_MEMORY_BYTES = 1024 * 1024;
const MAX_CPUS = 4096;

/** Checks every given limit and throws INVALID_ARGUMENT naming the first bad one. */
export function validateLimits(limits: CgroupLimits): CgroupLimits {
  const bad = (name: string, value: unknown, rule: string) =>
    new InvalidArgumentError(`invalid cgroup limit ${name}=${String(value)}: ${rule}`, {
      limit: name,
      value,
    });
  const { cpus, cpuWeight, memoryBytes, pidsMax, ioWeight } = limits;
  if (cpus !== undefined && cpus !== null && !(Number.isFinite(cpus) && cpus > 0 && cpus <= MAX_CPUS)) {
    throw bad('cpus', cpus, `must be > 0 and ≤ ${MAX_CPUS} cores, or null for unlimited`);
  }
  for (const [name, w] of [
    ['cpuWeight', cpuWeight],
    ['ioWeight', ioWeight],
  ] as const) {
    if (w !== undefined && !(Number.isInteger(w) && w >= 1 && w <= 10_000)) {
      throw bad(name, w, 'must be an integer from 1 to 10000');
    }
  }
  if (
    memoryBytes !== undefined &&
    memoryBytes !== null &&
    !(Number.isSafeInteger(memoryBytes) && memoryBytes >= MIN_MEMORY_BYTES)
  ) {
    throw bad(
      'memoryBytes',
      memoryBytes,
      `must be an integer ≥ ${MIN_MEMORY_BYTES} bytes, or null for unlimited`,
    );
  }
  if (pidsMax !== undefined && pidsMax !== null && !(Number.isSafeInteger(pidsMax) && pidsMax >= 1)) {
    throw bad('pidsMax', pidsMax, 'must be an integer ≥ 1, or null for unlimited');
  }
  return limits;
}

/** Fractional cores → CFS quota in µs per CPU_PERIOD_US. */
export function cpusToQuotaUs(cpus: number): number {
  return Math.max(MIN_QUOTA_US, Math.round(cpus * CPU_PERIOD_US));
}

/**
 * cgroup v2 weight (1..10000, default 100) → v1 cpu.shares (2..262144, default 1024). Proportional, so
 * the defaults meet (100 ↔ 1024) and relative weights between containers are preserved; runc's linear
 * range mapping would turn the default weight 100 into 2597 shares.
 */
export function cpuWeightToShares(weight: number): number {
  return Math.min(262_144, Math.max(2, Math.round((weight * 1024) / 100)));
}

/** v2 io weight (1..10000, default 100) → v1 blkio weight (10..1000, default 500). */
export function ioWeightToBlkioWeight(weight: number): number {
  return Math.min(1000, Math.max(10, Math.round((weight * 500) / 100)));
}
