import { Column, CreateDateColumn, Entity, PrimaryGeneratedColumn } from 'typeorm';

@Entity('webhook_endpoints')
export class WebhookEndpoint {
  @PrimaryGeneratedColumn('uuid') id: string;
  @Column('uuid', { name: 'tenant_id', nullable: true }) tenantId: string | null;
  @Column('text') url: string;
  /** HMAC signing secret shared with the receiver. */
  @Column('text') secret: string;
  @Column('text', { array: true }) events: string[];
  @Column('boolean') active: boolean;
  @CreateDateColumn({ name: 'created_at', type: 'timestamptz' }) createdAt: Date;
}

export type WebhookDeliveryState = 'pending' | 'delivered' | 'failed';

@Entity('webhook_deliveries')
export class WebhookDelivery {
  @PrimaryGeneratedColumn('uuid') id: string;
  @Column('uuid', { name: 'endpoint_id' }) endpointId: string;
  @Column('uuid', { name: 'job_id', nullable: true }) jobId: string | null;
  @Column('text') event: string;
  @Column('jsonb') payload: Record<string, unknown>;
  @Column('text') state: WebhookDeliveryState;
  @Column('integer') attempts: number;
  @Column('integer', { name: 'last_status', nullable: true }) lastStatus: number | null;
  @Column('text', { name: 'last_error', nullable: true }) lastError: string | null;
  @Column('timestamptz', { name: 'next_attempt_at' }) nextAttemptAt: Date;
  @CreateDateColumn({ name: 'created_at', type: 'timestamptz' }) createdAt: Date;
  @Column('timestamptz', { name: 'delivered_at', nullable: true }) deliveredAt: Date | null;
}
