import {
  type BeforeApplicationShutdown,
  Injectable,
  Logger,
  type OnApplicationBootstrap,
  type OnApplicationShutdown,
} from '@nestjs/common';
import { InjectDataSource } from '@nestjs/typeorm';
import { EventEmitter, setMaxListeners } from 'node:events';
import { types } from 'pg';
import type { DataSource } from 'typeorm';
import { PgListener, preparedQuery } from '@berth/db';
import type { JobRow } from './job-view';

/** How often the followed jobs are looked at, all in one query (the safety net for a lost notification). */
export const SWEEP_MS = 1_000;
/** Job ids per look (a bound on the statement's parameter, whatever the number of followers). */
const SWEEP_CHUNK = 1_000;
/** A job's mark: its state, `updated_at` and last audit event (a step record touches only the latter). */
const SWEEP = `SELECT j.id, j.state || ' ' || j.updated_at::text || ' ' ||
       COALESCE((SELECT max(a.id) FROM audit_events a WHERE a.job_id = j.id), 0) AS at
FROM jobs j WHERE j.id = ANY($1::uuid[])`;

/**
 * `berth_job` notifications (a trigger on the audit events of jobs sends them at commit, with the event's
 * action; the worker's `job.active` mark is silent, see migration JobActiveSilent), fanned out to waiters by job id:
 * long-polls and event streams wake at once instead of polling the database. On the process's shared
 * LISTEN connection (PgListener).
 *
 * A notification can be lost (sent while the LISTEN connection was down): every SWEEP_MS, and when the
 * connection is back, one query looks at all the followed jobs and wakes the followers of those that
 * changed (state, `updated_at` or a new audit event) since the last look, or are seen for the first time.
 * The database sees one query per tick, not one per follower.
 */
@Injectable()
export class JobNotifications
  implements OnApplicationBootstrap, BeforeApplicationShutdown, OnApplicationShutdown
{
  private readonly log = new Logger(JobNotifications.name);
  private readonly stopping = new AbortController();
  private readonly emitter = new EventEmitter();
  /** Each followed job's mark (state, `updated_at`, last audit event) at the last sweep. */
  private readonly seen = new Map<string, string>();
  private sweeping = false;
  private timer?: NodeJS.Timeout;
  private stop?: () => void;

  constructor(
    private readonly listener: PgListener,
    @InjectDataSource() private readonly ds: DataSource,
  ) {
    this.emitter.setMaxListeners(0);
    // Every long-poll and event stream listens to it.
    setMaxListeners(0, this.stopping.signal);
  }

  onApplicationBootstrap(): void {
    this.stop = this.listener.listen('berth_job', {
      notify: (payload) => {
        // Every job's changes come here; only those of a job someone waits for are parsed further.
        const space = payload.indexOf(' ');
        if (this.emitter.listenerCount(space < 0 ? payload : payload.slice(0, space)) === 0) return;
        const n = parseJobNotification(payload);
        if (n) this.emitter.emit(n.jobId, n.action, n.row);
      },
      // Listening again after the connection was down: what was notified meanwhile is lost; a look now.
      listening: () => void this.sweep(),
    });
    this.timer = setInterval(() => void this.sweep(), SWEEP_MS);
    this.timer.unref();
  }

  /**
   * Calls `fn` on every notified change of job `jobId`, with the change's audit action (`job.step.done`,
   * `job.completed`, …; undefined when the writer did not say, or when a look found a change whose
   * notification was lost) and, for the job's end, the job as that end wrote it (when it fitted in the
   * notification), until the returned function is called.
   */
  subscribe(jobId: string, fn: (action?: string, row?: JobRow) => void): () => void {
    this.emitter.on(jobId, fn);
    return () => this.emitter.off(jobId, fn);
  }

  /** How many subscriptions job `jobId` has (long-polls and event streams following it). */
  subscribers(jobId: string): number {
    return this.emitter.listenerCount(jobId);
  }

  /** One look at every followed job (see the class): wakes the followers of those that changed. */
  async sweep(): Promise<void> {
    if (this.sweeping) return;
    const ids = this.emitter.eventNames() as string[];
    for (const id of this.seen.keys()) if (this.emitter.listenerCount(id) === 0) this.seen.delete(id);
    if (ids.length === 0) return;
    this.sweeping = true;
    try {
      for (let i = 0; i < ids.length; i += SWEEP_CHUNK) {
        const rows = await preparedQuery<{ id: string; at: string }>(this.ds, SWEEP, [
          ids.slice(i, i + SWEEP_CHUNK),
        ]);
        for (const r of rows) {
          const before = this.seen.get(r.id);
          this.seen.set(r.id, r.at);
          // First seen: what changed between its follower's own first look and now is not known, so the
          // follower looks once more (one extra read per follower, not one per tick).
          if (before !== r.at) this.emitter.emit(r.id);
        }
      }
    } catch (e) {
      this.log.warn(`a look at the followed jobs failed (the next one retries): ${String(e)}`);
    } finally {
      this.sweeping = false;
    }
  }

  /**
   * Aborted when the process begins to shut down: long-polls answer the job as it is and event streams
   * end (their clients come back, to another API process or to this one restarted), so that the HTTP
   * server, which waits for its open requests, can close.
   */
  get closing(): AbortSignal {
    return this.stopping.signal;
  }

  beforeApplicationShutdown(): void {
    this.stopping.abort();
  }

  onApplicationShutdown(): void {
    this.stop?.();
    clearInterval(this.timer);
  }
}

/** timestamptz as node-pg parses it in query results (same rounding), from row_to_json's ISO text. */
const parseTimestamp = types.getTypeParser(types.builtins.TIMESTAMPTZ) as (s: string) => Date;
const toDate = (s: string | null) => (s === null ? null : parseTimestamp(s.replace('T', ' ')));

/**
 * A `berth_job` payload: `<job id> <audit action>[ <jobs row as JSON>]` (migrations JobNotifyAction,
 * JobNotifyRow: the row comes with a job's end); a bare id from an older writer. Null when empty.
 */
export function parseJobNotification(
  payload: string,
): { jobId: string; action?: string; row?: JobRow } | null {
  if (!payload) return null;
  const first = payload.indexOf(' ');
  if (first < 0) return { jobId: payload };
  const jobId = payload.slice(0, first);
  const second = payload.indexOf(' ', first + 1);
  if (second < 0) return { jobId, action: payload.slice(first + 1) };
  const action = payload.slice(first + 1, second);
  try {
    const raw = JSON.parse(payload.slice(second + 1)) as Record<string, unknown>;
    const row = {
      ...raw,
      created_at: toDate(raw.created_at as string),
      started_at: toDate(raw.started_at as string | null),
      finished_at: toDate(raw.finished_at as string | null),
    } as unknown as JobRow;
    const created = row.created_at as Date | null;
    if (!(created instanceof Date) || Number.isNaN(created.getTime()) || typeof row.state !== 'string')
      return { jobId, action };
    return { jobId, action, row };
  } catch {
    // Not a row this code understands: the waiter reads the job instead.
    return { jobId, action };
  }
}
