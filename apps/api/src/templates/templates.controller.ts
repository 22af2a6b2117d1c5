import { Body, Controller, Get, HttpCode, HttpStatus, Injectable, Post, Res } from '@nestjs/common';
import {
  ApiBearerAuth,
  ApiOkResponse,
  ApiOperation,
  ApiProperty,
  ApiPropertyOptional,
  ApiTags,
} from '@nestjs/swagger';
import { InjectDataSource } from '@nestjs/typeorm';
import { IsIn, IsString, IsUUID, Matches, MaxLength } from 'class-validator';
import type { Response } from 'express';
import type { DataSource } from 'typeorm';
import { appendAudit } from '@berth/db';
import { AdminOnly, CurrentPrincipal, isAdmin, type Principal } from '../auth/principal';
import { ApiError } from '../common/api-error';
import { OmittedOrValid } from '../common/body-optional';
import { ApiAcceptedJob, ApiProblems } from '../common/problem.dto';
import { JobEnqueuer } from '../jobs/job-enqueuer';
import { jobLocation, toJobView } from '../jobs/job-view';
import { TemplateDto, TemplateImportAcceptedDto } from './templates.responses';

export class ImportTemplateDto {
  @ApiProperty({ example: 'busybox' })
  @IsString()
  @MaxLength(63)
  @Matches(/^(?!.*\.\.)[a-z0-9]([a-z0-9._-]{0,61}[a-z0-9])?$/, {
    message: "name: a-z 0-9 . _ -, starting and ending alphanumeric, without '..'",
  })
  name: string;

  @ApiProperty({
    enum: ['builtin:busybox', 'tarball'],
    description: 'the built-in busybox builder, or a tarball',
  })
  @IsIn(['builtin:busybox', 'tarball'])
  source: 'builtin:busybox' | 'tarball';

  @ApiPropertyOptional({
    description: 'absolute path of a rootfs tarball on the host(s), for source=tarball',
  })
  @OmittedOrValid()
  @IsString()
  @MaxLength(4096)
  @Matches(/^\/(?!.*(^|\/)\.\.(\/|$))[^\0]*$/, { message: 'path must be absolute, without ..' })
  path?: string;

  @ApiPropertyOptional({ description: 'import on this host only; default: every online host' })
  @OmittedOrValid()
  @IsUUID()
  host?: string;
}

@Injectable()
export class TemplatesService {
  constructor(
    @InjectDataSource() private readonly ds: DataSource,
    private readonly enqueuer: JobEnqueuer,
  ) {}

  /**
   * Every template, whether any host has it ready, and for an admin key where it comes from (`source`, a
   * path on the hosts for a tarball) and which hosts have it: the fleet is the operator's.
   */
  async list(principal: Principal) {
    const rows = await this.ds.query(
      `SELECT t.id, t.name, t.source, t.size_bytes, t.created_at,
              COALESCE(json_agg(json_build_object('hostId', r.host_id, 'state', r.state, 'storageDriver', r.storage_driver))
                FILTER (WHERE r.host_id IS NOT NULL), '[]') AS replicas
       FROM templates t LEFT JOIN template_replicas r ON r.template_id = t.id
       GROUP BY t.id ORDER BY t.name`,
    );
    const admin = isAdmin(principal);
    return rows.map((r: Record<string, unknown>) => ({
      id: r.id,
      name: r.name,
      sizeBytes: Number(r.size_bytes),
      createdAt: (r.created_at as Date).toISOString(),
      ready: (r.replicas as { state: string }[]).some((x) => x.state === 'ready'),
      ...(admin ? { source: r.source, replicas: r.replicas } : {}),
    }));
  }

