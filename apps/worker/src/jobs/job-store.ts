import { Injectable } from '@nestjs/common';
import { InjectDataSource } from '@nestjs/typeorm';
import type { DataSource, EntityManager } from 'typeorm';
import {
  appendAudit,
  createBatcher,
  PipelinedPool,
  preparedQuery,
  publishAgain,
  recomputeTargetState,
} from '@berth/db';
import { SLOT_WAIT_STAGE, type JobKind } from '@berth/jobs';
import type { JobOutcome } from './job-context';

export interface StoredJob {
  id: string;
  kind: JobKind;
  state: string;
  container_id: string | null;
  host_id: string;
  container_seq: number | null;
  /** The BullMQ job that carries it, once it has had several (see JobClaim.superseded); null: its first. */
  carrier?: string | null;
  params: Record<string, unknown>;
  attempts: number;
  max_attempts: number;
  /** `{stage, percent}` as last recorded (SLOT_WAIT_STAGE: claimed ahead, waiting for a slot). */
  progress?: { stage?: string; percent?: number } | null;
}

export interface JobFailure {
  code: string;
  message: string;
  step: string | null;
}

const ACTOR = 'system:worker';

/**
 * `SELECT 1 FROM audit_events e` of job `job`'s `action` events recorded since its latest claim (its latest
 * `job.active`): what a run has recorded so far; a condition on `e` may follow (`AND …`).
 */
const SINCE_LATEST_CLAIM = (job: string, action: string) =>
  `SELECT 1 FROM audit_events e
    WHERE e.job_id = ${job} AND e.action = '${action}'
      AND e.id > COALESCE((SELECT max(a.id) FROM audit_events a
                           WHERE a.job_id = ${job} AND a.action = 'job.active'), 0)`;

/** The audit subject of the job in row `r`: its container when it has one, else the job itself. */
const subject = (r: string) =>
  `CASE WHEN ${r}.container_id IS NULL THEN 'job' ELSE 'container' END, COALESCE(${r}.container_id, ${r}.id)`;

/**
 * `INSERT INTO audit_events … SELECT … FROM u` for the job updated by the CTE `u` (which must return `id`,
 * `kind`, `container_id`): the transition and its audit event in one statement, hence one implicit
 * transaction and one round trip. `data` is a jsonb expression over `u` and the parameters.
 */
const auditFromUpdate = (action: string, data: string) =>
  `INSERT INTO audit_events (actor, action, subject_type, subject_id, job_id, data)
   SELECT '${ACTOR}', '${action}', ${subject('u')}, u.id, jsonb_build_object('kind', u.kind) || ${data} FROM u`;

/**
 * Sets `synchronous_commit = off` for the statement's own implicit transaction (set_config(…, true) lasts
 * until its end, commit included): the commit does not wait for the WAL flush. See `relaxed` below for
 * which records may be written this way.
 */
const RELAXED = `relaxed AS (SELECT set_config('synchronous_commit', 'off', true) AS v)`;

/** A job's completion as the completion statement takes it (see JobStore.complete). */
interface Completion {
  id: string;
  result: Record<string, unknown>;
  /** Write the container's row from `status` and `ip`. */
  sync: boolean;
  containerId: string | null;
  status: string | null;
  ip: string | null;
  /** Step records still to write, in order. */
  steps: string[];
}

/**
 * The job row (`jobs`) is carried by the BullMQ job whose id is the parameter `p`: its current carrier, or
 * its first BullMQ job while it has had only one (carrier null; see JobClaim.superseded).
 */
const CARRIED = (p: string) => `(jobs.carrier IS NULL OR jobs.carrier = ${p})`;

/** The states of a job that has not ended. */
export const PENDING_STATES = ['queued', 'active', 'waiting-retry'];

/** A pending job as the start-up sweep sees it (JobStore.unfinished). */
export interface UnfinishedJob {
  id: string;
  state: string;
  carrier: string | null;
  /** The BullMQ job to look up; null: an `active` job whose claim did not record it. */
  bullJobId: string | null;
}

/** JobStore.startAfterWait's answer. */
export type StartAfterWait =
  | { started: true }
  /** `state`: the job's now (null: gone); `carried`: the BullMQ job asked about still carries it. */
  | { started: false; state: string | null; carried: boolean };

