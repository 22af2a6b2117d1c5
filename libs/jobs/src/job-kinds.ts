import { z } from 'zod';

/**
 * The one registry of job kinds and their payloads (immich's JobName + JobItem). The API validates a payload
 * with these schemas before it writes the job; the worker validates again before it runs it.
 */
export const JOB_KINDS = [
  'container.create',
  'container.start',
  'container.stop',
  'container.restart',
  'container.pause',
  'container.resume',
  'container.resize',
  'container.snapshot',
  'container.destroy',
  'template.import',
  'system.noop',
] as const;
export type JobKind = (typeof JOB_KINDS)[number];

export const resourcesSchema = z.strictObject({
  cpus: z.number().positive().max(1024),
  memoryBytes: z.number().int().positive(),
  pidsMax: z.number().int().positive(),
});

const containerRef = { containerId: z.uuid(), name: z.string() };

export const jobPayloadSchemas = {
  'container.create': z.strictObject({
    ...containerRef,
    template: z.string(),
    resources: resourcesSchema,
    network: z.strictObject({ mode: z.enum(['none', 'bridge']) }),
    privileged: z.boolean(),
    start: z.boolean(),
  }),
  'container.start': z.strictObject(containerRef),
  'container.stop': z.strictObject({
    ...containerRef,
    timeoutMs: z.number().int().min(0).max(600_000).optional(),
  }),
  'container.restart': z.strictObject(containerRef),
  'container.pause': z.strictObject(containerRef),
  'container.resume': z.strictObject(containerRef),
  'container.resize': z.strictObject({ ...containerRef, resources: resourcesSchema.partial() }),
  'container.snapshot': z.strictObject({ ...containerRef, snapshot: z.string() }),
  'container.destroy': z.strictObject(containerRef),
  'template.import': z.strictObject({
    templateId: z.uuid(),
    name: z.string(),
    source: z.union([
      z.strictObject({ type: z.literal('builtin'), builder: z.literal('busybox') }),
      z.strictObject({ type: z.literal('tarball'), path: z.string() }),
    ]),
  }),
  'system.noop': z.strictObject({
    n: z.number().int().optional(),
    /** Holds its worker slot this long (tests and the bench see a host's slots at work). */
    holdMs: z.number().int().min(0).max(60_000).optional(),
    /**
     * With `holdMs`: the hold ends early once the file `<data root>/noop-gates/<gate>` exists (a test opens
     * the gate when it is ready, instead of racing a fixed hold).
     */
    gate: z
      .string()
      .regex(/^[a-z0-9][a-z0-9-]{0,62}$/)
      .optional(),
  }),
} satisfies Record<JobKind, z.ZodType>;

export type JobPayload<K extends JobKind> = z.infer<(typeof jobPayloadSchemas)[K]>;
export type AnyJobPayload = { [K in JobKind]: { kind: K; payload: JobPayload<K> } }[JobKind];

/** The BullMQ job data: our job id (also the BullMQ jobId), kind and payload. */
export interface QueuedJobData {
  jobId: string;
  kind: JobKind;
  payload: Record<string, unknown>;
}

export function isJobKind(v: unknown): v is JobKind {
  return typeof v === 'string' && (JOB_KINDS as readonly string[]).includes(v);
}

/** Validates a payload for its kind; throws a ZodError describing every problem. */
export function parseJobPayload<K extends JobKind>(kind: K, payload: unknown): JobPayload<K> {
  return jobPayloadSchemas[kind].parse(payload) as JobPayload<K>;
}

/** What a host's queue name starts with (the API's enqueue statement builds the names in SQL too). */
export const HOST_QUEUE_PREFIX = 'host-';

/** The queue of a host: each worker consumes only its own. */
export function hostQueueName(hostId: string): string {
  return `${HOST_QUEUE_PREFIX}${hostId}`;
}
