import { HttpStatus, Inject, Injectable, Logger } from '@nestjs/common';
import { InjectDataSource } from '@nestjs/typeorm';
import type { DataSource, EntityManager } from 'typeorm';
import { BERTH_CONFIG, type BerthConfig } from '@berth/config';
import { appendAudit, preparedQuery, publishAgain, recomputeTargetState } from '@berth/db';
import { checkTransition, SLOT_WAIT_STAGE, type ContainerState, type JobKind } from '@berth/jobs';
import { sinceInstant } from './jobs.dto';
import { isAdmin, type Principal } from '../auth/principal';
import { ApiError, notFound } from '../common/api-error';
import { PlacementService, type ResizeLimits } from '../hosts/placement.service';
import { cursorAt, cursorScope, decodeCursor, encodeCursor } from '../common/cursor';
import { FINAL_JOB_STATES, jobLocation, toJobView, type JobRow, type JobView } from './job-view';
import { JobNotifications } from './job-notifications';

/** Audit actions of a job that never leave it ended: a long-poll does not look again on these. */
const NOT_AN_END = new Set(['job.queued', 'job.active', 'job.step.done', 'job.retry', 'job.requeued']);

/**
 * Why a container's job may not run again after the jobs accepted so far (its container's target state),
 * or null: a create only while the container was never made (`creating`, or `error` after the failed
 * create), any other operation as the state machine allows it as a new request.
 */
function retryRefusal(kind: JobKind, target: ContainerState): string | null {
  // Not a container operation (a job that only names its container, e.g. system.noop in tests).
  if (!kind.startsWith('container.')) return null;
  if (kind === 'container.create')
    return target === 'creating' || target === 'error'
      ? null
      : `cannot create again a container that is (or will be) ${target}`;
  const check = checkTransition(kind, target);
  return check.allowed ? null : check.reason!;
}

/**
 * A job of no container (a template import on a host, a system job) is the fleet's: only an admin key
 * may run it again or cancel it, as only an admin key may ask for it.
 */
function fleetJobNeedsAdmin(job: JobRow, principal: Principal, what: string): void {
  if (!job.container_id && !isAdmin(principal))
    throw new ApiError(
      HttpStatus.FORBIDDEN,
      'FORBIDDEN',
      `to ${what} a job of the fleet (${job.kind}) needs an admin API key`,
    );
}

/**
 * A template import runs again only with the template's source: once a new import gave the name another
 * source (every import of the old one had failed), the old job would bring the old rootfs back under it.
 */
async function refuseStaleImport(m: EntityManager, job: JobRow): Promise<void> {
  const p = job.params as { templateId?: string; source?: { type: string; path?: string; builder?: string } };
  // As the import request wrote the template's source: `tarball:<path>` or `builtin:<builder>`.
  const wanted =
    p.source?.type === 'tarball'
      ? `tarball:${p.source.path}`
      : p.source?.builder
        ? `builtin:${p.source.builder}`
        : null;
  const [tpl] = await m.query(`SELECT source FROM templates WHERE id = $1`, [p.templateId]);
  if (tpl && wanted !== null && tpl.source !== wanted)
    throw new ApiError(
      HttpStatus.CONFLICT,
      'JOB_NOT_RETRYABLE',
      `the template's source is ${tpl.source} now (this job imported ${wanted}): import it anew instead`,
    );
}

/** The template a `template.import` job imports (its payload's `templateId`). */
const importedTemplate = (job: JobRow) => (job.params as { templateId?: string }).templateId ?? null;

/**
 * A template's replica on a host says `importing` while an import of it is pending there. A retried import
 * is pending again: its replica goes back to `importing` (a ready one stays ready), so that an import of
 * another source is refused meanwhile, as for the first attempt.
 */
async function replicaImportingAgain(m: EntityManager, job: JobRow): Promise<void> {
  await m.query(
    `INSERT INTO template_replicas (template_id, host_id, state) VALUES ($1, $2, 'importing')
     ON CONFLICT (template_id, host_id) DO UPDATE SET state = CASE WHEN template_replicas.state = 'ready'
       THEN 'ready' ELSE 'importing' END, updated_at = now()`,
    [importedTemplate(job), job.host_id],
  );
}

/**
 * A cancelled import never ran: unless another import of the template is pending on that host, its
 * replica there goes as if it had not been asked for (a ready one stays).
 */
async function replicaAfterCancelledImport(m: EntityManager, job: JobRow): Promise<void> {
  await m.query(
    `DELETE FROM template_replicas r
      WHERE r.template_id = $1 AND r.host_id = $2 AND r.state = 'importing'
        AND NOT EXISTS (SELECT 1 FROM jobs j
                         WHERE j.kind = 'template.import' AND j.host_id = $2 AND j.id <> $3
                           AND j.state IN ('queued', 'active', 'waiting-retry')
                           AND j.params->>'templateId' = $1::text)`,
    [importedTemplate(job), job.host_id, job.id],
  );
}

