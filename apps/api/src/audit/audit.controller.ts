import { Controller, Get, Query } from '@nestjs/common';
import { ApiBearerAuth, ApiOkResponse, ApiOperation, ApiPropertyOptional, ApiTags } from '@nestjs/swagger';
import { InjectDataSource } from '@nestjs/typeorm';
import { Type } from 'class-transformer';
import { IsInt, IsOptional, IsUUID, Matches, Max, Min } from 'class-validator';
import type { DataSource } from 'typeorm';
import { CurrentPrincipal, isAdmin, type Principal } from '../auth/principal';
import { ApiProblems } from '../common/problem.dto';
import { AuditEventDto } from './audit.responses';

export class AuditQuery {
  @ApiPropertyOptional({
    format: 'uuid',
    description:
      'a container, host, template or job id: the events of that subject (a container’s include those of ' +
      'its jobs; a job’s are its own, as with `job`)',
  })
  @IsOptional()
  @IsUUID()
  subject?: string;
  @ApiPropertyOptional({ format: 'uuid', description: 'the events of this job only' })
  @IsOptional()
  @IsUUID()
  job?: string;
  @ApiPropertyOptional({
    type: 'string',
    pattern: '^\\d{1,18}$',
    description: 'events after this id (for paging forward)',
  })
  @IsOptional()
  // Digits, kept as a string: a bigint id; a number such as 1e30 would overflow it in PostgreSQL.
  @Matches(/^\d{1,18}$/, { message: 'after must be an event id (up to 18 digits)' })
  after?: string;
  @ApiPropertyOptional({ minimum: 1, maximum: 1000, default: 200 })
  @IsOptional()
  @Type(() => Number)
  @IsInt()
  @Min(1)
  @Max(1000)
  limit?: number;
}

/** An event's data without the name of a host (what a key without the admin scope sees). */
function withoutHost(data: unknown): unknown {
  if (data === null || typeof data !== 'object' || Array.isArray(data) || !('host' in data)) return data;
  const { host: _, ...rest } = data as Record<string, unknown>;
  return rest;
}

@ApiTags('audit')
@ApiBearerAuth()
@Controller('v1/audit')
export class AuditController {
  constructor(@InjectDataSource() private readonly ds: DataSource) {}

  @Get()
  @ApiOperation({ summary: 'The append-only audit trail, oldest first: the full story of a subject' })
  @ApiOkResponse({ type: [AuditEventDto] })
  @ApiProblems('VALIDATION_FAILED')
  async list(@Query() q: AuditQuery, @CurrentPrincipal() p: Principal) {
    const where: string[] = [];
    const args: unknown[] = [];
    if (p.tenantId) {
      // A tenant's key reads the story of its own containers and jobs only.
      args.push(p.tenantId);
      where.push(
        `(subject_id IN (SELECT id FROM containers WHERE tenant_id = $${args.length})
          OR job_id IN (SELECT id FROM jobs WHERE tenant_id = $${args.length}))`,
      );
    }
    // The fleet's events (hosts, templates, jobs of no container) are the operator's: a key without the
    // admin scope reads the stories of containers.
    if (!isAdmin(p)) where.push(`subject_type = 'container'`);
    if (q.subject) {
      // A subject's story: its own events, and its jobs' (a container's); a job's is its events.
      args.push(q.subject);
      where.push(
        `(subject_id = $${args.length} OR job_id = $${args.length}
          OR job_id IN (SELECT id FROM jobs WHERE container_id = $${args.length}))`,
      );
    }
    if (q.job) {
      args.push(q.job);
      where.push(`job_id = $${args.length}`);
    }
    args.push(q.after ?? '0');
    where.push(`id > $${args.length}`);
    args.push(q.limit ?? 200);
    const rows = await this.ds.query(
      `SELECT * FROM audit_events WHERE ${where.join(' AND ')} ORDER BY id LIMIT $${args.length}`,
      args,
    );
    return rows.map((r: Record<string, unknown>) => ({
      id: r.id,
      at: (r.occurred_at as Date).toISOString(),
      actor: r.actor,
      action: r.action,
      subjectType: r.subject_type,
      subjectId: r.subject_id,
      jobId: r.job_id,
      requestId: r.request_id,
      // Where the fleet put a container (a create's `host`) is the operator's to know.
      data: isAdmin(p) ? r.data : withoutHost(r.data),
    }));
  }
}
