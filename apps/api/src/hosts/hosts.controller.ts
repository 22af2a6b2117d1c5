import { Body, Controller, Get, HttpCode, Inject, Injectable, Param, Post } from '@nestjs/common';
import { ApiBearerAuth, ApiOkResponse, ApiOperation, ApiTags } from '@nestjs/swagger';
import { InjectDataSource } from '@nestjs/typeorm';
import type { DataSource, EntityManager } from 'typeorm';
import { BERTH_CONFIG, type BerthConfig } from '@berth/config';
import { appendAudit } from '@berth/db';
import { AdminOnly, CurrentPrincipal, type Principal } from '../auth/principal';
import { notFound } from '../common/api-error';
import { ApiProblems, ApiWrite, NoBodyPipe, UuidPipe } from '../common/problem.dto';
import { HostDto } from './hosts.responses';

/** A row of HostsService.list's query. */
interface HostRow {
  id: string;
  name: string;
  live: boolean;
  draining: boolean;
  last_heartbeat_at: Date;
  kernel_version: string;
  cgroup_version: number;
  storage_drivers: string[];
  cpu_count: number;
  memory_bytes: string;
  disk_bytes: string;
  containers: number;
  cpus_reserved: number;
  mem_reserved: string;
  disk_reserved: string;
}

@Injectable()
export class HostsService {
  constructor(
    @InjectDataSource() private readonly ds: DataSource,
    @Inject(BERTH_CONFIG) private readonly config: BerthConfig,
  ) {}

  /** Hosts with capacity, reservations and liveness (offline = heartbeat older than the threshold). */
  async list(id?: string, on: DataSource | EntityManager = this.ds): Promise<HostDto[]> {
    const rows: HostRow[] = await on.query(
      `SELECT h.*, (h.state = 'online' AND h.last_heartbeat_at >= now() - make_interval(secs => $1::float / 1000)) AS live,
              h.reserved_containers AS containers, h.reserved_cpus::float AS cpus_reserved,
              h.reserved_memory_bytes AS mem_reserved, h.reserved_disk_bytes AS disk_reserved
       FROM hosts h
       ${id ? 'WHERE h.id = $2' : ''} ORDER BY h.name`,
      id ? [this.config.host.offlineAfterMs, id] : [this.config.host.offlineAfterMs],
    );
    return rows.map((h) => ({
      id: h.id,
      name: h.name,
      state: h.live ? 'online' : 'offline',
      draining: h.draining,
      lastHeartbeatAt: h.last_heartbeat_at.toISOString(),
      kernelVersion: h.kernel_version,
      cgroupVersion: h.cgroup_version,
      storageDrivers: h.storage_drivers,
      capacity: { cpus: h.cpu_count, memoryBytes: Number(h.memory_bytes), diskBytes: Number(h.disk_bytes) },
      reserved: {
        containers: h.containers,
        cpus: h.cpus_reserved,
        memoryBytes: Number(h.mem_reserved),
        diskBytes: Number(h.disk_reserved),
      },
    }));
  }

  async setDraining(id: string, draining: boolean, principal: Principal) {
    return this.ds.transaction(async (m) => {
      const r = await m.query(
        `UPDATE hosts SET draining = $2, updated_at = now() WHERE id = $1 RETURNING id`,
        [id, draining],
      );
      if (r[0].length === 0) throw notFound('host', id);
      await appendAudit(m, {
        actor: principal.keyId,
        action: draining ? 'host.drain' : 'host.undrain',
        subjectType: 'host',
        subjectId: id,
        requestId: principal.requestId,
      });
      const [host] = await this.list(id, m);
      await principal.idempotency?.store(m, host);
      return host;
    });
  }
}

@ApiTags('hosts')
@ApiBearerAuth()
@Controller('v1/hosts')
export class HostsController {
  constructor(private readonly hosts: HostsService) {}

  @Get()
  @ApiOperation({
    summary: 'Hosts with capacity, reservations and heartbeat (admin keys only: the fleet is the operator’s)',
  })
  @ApiOkResponse({ type: [HostDto] })
  @ApiProblems('FORBIDDEN')
  @AdminOnly()
  list() {
    return this.hosts.list();
  }

  @Post(':id/drain')
  @HttpCode(200)
  @ApiOperation({ summary: 'No new containers are placed on a draining host' })
  @ApiWrite(HostDto, 'the host, draining', 'INVALID_ID', 'FORBIDDEN', 'HOST_NOT_FOUND:404')
  @AdminOnly()
  drain(
    @Param('id', UuidPipe) id: string,
    @Body(NoBodyPipe) _body: unknown,
    @CurrentPrincipal() p: Principal,
  ) {
    return this.hosts.setDraining(id, true, p);
  }

  @Post(':id/undrain')
  @HttpCode(200)
  @ApiOperation({ summary: 'Place new containers on the host again' })
  @ApiWrite(HostDto, 'the host, not draining', 'INVALID_ID', 'FORBIDDEN', 'HOST_NOT_FOUND:404')
  @AdminOnly()
  undrain(
    @Param('id', UuidPipe) id: string,
    @Body(NoBodyPipe) _body: unknown,
    @CurrentPrincipal() p: Principal,
  ) {
    return this.hosts.setDraining(id, false, p);
  }
}
