import { Inject, Injectable, type OnApplicationBootstrap, type OnApplicationShutdown } from '@nestjs/common';
import { EventEmitter } from 'node:events';
import { Client } from 'pg';
import { BERTH_CONFIG, type BerthConfig } from '@berth/config';

/**
 * One LISTEN connection on `berth_job` (fired by a trigger on every audit event of a job, at commit, with
 * the event's action), fanned out to waiters by job id: long-polls and event streams wake at once instead
 * of polling the database.
 */
@Injectable()
export class JobNotifications implements OnApplicationBootstrap, OnApplicationShutdown {
  private readonly emitter = new EventEmitter();
  private client?: Client;
  private stopped = false;

  constructor(@Inject(BERTH_CONFIG) private readonly config: BerthConfig) {
    this.emitter.setMaxListeners(0);
  }

  async onApplicationBootstrap(): Promise<void> {
    void this.listen();
  }

  private async listen(): Promise<void> {
    if (this.stopped) return;
    const client = new Client({ connectionString: this.config.database.url });
    client.on('notification', (n) => {
      if (!n.payload) return;
      // `<job id> <audit action>` (see migration JobNotifyAction); a bare id from an older writer.
      const [jobId, action] = n.payload.split(' ');
      this.emitter.emit(jobId, action);
    });
    client.on('error', () => {
      client.end().catch(() => undefined);
      setTimeout(() => void this.listen(), 1_000);
    });
    try {
      await client.connect();
      await client.query('LISTEN berth_job');
      this.client = client;
    } catch {
      client.end().catch(() => undefined);
      if (!this.stopped) setTimeout(() => void this.listen(), 1_000);
    }
  }

  /**
   * Calls `fn` on every change of job `jobId`, with the change's audit action (`job.active`,
   * `job.step.done`, `job.completed`, …; undefined when the writer did not say), until the returned
   * function is called.
   */
  subscribe(jobId: string, fn: (action?: string) => void): () => void {
    this.emitter.on(jobId, fn);
    return () => this.emitter.off(jobId, fn);
  }

  async onApplicationShutdown(): Promise<void> {
    this.stopped = true;
    await this.client?.end().catch(() => undefined);
  }
}
