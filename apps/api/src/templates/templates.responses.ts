import { ApiProperty, ApiPropertyOptional } from '@nestjs/swagger';
import { JobDto } from '../jobs/jobs.responses';

/** OpenAPI shapes of the template answers (the values are built by TemplatesService). */
export class TemplateReplicaDto {
  @ApiProperty({ format: 'uuid' }) hostId: string;
  @ApiProperty({ enum: ['importing', 'ready', 'failed'] }) state: string;
  @ApiProperty({ type: String, nullable: true, example: 'btrfs' }) storageDriver: string | null;
}

export class TemplateDto {
  @ApiProperty({ format: 'uuid' }) id: string;
  @ApiProperty({ example: 'busybox' }) name: string;
  @ApiProperty({ description: "its root filesystem's size (0 until a host has measured it)" })
  sizeBytes: number;
  @ApiProperty({ format: 'date-time' }) createdAt: string;
  @ApiProperty({ description: 'some host has it ready: containers can be created from it' }) ready: boolean;
  @ApiPropertyOptional({
    example: 'builtin:busybox',
    description: 'builtin:busybox or tarball:<path on the hosts>; admin keys only',
  })
  source?: string;
  @ApiPropertyOptional({
    type: [TemplateReplicaDto],
    description: 'the hosts that have it (or are importing it); admin keys only',
  })
  replicas?: TemplateReplicaDto[];
}

export class TemplateRefDto {
  @ApiProperty({ format: 'uuid' }) id: string;
  @ApiProperty() name: string;
  @ApiProperty() source: string;
}

/** An import's answer: the template and one job per target host (Location: the first job). */
export class TemplateImportAcceptedDto {
  @ApiProperty({ type: TemplateRefDto }) template: TemplateRefDto;
  @ApiProperty({ type: [JobDto] }) jobs: JobDto[];
}
