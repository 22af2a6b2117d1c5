import { HttpStatus, Inject, Injectable } from '@nestjs/common';
import type { EntityManager } from 'typeorm';
import { preparedQuery, type SqlTx } from '@berth/db';
import { BERTH_CONFIG, type BerthConfig } from '@berth/config';
import { ApiError } from '../common/api-error';

export interface PlacementRequest {
  /** The template by name: unknown → 422 TEMPLATE_NOT_FOUND. */
  template: string;
  cpus: number;
  memoryBytes: number;
  diskBytes: number;
  /** An explicit host: honoured or refused with the reason. */
  hostId?: string;
}

interface Candidate {
  id: string;
  name: string;
  online: boolean;
  draining: boolean;
  has_template: boolean;
  cpu_free: number;
  mem_free: string;
  disk_free: string;
}

/** CPU is shared by time (overcommitted like every VPS host does); memory and disk are hard reservations. */
export const CPU_OVERCOMMIT = 16;

/**
 * Picks the host for a new container: online (fresh heartbeat), not draining, the template ready there,
 * room for its CPU, memory and disk (reservations summed from the live containers). Runs inside the
 * create transaction under an advisory lock, so two concurrent creates cannot both take the last room.
 */
@Injectable()
export class PlacementService {
  constructor(@Inject(BERTH_CONFIG) private readonly config: BerthConfig) {}

  /**
   * The host for a new container, and its template. Takes the placement lock (held to the end of the
   * caller's transaction) with the template lookup; the hosts are read by the next statement, sent with it
   * (one round trip on a pipelined connection), whose snapshot sees every create committed before the
   * lock was granted.
   */
  async place(
    m: EntityManager | SqlTx,
    req: PlacementRequest,
  ): Promise<{ id: string; name: string; template: { id: string; name: string } }> {
    // Both statements go out at once; PostgreSQL runs them in order, so the second one's snapshot is
    // taken once the first holds the lock.
    const templateQuery = preparedQuery<{ id: string | null; name: string | null }>(
      m,
      `SELECT t.id, t.name FROM (SELECT pg_advisory_xact_lock(hashtext('berth.placement'))) l
       LEFT JOIN templates t ON t.name = $1`,
      [req.template],
    );
    const hostsQuery = preparedQuery<Candidate>(
      m,
      `SELECT h.id, h.name, h.draining,
              (h.state = 'online' AND h.last_heartbeat_at >= now() - make_interval(secs => $2::float / 1000)) AS online,
              EXISTS (SELECT 1 FROM template_replicas r JOIN templates t ON t.id = r.template_id
                      WHERE r.host_id = h.id AND t.name = $1 AND r.state = 'ready') AS has_template,
              h.cpu_count * ${CPU_OVERCOMMIT} - COALESCE(u.cpus, 0) AS cpu_free,
              h.memory_bytes - COALESCE(u.mem, 0) AS mem_free,
              h.disk_bytes - COALESCE(u.disk, 0) AS disk_free
       FROM hosts h
       LEFT JOIN (SELECT host_id, sum(cpus)::float AS cpus, sum(memory_bytes) AS mem, sum(disk_bytes) AS disk
                  FROM containers WHERE destroyed_at IS NULL GROUP BY host_id) u ON u.host_id = h.id
       ${req.hostId ? 'WHERE h.id = $3' : ''}
       ORDER BY h.memory_bytes - COALESCE(u.mem, 0) DESC, h.name`,
      req.hostId
        ? [req.template, this.config.host.offlineAfterMs, req.hostId]
        : [req.template, this.config.host.offlineAfterMs],
    );
    const [templateRows, hostRows] = await Promise.allSettled([templateQuery, hostsQuery]);
    if (templateRows.status === 'rejected') throw templateRows.reason;
    const [template] = templateRows.value;
    if (!template?.id) {
      throw new ApiError(
        HttpStatus.UNPROCESSABLE_ENTITY,
        'TEMPLATE_NOT_FOUND',
        `template ${req.template} does not exist`,
      );
    }
    if (hostRows.status === 'rejected') throw hostRows.reason;
    const hosts = hostRows.value;
    const reasons: string[] = [];
    for (const h of hosts) {
      const why = this.unfit(h, req);
      if (!why) return { id: h.id, name: h.name, template: { id: template.id, name: template.name! } };
      reasons.push(`${h.name}: ${why}`);
    }
    if (req.hostId) {
      if (hosts.length === 0) {
        throw new ApiError(
          HttpStatus.UNPROCESSABLE_ENTITY,
          'HOST_NOT_FOUND',
          `host ${req.hostId} does not exist`,
        );
      }
      throw new ApiError(
        HttpStatus.SERVICE_UNAVAILABLE,
        'NO_CAPACITY',
        `host ${hosts[0].name} cannot take it: ${reasons[0].split(': ').slice(1).join(': ')}`,
        {
          reasons,
        },
      );
    }
    throw new ApiError(
      HttpStatus.SERVICE_UNAVAILABLE,
      'NO_CAPACITY',
      hosts.length ? 'no host can take this container now' : 'no host is registered',
      { reasons },
    );
  }

  private unfit(h: Candidate, r: PlacementRequest): string | null {
    if (!h.online) return 'offline';
    if (h.draining) return 'draining';
    if (!h.has_template) return 'template not available there';
    if (Number(h.cpu_free) < r.cpus) return `not enough CPU (${Number(h.cpu_free).toFixed(2)} free)`;
    if (Number(h.mem_free) < r.memoryBytes) return `not enough memory (${h.mem_free} bytes free)`;
    if (Number(h.disk_free) < r.diskBytes) return `not enough disk (${h.disk_free} bytes free)`;
    return null;
  }
}