/** Container states a job leaves behind; between them the kernel is the truth (see `observed`). */
export const SETTLED_STATES = ['stopped', 'running', 'paused'];
/** What the worker learns about a job it was handed, in one round trip (`JobStore.claim`). */
export interface JobClaim {
  /** The job as it was before the claim; null when Postgres does not know it. */
  job: StoredJob | null;
  /** An earlier job of the same container is unfinished (per-container FIFO): not claimed. */
  blocked: boolean;
  /** The job was pending and is now `active` (with its `job.active` audit event). */
  activated: boolean;
  /**
   * This BullMQ job no longer carries the job: it was published again under another id (a retry, a
   * requeue; see publishAgain) and only that one may run it. Not claimed.
   */
  superseded: boolean;
  /** Steps an earlier attempt finished (recorded `job.step.done` events). */
  doneSteps: Set<string>;
}

/** A claim as the hot statement takes it: the job, its attempt, the BullMQ job that carries it. */
interface Claim {
  id: string;
  attempt: number;
  /** Recorded in `job.active`: the start-up sweep looks this BullMQ job up (see JobStore.unfinishedActive). */
  bull: string;
}

/** One write of the hot statement (JobStore.writes): a claim or a completion. */
type HotWrite = { claim: Claim } | { complete: Completion };

/** A row of the hot statement's answer: a claim's (op `claim`) or a completion's (op `complete`). */
interface HotRow {
  op: 'claim' | 'complete';
  id: string;
  /** Claim: the job as it was before the claim; null when Postgres does not know it. */
  job: StoredJob | null;
  blocked: boolean | null;
  activated: boolean | null;
  superseded: boolean | null;
  done_steps: string[] | null;
  /** Completion: whether the job is its container's latest (null when the container row was not written). */
  latest: boolean | null;
  /** Completion: whether this statement completed the job (false: it was completed already). */
  updated: boolean | null;
}

/**
 * The claims' part of the hot statement (CTEs ci … ca; rows: CLAIM_ROWS). `$p`: the job ids, `$p+1`: the
 * claims as JSON (Claim). `relaxed`: the statement is claims only, its commit need not be flushed.
 * `completing`: the parameter holding the ids of the jobs this statement completes; they do not block a
 * later job of their container (they end in the same commit that activates it).
 */
const claimCtes = (p: number, relaxed: boolean, completing?: number) => `
  ci AS (SELECT * FROM jsonb_to_recordset($${p + 1}::jsonb) AS i(id uuid, attempt int, bull text)),
  -- "= ANY($${p})" (the ids again, as an array) makes these index scans: the planner cannot size ci.
  cj AS (SELECT * FROM jobs WHERE id = ANY($${p}::uuid[])),
  cb AS (SELECT cj.id, EXISTS (
           SELECT 1 FROM jobs e
           WHERE cj.container_id IS NOT NULL AND cj.container_seq IS NOT NULL
             AND e.container_id = cj.container_id AND e.container_seq < cj.container_seq
             AND e.state IN ('queued', 'active', 'waiting-retry')${
               completing ? ` AND NOT (e.id = ANY($${completing}::uuid[]))` : ''
             }) AS blocked
         FROM cj),
  -- A job claimed again (handed back at a shutdown while it waited for a slot) no longer waits: the worker
  -- writes the waiting stage again if it has to wait (the API cancels jobs in that stage).
  cu AS (UPDATE jobs SET state = 'active', attempts = ci.attempt, started_at = COALESCE(started_at, now()),
                         updated_at = now(),
                         progress = CASE WHEN jobs.progress->>'stage' = '${SLOT_WAIT_STAGE}' THEN NULL
                                         ELSE jobs.progress END
         FROM ci, cb${relaxed ? ', relaxed' : ''}
         WHERE jobs.id = ANY($${p}::uuid[]) AND jobs.id = ci.id AND cb.id = ci.id
           AND jobs.state IN ('queued', 'active', 'waiting-retry') AND NOT cb.blocked
           AND (jobs.carrier IS NULL OR jobs.carrier = ci.bull)
         RETURNING jobs.id, jobs.kind, jobs.container_id, ci.attempt, ci.bull),
  ca AS (INSERT INTO audit_events (actor, action, subject_type, subject_id, job_id, data)
         SELECT '${ACTOR}', 'job.active', ${subject('cu')}, cu.id,
                jsonb_build_object('kind', cu.kind, 'attempt', cu.attempt, 'bullJobId', cu.bull)
         FROM cu)`;

