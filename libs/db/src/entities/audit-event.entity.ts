import { Column, Entity, PrimaryGeneratedColumn } from 'typeorm';

/** One append-only row of the audit trail. The database rejects UPDATE, DELETE and TRUNCATE. */
@Entity('audit_events')
export class AuditEvent {
  @PrimaryGeneratedColumn('increment', { type: 'bigint' }) id: string;
  @Column('timestamptz', { name: 'occurred_at', default: () => 'now()' }) occurredAt: Date;
  /** API key id, or `system:<component>`. */
  @Column('text') actor: string;
  /** e.g. `container.create.requested`, `job.active`, `job.step.done`, `host.registered`. */
  @Column('text') action: string;
  @Column('text', { name: 'subject_type' }) subjectType: string;
  @Column('uuid', { name: 'subject_id', nullable: true }) subjectId: string | null;
  @Column('uuid', { name: 'job_id', nullable: true }) jobId: string | null;
  @Column('text', { name: 'request_id', nullable: true }) requestId: string | null;
  @Column('jsonb', { default: () => "'{}'" }) data: Record<string, unknown>;
  /** The writing transaction's id (its default): the order `GET /v1/audit?after=` pages in. */
  @Column({
    type: 'bigint',
    default: () => 'pg_current_xact_id()::text::bigint',
    insert: false,
    update: false,
  })
  xact: string;
}
