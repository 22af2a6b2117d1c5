import { Injectable } from '@nestjs/common';
import { InjectDataSource } from '@nestjs/typeorm';
import type { DataSource, EntityManager } from 'typeorm';
import { createBatcher, PipelinedPool, preparedQuery, recomputeTargetState } from '@berth/db';
import type { JobKind } from '@berth/jobs';
import type { JobOutcome } from './job-context';

export interface StoredJob {
  id: string;
  kind: JobKind;
  state: string;
  container_id: string | null;
  host_id: string;
  container_seq: number | null;
  params: Record<string, unknown>;
  attempts: number;
  max_attempts: number;
}

export interface JobFailure {
  code: string;
  message: string;
  step: string | null;
}

const ACTOR = 'system:worker';

/** The job's audit subject: its container when it has one, else the job itself. */
const SUBJECT = `CASE WHEN u.container_id IS NULL THEN 'job' ELSE 'container' END, COALESCE(u.container_id, u.id)`;

/**
 * `INSERT INTO audit_events … SELECT … FROM u` for the job updated by the CTE `u` (which must return `id`,
 * `kind`, `container_id`): the transition and its audit event in one statement, hence one implicit
 * transaction and one round trip. `data` is a jsonb expression over `u` and the parameters.
 */
const auditFromUpdate = (action: string, data: string) =>
  `INSERT INTO audit_events (actor, action, subject_type, subject_id, job_id, data)
   SELECT '${ACTOR}', '${action}', ${SUBJECT}, u.id, jsonb_build_object('kind', u.kind) || ${data} FROM u`;

/**
 * Sets `synchronous_commit = off` for the statement's own implicit transaction (set_config(…, true) lasts
 * until its end, commit included): the commit does not wait for the WAL flush. See `relaxed` below for
 * which records may be written this way.
 */
const RELAXED = `relaxed AS (SELECT set_config('synchronous_commit', 'off', true) AS v)`;

/**
 * Keeps the statement's audit events from notifying `berth_job` (the trigger is silent while
 * `berth.defer_notify` is on; set_config(…, true): this statement's transaction only). For the `active`
 * mark: a long-poll waits for a job's end and ignores it, and an event stream shows it with the job's next
 * event (its first step record, its end) or at its 2 s re-check. Why not notify: a notifying commit takes
 * PostgreSQL's global notify lock, held through the commit of every other notifying transaction including
 * their WAL flush, and wakes every listening connection of the database: the claims, relaxed writes on
 * every job's critical path, queued behind the durable completions of other jobs (bench: a claim took
 * 2.7 ms instead of 1.3 ms at 4 jobs at once, and throughput fell by a third).
 */
const SILENT = `silent AS (SELECT set_config('berth.defer_notify', 'on', true) AS v)`;

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

