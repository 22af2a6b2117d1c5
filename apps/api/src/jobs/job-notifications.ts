import { Injectable, type OnApplicationBootstrap, type OnApplicationShutdown } from '@nestjs/common';
import { EventEmitter } from 'node:events';
import { PgListener } from '@berth/db';

/**
 * `berth_job` notifications (a trigger on the audit events of jobs sends them at commit, with the event's
 * action; the worker's `job.active` mark is silent, see JobStore's SILENT), fanned out to waiters by job id:
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
        if (!payload) return;
        // `<job id> <audit action>` (see migration JobNotifyAction); a bare id from an older writer.
        const [jobId, action] = payload.split(' ');
        this.emitter.emit(jobId, action);
      },
    });
  }

  /**
   * Calls `fn` on every notified change of job `jobId`, with the change's audit action (`job.step.done`,
   * `job.completed`, …; undefined when the writer did not say), until the returned function is called.
   */
  subscribe(jobId: string, fn: (action?: string) => void): () => void {
    this.emitter.on(jobId, fn);
    return () => this.emitter.off(jobId, fn);
  }

  onApplicationShutdown(): void {
    this.stop?.();
  }
}
