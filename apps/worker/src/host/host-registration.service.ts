import { Inject, Injectable, type OnApplicationBootstrap, type OnApplicationShutdown } from '@nestjs/common';
import { InjectDataSource } from '@nestjs/typeorm';
import { PinoLogger } from 'nestjs-pino';
import type { DataSource } from 'typeorm';
import { BERTH_CONFIG, type BerthConfig } from '@berth/config';
import { appendAudit } from '@berth/db';
import { detectHostFacts } from '@berth/runtime/host/host-facts';

/**
 * Registers this worker's host (upsert by name, with detected capabilities) and heartbeats. The host id is
 * stable across restarts because the row is keyed by the host name.
 */
@Injectable()
export class HostRegistrationService implements OnApplicationBootstrap, OnApplicationShutdown {
  private timer?: NodeJS.Timeout;
  private id?: string;
  private resolveRegistered!: (id: string) => void;
  /** Resolves with the host id once the host row is written (jobs start only then). */
  readonly registered = new Promise<string>((resolve) => (this.resolveRegistered = resolve));

  constructor(
    @Inject(BERTH_CONFIG) private readonly config: BerthConfig,
    @InjectDataSource() private readonly ds: DataSource,
    private readonly log: PinoLogger,
  ) {
    log.setContext(HostRegistrationService.name);
  }

  /** The registered host id; throws before registration. */
  get hostId(): string {
    if (!this.id) throw new Error('host is not registered yet');
    return this.id;
  }

  async onApplicationBootstrap(): Promise<void> {
    const facts = await detectHostFacts(this.config.runtime.dataRoot);
    const capabilities = { ...facts };
    await this.ds.transaction(async (m) => {
      const rows: { id: string }[] = await m.query(
        `INSERT INTO hosts (name, state, capabilities, cpu_count, memory_bytes, disk_bytes, kernel_version,
                            cgroup_version, storage_drivers, last_heartbeat_at, updated_at)
         VALUES ($1, 'online', $2, $3, $4, $5, $6, $7, $8, now(), now())
         ON CONFLICT (name) DO UPDATE SET state = 'online', capabilities = EXCLUDED.capabilities,
           cpu_count = EXCLUDED.cpu_count, memory_bytes = EXCLUDED.memory_bytes,
           disk_bytes = EXCLUDED.disk_bytes, kernel_version = EXCLUDED.kernel_version,
           cgroup_version = EXCLUDED.cgroup_version, storage_drivers = EXCLUDED.storage_drivers,
           last_heartbeat_at = now(), updated_at = now()
         RETURNING id`,
        [
          this.config.host.name,
          JSON.stringify(capabilities),
          facts.cpuCount,
          facts.memoryBytes,
          facts.diskBytes,
          facts.kernelVersion,
          facts.cgroupVersion,
          facts.storageDrivers,
        ],
      );
      this.id = rows[0].id;
      await appendAudit(m, {
        actor: `system:worker`,
        action: 'host.registered',
        subjectType: 'host',
        subjectId: this.id,
        data: { name: this.config.host.name, ...capabilities },
      });
    });
    this.log.info({ hostId: this.id, ...facts }, 'host registered');
    this.resolveRegistered(this.id!);
    this.timer = setInterval(() => void this.heartbeat(), this.config.host.heartbeatIntervalMs);
  }

  /** One heartbeat; a failure is logged and retried at the next tick (Postgres may be restarting). */
  async heartbeat(): Promise<void> {
    try {
      await this.ds.query(
        `UPDATE hosts SET last_heartbeat_at = now(), state = 'online', updated_at = now() WHERE id = $1`,
        [this.id],
      );
    } catch (e) {
      this.log.warn({ hostId: this.id, err: e }, 'heartbeat failed');
    }
  }

  async onApplicationShutdown(signal?: string): Promise<void> {
    if (this.timer) clearInterval(this.timer);
    if (!this.id) return;
    try {
      await this.ds.transaction(async (m) => {
        await m.query(`UPDATE hosts SET state = 'offline', updated_at = now() WHERE id = $1`, [this.id]);
        await appendAudit(m, {
          actor: 'system:worker',
          action: 'host.stopped',
          subjectType: 'host',
          subjectId: this.id,
          data: { signal: signal ?? null },
        });
      });
      this.log.info({ hostId: this.id, signal }, 'host marked offline');
    } catch (e) {
      this.log.warn({ hostId: this.id, err: e }, 'could not mark the host offline');
    }
  }
}
