import { HttpStatus, Injectable } from '@nestjs/common';
import { randomUUID } from 'node:crypto';
import { InjectDataSource } from '@nestjs/typeorm';
import type { DataSource } from 'typeorm';
import { PipelinedPool, preparedQuery } from '@berth/db';
import { checkTransition, type ContainerState, type JobKind } from '@berth/jobs';
import type { Principal } from '../auth/principal';
import { ApiError, notFound } from '../common/api-error';
import { cursorAt, cursorScope, decodeCursor, encodeCursor } from '../common/cursor';
import { PlacementService, type ResizeLimits } from '../hosts/placement.service';
import type { IdempotencyClaim } from '../idempotency/idempotency-claim';
import { JobEnqueuer, type EnqueuedJob, type EnqueueInput } from '../jobs/job-enqueuer';
import { jobLocation, toJobView, type JobView } from '../jobs/job-view';
import { CONTAINER_SELECT, toContainerView, type ContainerRow, type ContainerView } from './container-view';
import type { CreateContainerDto, ListContainersQuery } from './containers.dto';

export interface Accepted {
  job: JobView;
  container: ContainerView;
}

const GiB = 1024 * 1024 * 1024;

/**
 * Container requests: validated, checked against the container's state machine, placed, and written with
 * their job, audit event and outbox row in one transaction. Never touches the kernel.
 */
@Injectable()
export class ContainersService {
  constructor(
    @InjectDataSource() private readonly ds: DataSource,
    private readonly placement: PlacementService,
    private readonly enqueuer: JobEnqueuer,
    private readonly pipelined: PipelinedPool,
  ) {}

  /**
   * One pipelined transaction (see PipelinedPool), one round trip: the placement lock, the choice of host
   * with the container's row and the request's audit event (PlacementService.placeAndInsert), the create
   * job and the COMMIT, sent back to back without waiting for each other.
   */
  async create(dto: CreateContainerDto, principal: Principal): Promise<Accepted> {
    return this.pipelined.transaction(async (tx) => {
      const resources = {
        cpus: dto.cpus,
        memoryBytes: dto.memoryBytes,
        diskBytes: dto.diskBytes ?? GiB,
        pidsMax: dto.pidsMax ?? 512,
      };
      const start = dto.start ?? true;
      const id = randomUUID();
      const placed = this.placement.placeAndInsert(
        tx,
        { template: dto.template, ...resources, hostId: dto.host },
        {
          id,
          tenantId: principal.tenantId,
          name: dto.name,
          targetState: start ? 'running' : 'stopped',
          pidsMax: resources.pidsMax,
          networkMode: dto.network ?? 'none',
        },
        {
          actor: principal.keyId,
          requestId: principal.requestId || null,
          data: { name: dto.name, template: dto.template, ...resources, start },
        },
      );
      // On the container's host (from its row: the placement chose it in the statement before).
      const enqueue = this.enqueuer.enqueue(tx, {
        kind: 'container.create',
        containerId: id,
        tenantId: principal.tenantId,
        principal,
        payload: {
          containerId: id,
          name: dto.name,
          template: dto.template,
          resources: { cpus: resources.cpus, memoryBytes: resources.memoryBytes, pidsMax: resources.pidsMax },
          network: { mode: dto.network ?? 'none' },
          privileged: dto.privileged ?? false,
          start,
        },
      });
      // All on the wire, and the COMMIT right behind them; when the placement refuses, nothing was inserted
      // and the enqueue wrote nothing either (no container row); when a statement fails the rest fail with
      // it (the transaction is aborted) and the COMMIT rolls back. A request with an Idempotency-Key
      // stores its answer in the transaction first, and commits after.
      const claim = principal.idempotency;
      if (!claim) tx.commit();
      const [inserted, enqueued] = await Promise.allSettled([placed, enqueue]);
      if (inserted.status === 'rejected') {
        if ((inserted.reason as { code?: string }).code === '23505') {
          throw new ApiError(
            HttpStatus.CONFLICT,
            'CONTAINER_NAME_TAKEN',
            `a container named ${dto.name} exists`,
          );
        }
        throw inserted.reason;
      }
      if (enqueued.status === 'rejected') throw enqueued.reason;
      const { host_name: _, ...row } = inserted.value;
      const job = enqueued.value;
      row.last_job_id = job.id;
      const answer = { job: toJobView(job), container: toContainerView(row) };
      await claim?.store(tx, answer, jobLocation(job.id));
      return answer;
    });
  }

