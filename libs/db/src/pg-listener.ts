import { Inject, Injectable, type OnApplicationShutdown } from '@nestjs/common';
import { Client } from 'pg';
import { BERTH_CONFIG, type BerthConfig } from '@berth/config';

/** What a channel's subscriber is told: a notification's payload, or that the connection (re)opened. */
export interface ListenerCallbacks {
  notify(payload: string): void;
  /**
   * The channel is listened to again after the connection was down (and the first time): notifications
   * sent meanwhile are lost, so a subscriber re-checks what it waits for.
   */
  listening?(): void;
}

/**
 * The process's one LISTEN connection, shared by every channel it listens on (`berth_job`, `berth_outbox`).
 * PostgreSQL wakes every listening connection of the database at each notifying commit, whatever the
 * channel: one connection per process instead of one per channel halves those wake-ups for an API that
 * relays the outbox and answers long-polls. Reconnects after a second when the connection drops.
 */
@Injectable()
export class PgListener implements OnApplicationShutdown {
  private readonly channels = new Map<string, Set<ListenerCallbacks>>();
  private client?: Client;
  private connecting = false;
  private stopped = false;

  constructor(@Inject(BERTH_CONFIG) private readonly config: BerthConfig) {}

  /**
   * Calls `cb.notify` with the payload of every notification on `channel` (a fixed identifier, not input)
   * until the returned function is called. Opens the connection on first use.
   */
  listen(channel: string, cb: ListenerCallbacks): () => void {
    if (!/^[a-z_][a-z0-9_]*$/.test(channel)) throw new TypeError(`bad channel name ${channel}`);
    let subs = this.channels.get(channel);
    if (!subs) {
      subs = new Set();
      this.channels.set(channel, subs);
      const client = this.client;
      if (client)
        client.query(`LISTEN ${channel}`).then(
          () => cb.listening?.(),
          () => undefined,
        );
    } else if (this.client) queueMicrotask(() => cb.listening?.());
    subs.add(cb);
    void this.connect();
    return () => subs.delete(cb);
  }

  /** The PostgreSQL backend of the connection while it is up (pg_stat_activity.pid), for diagnostics. */
  get backendPid(): number | undefined {
    return (this.client as (Client & { processID?: number }) | undefined)?.processID;
  }

  private async connect(): Promise<void> {
    if (this.stopped || this.client || this.connecting) return;
    this.connecting = true;
    const client = new Client({
      connectionString: this.config.database.url,
      // Named in pg_stat_activity: an operator sees which connection listens.
      application_name: 'berth-listener',
    });
    client.on('notification', (n) => {
      for (const cb of this.channels.get(n.channel) ?? []) cb.notify(n.payload ?? '');
    });
    const retry = () => {
      if (this.client === client) this.client = undefined;
      client.end().catch(() => undefined);
      if (!this.stopped) setTimeout(() => void this.connect(), 1_000).unref();
    };
    client.on('error', retry);
    try {
      await client.connect();
      for (const channel of this.channels.keys()) await client.query(`LISTEN ${channel}`);
      this.client = client;
    } catch {
      this.connecting = false;
      retry();
      return;
    }
    this.connecting = false;
    for (const subs of this.channels.values()) for (const cb of subs) cb.listening?.();
  }

  async onApplicationShutdown(): Promise<void> {
    this.stopped = true;
    const client = this.client;
    this.client = undefined;
    await client?.end().catch(() => undefined);
  }
}