/** Each claim's answer: the job before the claim, blocked, activated, the steps an earlier attempt did. */
const CLAIM_ROWS = `
  SELECT 'claim' AS op, ci.id,
         CASE WHEN cj.id IS NULL THEN NULL ELSE jsonb_build_object(
           'id', cj.id, 'kind', cj.kind, 'state', cj.state, 'container_id', cj.container_id,
           'host_id', cj.host_id, 'container_seq', cj.container_seq, 'params', cj.params,
           'attempts', cj.attempts, 'max_attempts', cj.max_attempts) END AS job,
         COALESCE(cb.blocked, false) AS blocked,
         EXISTS (SELECT 1 FROM cu WHERE cu.id = ci.id) AS activated,
         COALESCE(cj.carrier <> ci.bull, false) AS superseded,
         -- Recorded since the job's last retry that runs it afresh (other jobs of its container ran since it
         -- failed: JobsService.retry), or all of them.
         ARRAY(SELECT data->>'step' FROM audit_events
               WHERE job_id = ci.id AND action = 'job.step.done'
                 AND id > COALESCE((SELECT max(r.id) FROM audit_events r
                                    WHERE r.job_id = ci.id AND r.action = 'job.retry.requested'
                                      AND r.data->>'fresh' = 'true'), 0)) AS done_steps,
         NULL::boolean AS latest, NULL::boolean AS updated
  FROM ci LEFT JOIN cj ON cj.id = ci.id LEFT JOIN cb ON cb.id = ci.id`;

/**
 * The completions' part of the hot statement (CTEs i … c; rows: COMPLETION_ROWS). `$p`: the job ids,
 * `$p+1`: their containers' ids, `$p+2`: the completions as JSON (completionParams). A job's events are
 * inserted in order: its step records, then `job.completed`.
 */
const completionCtes = (p: number) => `
  i AS (SELECT * FROM jsonb_to_recordset($${p + 2}::jsonb)
               AS i(id uuid, result jsonb, sync boolean, status text, ip text, steps jsonb, ord int)),
  u AS (
    UPDATE jobs SET state = 'completed', result = i.result, progress = '{"stage":"done","percent":100}',
           error_code = NULL, error_message = NULL, error_step = NULL, finished_at = now(), updated_at = now()
    -- "= ANY($${p})", "= ANY($${p + 1})": index scans (the planner cannot size i).
    -- A job completes once: written again (a batch retried input by input after an error that came
    -- after its commit), it changes nothing and records nothing.
    FROM i WHERE jobs.id = ANY($${p}::uuid[]) AND jobs.id = i.id AND jobs.state <> 'completed'
    RETURNING jobs.id, jobs.kind, jobs.container_id, jobs.container_seq, i.result, i.sync, i.status, i.ip,
              i.steps, i.ord),
  a AS (
    INSERT INTO audit_events (actor, action, subject_type, subject_id, job_id, data)
    SELECT '${ACTOR}', e.action, ${subject('u')}, u.id, jsonb_build_object('kind', u.kind) || e.data
    FROM u, LATERAL (
      SELECT x.ord, 'job.step.done' AS action, jsonb_build_object('step', x.step) AS data
      FROM jsonb_array_elements_text(u.steps) WITH ORDINALITY AS x(step, ord)
      UNION ALL SELECT 9223372036854775807, 'job.completed', jsonb_build_object('result', u.result)
    ) e
    ORDER BY u.ord, e.ord),
  c AS (
    UPDATE containers SET state = u.status, ip_address = u.ip::inet, error_code = NULL, version = version + 1,
           updated_at = now(),
           -- Re-evaluated on the newest row version when a concurrent enqueue got the row first.
           target_state = CASE WHEN containers.job_seq = u.container_seq THEN u.status
                               ELSE containers.target_state END
    FROM u WHERE u.sync AND containers.id = ANY($${p + 1}::uuid[]) AND containers.id = u.container_id
    RETURNING u.id, containers.job_seq = u.container_seq AS latest)`;

