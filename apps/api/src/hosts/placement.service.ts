import { HttpStatus, Inject, Injectable } from '@nestjs/common';
import { preparedQuery, type SqlTx } from '@berth/db';
import { BERTH_CONFIG, type BerthConfig } from '@berth/config';
import { ApiError } from '../common/api-error';
import type { ContainerRow } from '../containers/container-view';

export interface PlacementRequest {
  /** The template by name: unknown → 422 TEMPLATE_NOT_FOUND. */
  template: string;
  cpus: number;
  memoryBytes: number;
  diskBytes: number;
  /** An explicit host: honoured or refused with the reason. */
  hostId?: string;
}

/** The new container's row as the caller decided it (everything but its host and template ids). */
export interface NewContainer {
  id: string;
  tenantId: string | null;
  name: string;
  targetState: string;
  pidsMax: number;
  networkMode: string;
}

/** The request's own audit event (`container.create.requested`), written with the row; `host` is added. */
export interface CreateRequested {
  actor: string;
  requestId: string | null;
  data: Record<string, unknown>;
}

/** The inserted row, with the names of its template and host. */
export type PlacedContainer = ContainerRow & { template_name: string; host_name: string };

/** CPU is shared by time (overcommitted like every VPS host does); memory and disk are hard reservations. */
export const CPU_OVERCOMMIT = 16;

/**
 * The placement lock, held to the end of the caller's transaction. The next statement's snapshot is taken
 * once this one holds the lock: it sees every create committed before.
 */
const LOCK = `SELECT pg_advisory_xact_lock(hashtext('berth.placement'))`;

/**
 * Chooses the host and inserts the container and its request's audit event, in one statement. Each host
 * (or only `$4`, an explicit one) gets the first reason it cannot take the container, null when it can:
 * offline (no fresh heartbeat), draining, the template not ready there, fewer CPUs than the container's
 * limit, not enough CPU, memory or disk
 * (what its live containers reserve: the host's counters, kept by a trigger on the containers table, see
 * migration HostReservations). The fitting host with the most free memory wins (then
 * by name). The answer is one row: the inserted container (its columns null when nothing fitted), how
 * many hosts were considered, every unfit host's reason in that order, whether the template exists, the
 * states of its replicas on those hosts, and each host too small for the container whatever it frees
 * (of the online hosts, or the explicit one): what tells a refusal that waiting cannot end from one it can.
 * `$1` template, `$2` offline threshold (ms), `$3` cpus, `$4` host or null, `$5` memory, `$6` disk, `$7` id,
 * `$8` tenant, `$9` name, `$10` target state, `$11` pids, `$12` network mode, `$13` actor, `$14` request
 * id, `$15` the audit event's data.
 */
const PLACE_AND_INSERT = `WITH
  f AS (SELECT h.*, h.cpu_count * ${CPU_OVERCOMMIT} - h.reserved_cpus::float AS cpu_free,
               h.memory_bytes - h.reserved_memory_bytes AS mem_free, h.disk_bytes - h.reserved_disk_bytes AS disk_free,
               (h.state = 'online' AND h.last_heartbeat_at >= now() - make_interval(secs => $2::float / 1000)) AS online
        FROM hosts h
        WHERE $4::uuid IS NULL OR h.id = $4::uuid),
  h AS (SELECT f.id, f.name, f.mem_free, CASE
          WHEN NOT f.online THEN 'offline'
          WHEN f.draining THEN 'draining'
          WHEN NOT EXISTS (SELECT 1 FROM template_replicas r JOIN templates t ON t.id = r.template_id
                           WHERE r.host_id = f.id AND t.name = $1 AND r.state = 'ready')
            THEN 'template not available there'
          -- The runtime refuses a CPU limit above the host's cores (overcommit is across containers only).
          WHEN f.cpu_count < $3::float THEN format('has %s CPUs', f.cpu_count)
          WHEN f.cpu_free < $3::float THEN format('not enough CPU (%s free)', round(f.cpu_free::numeric, 2))
          WHEN f.mem_free < $5::bigint THEN format('not enough memory (%s bytes free)', f.mem_free)
          WHEN f.disk_free < $6::bigint THEN format('not enough disk (%s bytes free)', f.disk_free)
        END AS why
        FROM f),
  -- What no amount of freed room would change: each host's size (the online ones, or the explicit one).
  size AS (SELECT f.name, f.mem_free, CASE
             WHEN f.cpu_count < $3::float THEN format('has %s CPUs', f.cpu_count)
             WHEN f.memory_bytes < $5::bigint THEN format('has %s bytes of memory', f.memory_bytes)
             WHEN f.disk_bytes < $6::bigint THEN format('has %s bytes of disk', f.disk_bytes)
           END AS why
           FROM f WHERE f.online OR $4::uuid IS NOT NULL),
  t AS (SELECT id, name FROM templates WHERE name = $1),
  pick AS (SELECT h.id, h.name FROM h WHERE h.why IS NULL ORDER BY h.mem_free DESC, h.name LIMIT 1),
  c AS (INSERT INTO containers (id, tenant_id, name, host_id, template_id, state, target_state, cpus, memory_bytes,
                                disk_bytes, pids_max, network_mode)
        SELECT $7, $8, $9, pick.id, t.id, 'creating', $10, $3, $5, $6, $11, $12 FROM pick, t
        RETURNING *),
  a AS (INSERT INTO audit_events (actor, action, subject_type, subject_id, request_id, data)
        SELECT $13, 'container.create.requested', 'container', c.id, $14,
               $15::jsonb || jsonb_build_object('host', pick.name)
        FROM c, pick)
SELECT c.*, t.name AS template_name, pick.name AS host_name,
       (SELECT count(*) FROM h)::int AS placement_hosts,
       (SELECT json_agg(h.name || ': ' || h.why ORDER BY h.mem_free DESC, h.name) FROM h WHERE h.why IS NOT NULL)
         AS placement_reasons,
       t.id IS NOT NULL AS placement_template,
       (SELECT array_agg(DISTINCT r.state) FROM template_replicas r JOIN f ON f.id = r.host_id
        WHERE r.template_id = t.id) AS placement_replicas,
       (SELECT count(*) FROM size)::int AS placement_sized,
       (SELECT json_agg(size.name || ': ' || size.why ORDER BY size.mem_free DESC, size.name) FROM size
        WHERE size.why IS NOT NULL) AS placement_too_small
FROM (SELECT 1) one LEFT JOIN c ON true LEFT JOIN pick ON true LEFT JOIN t ON true`;

