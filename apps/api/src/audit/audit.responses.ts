import { ApiProperty } from '@nestjs/swagger';

/** OpenAPI shape of an audit event (append-only). */
export class AuditEventDto {
  @ApiProperty({ example: '42', description: 'increasing id; pass as `after` to page forward' }) id: string;
  @ApiProperty({ format: 'date-time' }) at: string;
  @ApiProperty({ description: 'API key id or system:<component>' }) actor: string;
  @ApiProperty({ example: 'container.start.requested' }) action: string;
  @ApiProperty({ example: 'container' }) subjectType: string;
  @ApiProperty({ type: String, format: 'uuid', nullable: true }) subjectId: string | null;
  @ApiProperty({ type: String, format: 'uuid', nullable: true }) jobId: string | null;
  @ApiProperty({ type: String, nullable: true }) requestId: string | null;
  @ApiProperty({ type: 'object', additionalProperties: true }) data: Record<string, unknown>;
}
