import { ApiProperty, ApiPropertyOptional } from '@nestjs/swagger';
import { JOB_KINDS } from '@berth/jobs';
import { JOB_STATE_VALUES } from './jobs.dto';

/** OpenAPI shapes of the job answers (the values are built by toJobView and JobsService). */
export class JobProgressDto {
  @ApiProperty({ example: 'clone' }) stage: string;
  @ApiProperty({ minimum: 0, maximum: 100, example: 40 }) percent: number;
}

export class JobErrorDto {
  @ApiProperty({ example: 'TEMPLATE_NOT_FOUND', description: 'stable error code' }) code: string;
  @ApiProperty({ type: String, nullable: true }) message: string | null;
  @ApiProperty({ type: String, nullable: true, description: 'the step that failed' }) step: string | null;
}

export class JobDto {
  @ApiProperty({ format: 'uuid' }) id: string;
  @ApiProperty({ enum: JOB_KINDS }) kind: string;
  @ApiProperty({
    enum: JOB_STATE_VALUES,
    description:
      "`active`: taken by its host's worker (running, or claimed ahead and waiting for a worker slot: see progress)",
  })
  state: string;
  @ApiProperty({ type: String, format: 'uuid', nullable: true }) containerId: string | null;
  @ApiProperty({ type: String, format: 'uuid', nullable: true }) hostId: string | null;
  @ApiProperty({ type: 'object', additionalProperties: true, description: 'the validated job payload' })
  params: Record<string, unknown>;
  @ApiProperty({ type: 'object', additionalProperties: true, nullable: true })
  result: Record<string, unknown> | null;
  @ApiProperty({ type: JobProgressDto, nullable: true }) progress: JobProgressDto | null;
  @ApiProperty({ type: JobErrorDto, nullable: true }) error: JobErrorDto | null;
  @ApiProperty() attempts: number;
  @ApiProperty() maxAttempts: number;
  @ApiProperty({ description: 'the API key id that asked for it' }) requestedBy: string;
  @ApiProperty({ format: 'date-time' }) createdAt: string;
  @ApiProperty({
    type: String,
    format: 'date-time',
    nullable: true,
    description: "when its host's worker first took it",
  })
  startedAt: string | null;
  @ApiProperty({ type: String, format: 'date-time', nullable: true }) finishedAt: string | null;
  @ApiPropertyOptional({
    example: 'waiting for host h1: offline since 2025-01-01T00:00:00.000Z',
    description:
      'why a job that has not ended makes no progress: its host is offline (named to admin keys only: ' +
      '`waiting for its host: …` otherwise)',
  })
  waitingReason?: string;
}

export class JobEventDto {
  @ApiProperty({ description: 'audit event id (increasing)', example: '42' }) id: string;
  @ApiProperty({ format: 'date-time' }) at: string;
  @ApiProperty({ example: 'job.completed', description: 'job.queued, job.active, job.step, job.completed…' })
  action: string;
  @ApiProperty({ description: 'API key id or system:<component>' }) actor: string;
  @ApiProperty({ type: 'object', additionalProperties: true }) data: Record<string, unknown>;
}

export class JobWithEventsDto extends JobDto {
  @ApiProperty({ type: [JobEventDto], description: 'every event of the job, oldest first' })
  events: JobEventDto[];
}

export class JobPageDto {
  @ApiProperty({ type: [JobDto] }) items: JobDto[];
  @ApiProperty({ type: String, nullable: true, description: 'pass as `cursor` for the next page' })
  nextCursor: string | null;
}