  /**
   * A snapshot under a name the container has not used: a name taken by a snapshot job that has not
   * failed or been cancelled answers 409 `SNAPSHOT_EXISTS` (its data is that snapshot's, not today's). Two
   * requests racing for one name both pass here; the second's job then fails with the same code.
   */
  async snapshot(id: string, principal: Principal, name: string): Promise<Accepted> {
    const [taken] = await preparedQuery<{ id: string }>(
      this.ds,
      `SELECT j.id FROM jobs j JOIN containers c ON c.id = j.container_id
       WHERE j.container_id = $1 AND j.kind = 'container.snapshot' AND j.params->>'snapshot' = $2
         AND j.state NOT IN ('failed', 'cancelled') AND ($3::uuid IS NULL OR c.tenant_id = $3)
       LIMIT 1`,
      [id, name, principal.tenantId],
    );
    if (taken)
      throw new ApiError(
        HttpStatus.CONFLICT,
        'SNAPSHOT_EXISTS',
        `container ${id} already has a snapshot named ${name} (job ${taken.id})`,
      );
    return this.operate(id, 'container.snapshot', principal, { snapshot: name });
  }

  /**
   * Accepts an operation on an existing container: refused with 409 before any job exists when the
   * container's state machine does not allow it from its target state. Two round trips and no explicit
   * transaction: the container's row is read and the transition checked, then the job is written with
   * the enqueues of concurrent requests (JobEnqueuer.submit), guarded by the target state that was
   * checked; when another request changed it in between, the check is made again on the new row.
   * A request with an Idempotency-Key is written in a transaction of its own instead, with its answer;
   * so is a resize, whose room on the host is checked and held under the placement lock.
   */
  async operate(
    id: string,
    kind: JobKind,
    principal: Principal,
    extra: Record<string, unknown> = {},
  ): Promise<Accepted> {
    if (principal.idempotency || kind === 'container.resize')
      return this.operateInTransaction(id, kind, principal, extra, principal.idempotency);
    for (let attempt = 1; ; attempt++) {
      const [row] = await preparedQuery<ContainerRow>(this.ds, `${CONTAINER_SELECT} WHERE c.id = $1`, [id]);
      const next = this.transition(row, id, kind, principal);
      // The target state, the request's audit event and the job in one statement.
      const job = await this.enqueuer.submit({
        ...this.operation(row, kind, principal, extra, next),
        expectTargetState: row.target_state,
      });
      if (job) return this.accepted(row, job, next);
      if (attempt >= 5)
        throw new ApiError(
          HttpStatus.CONFLICT,
          'CONCURRENT_CHANGE',
          'the container kept changing while this request was being accepted; try again',
        );
    }
  }

  /**
   * `operate` in one pipelined transaction: the container's row locked, the transition checked, for a
   * resize its room on the host checked under the placement lock (PlacementService.checkResize; the job
   * holds it), then the job (JobEnqueuer.enqueue) and, with an Idempotency-Key, the request's answer.
   */
  private operateInTransaction(
    id: string,
    kind: JobKind,
    principal: Principal,
    extra: Record<string, unknown>,
    claim?: IdempotencyClaim,
  ): Promise<Accepted> {
    return this.pipelined.transaction(async (tx) => {
      const [row] = await preparedQuery<ContainerRow>(
        tx,
        `${CONTAINER_SELECT} WHERE c.id = $1 FOR UPDATE OF c`,
        [id],
      );
      const next = this.transition(row, id, kind, principal);
      let answered = row;
      if (kind === 'container.resize') {
        const resources = extra.resources as ResizeLimits;
        await this.placement.checkResize(tx, id, resources);
        answered = await this.resized(tx, row, resources);
      }
      const job = await this.enqueuer.enqueue(tx, this.operation(row, kind, principal, extra, next));
      const answer = this.accepted(answered, job, next);
      await claim?.store(tx, answer, jobLocation(job.id));
      return answer;
    });
  }

