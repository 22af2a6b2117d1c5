import { Column, CreateDateColumn, Entity, PrimaryGeneratedColumn, UpdateDateColumn } from 'typeorm';

export const JOB_STATES = ['queued', 'active', 'waiting-retry', 'completed', 'failed', 'cancelled'] as const;
export type JobState = (typeof JOB_STATES)[number];

export interface JobProgress {
  stage: string;
  percent: number;
}

@Entity('jobs')
export class Job {
  @PrimaryGeneratedColumn('uuid') id: string;
  @Column('text') kind: string;
  @Column('text') state: JobState;
  @Column('uuid', { name: 'tenant_id', nullable: true }) tenantId: string | null;
  @Column('uuid', { name: 'container_id', nullable: true }) containerId: string | null;
  @Column('uuid', { name: 'host_id', nullable: true }) hostId: string | null;
  @Column('uuid', { name: 'campaign_id', nullable: true }) campaignId: string | null;
  /** Position in its container's FIFO; null for jobs not bound to a container. */
  @Column('integer', { name: 'container_seq', nullable: true }) containerSeq: number | null;
  /** The BullMQ job that carries it once it has had several (migration JobCarrier); null: its first. */
  @Column('text', { nullable: true }) carrier: string | null;
  @Column('jsonb') params: Record<string, unknown>;
  @Column('jsonb', { nullable: true }) result: Record<string, unknown> | null;
  @Column('jsonb', { nullable: true }) progress: JobProgress | null;
  @Column('text', { name: 'error_code', nullable: true }) errorCode: string | null;
  @Column('text', { name: 'error_message', nullable: true }) errorMessage: string | null;
  @Column('text', { name: 'error_step', nullable: true }) errorStep: string | null;
  @Column('integer') attempts: number;
  @Column('integer', { name: 'max_attempts' }) maxAttempts: number;
  @Column('text', { name: 'idempotency_key', nullable: true }) idempotencyKey: string | null;
  /** API key id, or `system:<component>` for jobs Berth starts itself. */
  @Column('text', { name: 'requested_by' }) requestedBy: string;
  @Column('text', { name: 'request_id', nullable: true }) requestId: string | null;
  @CreateDateColumn({ name: 'created_at', type: 'timestamptz' }) createdAt: Date;
  @Column('timestamptz', { name: 'started_at', nullable: true }) startedAt: Date | null;
  @Column('timestamptz', { name: 'finished_at', nullable: true }) finishedAt: Date | null;
  @UpdateDateColumn({ name: 'updated_at', type: 'timestamptz' }) updatedAt: Date;
}
