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
    description:
      'the last event read: the events after it (for paging forward; events come in the order their ' +
      'transactions began writing, each page final: none can appear before its end later)',
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

/** How long a read waits for the transactions older than its newest events to end, and how often it looks. */
const HELD_WAIT_MS = 200;
const HELD_POLL_MS = 5;

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
  @ApiOperation({
    summary:
      'The append-only audit trail, oldest first: the full story of a subject. An event shows once every ' +
      'transaction older than its own has ended, so that paging with `after` misses none',
  })
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
    // In the order of the transactions that wrote them, up to the oldest one still running: an event of a
    // transaction not yet committed can have a smaller id than one already visible, and a reader paging by
    // id alone would step past it for good (migration AuditCommitOrder). `after` is the last event read:
    // its transaction and id are the cursor (an unknown id: the events after it, by id).
    args.push(q.after ?? '0');
    const after = `$${args.length}::bigint`;
    where.push(
      `xact >= (SELECT cx FROM cursor)`,
      `(xact, id) > ((SELECT cx FROM cursor), ${after})`,
      `((SELECT known FROM cursor) OR id > ${after})`,
    );
    const limit = q.limit ?? 200;
    args.push(limit);
    const cursor = `WITH cursor AS (SELECT COALESCE(max(xact), 0) AS cx, count(*) > 0 AS known
                                      FROM audit_events WHERE id = ${after}),
                         snap AS (SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint AS xmin)`;
    const page = `${cursor}
      SELECT * FROM audit_events WHERE ${where.join(' AND ')} AND xact < (SELECT xmin FROM snap)
       ORDER BY xact, id LIMIT $${args.length}`;
    // Whether events of this read wait behind a transaction still running (the page stops before them).
    const held = `${cursor}
      SELECT EXISTS (SELECT 1 FROM audit_events WHERE ${where.join(' AND ')}
                        AND xact >= (SELECT xmin FROM snap)) AS held`;
    let rows: Record<string, unknown>[] = await this.ds.query(page, args);
    // A short page that stops before events already written: the transactions in the way are
    // (nearly always) a few milliseconds from their end. Waited for briefly, so that a read made after a
    // job's end shows it; past that, the page ends there, and the next read with `after` goes on from it.
    for (let waited = 0; rows.length < limit && waited < HELD_WAIT_MS; waited += HELD_POLL_MS) {
      const [{ held: isHeld }] = await this.ds.query(held, args.slice(0, -1));
      if (!isHeld) break;
      await new Promise((r) => setTimeout(r, HELD_POLL_MS));
      rows = await this.ds.query(page, args);
    }
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
