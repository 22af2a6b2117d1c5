import { Injectable, type OnApplicationBootstrap, type OnApplicationShutdown } from '@nestjs/common';
import { EventEmitter } from 'node:events';
import { types } from 'pg';
import { PgListener } from '@berth/db';
import type { JobRow } from './job-view';

/**
 * `berth_job` notifications (a trigger on the audit events of jobs sends them at commit, with the event's
 * action; the worker's `job.active` mark is silent, see migration JobActiveSilent), fanned out to waiters by job id:
 * long-polls and event streams wake at once instead of polling the database. On the process's shared
 * LISTEN connection (PgListener).
 */
@Injectable()
export class JobNotifications implements OnApplicationBootstrap, OnApplicationShutdown {
  private readonly emitter = new EventEmitter();
  private stop?: () => void;

  constructor(private readonly listener: PgListener) {
    this.emitter.setMaxListeners(0);
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
    });
  }

  /**
   * Calls `fn` on every notified change of job `jobId`, with the change's audit action (`job.step.done`,
   * `job.completed`, …; undefined when the writer did not say) and, for the job's end, the job as that end
   * wrote it (when it fitted in the notification), until the returned function is called.
   */
  subscribe(jobId: string, fn: (action?: string, row?: JobRow) => void): () => void {
    this.emitter.on(jobId, fn);
    return () => this.emitter.off(jobId, fn);
  }

  /** How many subscriptions job `jobId` has (long-polls and event streams following it). */
  subscribers(jobId: string): number {
    return this.emitter.listenerCount(jobId);
  }

  onApplicationShutdown(): void {
    this.stop?.();
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