/**
 * Each completion's answer: whether its job is its container's latest (null: container row not written),
 * and whether this statement completed it (false: it was completed already).
 */
const COMPLETION_ROWS = `
  SELECT 'complete' AS op, i.id, NULL::jsonb AS job, NULL::boolean AS blocked, NULL::boolean AS activated,
         NULL::boolean AS superseded, NULL::text[] AS done_steps, c.latest,
         EXISTS (SELECT 1 FROM u WHERE u.id = i.id) AS updated
  FROM i LEFT JOIN c ON c.id = i.id`;

const completionParams = (inputs: readonly Completion[]) => [
  inputs.map((i) => i.id),
  inputs.flatMap((i) => (i.containerId ? [i.containerId] : [])),
  JSON.stringify(inputs.map(({ containerId: _, ...input }, ord) => ({ ...input, ord }))),
];

/**
 * The worker's writes to Postgres: every job transition with its audit event, atomically (one statement with
 * a data-modifying CTE, or one transaction when the handler adds its own changes).
 */
@Injectable()
export class JobStore {
  constructor(
    @InjectDataSource() private readonly ds: DataSource,
    /** The hot statements (claims, step records, progress, transitions): generic plans, see PipelinedPool. */
    private readonly hot: PipelinedPool,
  ) {}

  async load(id: string): Promise<StoredJob | null> {
    const [row] = await this.ds.query(`SELECT * FROM jobs WHERE id = $1`, [id]);
    return row ?? null;
  }

  /**
   * Loads the job, checks per-container FIFO, marks it active with its `job.active` event (when it is
   * pending and not blocked) and reads its finished steps: one statement instead of a load, a FIFO query,
   * a 4-statement transaction and a steps query. The update re-checks the row's state under its lock, so a
   * job cancelled meanwhile is not activated. A relaxed write (see `relaxed`) when it goes alone; the
   * `job.active` event notifies nobody (migration JobActiveSilent). Goes with the other claims and
   * completions made while a statement is in flight (see `writes`).
   */
  claim(id: string, attempt: number, bullJobId: string): Promise<JobClaim> {
    return this.writes({ claim: { id, attempt, bull: bullJobId } }) as Promise<JobClaim>;
  }

  /**
   * Group commit of the hot transitions (createBatcher): the claims and completions made while a statement
   * is being written go together in the next one, claims and completions alike (under load a worker's
   * slots are claiming and completing at the same moments: one statement and one commit instead of one
   * each). Claims alone are a relaxed commit; with a completion the commit is durable. A job is in a
   * statement once (PostgreSQL does not define two updates of one row by one statement): a second write of
   * the same job goes in a statement after it.
   */
  private readonly writes = createBatcher<HotWrite, JobClaim | boolean | null>((items) =>
    this.writeHot(items),
  );

  private async writeHot(items: readonly HotWrite[]): Promise<(JobClaim | boolean | null)[]> {
    const seen = new Set<string>();
    const now: HotWrite[] = [];
    const later: HotWrite[] = [];
    for (const w of items) {
      const id = 'claim' in w ? w.claim.id : w.complete.id;
      (seen.has(id) ? later : now).push(w);
      seen.add(id);
    }
    const claims = now.flatMap((w) => ('claim' in w ? [w.claim] : []));
    const completions = now.flatMap((w) => ('complete' in w ? [w.complete] : []));
    const claimParams = [claims.map((c) => c.id), JSON.stringify(claims)];
    let sql: string;
    let params: unknown[];
    if (completions.length === 0) {
      sql = `WITH ${RELAXED}, ${claimCtes(1, true)} ${CLAIM_ROWS}`;
      params = claimParams;
    } else if (claims.length === 0) {
      sql = `WITH ${completionCtes(1)} ${COMPLETION_ROWS}`;
      params = completionParams(completions);
    } else {
      sql = `WITH ${claimCtes(1, false, 3)}, ${completionCtes(3)} ${CLAIM_ROWS} UNION ALL ${COMPLETION_ROWS}`;
      params = [...claimParams, ...completionParams(completions)];
    }
    const rows = await this.hot.query<HotRow>(sql, params);
    const claimed = new Map(rows.filter((r) => r.op === 'claim').map((r) => [r.id, r]));
    const completed = new Map(rows.filter((r) => r.op === 'complete').map((r) => [r.id, r.latest]));
    const answers = new Map<HotWrite, JobClaim | boolean | null>();
    for (const w of now) {
      if ('complete' in w) {
        answers.set(w, completed.get(w.complete.id) ?? null);
        continue;
      }
      const row = claimed.get(w.claim.id);
      if (!row) throw new Error(`claim of job ${w.claim.id}: no answer`);
      answers.set(w, {
        job: row.job,
        blocked: row.blocked!,
        activated: row.activated!,
        superseded: row.superseded!,
        doneSteps: new Set<string>(row.done_steps ?? []),
      });
    }
    if (later.length > 0) {
      const rest = await this.writeHot(later);
      later.forEach((w, k) => answers.set(w, rest[k]));
    }
    return items.map((w) => answers.get(w)!);
  }