export interface JobFilters {
  state?: string;
  kind?: string;
  container?: string;
  host?: string;
  campaign?: string;
  since?: string;
  /** Only this tenant's jobs (a tenant's key). */
  tenant?: string;
  /** Only jobs of containers, not the fleet's (a key without the admin scope). */
  containersOnly?: boolean;
  limit: number;
  cursor?: string;
}

export interface JobEventView {
  id: string;
  at: string;
  action: string;
  actor: string;
  data: Record<string, unknown>;
}

@Injectable()
export class JobsService {
  private readonly log = new Logger(JobsService.name);

  constructor(
    @InjectDataSource() private readonly ds: DataSource,
    @Inject(BERTH_CONFIG) private readonly config: BerthConfig,
    private readonly notifications: JobNotifications,
    private readonly placement: PlacementService,
  ) {}

  /**
   * 404 unless job `id` exists and is the caller's: a key of a tenant sees only its tenant's jobs (as it
   * sees only its containers); a key without a tenant sees every job.
   */
  async assertVisible(id: string, principal: Principal): Promise<void> {
    const [row] = await preparedQuery<{ tenant_id: string | null; container_id: string | null }>(
      this.ds,
      `SELECT tenant_id, container_id FROM jobs WHERE id = $1`,
      [id],
    );
    if (
      !row ||
      (principal.tenantId && row.tenant_id !== principal.tenantId) ||
      // A job of no container (a template import on a host) is the fleet's: the operator's to see.
      (!row.container_id && !isAdmin(principal))
    )
      throw notFound('job', id);
  }

  /**
   * The job `id` as the API shows it to `viewer`, read on `on` (a request's transaction) or the pool. Its
   * `waitingReason` names the host only to an admin key (the fleet is the operator's); without a viewer,
   * nobody's.
   */
  async get(id: string, on: DataSource | EntityManager = this.ds, viewer?: Principal): Promise<JobView> {
    // Long-polls ask this at every change of the job: a prepared statement.
    const [row] = await preparedQuery<JobRow>(on, `SELECT * FROM jobs WHERE id = $1`, [id]);
    if (!row) throw notFound('job', id);
    const view = toJobView(row);
    // Any job not ended waits for its host when that host is offline (one queued there, one that was
    // running there when it went away, one waiting there to retry).
    if (!FINAL_JOB_STATES.includes(row.state) && row.host_id) {
      const [host] = await on.query(
        `SELECT name, state, last_heartbeat_at,
                (state = 'offline' OR last_heartbeat_at < now() - make_interval(secs => $2::float / 1000)) AS offline
         FROM hosts WHERE id = $1`,
        [row.host_id, this.config.host.offlineAfterMs],
      );
      if (host?.offline) {
        const since = new Date(host.last_heartbeat_at).toISOString();
        view.waitingReason =
          viewer && isAdmin(viewer)
            ? `waiting for host ${host.name}: offline since ${since}`
            : `waiting for its host: offline since ${since}`;
      }
    }
    return view;
  }

  async events(id: string, afterId = '0'): Promise<JobEventView[]> {
    const rows = await this.ds.query(
      `SELECT id, occurred_at, action, actor, data FROM audit_events WHERE job_id = $1 AND id > $2 ORDER BY id`,
      [id, afterId],
    );
    return rows.map(
      (r: {
        id: string;
        occurred_at: Date;
        action: string;
        actor: string;
        data: Record<string, unknown>;
      }) => ({
        id: r.id,
        at: r.occurred_at.toISOString(),
        action: r.action,
        actor: r.actor,
        data: r.data,
      }),
    );
  }

