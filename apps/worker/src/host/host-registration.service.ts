import { randomUUID } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { Inject, Injectable, type OnApplicationBootstrap, type OnApplicationShutdown } from '@nestjs/common';
import { InjectDataSource } from '@nestjs/typeorm';
import { PinoLogger } from 'nestjs-pino';
import type { DataSource } from 'typeorm';
import { BERTH_CONFIG, type BerthConfig } from '@berth/config';
import { appendAudit } from '@berth/db';
import { detectHostFacts } from '@berth/runtime/host/host-facts';

/**
 * Registers this worker's host (upsert by name, with detected capabilities) and heartbeats. The host id is
 * stable across restarts because the row is keyed by the host name. A row held by another live worker on
 * another machine (the same BERTH_HOST_NAME twice: cloned VMs keep their hostname) is not taken: this
 * worker refuses to start. A worker whose row another worker took (its heartbeats had stopped long enough
 * for the host to count as offline) stops: two machines must never consume one host's queue.
 */
@Injectable()
export class HostRegistrationService implements OnApplicationBootstrap, OnApplicationShutdown {
  private timer?: NodeJS.Timeout;
  private id?: string;
  /** This process, as the holder of the host row. */
  private readonly instance = randomUUID();
  /** The heartbeat in flight, awaited before the offline mark (it must not land after it). */
  private beat?: Promise<void>;
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
    const machine = await machineId();
    await this.ds.transaction(async (m) => {
      // Taken when nobody live holds it (offline, its heartbeat too old, a row from before instances), or
      // from this machine (a worker restarted, or two of one machine: one runtime, one host).
      const rows: { id: string }[] = await m.query(
        `INSERT INTO hosts (name, state, capabilities, cpu_count, memory_bytes, disk_bytes, kernel_version,
                            cgroup_version, storage_drivers, last_heartbeat_at, updated_at, instance_id, machine_id)
         VALUES ($1, 'online', $2, $3, $4, $5, $6, $7, $8, now(), now(), $9, $10)
         ON CONFLICT (name) DO UPDATE SET state = 'online', capabilities = EXCLUDED.capabilities,
           cpu_count = EXCLUDED.cpu_count, memory_bytes = EXCLUDED.memory_bytes,
           disk_bytes = EXCLUDED.disk_bytes, kernel_version = EXCLUDED.kernel_version,
           cgroup_version = EXCLUDED.cgroup_version, storage_drivers = EXCLUDED.storage_drivers,
           last_heartbeat_at = now(), updated_at = now(), instance_id = EXCLUDED.instance_id,
           machine_id = EXCLUDED.machine_id
         WHERE hosts.instance_id IS NULL OR hosts.state = 'offline'
            OR hosts.last_heartbeat_at < now() - make_interval(secs => $11::float / 1000)
            OR hosts.machine_id = EXCLUDED.machine_id
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
          this.instance,
          machine,
          this.config.host.offlineAfterMs,
        ],
      );
      if (rows.length === 0) {
        const [other]: { machine_id: string | null; last_heartbeat_at: Date }[] = await m.query(
          `SELECT machine_id, last_heartbeat_at FROM hosts WHERE name = $1`,
          [this.config.host.name],
        );
        throw new Error(
          `host name ${this.config.host.name} is held by a live worker on another machine (${other?.machine_id ?? 'unknown'}, ` +
            `heartbeat ${other?.last_heartbeat_at.toISOString()}): give this one its own BERTH_HOST_NAME`,
        );
      }
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
    this.timer = setInterval(() => {
      this.beat ??= this.heartbeat().finally(() => (this.beat = undefined));
    }, this.config.host.heartbeatIntervalMs);
  }

  /**
   * The host's disk capacity as its storage pool has it (storageBytes), once the runtime is open: the
   * registration had the data root's filesystem (a btrfs pool is a loop image on it, far smaller), and
   * placement counts the containers' disks against this.
   */
  async recordDisk(diskBytes: number): Promise<void> {
    await this.ds.query(
      `UPDATE hosts SET disk_bytes = $3, capabilities = capabilities || jsonb_build_object('diskBytes', $3::bigint),
              updated_at = now()
        WHERE id = $1 AND instance_id = $2 AND disk_bytes IS DISTINCT FROM $3`,
      [this.id, this.instance, diskBytes],
    );
    this.log.info({ hostId: this.id, diskBytes }, 'disk capacity from the storage pool');
  }

  /**
   * One heartbeat; a failure is logged and retried at the next tick (Postgres may be restarting). A row
   * that another worker took meanwhile is not touched: this worker stops (SIGTERM: the graceful shutdown).
   */
  async heartbeat(): Promise<void> {
    let held: boolean;
    try {
      const rows: unknown[] = await this.ds.query(
        `WITH u AS (UPDATE hosts SET last_heartbeat_at = now(), state = 'online', updated_at = now()
                    WHERE id = $1 AND instance_id = $2 RETURNING id)
         SELECT id FROM u`,
        [this.id, this.instance],
      );
      held = rows.length > 0;
    } catch (e) {
      this.log.warn({ hostId: this.id, err: e }, 'heartbeat failed');
      return;
    }
    if (held || this.lost) return;
    this.lost = true;
    this.log.error({ hostId: this.id }, 'another worker took this host over: stopping');
    process.kill(process.pid, 'SIGTERM');
  }

  /** Set once another worker took the host row: no heartbeat, no offline mark any more. */
  private lost = false;

  async onApplicationShutdown(signal?: string): Promise<void> {
    if (this.timer) clearInterval(this.timer);
    await this.beat;
    if (!this.id || this.lost) return;
    try {
      await this.ds.transaction(async (m) => {
        const held: unknown[] = await m.query(
          `WITH u AS (UPDATE hosts SET state = 'offline', updated_at = now() WHERE id = $1 AND instance_id = $2
                      RETURNING id)
           SELECT id FROM u`,
          [this.id, this.instance],
        );
        // Another worker holds the host now: its state is that worker's to say.
        if (held.length === 0) return;
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

/**
 * This machine, as far as a host row is concerned: the kernel's boot id (different on every machine and
 * every boot, the same for every process of one kernel), after /etc/machine-id where there is one (a VM
 * cloned without regenerating it shares that, but not its boot id). After a reboot the row is offline or
 * stale anyway, so a new boot id takes it like any worker would.
 */
async function machineId(): Promise<string> {
  const read = (path: string) =>
    readFile(path, 'utf8').then(
      (s) => s.trim(),
      () => '',
    );
  const [machine, boot] = await Promise.all([
    read('/etc/machine-id'),
    read('/proc/sys/kernel/random/boot_id'),
  ]);
  return `${machine || 'no-machine-id'}/${boot}`;
}
