import { hostname } from 'node:os';
import { z } from 'zod';

/**
 * Every environment variable Berth reads, declared once. Defaults are for local mode (scripts/services.sh).
 * Nothing else in the code base reads process.env.
 */
const bool = z
  .enum(['true', 'false', '1', '0', 'yes', 'no'])
  .transform((v) => v === 'true' || v === '1' || v === 'yes');
const int = (min: number, max: number) => z.coerce.number().int().min(min).max(max);
const url = (protocols: string[]) =>
  z.string().refine(
    (v) => {
      try {
        return protocols.includes(new URL(v).protocol);
      } catch {
        return false;
      }
    },
    `must be a URL with protocol ${protocols.join(' or ')}`,
  );

/** The variables, each with its check and default (envSchema adds the checks across them). */
export const envShape = z.object({
  NODE_ENV: z.enum(['development', 'production', 'test']).default('development'),
  LOG_LEVEL: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']).default('info'),
  /** Ports of the project-local services (scripts/services.sh); the default URLs point at them. */
  BERTH_PG_PORT: int(1, 65535).default(5433),
  BERTH_REDIS_PORT: int(1, 65535).default(6380),
  /**
   * Default: the project-local PostgreSQL on BERTH_PG_PORT, as the app role `berth` with the password that
   * scripts/services.sh made (`<BERTH_STATE_DIR>/pg-password`, 0600).
   */
  DATABASE_URL: url(['postgres:', 'postgresql:']).optional(),
  /** The project-local state (scripts/services.sh): default `.berth` in the working directory. */
  BERTH_STATE_DIR: z
    .string()
    .refine((v) => v.startsWith('/'), 'must be an absolute path')
    .optional(),
  /** Default: the project-local Redis on BERTH_REDIS_PORT. */
  REDIS_URL: url(['redis:', 'rediss:']).optional(),
  /** Key prefix of every BullMQ queue (separates deployments, or test runs, sharing one Redis). */
  BULLMQ_PREFIX: z
    .string()
    .regex(/^[a-z0-9_-]{1,32}$/, 'must be 1-32 of a-z 0-9 _ -')
    .default('berth'),
  API_HOST: z.string().min(1).default('127.0.0.1'),
  API_PORT: int(1, 65535).default(8080),
  /** Where the API writes the admin key it creates on first start (0600). */
  ADMIN_KEY_FILE: z
    .string()
    .refine((v) => v.startsWith('/'), 'must be an absolute path')
    .default('/var/lib/berth/admin.key'),
  /** Largest accepted request body. */
  API_BODY_LIMIT_BYTES: int(1_024, 10_485_760).default(65_536),
  /**
   * A comment line sent on an idle Server-Sent Events stream this often, so that proxies and load
   * balancers (which close connections idle for 30-60 s) keep a long job's stream open.
   */
  API_SSE_KEEPALIVE_MS: int(100, 600_000).default(15_000),
  /** Outbox relay safety-net poll (it is woken by LISTEN/NOTIFY first). */
  OUTBOX_POLL_MS: int(50, 600_000).default(2_000),
  /** How long Idempotency-Key answers are kept. */
  IDEMPOTENCY_TTL_HOURS: int(24, 24 * 30).default(24),
  BERTH_HOST_NAME: z
    .string()
    .regex(/^[a-z0-9]([a-z0-9.-]{0,61}[a-z0-9])?$/, 'must be a lowercase DNS name')
    .default(hostname().toLowerCase()),
  BERTH_DATA_ROOT: z
    .string()
    .refine((v) => v.startsWith('/') && !v.split('/').includes('..'), 'must be an absolute path without ..')
    .default('/var/lib/berth'),
  BERTH_CGROUP_PARENT: z
    .string()
    .regex(/^berth[a-z0-9_.-]*$/, 'must start with "berth" (everything Berth owns carries that prefix)')
    .default('berth'),
  BERTH_STORAGE_DRIVER: z.enum(['auto', 'btrfs', 'overlay', 'dir']).default('auto'),
  BERTH_NETWORK_MODE: z.enum(['none', 'bridge']).default('none'),
  BERTH_BRIDGE: z
    .string()
    .regex(/^berth[a-z0-9]{0,10}$/, 'must be "berth" + up to 10 lowercase letters/digits')
    .default('berth0'),
  BERTH_BRIDGE_CIDR: z
    .string()
    .regex(/^\d{1,3}(\.\d{1,3}){3}\/\d{1,2}$/, 'must be an IPv4 CIDR like 10.88.0.0/24')
    .default('10.88.0.0/24'),
  BERTH_HOST_NETNS: z
    .string()
    .regex(/^berth[a-z0-9_.-]*$/, 'must be a berth-prefixed netns name')
    .optional(),
  /** Operator opt-in only: Berth never turns on forwarding/NAT by itself. */
  BERTH_ALLOW_IP_FORWARD: bool.default(false),
  HEARTBEAT_INTERVAL_MS: int(100, 600_000).default(5_000),
  HOST_OFFLINE_AFTER_MS: int(1_000, 3_600_000).default(30_000),
  /** Jobs a worker runs at once (handlers against the runtime). */
  WORKER_CONCURRENCY: int(1, 256).default(4),
  /**
   * Jobs a worker takes from its queue and claims ahead of a free slot (default: WORKER_CONCURRENCY), so a
   * slot that frees does not wait for the next job's claim round trip; 0 turns it off.
   */
  WORKER_PREFETCH: int(0, 256).optional(),
  /** BullMQ job lock (renewed while a job runs); a crashed worker's jobs are retried after it expires. */
  WORKER_LOCK_MS: int(1_000, 600_000).default(30_000),
  SHUTDOWN_GRACE_MS: int(0, 600_000).default(30_000),
  /**
   * Times a job may lose its worker mid-run (a kill, a crash: its lock lapses) and be run again; once more
   * and BullMQ fails it, and Berth records it as failed (WORKER_LOST) instead of running it again.
   */
  WORKER_MAX_STALLED: int(0, 100).default(5),
  /**
   * How often a running worker looks again for its host's pending jobs whose BullMQ job has ended or is
   * gone (what it does at start: a write Redis lost, a job's end its PostgreSQL refused until it gave up).
   */
  WORKER_SWEEP_INTERVAL_MS: int(1_000, 3_600_000).default(60_000),
  /**
   * How often a worker compares its host's stopped, running and paused containers with the kernel (a
   * container powered off from inside, an init killed by the OOM killer); default: HEARTBEAT_INTERVAL_MS.
   */
  WORKER_OBSERVE_INTERVAL_MS: int(100, 3_600_000).optional(),
  /** Where the worker serves its Prometheus metrics (`GET /metrics`); port 0: not served. */
  WORKER_METRICS_HOST: z.string().min(1).default('127.0.0.1'),
  WORKER_METRICS_PORT: int(0, 65535).default(0),
});

export const envSchema = envShape.superRefine((e, ctx) => {
  // A live worker must never look offline: two heartbeats at least within the offline threshold (the
  // worker and the API read the same variables; a mismatch made healthy hosts flap offline).
  if (e.HEARTBEAT_INTERVAL_MS * 2 > e.HOST_OFFLINE_AFTER_MS)
    ctx.addIssue({
      code: 'custom',
      path: ['HEARTBEAT_INTERVAL_MS'],
      message: `must be at most half of HOST_OFFLINE_AFTER_MS (${e.HOST_OFFLINE_AFTER_MS} ms): a live host would look offline between heartbeats`,
    });
});

export type Env = z.infer<typeof envSchema>;
