import { ApiProperty } from '@nestjs/swagger';
import { JobDto } from '../jobs/jobs.responses';
import { CONTAINER_STATE_VALUES } from './containers.dto';

/** OpenAPI shapes of the container answers (the values are built by toContainerView). */
export class ContainerResourcesDto {
  @ApiProperty({ example: 1 }) cpus: number;
  @ApiProperty({ example: 268435456 }) memoryBytes: number;
  @ApiProperty({ example: 1073741824 }) diskBytes: number;
  @ApiProperty({ example: 512 }) pidsMax: number;
}

export class ContainerNetworkDto {
  @ApiProperty({ enum: ['none', 'bridge'] }) mode: 'none' | 'bridge';
  @ApiProperty({ type: String, nullable: true }) ipAddress: string | null;
}

export class ContainerDto {
  @ApiProperty({ format: 'uuid' }) id: string;
  @ApiProperty({ example: 'web-1' }) name: string;
  @ApiProperty({ type: String, format: 'uuid', nullable: true }) tenantId: string | null;
  @ApiProperty({ enum: CONTAINER_STATE_VALUES }) state: string;
  @ApiProperty({ enum: CONTAINER_STATE_VALUES, description: 'the state once every accepted job has run' })
  targetState: string;
  @ApiProperty({ type: String, format: 'uuid', nullable: true }) hostId: string | null;
  @ApiProperty({ type: String, nullable: true, example: 'busybox' }) template: string | null;
  @ApiProperty({
    type: ContainerResourcesDto,
    description:
      'the limits its host applies; in a resize’s 202 answer, the limits once its accepted resizes have run ' +
      '(GET shows them when the resize job has completed)',
  })
  resources: ContainerResourcesDto;
  @ApiProperty({ type: ContainerNetworkDto }) network: ContainerNetworkDto;
  @ApiProperty({ type: String, format: 'uuid', nullable: true }) lastJobId: string | null;
  @ApiProperty({
    type: String,
    nullable: true,
    example: 'TEMPLATE_NOT_FOUND',
    description:
      'the code of the failed job that left the container other than its request asked (a create that never made it: state `error`; a start, stop, restart, pause or resume that failed); null once a later create, start, stop, restart, pause or resume of it completes. A failed resize or snapshot that left the container as it was (the kernel refused new limits and the old ones stand) does not set it: see that job’s `error`',
  })
  errorCode: string | null;
  @ApiProperty({ format: 'date-time' }) createdAt: string;
  @ApiProperty({ format: 'date-time' }) updatedAt: string;
  @ApiProperty({ type: String, format: 'date-time', nullable: true }) destroyedAt: string | null;
}

/** A write's answer: the job to follow and the container as it is projected. */
export class ContainerAcceptedDto {
  @ApiProperty({ type: JobDto }) job: JobDto;
  @ApiProperty({ type: ContainerDto }) container: ContainerDto;
}

export class ContainerPageDto {
  @ApiProperty({ type: [ContainerDto] }) items: ContainerDto[];
  @ApiProperty({ type: String, nullable: true, description: 'pass as `cursor` for the next page' })
  nextCursor: string | null;
}
