import { ApiProperty, ApiPropertyOptional } from '@nestjs/swagger';
import { Type } from 'class-transformer';
import { CONTAINER_STATES } from '@berth/db';
import {
  IsBoolean,
  IsIn,
  IsInt,
  IsNumber,
  IsOptional,
  IsString,
  IsUUID,
  Matches,
  Max,
  MaxLength,
  Min,
} from 'class-validator';
import { OmittedOrValid } from '../common/body-optional';

export const DNS_LABEL = /^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/;
const MiB = 1024 * 1024;
const TiB = 1024 * 1024 * MiB;

export class CreateContainerDto {
  @ApiProperty({ example: 'web-1', description: 'DNS label, unique per tenant among live containers' })
  @IsString()
  @Matches(DNS_LABEL, { message: 'name must be a DNS label: a-z, 0-9 and -, 1-63 characters' })
  name: string;

  @ApiProperty({ example: 'busybox' })
  @IsString()
  @MaxLength(63)
  @Matches(/^(?!.*\.\.)[a-z0-9]([a-z0-9._-]{0,61}[a-z0-9])?$/, {
    message: 'template must be a template name',
  })
  template: string;

  @ApiProperty({ example: 1, minimum: 0.01, maximum: 1024, description: 'CPU cores (fractional)' })
  @IsNumber({ allowNaN: false, allowInfinity: false, maxDecimalPlaces: 2 })
  @Min(0.01)
  @Max(1024)
  cpus: number;

  @ApiProperty({
    example: 268435456,
    minimum: 16 * MiB,
    maximum: TiB,
    description: 'hard memory limit in bytes',
  })
  @IsInt()
  @Min(16 * MiB)
  @Max(TiB)
  memoryBytes: number;

  @ApiPropertyOptional({
    example: 1073741824,
    minimum: 64 * MiB,
    maximum: 64 * TiB,
    default: 1073741824,
    description:
      "disk reserved for the container in its host's storage pool (placement counts it); not yet a quota: " +
      'the runtime does not stop a container from writing more',
  })
  @OmittedOrValid()
  @IsInt()
  @Min(64 * MiB)
  @Max(64 * TiB)
  diskBytes?: number;

  @ApiPropertyOptional({ example: 512, minimum: 8, maximum: 4194304, default: 512 })
  @OmittedOrValid()
  @IsInt()
  @Min(8)
  @Max(4_194_304)
  pidsMax?: number;

  @ApiPropertyOptional({ enum: ['none', 'bridge'], default: 'none' })
  @OmittedOrValid()
  @IsIn(['none', 'bridge'])
  network?: 'none' | 'bridge';

  @ApiPropertyOptional({ default: false, description: 'run with real root inside (no user namespace)' })
  @OmittedOrValid()
  @IsBoolean()
  privileged?: boolean;

  @ApiPropertyOptional({
    description: 'host id to place it on (admin keys only); default: placement picks one',
  })
  @OmittedOrValid()
  @IsUUID()
  host?: string;

  @ApiPropertyOptional({ default: true, description: 'start it once created' })
  @OmittedOrValid()
  @IsBoolean()
  start?: boolean;
}

export class ResizeContainerDto {
  @ApiPropertyOptional({ minimum: 0.01, maximum: 1024 })
  @OmittedOrValid()
  @IsNumber({ allowNaN: false, allowInfinity: false, maxDecimalPlaces: 2 })
  @Min(0.01)
  @Max(1024)
  cpus?: number;

  @ApiPropertyOptional({ minimum: 16 * MiB, maximum: TiB })
  @OmittedOrValid()
  @IsInt()
  @Min(16 * MiB)
  @Max(TiB)
  memoryBytes?: number;

  @ApiPropertyOptional({ minimum: 8, maximum: 4194304 })
  @OmittedOrValid()
  @IsInt()
  @Min(8)
  @Max(4_194_304)
  pidsMax?: number;
}

export class StopContainerDto {
  @ApiPropertyOptional({ minimum: 0, maximum: 600000, description: 'SIGTERM → SIGKILL grace in ms' })
  @OmittedOrValid()
  @IsInt()
  @Min(0)
  @Max(600_000)
  timeoutMs?: number;
}

export class SnapshotDto {
  @ApiProperty({ example: 'before-upgrade' })
  @IsString()
  // The runtime's rule for a volume id, within the 63 characters of a name: no `..` anywhere.
  @Matches(/^(?!.*\.\.)[a-z0-9][a-z0-9_.-]{0,62}$/, {
    message:
      "snapshot name: a-z 0-9 _ . -, up to 63 characters, starting with a letter or digit, without '..'",
  })
  name: string;
}

export const CONTAINER_STATE_VALUES: readonly string[] = CONTAINER_STATES;

export class ListContainersQuery {
  @ApiPropertyOptional({ enum: CONTAINER_STATE_VALUES })
  @IsOptional()
  @IsIn(CONTAINER_STATE_VALUES)
  state?: string;
  @ApiPropertyOptional({ format: 'uuid' }) @IsOptional() @IsUUID() host?: string;
  @ApiPropertyOptional({ format: 'uuid' }) @IsOptional() @IsUUID() tenant?: string;
  @ApiPropertyOptional() @IsOptional() @Matches(DNS_LABEL) name?: string;
  @ApiPropertyOptional({ minimum: 1, maximum: 500, default: 50 })
  @IsOptional()
  @Type(() => Number)
  @IsInt()
  @Min(1)
  @Max(500)
  limit?: number;
  @ApiPropertyOptional() @IsOptional() @IsString() cursor?: string;
}
