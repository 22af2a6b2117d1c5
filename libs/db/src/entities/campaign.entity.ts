import { Column, CreateDateColumn, Entity, PrimaryGeneratedColumn, UpdateDateColumn } from 'typeorm';

export type CampaignState = 'running' | 'paused' | 'cancelled' | 'completed' | 'failed';

@Entity('campaigns')
export class Campaign {
  @PrimaryGeneratedColumn('uuid') id: string;
  @Column('uuid', { name: 'tenant_id', nullable: true }) tenantId: string | null;
  @Column('uuid', { name: 'template_id', nullable: true }) templateId: string | null;
  @Column('jsonb') spec: Record<string, unknown>;
  @Column('text') state: CampaignState;
  @Column('integer') total: number;
  @Column('integer') done: number;
  @Column('integer') failed: number;
  @Column('text', { name: 'requested_by' }) requestedBy: string;
  @CreateDateColumn({ name: 'created_at', type: 'timestamptz' }) createdAt: Date;
  @UpdateDateColumn({ name: 'updated_at', type: 'timestamptz' }) updatedAt: Date;
  @Column('timestamptz', { name: 'finished_at', nullable: true }) finishedAt: Date | null;
}