  async list(f: JobFilters): Promise<{ items: JobView[]; nextCursor: string | null }> {
    const where: string[] = [];
    const args: unknown[] = [];
    const add = (sql: string, v: unknown) => {
      args.push(v);
      where.push(sql.replace('?', `$${args.length}`));
    };
    if (f.state) add('state = ?', f.state);
    if (f.kind) add('kind = ?', f.kind);
    if (f.container) add('container_id = ?', f.container);
    if (f.host) add('host_id = ?', f.host);
    if (f.campaign) add('campaign_id = ?', f.campaign);
    if (f.since) add('created_at >= ?', sinceInstant(f.since));
    if (f.tenant) add('tenant_id = ?', f.tenant);
    if (f.containersOnly) where.push('container_id IS NOT NULL');
    const scope = cursorScope('jobs', where, args);
    if (f.cursor) {
      const c = decodeCursor(f.cursor, scope);
      args.push(c.at, c.id);
      where.push(`(created_at, id) < ($${args.length - 1}::timestamptz, $${args.length}::uuid)`);
    }
    args.push(f.limit + 1);
    const rows: (JobRow & { cursor_at: string })[] = await this.ds.query(
      `SELECT *, ${cursorAt('created_at')} FROM jobs ${where.length ? `WHERE ${where.join(' AND ')}` : ''}
       ORDER BY created_at DESC, id DESC LIMIT $${args.length}`,
      args,
    );
    const page = rows.slice(0, f.limit);
    const last = page[page.length - 1];
    return {
      items: page.map(toJobView),
      nextCursor: rows.length > f.limit && last ? encodeCursor(last.cursor_at, last.id, scope) : null,
    };
  }

  /**
   * Resolves as soon as the job has ended, or after `timeoutMs` with its current state; at once, with the
   * state it had, when `signal` aborts (the client went away: it stops following the job); with its
   * current state when the process begins to shut down.
   */
  async wait(id: string, timeoutMs: number, viewer: Principal, signal?: AbortSignal): Promise<JobView> {
    const first = await this.get(id, this.ds, viewer);
    if (FINAL_JOB_STATES.includes(first.state) || signal?.aborted) return first;
    return new Promise<JobView>((resolve, reject) => {
      let done = false;
      const finish = (v: Promise<JobView>) => {
        if (done) return;
        done = true;
        clearTimeout(timer);
        unsubscribe();
        signal?.removeEventListener('abort', gone);
        closing.removeEventListener('abort', stopping);
        v.then(resolve, reject);
      };
      // A look that fails (PostgreSQL busy or away a moment) is not the wait's end: the next one retries
      // (the safety net's tick, the next notification); the timeout's answer reports a lasting failure.
      const check = () => {
        void this.get(id, this.ds, viewer).then(
          (j) => FINAL_JOB_STATES.includes(j.state) && finish(Promise.resolve(j)),
          (e: unknown) => this.log.warn(`a look at job ${id} for its long-poll failed: ${String(e)}`),
        );
      };
      // Only an end can answer the long-poll: the marks and step records of a running job do not make it
      // read the job again (an action it does not know, or none, does: JobNotifications' safety net for a
      // lost notification wakes it without one).
      // The job's end brings the job as it ended: answered without reading it back.
      const unsubscribe = this.notifications.subscribe(id, (action, row) => {
        if (row && FINAL_JOB_STATES.includes(row.state)) finish(Promise.resolve(toJobView(row)));
        else if (!action || !NOT_AN_END.has(action)) check();
      });
      const timer = setTimeout(() => finish(this.get(id, this.ds, viewer)), timeoutMs);
      const gone = () => finish(Promise.resolve(first));
      signal?.addEventListener('abort', gone);
      // The process shuts down: the job as it is now, as at the timeout (the client asks again).
      const closing = this.notifications.closing;
      const stopping = () => finish(this.get(id, this.ds, viewer));
      if (closing.aborted) stopping();
      else closing.addEventListener('abort', stopping, { once: true });
      check();
    });
  }

  subscribe(id: string, fn: (action?: string) => void): () => void {
    return this.notifications.subscribe(id, fn);
  }

  /** Aborted when the process begins to shut down (JobNotifications.closing): followers let go. */
  get closing(): AbortSignal {
    return this.notifications.closing;
  }

