import { Column, Entity, PrimaryGeneratedColumn } from 'typeorm';
import { numberTransformer } from './transformers';

export type HostState = 'online' | 'offline';

/** What a worker detected about its machine; see HostCapabilities in @berth/runtime. */
export interface HostCapabilitiesRecord {
  cgroupVersion: 1 | 2;
  storageDrivers: string[];
  [key: string]: unknown;
}

@Entity('hosts')
export class Host {
  @PrimaryGeneratedColumn('uuid') id: string;
  @Column('text', { unique: true }) name: string;
  @Column('text') state: HostState;
  @Column('boolean') draining: boolean;
  @Column('jsonb') capabilities: HostCapabilitiesRecord;
  @Column('integer', { name: 'cpu_count' }) cpuCount: number;
  @Column('bigint', { name: 'memory_bytes', transformer: numberTransformer }) memoryBytes: number;
  @Column('bigint', { name: 'disk_bytes', transformer: numberTransformer }) diskBytes: number;
  @Column('text', { name: 'kernel_version' }) kernelVersion: string;
  @Column('smallint', { name: 'cgroup_version' }) cgroupVersion: 1 | 2;
  @Column('text', { name: 'storage_drivers', array: true }) storageDrivers: string[];
  @Column('timestamptz', { name: 'last_heartbeat_at' }) lastHeartbeatAt: Date;
  @Column('timestamptz', { name: 'registered_at' }) registeredAt: Date;
  @Column('timestamptz', { name: 'updated_at' }) updatedAt: Date;
  /** The worker process holding the row, and its machine (migration HostInstance). */
  @Column('uuid', { name: 'instance_id', nullable: true }) instanceId: string | null;
  @Column('text', { name: 'machine_id', nullable: true }) machineId: string | null;
  // What its live containers reserve, kept by a trigger on `containers` (migration HostReservations).
  @Column({ type: 'integer', name: 'reserved_containers', insert: false, update: false })
  reservedContainers: number;
  @Column({
    type: 'numeric',
    name: 'reserved_cpus',
    precision: 12,
    scale: 2,
    insert: false,
    update: false,
    transformer: numberTransformer,
  })
  reservedCpus: number;
  @Column({
    type: 'bigint',
    name: 'reserved_memory_bytes',
    insert: false,
    update: false,
    transformer: numberTransformer,
  })
  reservedMemoryBytes: number;
  @Column({
    type: 'bigint',
    name: 'reserved_disk_bytes',
    insert: false,
    update: false,
    transformer: numberTransformer,
  })
  reservedDiskBytes: number;
}
