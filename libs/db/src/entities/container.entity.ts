import {
  Column,
  CreateDateColumn,
  Entity,
  PrimaryGeneratedColumn,
  UpdateDateColumn,
  VersionColumn,
} from 'typeorm';
import { numberTransformer } from './transformers';

export const CONTAINER_STATES = [
  'creating',
  'stopped',
  'running',
  'paused',
  'suspended',
  'destroying',
  'destroyed',
  'error',
] as const;
export type ContainerState = (typeof CONTAINER_STATES)[number];

@Entity('containers')
export class Container {
  @PrimaryGeneratedColumn('uuid') id: string;
  @Column('uuid', { name: 'tenant_id', nullable: true }) tenantId: string | null;
  @Column('text') name: string;
  @Column('uuid', { name: 'host_id', nullable: true }) hostId: string | null;
  @Column('uuid', { name: 'template_id', nullable: true }) templateId: string | null;
  @Column('text') state: ContainerState;
  /** The state once every accepted job has run; requests are checked against it. */
  @Column('text', { name: 'target_state' }) targetState: ContainerState;
  @Column('numeric', { precision: 6, scale: 2, transformer: numberTransformer }) cpus: number;
  @Column('bigint', { name: 'memory_bytes', transformer: numberTransformer }) memoryBytes: number;
  @Column('bigint', { name: 'disk_bytes', transformer: numberTransformer }) diskBytes: number;
  @Column('integer', { name: 'pids_max' }) pidsMax: number;
  /**
   * The largest limits asked by this container's unfinished resize jobs (0: none), kept by a trigger on
   * `jobs` (migration ResizeHolds); its host counts it at the larger of these and its limits.
   */
  @Column({
    type: 'numeric',
    name: 'held_cpus',
    precision: 12,
    scale: 2,
    insert: false,
    update: false,
    transformer: numberTransformer,
  })
  heldCpus: number;
  @Column({
    type: 'bigint',
    name: 'held_memory_bytes',
    insert: false,
    update: false,
    transformer: numberTransformer,
  })
  heldMemoryBytes: number;
  @Column('text', { name: 'network_mode' }) networkMode: 'none' | 'bridge';
  @Column('inet', { name: 'ip_address', nullable: true }) ipAddress: string | null;
  /** Last sequence number handed to a job of this container (per-container FIFO). */
  @Column('integer', { name: 'job_seq' }) jobSeq: number;
  @Column('uuid', { name: 'last_job_id', nullable: true }) lastJobId: string | null;
  @Column('text', { name: 'error_code', nullable: true }) errorCode: string | null;
  @VersionColumn() version: number;
  @CreateDateColumn({ name: 'created_at', type: 'timestamptz' }) createdAt: Date;
  @UpdateDateColumn({ name: 'updated_at', type: 'timestamptz' }) updatedAt: Date;
  @Column('timestamptz', { name: 'destroyed_at', nullable: true }) destroyedAt: Date | null;
}