  /**
   * `row` with the limits it will have once its accepted resizes and this one (`r`) have run, in their
   * order: the row keeps the limits its host applies until each resize job has completed (its end writes
   * them), so a resize's answer is projected like its target state. Read under the container's row lock,
   * which every resize takes before it writes its job.
   */
  private async resized(
    q: Parameters<typeof preparedQuery>[0],
    row: ContainerRow,
    r: ResizeLimits,
  ): Promise<ContainerRow> {
    const pending = await preparedQuery<{ resources: ResizeLimits }>(
      q,
      `SELECT params -> 'resources' AS resources FROM jobs
       WHERE container_id = $1 AND kind = 'container.resize' AND state IN ('queued', 'active', 'waiting-retry')
       ORDER BY container_seq`,
      [row.id],
    );
    const limits = { cpus: Number(row.cpus), memoryBytes: Number(row.memory_bytes), pidsMax: row.pids_max };
    for (const p of [...pending.map((j) => j.resources ?? {}), r]) Object.assign(limits, p);
    return {
      ...row,
      cpus: String(limits.cpus),
      memory_bytes: String(limits.memoryBytes),
      pids_max: limits.pidsMax,
    };
  }

  /** The target state `kind` leads `row` to: 404 when it is not the caller's, 409 when not allowed. */
  private transition(
    row: ContainerRow | undefined,
    id: string,
    kind: JobKind,
    principal: Principal,
  ): ContainerState {
    if (!row || (principal.tenantId && row.tenant_id !== principal.tenantId)) throw notFound('container', id);
    const check = checkTransition(kind, row.target_state as ContainerState);
    if (!check.allowed) {
      throw new ApiError(HttpStatus.CONFLICT, 'INVALID_TRANSITION', check.reason!, {
        state: row.state,
        targetState: row.target_state,
      });
    }
    return check.next;
  }

  /** The job of an operation on `row`, with its audit event and the container's new target state. */
  private operation(
    row: ContainerRow,
    kind: JobKind,
    principal: Principal,
    extra: Record<string, unknown>,
    next: ContainerState,
  ): EnqueueInput {
    return {
      kind,
      hostId: row.host_id!,
      containerId: row.id,
      tenantId: row.tenant_id,
      principal,
      requested: { action: `${kind}.requested`, data: extra },
      targetState: next,
      payload: { containerId: row.id, name: row.name, ...extra },
    };
  }

  /**
   * The answer to an accepted operation: its job, and the container as it will be (its target state; a
   * resize's answer, its limits too: see `resized`).
   */
  private accepted(row: ContainerRow, job: EnqueuedJob, next: ContainerState): Accepted {
    const updated: ContainerRow = {
      ...row,
      target_state: next,
      last_job_id: job.id,
      updated_at: job.container_updated_at ?? row.updated_at,
    };
    return { job: toJobView(job), container: toContainerView(updated) };
  }

  async get(id: string, principal: Principal): Promise<ContainerView> {
    const [row]: ContainerRow[] = await this.ds.query(`${CONTAINER_SELECT} WHERE c.id = $1`, [id]);
    if (!row || (principal.tenantId && row.tenant_id !== principal.tenantId)) throw notFound('container', id);
    return toContainerView(row);
  }

  async list(
    q: ListContainersQuery,
    principal: Principal,
  ): Promise<{ items: ContainerView[]; nextCursor: string | null }> {
    const where: string[] = [];
    const args: unknown[] = [];
    const add = (sql: string, v: unknown) => {
      args.push(v);
      where.push(sql.replace('?', `$${args.length}`));
    };
    if (principal.tenantId) add('c.tenant_id = ?', principal.tenantId);
    else if (q.tenant) add('c.tenant_id = ?', q.tenant);
    if (q.state) add('c.state = ?', q.state);
    else where.push(`c.state <> 'destroyed'`);
    if (q.host) add('c.host_id = ?', q.host);
    if (q.name) add('c.name = ?', q.name);
    const scope = cursorScope('containers', where, args);
    if (q.cursor) {
      const c = decodeCursor(q.cursor, scope);
      args.push(c.at, c.id);
      where.push(`(c.created_at, c.id) < ($${args.length - 1}::timestamptz, $${args.length}::uuid)`);
    }
    const limit = q.limit ?? 50;
    args.push(limit + 1);
    const rows: (ContainerRow & { cursor_at: string })[] = await this.ds.query(
      `${CONTAINER_SELECT.replace('SELECT c.*,', `SELECT c.*, ${cursorAt('c.created_at')},`)} ${where.length ? `WHERE ${where.join(' AND ')}` : ''}
       ORDER BY c.created_at DESC, c.id DESC LIMIT $${args.length}`,
      args,
    );
    const page = rows.slice(0, limit);
    const last = page[page.length - 1];
    return {
      items: page.map(toContainerView),
      nextCursor: rows.length > limit && last ? encodeCursor(last.cursor_at, last.id, scope) : null,
    };
  }
}
