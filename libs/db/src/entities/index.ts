import { ApiKey } from './api-key.entity';
import { AuditEvent } from './audit-event.entity';
import { Campaign } from './campaign.entity';
import { Container } from './container.entity';
import { Host } from './host.entity';
import { IdempotencyKey } from './idempotency-key.entity';
import { Job } from './job.entity';
import { OutboxMessage } from './outbox-message.entity';
import { Template, TemplateReplica } from './template.entity';
import { Tenant } from './tenant.entity';
import { WebhookDelivery, WebhookEndpoint } from './webhook.entity';

export * from './api-key.entity';
export * from './audit-event.entity';
export * from './campaign.entity';
export * from './container.entity';
export * from './host.entity';
export * from './idempotency-key.entity';
export * from './job.entity';
export * from './outbox-message.entity';
export * from './template.entity';
export * from './tenant.entity';
export * from './webhook.entity';

export const entities = [
  Tenant,
  ApiKey,
  Host,
  Template,
  TemplateReplica,
  Campaign,
  Container,
  Job,
  AuditEvent,
  OutboxMessage,
  IdempotencyKey,
  WebhookEndpoint,
  WebhookDelivery,
];
