import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { envSchema, type Env } from './config.schema';

/** The typed, nested configuration object that every app and library receives. */
export interface BerthConfig {
  env: Env['NODE_ENV'];
  logLevel: Env['LOG_LEVEL'];
  database: { url: string };
  redis: { url: string; bullPrefix: string };
  api: {
    host: string;
    port: number;
    adminKeyFile: string;
    bodyLimitBytes: number;
    idempotencyTtlHours: number;
    sseKeepAliveMs: number;
  };
  outbox: { pollMs: number };
  host: {
    name: string;
    heartbeatIntervalMs: number;
    offlineAfterMs: number;
  };
  worker: {
    /** Jobs run at once. */
    concurrency: number;
    /** Jobs taken from the queue and claimed ahead of a free slot. */
    prefetch: number;
    shutdownGraceMs: number;
    lockMs: number;
    /** Runs a job may lose to a dead worker before it fails (WORKER_LOST). */
    maxStalled: number;
    /** Period of the look for pending jobs whose BullMQ job ended or is gone (JobRunner.sweep). */
    sweepIntervalMs: number;
    /** Period of the comparison of the host's settled containers with the kernel (ContainerObserver). */
    observeIntervalMs: number;
    /** Prometheus metrics of the worker; port 0: off. */
    metrics: { host: string; port: number };
  };
  runtime: {
    dataRoot: string;
    cgroupParent: string;
    storageDriver: Env['BERTH_STORAGE_DRIVER'];
    network: {
      mode: Env['BERTH_NETWORK_MODE'];
      bridge: string;
      cidr: string;
      hostNetns?: string;
      allowIpForward: boolean;
    };
  };
}

export class ConfigError extends Error {
  constructor(readonly problems: { variable: string; message: string }[]) {
    super(`invalid configuration:\n${problems.map((p) => `  ${p.variable}: ${p.message}`).join('\n')}`);
    this.name = 'ConfigError';
  }
}

/**
 * The project-local PostgreSQL (scripts/services.sh) as the app role, with the password services.sh made
 * in `<state dir>/pg-password`; the old fixed `berth` where there is no such file (nothing set up here).
 */
function localDatabaseUrl(port: number, stateDir = join(process.cwd(), '.berth')): string {
  let password = 'berth';
  const file = join(stateDir, 'pg-password');
  try {
    password = readFileSync(file, 'utf8').trim() || password;
  } catch (e) {
    // No local cluster made by services.sh in this state dir: the old default. Any other failure (not
    // allowed to read it: not root) is said plainly rather than ending in a failed login.
    if ((e as NodeJS.ErrnoException).code !== 'ENOENT')
      throw new ConfigError([
        { variable: 'DATABASE_URL', message: `unset, and ${file} cannot be read: ${(e as Error).message}` },
      ]);
  }
  return `postgres://berth:${encodeURIComponent(password)}@127.0.0.1:${port}/berth`;
}

/** Validates the environment once; throws ConfigError naming every bad variable. */
export function loadConfig(source: NodeJS.ProcessEnv = process.env): BerthConfig {
  // Empty strings mean "unset" (a blank line in an env file must not override a default).
  const env = Object.fromEntries(Object.entries(source).filter(([, v]) => v !== undefined && v !== ''));
  const parsed = envSchema.safeParse(env);
  if (!parsed.success) {
    throw new ConfigError(
      parsed.error.issues.map((i) => ({ variable: String(i.path[0] ?? '?'), message: i.message })),
    );
  }
  const e = parsed.data;
  return {
    env: e.NODE_ENV,
    logLevel: e.LOG_LEVEL,
    database: { url: e.DATABASE_URL ?? localDatabaseUrl(e.BERTH_PG_PORT, e.BERTH_STATE_DIR) },
    redis: { url: e.REDIS_URL ?? `redis://127.0.0.1:${e.BERTH_REDIS_PORT}`, bullPrefix: e.BULLMQ_PREFIX },
    api: {
      host: e.API_HOST,
      port: e.API_PORT,
      adminKeyFile: e.ADMIN_KEY_FILE,
      bodyLimitBytes: e.API_BODY_LIMIT_BYTES,
      idempotencyTtlHours: e.IDEMPOTENCY_TTL_HOURS,
      sseKeepAliveMs: e.API_SSE_KEEPALIVE_MS,
    },
    outbox: { pollMs: e.OUTBOX_POLL_MS },
    host: {
      name: e.BERTH_HOST_NAME,
      heartbeatIntervalMs: e.HEARTBEAT_INTERVAL_MS,
      offlineAfterMs: e.HOST_OFFLINE_AFTER_MS,
    },
    worker: {
      concurrency: e.WORKER_CONCURRENCY,
      prefetch: e.WORKER_PREFETCH ?? e.WORKER_CONCURRENCY,
      shutdownGraceMs: e.SHUTDOWN_GRACE_MS,
      lockMs: e.WORKER_LOCK_MS,
      maxStalled: e.WORKER_MAX_STALLED,
      sweepIntervalMs: e.WORKER_SWEEP_INTERVAL_MS,
      observeIntervalMs: e.WORKER_OBSERVE_INTERVAL_MS ?? e.HEARTBEAT_INTERVAL_MS,
      metrics: { host: e.WORKER_METRICS_HOST, port: e.WORKER_METRICS_PORT },
    },
    runtime: {
      dataRoot: e.BERTH_DATA_ROOT,
      cgroupParent: e.BERTH_CGROUP_PARENT,
      storageDriver: e.BERTH_STORAGE_DRIVER,
      network: {
        mode: e.BERTH_NETWORK_MODE,
        bridge: e.BERTH_BRIDGE,
        cidr: e.BERTH_BRIDGE_CIDR,
        hostNetns: e.BERTH_HOST_NETNS,
        allowIpForward: e.BERTH_ALLOW_IP_FORWARD,
      },
    },
  };
}