/** What the worker learns about a job it was handed, in one round trip (`JobStore.claim`). */
export interface JobClaim {
  /** The job as it was before the claim; null when Postgres does not know it. */
  job: StoredJob | null;
  /** An earlier job of the same container is unfinished (per-container FIFO): not claimed. */
  blocked: boolean;
  /** The job was pending and is now `active` (with its `job.active` audit event). */
  activated: boolean;
  /** Steps an earlier attempt finished (recorded `job.step.done` events). */
  doneSteps: Set<string>;
}

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
   * job cancelled meanwhile is not activated. A relaxed write (see `relaxed`) that notifies nobody (see
   * SILENT). Claims made while one is being written go together in the next statement (createBatcher).
   */
  claim(id: string, attempt: number): Promise<JobClaim> {
    return this.claims({ id, attempt });
  }

  private readonly claims = createBatcher<{ id: string; attempt: number }, JobClaim>(async (inputs) => {
    type Row = Partial<StoredJob> & {
      claim_id: string;
      claim_blocked: boolean;
      claim_activated: boolean;
      claim_done_steps: string[];
    };
    const rows = await this.hot.query<Row>(
      `WITH ${RELAXED}, ${SILENT},
       i AS (SELECT * FROM jsonb_to_recordset($2::jsonb) AS i(id uuid, attempt int)),
       -- "= ANY($1)" (the ids again, as an array) makes these index scans: the planner cannot size i.
       j AS (SELECT * FROM jobs WHERE id = ANY($1::uuid[])),
       b AS (SELECT j.id, EXISTS (
               SELECT 1 FROM jobs e
               WHERE j.container_id IS NOT NULL AND j.container_seq IS NOT NULL
                 AND e.container_id = j.container_id AND e.container_seq < j.container_seq
                 AND e.state IN ('queued', 'active', 'waiting-retry')) AS blocked
             FROM j),
       u AS (UPDATE jobs SET state = 'active', attempts = i.attempt, started_at = COALESCE(started_at, now()),
                             updated_at = now()
             FROM i, b, relaxed, silent
             WHERE jobs.id = ANY($1::uuid[]) AND jobs.id = i.id AND b.id = i.id AND jobs.state IN ('queued', 'active', 'waiting-retry')
               AND NOT b.blocked
             RETURNING jobs.id, jobs.kind, jobs.container_id, i.attempt),
       a AS (${auditFromUpdate('job.active', `jsonb_build_object('attempt', u.attempt)`)})
       SELECT j.*, i.id AS claim_id, COALESCE(b.blocked, false) AS claim_blocked,
              EXISTS (SELECT 1 FROM u WHERE u.id = i.id) AS claim_activated,
              ARRAY(SELECT data->>'step' FROM audit_events
                    WHERE job_id = i.id AND action = 'job.step.done') AS claim_done_steps
       FROM i LEFT JOIN j ON j.id = i.id LEFT JOIN b ON b.id = i.id`,
      [inputs.map((i) => i.id), JSON.stringify(inputs)],
    );
    const byId = new Map(rows.map((r) => [r.claim_id, r]));
    return inputs.map(({ id }) => {
      const row = byId.get(id);
      if (!row) throw new Error(`claim of job ${id}: no answer`);
      const {
        claim_id: _id,
        claim_blocked: blocked,
        claim_activated: activated,
        claim_done_steps: steps,
        ...job
      } = row;
      return {
        job: job.id ? (job as StoredJob) : null,
        blocked,
        activated,
        doneSteps: new Set<string>(steps),
      };
    });
  });

  /**
   * Why some writes are relaxed (`synchronous_commit = off`): ~5 ms less per write on a disk with slow
   * fsync, on every job's critical path. Only for records whose loss in a Postgres crash repeats what the
   * pipeline already repeats safely: the `active` mark (the job still counts as unfinished), progress, a
   * finished step (steps are idempotent; a lost record re-runs the step, like a worker crash between step
   * and record does). Terminal transitions (completed, failed, retry) stay synchronous, and the WAL is
   * sequential: once they are durable, so is every record before.
   */
  async stepDone(job: StoredJob, step: string, data: Record<string, unknown> = {}): Promise<void> {
    await this.hot.query(
      `WITH ${RELAXED}
       INSERT INTO audit_events (actor, action, subject_type, subject_id, job_id, data)
       SELECT '${ACTOR}', 'job.step.done', $1, $2, $3, $4 FROM relaxed`,
      [
        job.container_id ? 'container' : 'job',
        job.container_id ?? job.id,
        job.id,
        JSON.stringify({ kind: job.kind, step, ...data }),
      ],
    );
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
   * not notify and the `active` mark is not flushed.)
   */
  private async write<T extends Record<string, unknown> = Record<string, unknown>>(
    sql: string,
    params: unknown[],
    apply?: (m: EntityManager) => Promise<void>,
  ): Promise<T[]> {
    if (!apply) return this.hot.query<T>(sql, params);
    return this.ds.transaction(async (m) => {
      const rows = await preparedQuery<T>(m, sql, params);
      await apply(m);
      return rows;
    });
  }

  /**
   * The job succeeded: its row, its audit events (the step records still to write, then `job.completed`),
   * the container's row as the runtime reports it (`outcome.container`) and the handler's own changes
   * (`outcome.apply`), atomically. Without `apply` that is one statement, shared with the completions that
   * arrive while one is being written (createBatcher: one durable commit for all of them). The container's
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
          const [row] = await this.writeCompletions((sql, params) => preparedQuery(m, sql, params), [input]);
          await apply(m);
          return row;
        })
      : await this.completions(input);
    if (container && latest === false)
      await this.ds.transaction((m) => recomputeTargetState(m, container.id));
  }

  private readonly completions = createBatcher<Completion, boolean | null>((inputs) =>
    this.writeCompletions((sql, params) => this.hot.query(sql, params), inputs),
  );

  /**
   * The completion statement for `inputs`; answers, per input, whether its job is its container's latest
   * (null when the container's row was not written). A job's events are inserted in order: its step
   * records, then `job.completed`.
   */
  private async writeCompletions(
    run: (sql: string, params: unknown[]) => Promise<Record<string, unknown>[]>,
    inputs: readonly Completion[],
  ): Promise<(boolean | null)[]> {
    const rows = (await run(
      `WITH
       i AS (SELECT * FROM jsonb_to_recordset($3::jsonb)
                    AS i(id uuid, result jsonb, sync boolean, status text, ip text, steps jsonb, ord int)),
       u AS (
         UPDATE jobs SET state = 'completed', result = i.result, progress = '{"stage":"done","percent":100}',
                error_code = NULL, error_message = NULL, error_step = NULL, finished_at = now(), updated_at = now()
         -- "= ANY($1)", "= ANY($2)": index scans (the planner cannot size i).
         -- A job completes once: written again (a batch retried input by input after an error that came
         -- after its commit), it changes nothing and records nothing.
         FROM i WHERE jobs.id = ANY($1::uuid[]) AND jobs.id = i.id AND jobs.state <> 'completed'
         RETURNING jobs.id, jobs.kind, jobs.container_id, jobs.container_seq, i.result, i.sync, i.status, i.ip,
                   i.steps, i.ord),
       a AS (
         INSERT INTO audit_events (actor, action, subject_type, subject_id, job_id, data)
         SELECT '${ACTOR}', e.action, ${SUBJECT}, u.id, jsonb_build_object('kind', u.kind) || e.data
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
         FROM u WHERE u.sync AND containers.id = ANY($2::uuid[]) AND containers.id = u.container_id
         RETURNING u.id, containers.job_seq = u.container_seq AS latest)
       SELECT i.id, c.latest FROM i LEFT JOIN c ON c.id = i.id`,
      [
        inputs.map((i) => i.id),
        inputs.flatMap((i) => (i.containerId ? [i.containerId] : [])),
        JSON.stringify(inputs.map(({ containerId: _, ...input }, ord) => ({ ...input, ord }))),
      ],
    )) as { id: string; latest: boolean | null }[];
    const byId = new Map(rows.map((r) => [r.id, r.latest]));
    return inputs.map((input) => byId.get(input.id) ?? null);
  }

  async waitingRetry(job: StoredJob, failure: JobFailure, attempt: number, delayMs: number): Promise<void> {
    await this.write(
      `WITH
       u AS (
         UPDATE jobs SET state = 'waiting-retry', error_code = $2, error_message = $3, error_step = $4,
                updated_at = now()
         WHERE id = $1 RETURNING id, kind, container_id)
       ${auditFromUpdate('job.retry', `jsonb_build_object('attempt', $5::int, 'delayMs', $6::bigint, 'error', $7::jsonb)`)}`,
      [job.id, failure.code, failure.message, failure.step, attempt, delayMs, JSON.stringify(failure)],
    );
  }

  async fail(
    job: StoredJob,
    failure: JobFailure,
    apply?: (m: EntityManager) => Promise<void>,
  ): Promise<void> {
    await this.write(
      `WITH
       u AS (
         UPDATE jobs SET state = 'failed', error_code = $2, error_message = $3, error_step = $4, finished_at = now(),
                updated_at = now()
         WHERE id = $1 RETURNING id, kind, container_id)
       ${auditFromUpdate('job.failed', `jsonb_build_object('error', $5::jsonb)`)}`,
      [job.id, failure.code, failure.message, failure.step, JSON.stringify(failure)],
      apply,
    );
  }
}