/** A resize's new limits (the fields it changes). */
export type ResizeLimits = { cpus?: number; memoryBytes?: number; pidsMax?: number };

/**
 * What a resize of container `$1` would add to its host: the host's cores and free room (its counters,
 * which count each live container at the larger of its limits and what its pending resizes hold), and
 * what the container counts there now.
 */
const RESIZE_ROOM = `SELECT h.name, h.cpu_count, h.cpu_count * ${CPU_OVERCOMMIT} - h.reserved_cpus::float AS cpu_free,
       h.memory_bytes - h.reserved_memory_bytes AS mem_free, h.memory_bytes AS mem_total,
       GREATEST(c.cpus, c.held_cpus)::float AS cpus_counted,
       GREATEST(c.memory_bytes, c.held_memory_bytes) AS mem_counted
FROM containers c JOIN hosts h ON h.id = c.host_id WHERE c.id = $1`;

type PlacementAnswer = PlacedContainer & {
  placement_hosts: number;
  placement_reasons: string[] | null;
  placement_template: boolean;
  /** The states of the template's replicas on the hosts considered (null: none). */
  placement_replicas: string[] | null;
  /** How many hosts' sizes were weighed: the online ones, or the explicit one. */
  placement_sized: number;
  /** Each of those hosts too small for the container whatever it frees, and why. */
  placement_too_small: string[] | null;
};

/**
 * Places a new container: on an online (fresh heartbeat), non-draining host where its template is ready,
 * with room for its CPU, memory and disk; an explicit host is honoured or refused with the reason.
 */
@Injectable()
export class PlacementService {
  constructor(@Inject(BERTH_CONFIG) private readonly config: BerthConfig) {}

  /**
   * Places the container and inserts its row and its request's audit event in the caller's pipelined
   * transaction: the placement lock, then the choice of host and the inserts, sent together (no round
   * trip between them, and the caller may send its next statements and the COMMIT right behind: the lock
   * is held for one round trip and the commit, so concurrent creates queue on it that much less). Two
   * concurrent creates cannot both take the last room. Nothing fits: nothing is written, and the promise
   * rejects with 422 TEMPLATE_NOT_FOUND or 422 HOST_NOT_FOUND; 409 TEMPLATE_NOT_READY when the template is
   * ready on no host (or not on the explicit one); 422 EXCEEDS_HOST_CAPACITY when every online host (or the
   * explicit one) is smaller than the container (its cores, memory or disk); else 503 NO_CAPACITY (the
   * reason per host): room that may free up.
   */
  placeAndInsert(
    tx: SqlTx,
    req: PlacementRequest,
    row: NewContainer,
    requested: CreateRequested,
  ): Promise<PlacedContainer> {
    const lock = tx.query(LOCK);
    const insert = tx.query<PlacementAnswer>(PLACE_AND_INSERT, [
      req.template,
      this.config.host.offlineAfterMs,
      req.cpus,
      req.hostId ?? null,
      req.memoryBytes,
      req.diskBytes,
      row.id,
      row.tenantId,
      row.name,
      row.targetState,
      row.pidsMax,
      row.networkMode,
      requested.actor,
      requested.requestId,
      JSON.stringify(requested.data),
    ]);
    return Promise.all([lock, insert]).then(([, [answer]]) => this.placed(answer, req));
  }

