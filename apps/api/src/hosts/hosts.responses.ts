import { ApiProperty } from '@nestjs/swagger';

/** OpenAPI shapes of the host answers (the values are built by HostsService). */
export class HostCapacityDto {
  @ApiProperty() cpus: number;
  @ApiProperty() memoryBytes: number;
  @ApiProperty() diskBytes: number;
}

/** What the host's live containers take: each at the larger of its limits and its pending resizes' ones. */
export class HostReservedDto {
  @ApiProperty({ description: 'live containers placed there' }) containers: number;
  @ApiProperty({ description: 'CPU limits, including the growth of accepted resizes not yet run' })
  cpus: number;
  @ApiProperty({ description: 'memory limits, including the growth of accepted resizes not yet run' })
  memoryBytes: number;
  @ApiProperty() diskBytes: number;
}

export class HostDto {
  @ApiProperty({ format: 'uuid' }) id: string;
  @ApiProperty() name: string;
  @ApiProperty({ enum: ['online', 'offline'], description: 'offline: no heartbeat within the threshold' })
  state: string;
  @ApiProperty({ description: 'no new containers are placed on a draining host' }) draining: boolean;
  @ApiProperty({ format: 'date-time' }) lastHeartbeatAt: string;
  @ApiProperty() kernelVersion: string;
  @ApiProperty({ enum: [1, 2] }) cgroupVersion: number;
  @ApiProperty({ type: [String] }) storageDrivers: string[];
  @ApiProperty({ type: HostCapacityDto }) capacity: HostCapacityDto;
  @ApiProperty({ type: HostReservedDto }) reserved: HostReservedDto;
}