  /**
   * Retries a failed (or cancelled) job: the same job row goes back to `queued` and is published again
   * under a new BullMQ job id; the steps it finished before stay done (the worker resumes after them).
   * A resize must find its room on the host again (it held it while pending, released it when it ended).
   */
  async retry(id: string, principal: Principal): Promise<JobView> {
    return this.ds.transaction(async (m) => {
      const [job]: JobRow[] = await m.query(`SELECT * FROM jobs WHERE id = $1 FOR UPDATE`, [id]);
      if (!job) throw notFound('job', id);
      fleetJobNeedsAdmin(job, principal, 'retry');
      if (job.state !== 'failed' && job.state !== 'cancelled') {
        throw new ApiError(
          HttpStatus.CONFLICT,
          'JOB_NOT_RETRYABLE',
          `job ${id} is ${job.state}; only failed or cancelled jobs can be retried`,
        );
      }
      if (job.kind === 'template.import') {
        await refuseStaleImport(m, job);
        await replicaImportingAgain(m, job);
      }
      let seq: number | null = null;
      // Whether other jobs of its container were accepted after it: then what it did before may have been
      // undone (a restart's stop, followed by a start), and it runs again from its first step.
      let fresh = false;
      if (job.container_id) {
        const [c] = await m.query(`SELECT state, target_state FROM containers WHERE id = $1 FOR UPDATE`, [
          job.container_id,
        ]);
        if (c?.state === 'destroyed') {
          throw new ApiError(
            HttpStatus.CONFLICT,
            'CONTAINER_DESTROYED',
            'the container of this job is destroyed',
          );
        }
        // Checked like a new request: the job runs again after every job accepted so far.
        const reason = retryRefusal(job.kind, c.target_state as ContainerState);
        if (reason) {
          throw new ApiError(HttpStatus.CONFLICT, 'INVALID_TRANSITION', reason, {
            state: c.state,
            targetState: c.target_state,
          });
        }
        if (job.kind === 'container.resize') {
          const params = job.params as { resources?: ResizeLimits };
          await this.placement.checkResize(m, job.container_id, params.resources ?? {});
        }
        // Its new place in the container's FIFO: last. With its old one it would not wait for the jobs
        // accepted after it (they ran, or run, once it had failed), and could run beside one of them.
        [{ job_seq: seq }] = await m.query(
          `WITH u AS (UPDATE containers SET job_seq = job_seq + 1, last_job_id = $2 WHERE id = $1 RETURNING job_seq)
           SELECT job_seq FROM u`,
          [job.container_id, id],
        );
        fresh = job.container_seq != null && job.container_seq < seq! - 1;
      }
      const [{ n }] = await m.query(
        `SELECT count(*)::int AS n FROM audit_events WHERE job_id = $1 AND action = 'job.retry.requested'`,
        [id],
      );
      await m.query(
        `UPDATE jobs SET state = 'queued', attempts = 0, error_code = NULL, error_message = NULL, error_step = NULL,
                finished_at = NULL, updated_at = now(), container_seq = COALESCE($2, container_seq)
         WHERE id = $1`,
        [id, seq],
      );
      // The job is pending again: the container's target state includes what it will do.
      await this.afterRequeueOrCancel(m, job, 'job.retry.requested', principal, { fresh });
      await publishAgain(m, { ...job, host_id: job.host_id! }, `${id}-r${n + 1}`);
      return this.answer(m, id, principal, jobLocation(id));
    });
  }

  /**
   * Cancels a job that has not started: queued, waiting to retry, or claimed by its host's worker and still
   * waiting for a worker slot (progress SLOT_WAIT_STAGE; the worker starts such a job only if it is still
   * `active`, see JobStore.startAfterWait). The worker skips cancelled jobs.
   */
  async cancel(id: string, principal: Principal): Promise<JobView> {
    return this.ds.transaction(async (m) => {
      const [job]: JobRow[] = await m.query(`SELECT * FROM jobs WHERE id = $1 FOR UPDATE`, [id]);
      if (!job) throw notFound('job', id);
      fleetJobNeedsAdmin(job, principal, 'cancel');
      const waitingForSlot = job.state === 'active' && job.progress?.stage === SLOT_WAIT_STAGE;
      if (job.state !== 'queued' && job.state !== 'waiting-retry' && !waitingForSlot) {
        throw new ApiError(
          HttpStatus.CONFLICT,
          'JOB_NOT_CANCELLABLE',
          `job ${id} is ${job.state}; only jobs that have not started (queued, or waiting for a worker slot) can be cancelled`,
        );
      }
      await m.query(
        `UPDATE jobs SET state = 'cancelled', finished_at = now(), updated_at = now() WHERE id = $1`,
        [id],
      );
      if (job.kind === 'template.import') await replicaAfterCancelledImport(m, job);
      // What this job would have done no longer happens: project the present state through what is left.
      await this.afterRequeueOrCancel(m, job, 'job.cancelled', principal);
      return this.answer(m, id, principal);
    });
  }

  /** The job as a write's answer, read in its transaction `m` and stored there for its Idempotency-Key. */
  private async answer(m: EntityManager, id: string, principal: Principal, location?: string) {
    const view = await this.get(id, m, principal);
    await principal.idempotency?.store(m, view, location);
    return view;
  }

  /** A job re-entered or left the queue: recompute its container's target state and audit the request. */
  private async afterRequeueOrCancel(
    m: EntityManager,
    job: JobRow,
    action: string,
    principal: Principal,
    data: Record<string, unknown> = {},
  ) {
    if (job.container_id) await recomputeTargetState(m, job.container_id);
    await appendAudit(m, {
      actor: principal.keyId,
      action,
      subjectType: job.container_id ? 'container' : 'job',
      subjectId: job.container_id ?? job.id,
      jobId: job.id,
      requestId: principal.requestId,
      data,
    });
  }
}
