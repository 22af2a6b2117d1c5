import { ApiPropertyOptional } from '@nestjs/swagger';
import { Type } from 'class-transformer';
import { IsIn, IsInt, IsISO8601, IsOptional, IsString, IsUUID, Matches, Max, Min } from 'class-validator';
import { JOB_KINDS } from '@berth/jobs';

const SINCE = /^[1-9]\d{3}-\d\d-\d\d(T\d\d:\d\d(:\d\d(\.\d{1,6})?)?(Z|[+-](0\d|1[0-4]):?[0-5]\d)?)?$/;

/**
 * `since` as an instant PostgreSQL reads the same in any time zone: a date or a date-time without an offset
 * is UTC (as every time Berth answers), not the database server's zone.
 */
export function sinceInstant(since: string): string {
  if (!since.includes('T')) return `${since}T00:00:00Z`;
  return /(Z|[+-]\d\d:?\d\d)$/.test(since) ? since : `${since}Z`;
}

export const JOB_STATE_VALUES = ['queued', 'active', 'waiting-retry', 'completed', 'failed', 'cancelled'];

export class ListJobsQuery {
  @ApiPropertyOptional({ enum: JOB_STATE_VALUES }) @IsOptional() @IsIn(JOB_STATE_VALUES) state?: string;
  @ApiPropertyOptional({ enum: JOB_KINDS }) @IsOptional() @IsIn([...JOB_KINDS]) kind?: string;
  @ApiPropertyOptional({ format: 'uuid' }) @IsOptional() @IsUUID() container?: string;
  @ApiPropertyOptional({ format: 'uuid' }) @IsOptional() @IsUUID() host?: string;
  @ApiPropertyOptional({ format: 'uuid' }) @IsOptional() @IsUUID() campaign?: string;
  @ApiPropertyOptional({
    description:
      'ISO 8601 date or date-time (e.g. 2026-12-01T10:00:00Z): jobs created at or after it; without an offset, UTC',
  })
  @IsOptional()
  // A calendar date and time PostgreSQL reads as a timestamp: ISO 8601 also has week dates, ordinal dates
  // and bare years, which IsISO8601 accepts and PostgreSQL refuses (a 500 instead of a 400).
  @Matches(SINCE, { message: 'since must be an ISO 8601 date or date-time, e.g. 2026-12-01T10:00:00Z' })
  @IsISO8601({ strict: true })
  since?: string;
  @ApiPropertyOptional({ minimum: 1, maximum: 500, default: 50 })
  @IsOptional()
  @Type(() => Number)
  @IsInt()
  @Min(1)
  @Max(500)
  limit?: number;
  @ApiPropertyOptional({ description: 'nextCursor of the previous page' })
  @IsOptional()
  @IsString()
  cursor?: string;
}

export class WaitQuery {
  @ApiPropertyOptional({ minimum: 0, maximum: 120, default: 30, description: 'seconds' })
  @IsOptional()
  @Type(() => Number)
  @IsInt()
  @Min(0)
  @Max(120)
  timeout?: number;
}