  /**
   * Checks a resize of container `containerId` against its host, in the caller's transaction, under the
   * placement lock (held to its end, like a create's): no more CPUs than the host has (the runtime would
   * refuse it), and a growth only into the room the host has left. The resize job the caller then writes
   * holds that room at once (`containers.held_*`, migration ResizeHolds): a create or another resize
   * accepted before it has run cannot take it too. More CPUs than the host has, or a memory growth past
   * all the host has: 422 EXCEEDS_HOST_CAPACITY. No room now: 503 NO_CAPACITY. Both with the reasons.
   */
  async checkResize(
    q: Parameters<typeof preparedQuery>[0],
    containerId: string,
    r: ResizeLimits,
  ): Promise<void> {
    await preparedQuery(q, LOCK);
    const [h] = await preparedQuery<{
      name: string;
      cpu_count: number;
      cpu_free: number;
      mem_free: string;
      mem_total: string;
      cpus_counted: number;
      mem_counted: string;
    }>(q, RESIZE_ROOM, [containerId]);
    if (!h) return;
    // Larger than the host itself: no room it frees would make it fit (422, not a 503 to retry).
    const tooLarge: string[] = [];
    if (r.cpus !== undefined && r.cpus > h.cpu_count) tooLarge.push(`${h.name}: has ${h.cpu_count} CPUs`);
    const memGrowth = r.memoryBytes === undefined ? 0 : r.memoryBytes - Number(h.mem_counted);
    if (memGrowth > 0 && r.memoryBytes! > Number(h.mem_total))
      tooLarge.push(`${h.name}: has ${h.mem_total} bytes of memory`);
    if (tooLarge.length > 0)
      throw new ApiError(
        HttpStatus.UNPROCESSABLE_ENTITY,
        'EXCEEDS_HOST_CAPACITY',
        `the container's host is too small for the new limits whatever it frees: ${tooLarge.join('; ')}`,
        { reasons: tooLarge },
      );
    const reasons: string[] = [];
    // Only a growth needs room: a shrink is accepted even on a host already short of it (its cores or
    // memory lowered since, an overcommit from before), whose room it gives back.
    const cpuGrowth = r.cpus === undefined ? 0 : r.cpus - h.cpus_counted;
    if (cpuGrowth > 0 && cpuGrowth > h.cpu_free + 1e-9)
      reasons.push(`${h.name}: not enough CPU (${Math.max(h.cpu_free, 0).toFixed(2)} free)`);
    const memFree = Number(h.mem_free);
    if (memGrowth > 0 && memGrowth > memFree)
      reasons.push(`${h.name}: not enough memory (${Math.max(memFree, 0)} bytes free)`);
    if (reasons.length > 0)
      throw new ApiError(
        HttpStatus.SERVICE_UNAVAILABLE,
        'NO_CAPACITY',
        `the container's host cannot take the new limits: ${reasons.join('; ')}`,
        { reasons },
      );
  }

  private placed(answer: PlacementAnswer, req: PlacementRequest): PlacedContainer {
    const {
      placement_hosts: hosts,
      placement_reasons: reasons,
      placement_template: template,
      ...row
    } = answer;
    if (!template) {
      throw new ApiError(
        HttpStatus.UNPROCESSABLE_ENTITY,
        'TEMPLATE_NOT_FOUND',
        `template ${req.template} does not exist`,
      );
    }
    if (row.id) return row;
    const why = reasons ?? [];
    if (req.hostId && hosts === 0) {
      throw new ApiError(
        HttpStatus.UNPROCESSABLE_ENTITY,
        'HOST_NOT_FOUND',
        `host ${req.hostId} does not exist`,
      );
    }
    // Refusals that no freed room would end: a client retrying a 503 would retry them for ever.
    if (hosts > 0 && !answer.placement_replicas?.includes('ready')) {
      const importing = answer.placement_replicas?.includes('importing');
      const where = req.hostId ? `on host ${why[0].split(': ')[0]}` : 'on any host';
      throw new ApiError(
        HttpStatus.CONFLICT,
        'TEMPLATE_NOT_READY',
        `template ${req.template} is not ready ${where}: ` +
          (importing
            ? 'its import is still running; create the container once it is ready'
            : 'no import of it succeeded; import it again (POST /v1/templates)'),
      );
    }
    const tooSmall = answer.placement_too_small ?? [];
    if (answer.placement_sized > 0 && tooSmall.length === answer.placement_sized) {
      throw new ApiError(
        HttpStatus.UNPROCESSABLE_ENTITY,
        'EXCEEDS_HOST_CAPACITY',
        req.hostId
          ? `host ${tooSmall[0].split(': ')[0]} is too small for this container whatever it frees: ` +
              tooSmall[0].split(': ').slice(1).join(': ')
          : 'no online host is large enough for this container, whatever it frees: ask for less',
        { reasons: tooSmall },
      );
    }
    if (req.hostId) {
      const [name, ...reason] = why[0].split(': ');
      throw new ApiError(
        HttpStatus.SERVICE_UNAVAILABLE,
        'NO_CAPACITY',
        `host ${name} cannot take it: ${reason.join(': ')}`,
        { reasons: why },
      );
    }
    throw new ApiError(
      HttpStatus.SERVICE_UNAVAILABLE,
      'NO_CAPACITY',
      hosts ? 'no host can take this container now' : 'no host is registered',
      { reasons: why },
    );
  }
}