  /**
   * Why some writes are relaxed (`synchronous_commit = off`): ~5 ms less per write on a disk with slow
   * fsync, on every job's critical path. Only for records whose loss in a Postgres crash repeats what the
   * pipeline already repeats safely: the `active` mark (the job still counts as unfinished), progress, a
   * finished step (steps are idempotent; a lost record re-runs the step, like a worker crash between step
   * and record does; but a step run `recorded` is written durably: see StepOptions). Terminal transitions (completed, failed, retry) stay synchronous, and the WAL is
   * sequential: once they are durable, so is every record before.
   */
  /** A finished step's record; `durable`: its commit waits for the WAL flush (a step run `recorded`). */
  async stepDone(
    job: StoredJob,
    step: string,
    data: Record<string, unknown> = {},
    durable = false,
  ): Promise<void> {
    // Once per run (since the job's latest claim): a record written again because its first commit's
    // answer was lost (PostgreSQL killed after the commit, a query timeout) adds nothing.
    await this.hot.query(
      `${durable ? '' : `WITH ${RELAXED}`}
       INSERT INTO audit_events (actor, action, subject_type, subject_id, job_id, data)
       SELECT '${ACTOR}', 'job.step.done', $1, $2, $3, $4 ${durable ? '' : 'FROM relaxed'}
       WHERE NOT EXISTS (${SINCE_LATEST_CLAIM('$3', 'job.step.done')} AND e.data->>'step' = $5)`,
      [
        job.container_id ? 'container' : 'job',
        job.container_id ?? job.id,
        job.id,
        JSON.stringify({ kind: job.kind, step, ...data }),
        step,
      ],
    );
  }

  /**
   * A job that waited for a worker slot (progress SLOT_WAIT_STAGE) starts: its progress says `running`,
   * provided it is still `active` (the API may have cancelled it meanwhile: then it must not run) and still
   * carried by `bullJobId` (cancelled and retried meanwhile: the retry's carrier runs it, see
   * JobClaim.superseded). The row lock orders this against a cancel; durable, so that a crash of PostgreSQL
   * cannot bring back a "waiting" job that in fact runs, and let it be cancelled. When it does not start,
   * the answer says why: the job's state and whether `bullJobId` still carries it, read after the update
   * (a pending job there lost its claim: a crash of PostgreSQL took back the claim's relaxed commit).
   */
  async startAfterWait(jobId: string, bullJobId: string): Promise<StartAfterWait> {
    const rows = await this.hot.query(
      `UPDATE jobs SET progress = '{"stage":"running","percent":0}', updated_at = now()
       WHERE id = $1 AND state = 'active' AND (carrier IS NULL OR carrier = $2) RETURNING id`,
      [jobId, bullJobId],
    );
    if (rows.length > 0) return { started: true };
    const [row] = await this.hot.query<{ state: string; carried: boolean }>(
      `SELECT state, (carrier IS NULL OR carrier = $2) AS carried FROM jobs WHERE id = $1`,
      [jobId, bullJobId],
    );
    return { started: false, state: row?.state ?? null, carried: row?.carried ?? false };
  }