  /** One template.import job per target host; the template row is shared. */
  async import(dto: ImportTemplateDto, principal: Principal) {
    if (dto.source === 'tarball' && !dto.path) {
      throw new ApiError(HttpStatus.BAD_REQUEST, 'VALIDATION_FAILED', 'path is required for source=tarball');
    }
    const source = dto.source === 'tarball' ? `tarball:${dto.path}` : dto.source;
    return this.ds.transaction(async (m) => {
      await m.query(`INSERT INTO templates (name, source) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING`, [
        dto.name,
        source,
      ]);
      const [tpl] = await m.query(`SELECT id, source FROM templates WHERE name = $1 FOR UPDATE`, [dto.name]);
      // Another source: refused while the template is ready or importing anywhere (its clones and its
      // imports are of that source); a name whose every import failed (a wrong path) takes the new one.
      let replacedSource: string | undefined;
      if (tpl.source !== source) {
        const [{ n }] = await m.query(
          `SELECT count(*)::int AS n FROM template_replicas
            WHERE template_id = $1 AND state IN ('ready', 'importing')`,
          [tpl.id],
        );
        if (n > 0)
          throw new ApiError(
            HttpStatus.CONFLICT,
            'TEMPLATE_EXISTS',
            `template ${dto.name} exists with source ${tpl.source} (ready or importing on ${n} host(s))`,
          );
        await m.query(`UPDATE templates SET source = $2 WHERE id = $1`, [tpl.id, source]);
        replacedSource = tpl.source;
      }
      const hosts: { id: string }[] = dto.host
        ? await m.query(`SELECT id FROM hosts WHERE id = $1`, [dto.host])
        : await m.query(`SELECT id FROM hosts WHERE state = 'online' AND NOT draining ORDER BY name`);
      if (hosts.length === 0 && dto.host) {
        // As a create naming an unknown host: the request is wrong, not the fleet short of room.
        throw new ApiError(
          HttpStatus.UNPROCESSABLE_ENTITY,
          'HOST_NOT_FOUND',
          `host ${dto.host} does not exist`,
        );
      }
      if (hosts.length === 0)
        throw new ApiError(HttpStatus.SERVICE_UNAVAILABLE, 'NO_CAPACITY', 'no online host');
      const jobs = [];
      for (const h of hosts) {
        await m.query(
          `INSERT INTO template_replicas (template_id, host_id, state) VALUES ($1, $2, 'importing')
           ON CONFLICT (template_id, host_id) DO UPDATE SET state = CASE WHEN template_replicas.state = 'ready'
             THEN 'ready' ELSE 'importing' END, updated_at = now()`,
          [tpl.id, h.id],
        );
        const job = await this.enqueuer.enqueue(m, {
          kind: 'template.import',
          hostId: h.id,
          principal,
          payload: {
            templateId: tpl.id,
            name: dto.name,
            source:
              dto.source === 'tarball'
                ? { type: 'tarball', path: dto.path! }
                : { type: 'builtin', builder: 'busybox' },
          },
        });
        jobs.push(toJobView(job));
      }
      await appendAudit(m, {
        actor: principal.keyId,
        action: 'template.import.requested',
        subjectType: 'template',
        subjectId: tpl.id,
        requestId: principal.requestId,
        data: {
          name: dto.name,
          source,
          hosts: hosts.map((h) => h.id),
          ...(replacedSource ? { replacedSource } : {}),
        },
      });
      const answer = { template: { id: tpl.id, name: dto.name, source }, jobs };
      await principal.idempotency?.store(m, answer, jobLocation(jobs[0].id));
      return answer;
    });
  }
}

@ApiTags('templates')
@ApiBearerAuth()
@Controller('v1/templates')
export class TemplatesController {
  constructor(private readonly templates: TemplatesService) {}

  @Get()
  @ApiOperation({
    summary: 'Templates, and (admin keys) where they come from and the hosts that have them',
  })
  @ApiOkResponse({ type: [TemplateDto] })
  @ApiProblems()
  list(@CurrentPrincipal() p: Principal) {
    return this.templates.list(p);
  }

  @Post()
  @HttpCode(202)
  @ApiOperation({ summary: 'Import a template on one host or on every online host (one job per host)' })
  @ApiAcceptedJob(
    TemplateImportAcceptedDto,
    'the template and one job per host; Location: /v1/jobs/<first job id>',
    'FORBIDDEN',
    'TEMPLATE_EXISTS',
    'HOST_NOT_FOUND:422',
    'NO_CAPACITY',
  )
  // Templates are the fleet's, and an import reads a path on the hosts as root: admins only.
  @AdminOnly()
  async import(
    @Body() dto: ImportTemplateDto,
    @CurrentPrincipal() p: Principal,
    @Res({ passthrough: true }) res: Response,
  ) {
    const r = await this.templates.import(dto, p);
    res.setHeader('Location', jobLocation(r.jobs[0].id));
    return r;
  }
}
