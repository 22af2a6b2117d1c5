import { setTimeout as sleep } from 'node:timers/promises';

/** Retry delays of a failed write: doubling from the first, capped at the last. */
const FIRST_RETRY_MS = 100;
const MAX_RETRY_MS = 5_000;
/** Failed writes after which the fallback is tried too (after ≈ 1.5 s of retries). */
export const FALLBACK_AFTER = 5;

/**
 * SQLSTATE classes of errors that say nothing against the write itself: connection trouble (08),
 * transaction rollback such as a deadlock or a serialization failure (40), insufficient resources (53),
 * operator intervention such as a shutdown or a restart (57), system errors (58).
 */
const TRANSIENT_CLASSES = new Set(['08', '40', '53', '57', '58']);

/**
 * Whether PostgreSQL answered the write and refused it (a constraint, a trigger, bad data): an error
 * PostgreSQL sent (node-postgres's DatabaseError: it has a `severity`; TypeORM wraps it as `driverError`)
 * with a SQLSTATE outside TRANSIENT_CLASSES. Node's own errors (a connection lost, refused, timed out,
 * EPIPE: five characters too) are no refusal: the write may even have committed.
 */
export function refusedByPostgres(err: unknown): boolean {
  type PgError = { code?: unknown; severity?: unknown };
  const e = err as (PgError & { driverError?: PgError }) | null;
  const sent = typeof e?.severity === 'string' ? e : e?.driverError;
  const code = typeof sent?.severity === 'string' ? sent.code : undefined;
  return typeof code === 'string' && /^[0-9A-Z]{5}$/.test(code) && !TRANSIENT_CLASSES.has(code.slice(0, 2));
}

interface Log {
  warn(obj: object, msg: string): void;
}

/**
 * Writes made behind the worker's slots: a job's completion is handed here and the slot takes its next job
 * while Postgres commits it (the completion's statement is shared with other slots' claims and completions,
 * see JobStore.writes). A write that fails is retried (doubling delays up to 5 s) for as long as the process
 * lives; from the FALLBACK_AFTER-th failure on, each round whose error is PostgreSQL's refusal of the
 * write (refusedByPostgres: not a lost connection, a restart, a deadlock) also tries the `fallback` write
 * (recording the job as failed) and stops once either succeeds. A job whose end was written while its
 * answer got lost, or could not be written while PostgreSQL was away, is not recorded as failed. `drain`
 * waits for what is pending, at shutdown. A write lost with the process (a kill, or Postgres away until the
 * end of the shutdown grace) leaves the job `active` with its BullMQ job ended: the next worker's start-up
 * sweep puts it back in the queue (JobRunner.sweep).
 */
export class WrittenBehind {
  /** Every write in progress (a job redelivered while its first end is still retrying has two). */
  private readonly pending = new Set<Promise<void>>();

  constructor(private readonly log: Log) {}

  /**
   * Starts `write` for job `id` (its errors are logged, never thrown); see the class for `fallback`.
   * Answers when it (or the fallback) is written: a caller that must not go on before may await it.
   * `refused` tells an error that will not go away by itself (default: refusedByPostgres).
   */
  add(
    id: string,
    write: () => Promise<void>,
    fallback?: (lastError: unknown) => Promise<void>,
    refused: (err: unknown) => boolean = refusedByPostgres,
  ): Promise<void> {
    const run = async () => {
      for (let n = 0; ; n++) {
        try {
          await write();
          return;
        } catch (err) {
          if (fallback && n + 1 >= FALLBACK_AFTER && refused(err)) {
            try {
              await fallback(err);
              this.log.warn({ err, jobId: id }, 'completion refused, recorded the fallback instead');
              return;
            } catch (e) {
              this.log.warn({ err: e, jobId: id }, 'fallback written behind failed too');
            }
          }
          const retryMs = Math.min(FIRST_RETRY_MS * 2 ** n, MAX_RETRY_MS);
          this.log.warn({ err, jobId: id, retryMs }, "a job's record written behind failed, retrying");
          await sleep(retryMs);
        }
      }
    };
    const p: Promise<void> = run().finally(() => this.pending.delete(p));
    this.pending.add(p);
    return p;
  }

  /** The writes pending. */
  get size(): number {
    return this.pending.size;
  }

  /** Waits for every pending write (and those added meanwhile), or until `timeoutMs`: answers how many are left. */
  async drain(timeoutMs: number): Promise<number> {
    const deadline = Date.now() + timeoutMs;
    while (this.pending.size > 0 && Date.now() < deadline) {
      let timer: NodeJS.Timeout | undefined;
      const timeout = new Promise<void>((r) => (timer = setTimeout(r, deadline - Date.now())));
      await Promise.race([Promise.all(this.pending.values()), timeout]);
      clearTimeout(timer);
    }
    return this.pending.size;
  }
}