  /** Progress is a relaxed write too, in one statement. */
  async progress(jobId: string, stage: string, percent: number): Promise<void> {
    await this.hot.query(
      `WITH ${RELAXED}
       UPDATE jobs SET progress = $2, updated_at = now() FROM relaxed WHERE id = $1`,
      [jobId, JSON.stringify({ stage, percent })],
    );
  }

  /**
   * Runs `sql` (one statement) alone, or in a transaction followed by `apply` (the handler's own changes,
   * e.g. the container's row) when there is one: either way the transition, its audit event and the
   * handler's changes commit together. The audit event's trigger notifies `berth_job` at that commit, so
   * a long-poll answers without another round trip. (A notifying commit holds PostgreSQL's notify lock
   * through its WAL flush: only these terminal transitions are durable notifying commits; enqueues do
   * not notify and the `active` mark is not flushed.) With `apply`, `sql` must answer a row when its
   * transition happened: without one, `apply` is not run.
   */
  private async write<T extends Record<string, unknown> = Record<string, unknown>>(
    sql: string,
    params: unknown[],
    apply?: (m: EntityManager) => Promise<void>,
  ): Promise<T[]> {
    if (!apply) return this.hot.query<T>(sql, params);
    return this.ds.transaction(async (m) => {
      const rows = await preparedQuery<T>(m, sql, params);
      // The transition did not happen (the job is no longer `active`): nor do the handler's changes.
      if (rows.length > 0) await apply(m);
      return rows;
    });
  }

  /**
   * The job succeeded: its row, its audit events (the step records still to write, then `job.completed`),
   * the container's row as the runtime reports it (`outcome.container`) and the handler's own changes
   * (`outcome.apply`), atomically. Without `apply` that is one statement, shared with the claims and
   * completions that arrive while one is being written (see `writes`: one durable commit for all of them). The container's
   * target state becomes its new state when this job is the container's latest (the usual case); when a
   * later job was accepted meanwhile, the target state is recomputed through the pending jobs right after
   * (see recomputeTargetState).
   */
  async complete(job: StoredJob, outcome: JobOutcome, steps: string[] = []): Promise<void> {
    const { result, container, apply } = outcome;
    const input: Completion = {
      id: job.id,
      result,
      sync: container !== undefined,
      containerId: job.container_id,
      status: container?.status ?? null,
      ip: container?.ipAddress ?? null,
      steps,
    };
    const latest = apply
      ? await this.ds.transaction(async (m) => {
          const [row] = await preparedQuery<HotRow>(
            m,
            `WITH ${completionCtes(1)} ${COMPLETION_ROWS}`,
            completionParams([input]),
          );
          // Completed already (an earlier write committed, its answer lost, and this is its retry): the
          // handler's changes went with that commit; written again they would undo what came after it.
          if (row?.updated) await apply(m);
          return row?.latest ?? null;
        })
      : ((await this.writes({ complete: input })) as boolean | null);
    // Also when this write found the job completed already (null): an earlier write of this completion
    // committed and then its recompute failed, and this is its retry (WrittenBehind): the recompute is
    // idempotent, and skipped it would leave the target state projected until a later job ends.
    if (container && latest !== true) await this.ds.transaction((m) => recomputeTargetState(m, container.id));
  }

  /**
   * The live containers of this host that Postgres records as stopped, running or paused, with their row's
   * version (a guard for `observed`).
   */
  async settledContainers(hostId: string): Promise<{ id: string; state: string; version: number }[]> {
    return this.ds.query(
      `SELECT id, state, version FROM containers
       WHERE host_id = $1 AND destroyed_at IS NULL AND state IN ('stopped', 'running', 'paused')`,
      [hostId],
    );
  }

  /**
   * A container found `to` on the host while Postgres says `from` (ContainerObserver): its row follows, its
   * target state is projected again through its pending jobs, and a `container.observed` event says so; one
   * transaction, a no-op when the row changed meanwhile. With `idle` (the row's version when it was read,
   * before the kernel was), also a no-op when the row was written since (a job ended meanwhile: the kernel
   * read may be from before it) or when a job of the container is `active` now (its job owns its state
   * while it runs, and writes it at its end). Answers whether it wrote.
   */
  async observed(
    containerId: string,
    from: string,
    to: string,
    data: Record<string, unknown> = {},
    idle?: { version: number },
  ): Promise<boolean> {
    return this.ds.transaction(async (m) => {
      const rows: unknown[] = await m.query(
        `WITH u AS (UPDATE containers SET state = $3, version = version + 1, updated_at = now()
                    WHERE id = $1 AND state = $2 AND destroyed_at IS NULL
                      AND ($4::int IS NULL OR (version = $4 AND NOT EXISTS (
                        SELECT 1 FROM jobs WHERE container_id = $1 AND state = 'active')))
                    RETURNING id)
         SELECT id FROM u`,
        [containerId, from, to, idle?.version ?? null],
      );
      if (rows.length === 0) return false;
      await recomputeTargetState(m, containerId, to);
      await appendAudit(m, {
        actor: ACTOR,
        action: 'container.observed',
        subjectType: 'container',
        subjectId: containerId,
        data: { from, to, ...data },
      });
      return true;
    });
  }

  /**
   * After a failed attempt of `job` (a retry follows): the container as the runtime has it now, when both
   * that and its row are settled (stopped, running, paused) and differ. What the attempt did before it
   * failed (a restart's stop) is then in the row: should the job be cancelled while it waits for its retry,
   * the target state falls back to the truth, not to what the row said before the job.
   */
  async observedAfterAttempt(job: StoredJob, to: string): Promise<boolean> {
    if (!job.container_id || !SETTLED_STATES.includes(to)) return false;
    const [row] = (await this.ds.query(`SELECT state FROM containers WHERE id = $1`, [job.container_id])) as {
      state: string;
    }[];
    if (!row || row.state === to || !SETTLED_STATES.includes(row.state)) return false;
    return this.observed(job.container_id, row.state, to, { afterAttemptOf: job.id });
  }

  /**
   * The jobs of this host that Postgres records as pending, each with the BullMQ job that carries it: for an
   * `active` job the one that carried its latest claim (null: claimed by a worker that did not record it),
   * for a `queued` or `waiting-retry` one its current carrier (its own id while it has had only one). Read
   * by the worker at start, before it takes jobs: a job whose completion was written behind and lost (the
   * worker died between BullMQ's end and Postgres's) is `active` here while its BullMQ job has ended; one
   * whose claim a crash of PostgreSQL took back (a relaxed commit) may be `queued` or `waiting-retry` here
   * while its BullMQ job has ended. Jobs still in the outbox (not yet published: no BullMQ job yet) are
   * left out. A start-up query: it walks the host's jobs (`state` has no index, so that job transitions
   * stay HOT updates). `recent` (the periodic look while the worker runs): only jobs created in the last
   * `createdWithinMs` (an index range, not the host's whole history) and unchanged for `idleMs` (a job
   * just published or just claimed is not lost).
   */
  async unfinished(
    hostId: string,
    recent?: { createdWithinMs: number; idleMs: number },
  ): Promise<UnfinishedJob[]> {
    return this.ds.query(
      `SELECT j.id, j.state, j.carrier,
              CASE WHEN j.state = 'active'
                   THEN (SELECT e.data->>'bullJobId' FROM audit_events e
                         WHERE e.job_id = j.id AND e.action = 'job.active'
                         ORDER BY e.id DESC LIMIT 1)
                   ELSE COALESCE(j.carrier, j.id::text) END AS "bullJobId"
       FROM jobs j
       WHERE j.host_id = $1 AND j.state = ANY($2::text[])
         AND (j.state = 'active' OR j.id NOT IN (SELECT o.job_id FROM outbox o))${
           recent
             ? ` AND j.created_at > now() - make_interval(secs => $3::float8 / 1000)
                 AND j.updated_at < now() - make_interval(secs => $4::float8 / 1000)`
             : ''
         }`,
      recent ? [hostId, PENDING_STATES, recent.createdWithinMs, recent.idleMs] : [hostId, PENDING_STATES],
    );
  }

  /**
   * Puts back in the queue a pending job whose BullMQ job ended without Postgres recording the end (see
   * `unfinished`): the job goes back to `queued` with a `job.requeued` event and an outbox row that
   * publishes it under a new BullMQ job id (`<id>-k<n>`); it runs again and resumes after its recorded
   * steps, like a job whose worker was killed mid-run. One transaction; a no-op when the job's state or
   * carrier is no longer the one `unfinished` read (`seen`). Answers whether it requeued.
   */
  async requeue(
    jobId: string,
    seen: Pick<UnfinishedJob, 'state' | 'carrier'>,
    reason: string,
    bullJobId: string,
  ): Promise<boolean> {
    return this.ds.transaction(async (m) => {
      const [job]: (StoredJob | undefined)[] = await m.query(
        `WITH u AS (UPDATE jobs SET state = 'queued', updated_at = now()
                    WHERE id = $1 AND state = $2 AND carrier IS NOT DISTINCT FROM $3 RETURNING *)
         SELECT * FROM u`,
        [jobId, seen.state, seen.carrier],
      );
      if (!job) return false;
      const [{ n }] = await m.query(
        `SELECT count(*)::int AS n FROM audit_events WHERE job_id = $1 AND action = 'job.requeued'`,
        [jobId],
      );
      const next = `${jobId}-k${n + 1}`;
      await appendAudit(m, {
        actor: ACTOR,
        action: 'job.requeued',
        subjectType: job.container_id ? 'container' : 'job',
        subjectId: job.container_id ?? job.id,
        jobId: job.id,
        data: { kind: job.kind, reason, bullJobId, nextBullJobId: next },
      });
      await publishAgain(m, job, next);
      return true;
    });
  }

  /**
   * The job's attempt failed and another follows after `delayMs`; the failure is recorded. Only from a
   * pending state (a job that ended meanwhile, e.g. completed by another run of the same carrier that
   * BullMQ handed out again as stalled, keeps its end) and through the job's current carrier, `bullJobId`
   * (see CARRIED). Pending is not only `active`: a crash of PostgreSQL may have taken back the attempt's
   * claim (a relaxed commit) while it ran, and the row says `queued` or `waiting-retry` again.
   */
  async waitingRetry(
    job: StoredJob,
    failure: JobFailure,
    attempt: number,
    delayMs: number,
    bullJobId: string,
  ): Promise<void> {
    await this.write(
      `WITH
       u AS (
         UPDATE jobs SET state = 'waiting-retry', error_code = $2, error_message = $3, error_step = $4,
                updated_at = now()
         WHERE id = $1 AND state = ANY($8::text[]) AND ${CARRIED('$9')}
           -- Once per attempt (written again after a lost answer, it changes nothing).
           AND NOT EXISTS (${SINCE_LATEST_CLAIM('$1', 'job.retry')} AND (e.data->>'attempt')::int = $5::int)
         RETURNING id, kind, container_id)
       ${auditFromUpdate('job.retry', `jsonb_build_object('attempt', $5::int, 'delayMs', $6::bigint, 'error', $7::jsonb)`)}`,
      [
        job.id,
        failure.code,
        failure.message,
        failure.step,
        attempt,
        delayMs,
        JSON.stringify(failure),
        PENDING_STATES,
        bullJobId,
      ],
    );
  }

  /**
   * The job failed for good, with the handler's `apply`. Like waitingRetry, only from a pending state and
   * through its current carrier `bullJobId`: a crash of PostgreSQL that took back the claim of a job whose
   * handler then failed must not leave it `queued` while BullMQ ends its job (nothing would publish it
   * again, and its container's later jobs would wait behind it for ever). A job that lost its worker too
   * often is recorded the same way (JobRunner.lostTooOften).
   */
  async fail(
    job: StoredJob,
    failure: JobFailure,
    bullJobId: string,
    apply?: (m: EntityManager) => Promise<void>,
  ): Promise<void> {
    await this.write(
      `WITH
       u AS (
         UPDATE jobs SET state = 'failed', error_code = $2, error_message = $3, error_step = $4, finished_at = now(),
                updated_at = now()
         WHERE id = $1 AND state = ANY($6::text[]) AND ${CARRIED('$7')} RETURNING id, kind, container_id)
       ${auditFromUpdate('job.failed', `jsonb_build_object('error', $5::jsonb)`)}
       RETURNING job_id`,
      [
        job.id,
        failure.code,
        failure.message,
        failure.step,
        JSON.stringify(failure),
        PENDING_STATES,
        bullJobId,
      ],
      apply,
    );
  }
}
