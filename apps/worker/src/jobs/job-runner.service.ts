import {
  Inject,
  Injectable,
  type BeforeApplicationShutdown,
  type OnApplicationBootstrap,
} from '@nestjs/common';
import { E_CANCELED, Semaphore } from 'async-mutex';
import { DelayedError, type Job, Queue, UnrecoverableError, Worker } from 'bullmq';
import { PinoLogger } from 'nestjs-pino';
import { ZodError } from 'zod';
import { BERTH_CONFIG, type BerthConfig } from '@berth/config';
import {
  bullConnection,
  hostQueueName,
  parseJobPayload,
  SLOT_WAIT_STAGE,
  type JobKind,
  type QueuedJobData,
} from '@berth/jobs';
import { RuntimeError } from '@berth/runtime';
import { storageBytes } from '@berth/runtime/host/host-facts';
import { HostRegistrationService } from '../host/host-registration.service';
import { WorkerMetrics } from '../metrics/worker-metrics';
import { HostRuntimeService } from '../runtime/host-runtime.service';
import type { JobContext, JobHandler, StepOptions } from './job-context';
import { buildRegistry } from './job-registry';
import { ContainerObserver } from './container-observer.service';
import { JobStore, PENDING_STATES, type JobFailure, type StoredJob } from './job-store';
import { markContainerAfterFailure } from './shared/container-sync';
import { refusedByPostgres, WrittenBehind } from './written-behind';

/** How long a job waits before looking again when an earlier job of its container is unfinished. */
const FIFO_RECHECK_MS = 100;
/** When a copy of a job this process still runs looks again (see `run`). */
const RUNNING_RECHECK_MS = 1_000;

/**
 * A job whose bookkeeping before its handler failed (PostgreSQL away at its claim, say) is handed back to
 * BullMQ's delayed set, doubling from this delay up to BOOKKEEPING_MAX_MS: it keeps its attempts.
 */
const BOOKKEEPING_FIRST_MS = 500;
const BOOKKEEPING_MAX_MS = 30_000;

/**
 * The periodic sweep looks at jobs created this recently (an index range of the host's jobs, not its whole
 * history); an older one whose BullMQ job is gone waits for the worker's next start.
 */
const SWEEP_RECENT_MS = 7 * 24 * 3_600_000;

/** A job claimed ahead that has waited this long for a slot says so in its progress (SLOT_WAIT_STAGE). */
const SLOT_WAIT_NOTICE_MS = 50;

/** A rejection handler that releases the slot and passes the error on. */
const release =
  (releaseSlot: () => void) =>
  (e: unknown): never => {
    releaseSlot();
    throw e;
  };

const FINAL_STATES = ['completed', 'cancelled', 'failed'];

/** BullMQ's reason for a job it failed because it lost its worker more than `maxStalledCount` times. */
const STALL_LIMIT = /stalled more than allowable limit/;

/** How many pending jobs the start-up sweep looks up in BullMQ at once. */
const SWEEP_BATCH = 64;

/** BullMQ states of a job that will not run again by itself ('unknown': the job is gone). */
const BULL_ENDED = ['completed', 'failed', 'unknown'];

class StepError extends Error {
  constructor(
    readonly step: string,
    readonly original: unknown,
  ) {
    super(original instanceof Error ? original.message : String(original));
  }
}

/** Bookkeeping before a job's handler failed: not the job's failure (see JobRunner.process). */
class BookkeepingError extends Error {
  constructor(what: string, cause: unknown) {
    super(`${what} failed: ${cause instanceof Error ? cause.message : String(cause)}`, { cause });
  }
}

/** Whether the context's payload parses (JobContext.payload is parsed when read). */
function readable(ctx: JobContext): boolean {
  try {
    return ctx.payload !== undefined;
  } catch {
    return false;
  }
}

/** The clean-up of a failed job failed (its transaction rolled back): no outage, it will fail again. */
class CleanupFailed extends Error {
  constructor(readonly original: unknown) {
    super(
      `the clean-up of the failed job failed: ${original instanceof Error ? original.message : String(original)}`,
      {
        cause: original,
      },
    );
  }
}

/** A failure whose full record PostgreSQL refuses: its code and step, a message of our own. */
const bare = (failure: JobFailure): JobFailure => ({
  code: failure.code,
  message: `${failure.code} (its full record was refused by PostgreSQL: see the worker's log)`,
  step: failure.step,
});

/** `p`, its failure made a BookkeepingError about `what`. */
const bookkeeping = <T>(what: string, p: Promise<T>): Promise<T> =>
  p.catch((e: unknown) => {
    throw new BookkeepingError(what, e);
  });

/**
 * A failure's message as PostgreSQL can store it: no NUL (text and jsonb refuse it: a message quoting a
 * corrupt file would have the failure itself refused), and bounded.
 */
const storable = (message: string): string => message.replace(/\0/g, '').slice(0, 4_000);

/** Permanent: the request or the state is wrong; retrying the same job cannot help. */
export function classify(e: unknown): JobFailure & { permanent: boolean } {
  const step = e instanceof StepError ? e.step : null;
  const err = e instanceof StepError ? e.original : e;
  if (err instanceof RuntimeError)
    return { code: err.code, message: storable(err.message), step, permanent: err.permanent };
  if (err instanceof ZodError)
    return { code: 'INVALID_PAYLOAD', message: storable(err.message), step, permanent: true };
  return {
    code: 'INTERNAL',
    message: storable(err instanceof Error ? err.message : String(err)),
    step,
    permanent: false,
  };
}

/**
 * Consumes this host's queue (`host-<id>`): per-container FIFO, recorded idempotent steps, transient errors
 * retried with exponential backoff by BullMQ, permanent ones failed at once, every transition written to
 * Postgres (the record; Redis is transport). Processors are thin: the work is in libs/runtime.
 *
 * A job's completion is written behind its slot (WrittenBehind): the slot takes its next job while Postgres
 * commits the end, so a slot waits on Postgres once per job (the claim) instead of twice. Until that commit
 * the job reads `active` and its waiters wait; a later job of the same container is not claimed before it
 * (FIFO: blocked until the end is committed, or committed in the same statement). At start, before taking
 * jobs, the worker puts back in the queue the jobs whose end a dead worker did not record (`sweep`).
 *
 * Claims ahead (WORKER_PREFETCH): BullMQ hands the worker up to concurrency + prefetch jobs, each is claimed
 * at once, and at most `concurrency` handlers run at a time (`slots`); the others wait, claimed (`active`,
 * progress SLOT_WAIT_STAGE after SLOT_WAIT_NOTICE_MS, cancellable through the API), for a slot; such a job
 * starts only if it is still `active` (JobStore.startAfterWait). A slot that frees starts a job that is
 * already claimed instead of waiting for the next claim's round trip. At shutdown the jobs still waiting for
 * a slot are handed back to the queue at once (the next worker claims them again).
 */
@Injectable()
export class JobRunner implements OnApplicationBootstrap, BeforeApplicationShutdown {
  private worker?: Worker<QueuedJobData>;
  /** This host's queue, for looking jobs up (the Worker only consumes). */
  private queue?: Queue<QueuedJobData>;
  private readonly handlers = buildRegistry();
  private hostId?: string;
  private readonly behind: WrittenBehind;
  /** Execution slots: handlers running at once (WORKER_CONCURRENCY). */
  private readonly slots: Semaphore;
  /** Set at shutdown: no job starts any more. */
  private closing = false;
  /** The periodic sweep's timer, and the sweep in flight. */
  private sweeper?: NodeJS.Timeout;
  private sweeping?: Promise<void>;
  /** Jobs this process has claimed and not yet let go of (waiting for a slot, running, or writing its end). */
  private readonly running = new Set<string>();
  /** Jobs whose bookkeeping before their handler failed, by BullMQ job id: how many times in a row. */
  private readonly bookkeepingFailures = new Map<string, number>();

  constructor(
    @Inject(BERTH_CONFIG) private readonly config: BerthConfig,
    private readonly registration: HostRegistrationService,
    private readonly runtime: HostRuntimeService,
    private readonly store: JobStore,
    private readonly log: PinoLogger,
    private readonly metrics: WorkerMetrics,
    private readonly observer: ContainerObserver,
  ) {
    log.setContext(JobRunner.name);
    this.behind = new WrittenBehind(log);
    this.slots = new Semaphore(config.worker.concurrency);
  }

  async onApplicationBootstrap(): Promise<void> {
    this.hostId = await this.registration.registered;
    await this.registration.recordDisk(await storageBytes((await this.runtime.get()).storage));
    const queue = hostQueueName(this.hostId);
    this.queue = new Queue<QueuedJobData>(queue, {
      connection: bullConnection(this.config.redis.url),
      prefix: this.config.redis.bullPrefix,
    });
    this.queue.on('error', (e) => this.log.warn({ err: e }, 'queue error'));
    await this.sweep();
    // Before any job runs: after a reboot (or an init that died while no worker ran) rows say `running`.
    await this.observer.start(this.hostId);
    this.worker = new Worker<QueuedJobData>(queue, (job, token) => this.process(job, token), {
      connection: bullConnection(this.config.redis.url),
      prefix: this.config.redis.bullPrefix,
      // The jobs running plus those claimed ahead, waiting for a slot (see the class comment).
      concurrency: this.config.worker.concurrency + this.config.worker.prefetch,
      lockDuration: this.config.worker.lockMs,
      stalledInterval: this.config.worker.lockMs,
      // A worker killed mid-job makes its jobs stalled: they run again, up to this many times (then
      // BullMQ fails them, without a handler to hear of it: see lostTooOften).
      maxStalledCount: this.config.worker.maxStalled,
    });
    this.worker.on('error', (e) => this.log.warn({ err: e }, 'queue error'));
    // A job past the stall limit: BullMQ fails it when it hands it out next, without calling `process`.
    // Recorded like a completion: retried while PostgreSQL is away, waited for at shutdown.
    this.worker.on('failed', (bull, err) => {
      if (bull && STALL_LIMIT.test(err.message))
        this.behind.add(bull.data.jobId, () => this.lostTooOften(bull.data.jobId, bull));
    });
    const { concurrency, prefetch } = this.config.worker;
    this.log.info({ queue, concurrency, prefetch }, 'consuming host queue');
    // While it runs too: a job published and then lost by Redis (a failover, a crash before its write
    // reached the disk) would otherwise wait for the next start of this worker, and its container's later
    // jobs behind it.
    this.sweeper = setInterval(() => {
      this.sweeping ??= this.sweep(true)
        .catch((err: unknown) => this.log.warn({ err }, 'sweep failed: tried again at the next interval'))
        .finally(() => (this.sweeping = undefined));
    }, this.config.worker.sweepIntervalMs);
  }

  /**
   * Jobs that Postgres records as pending on this host while their BullMQ job has ended (completed,
   * failed, or gone): a worker died after BullMQ recorded the end and before Postgres did (the completion is
   * written behind, see WrittenBehind), Postgres refused the end until the worker gave up, or a crash of
   * PostgreSQL took back a claim (a relaxed commit: the job reads `queued` or `waiting-retry` again) whose
   * BullMQ job then ended. Each goes back to the queue (JobStore.requeue) and runs again, resuming after its
   * recorded steps; but a job that BullMQ failed because it lost its worker too often is recorded as failed
   * (lostTooOften). Jobs whose BullMQ job is still active, waiting or delayed are BullMQ's to hand out
   * (stalled jobs, retries).
   */
  private async sweep(periodic = false): Promise<void> {
    const recent = periodic
      ? { createdWithinMs: SWEEP_RECENT_MS, idleMs: this.config.worker.sweepIntervalMs }
      : undefined;
    const pending = (await this.store.unfinished(this.hostId!, recent)).filter(
      (j) => !this.running.has(j.id),
    );
    const bullState = async (bullJobId: string) => {
      const bull = await this.queue!.getJob(bullJobId);
      return { bull, state: bull ? await bull.getState() : 'unknown' };
    };
    // A backlog of queued jobs is looked up in BullMQ a batch at a time, not one round trip after another.
    for (let i = 0; i < pending.length; i += SWEEP_BATCH) {
      const batch = pending.slice(i, i + SWEEP_BATCH);
      const states = await Promise.all(batch.map((j) => (j.bullJobId ? bullState(j.bullJobId) : null)));
      for (const [k, job] of batch.entries()) {
        const { id, bullJobId } = job;
        // Claimed by this process meanwhile (its end may be written behind while BullMQ says completed).
        if (this.running.has(id)) continue;
        const found = states[k];
        if (!bullJobId || !found) {
          this.log.warn({ jobId: id }, 'active job without a recorded BullMQ job: left to BullMQ');
          continue;
        }
        const { bull, state } = found;
        if (!BULL_ENDED.includes(state)) continue;
        if (bull && state === 'failed' && STALL_LIMIT.test(bull.failedReason ?? '')) {
          await this.lostTooOften(id, bull);
          continue;
        }
        const reason = `BullMQ job ${bullJobId} is ${state} but its end was not recorded`;
        if (await this.store.requeue(id, job, reason, bullJobId))
          this.log.warn(
            { jobId: id, bullJobId, state, was: job.state },
            'requeued a job whose BullMQ job ended while it is pending',
          );
      }
    }
  }

  /**
   * A job whose runs keep killing or losing their worker (a crash it causes, say) is not run again: it is
   * recorded as failed, `WORKER_LOST`, when Postgres still says `active`, with the clean-up of a failed job
   * of its kind (its container's state from the runtime). Running it again would loop for ever.
   */
  private async lostTooOften(jobId: string, bull: Job<QueuedJobData>): Promise<void> {
    const job = await this.store.load(jobId);
    // Pending (also `queued` or `waiting-retry`: a worker that died before its claim committed, or after
    // recording a retry), through its current carrier only (not an older BullMQ job of a job retried
    // since), and not while this process runs it or records its end (a lock that lapsed under a live
    // handler).
    if (!job || !PENDING_STATES.includes(job.state) || this.running.has(job.id)) return;
    if (job.carrier !== null && job.carrier !== undefined && job.carrier !== bull.id) return;
    if (job.state === 'active' && job.progress?.stage === SLOT_WAIT_STAGE) {
      // Lost while it waited for a slot (claimed ahead): it never started in that run. BullMQ counts such a
      // job's losses as well, so behind a job that keeps killing its worker it would reach the limit
      // without having run: it goes back to the queue under a new carrier instead (a fresh count).
      const reason = `BullMQ job ${bull.id} failed (${bull.failedReason}) while the job waited for a worker slot: it did not start then`;
      if (
        await this.store.requeue(job.id, { state: job.state, carrier: job.carrier ?? null }, reason, bull.id!)
      )
        this.log.warn({ jobId, bullJobId: bull.id }, 'requeued a job lost while it waited for a slot');
      return;
    }
    const handler = this.handlers.get(job.kind)!;
    const failure: JobFailure = {
      code: 'WORKER_LOST',
      message: `its worker stopped in the middle of it more than ${this.config.worker.maxStalled} times (BullMQ job ${bull.id}: ${bull.failedReason}); not run again`,
      step: null,
    };
    const runtime = await this.runtime.get();
    const hostId = this.hostId!;
    const ctx = {
      job,
      runtime,
      hostId,
      get payload() {
        return parseJobPayload(job.kind, job.params);
      },
    } as JobContext;
    await this.store.fail(job, failure, bull.id!, (m) => this.afterFailure(ctx, handler, m, failure));
    this.metrics.ended(job.kind, 'failed');
    this.log.warn({ jobId, bullJobId: bull.id }, 'recorded as failed a job that lost its worker too often');
  }

  /**
   * Runs one BullMQ job. What fails before the handler starts (the claim, the start after a slot wait, the
   * handler's context: PostgreSQL or the runtime away) is not the job's failure: the job goes back to
   * BullMQ's delayed set without using up an attempt (`DelayedError`), with a growing delay, and is claimed
   * again. Counted as an attempt, three such failures (one for a job of a single attempt) would end the
   * BullMQ job while PostgreSQL still records it as pending: nothing would publish it again, and every
   * later job of its container would wait behind it for ever.
   */
  private async process(bull: Job<QueuedJobData>, token?: string): Promise<unknown> {
    try {
      const answer = await this.run(bull, token);
      this.bookkeepingFailures.delete(bull.id!);
      return answer;
    } catch (e) {
      if (!(e instanceof BookkeepingError)) {
        this.bookkeepingFailures.delete(bull.id!);
        throw e;
      }
      const n = (this.bookkeepingFailures.get(bull.id!) ?? 0) + 1;
      this.bookkeepingFailures.set(bull.id!, n);
      const delayMs = Math.min(BOOKKEEPING_FIRST_MS * 2 ** (n - 1), BOOKKEEPING_MAX_MS);
      this.log.warn(
        { err: e.cause, jobId: bull.data.jobId, bullJobId: bull.id, failures: n, delayMs },
        `job not started: ${e.message}; handed back to the queue`,
      );
      await bull.moveToDelayed(Date.now() + delayMs, token);
      throw new DelayedError();
    }
  }

  private async run(bull: Job<QueuedJobData>, token?: string): Promise<unknown> {
    const { jobId, kind } = bull.data;
    const attempt = bull.attemptsMade + 1;
    if (this.running.has(jobId)) {
      // BullMQ handed the job out again while this process still runs it (its lock lapsed: the event loop
      // or Redis stalled longer than WORKER_LOCK_MS). A second run beside the first would undo its work
      // (a create's clean-up of a half-made container, a start's kill of a fresh init): this copy waits,
      // and finds the job ended once the first run is done.
      await bull.moveToDelayed(Date.now() + RUNNING_RECHECK_MS, token);
      throw new DelayedError();
    }
    // One round trip: load, FIFO check, `active` mark with its audit event, finished steps.
    const claim = await bookkeeping('its claim', this.store.claim(jobId, attempt, bull.id!));
    const job = claim.job;
    // Postgres is the record: a job it does not know, or one already ended, is not run (again).
    if (!job || FINAL_STATES.includes(job.state)) {
      this.log.info({ jobId, state: job?.state }, 'skipping a job that is not pending');
      this.metrics.ended(kind, 'skipped');
      return { skipped: job?.state ?? 'unknown' };
    }
    if (claim.superseded) {
      // Published again under another BullMQ job id (a retry after a cancel): that one runs it.
      this.log.info({ jobId, bullJobId: bull.id }, 'skipping a superseded carrier of a job');
      this.metrics.ended(kind, 'skipped');
      return { skipped: 'superseded' };
    }
    if (claim.blocked) {
      await bull.moveToDelayed(Date.now() + FIFO_RECHECK_MS, token);
      throw new DelayedError();
    }
    if (!claim.activated) {
      // Ended (cancelled) between BullMQ's hand-over and the claim.
      this.log.info({ jobId }, 'skipping a job that ended meanwhile');
      this.metrics.ended(kind, 'skipped');
      return { skipped: 'ended' };
    }
    this.running.add(job.id);
    // Held until its end is recorded, not only until its handler returns: a completion is written behind
    // (WrittenBehind), and until it commits the job reads `active`. A copy handed out meanwhile (a lapsed
    // lock) would claim it and run it again, and lostTooOften would record it as lost before the completion
    // overwrote that.
    let recorded: Promise<void> | undefined;
    try {
      return await this.runClaimed(bull, token, job, claim.doneSteps, (p) => (recorded = p));
    } finally {
      const letGo = () => void this.running.delete(job.id);
      if (recorded) void recorded.then(letGo, letGo);
      else letGo();
    }
  }

  /**
   * `run` for a job its claim activated: a slot, the handler, the end. `endWrittenBehind` is handed the
   * write of an end that this returns before it settles (a completion).
   */
  private async runClaimed(
    bull: Job<QueuedJobData>,
    token: string | undefined,
    job: StoredJob,
    doneSteps: Set<string>,
    endWrittenBehind: (written: Promise<void>) => void,
  ): Promise<unknown> {
    const { jobId, kind } = bull.data;
    const attempt = bull.attemptsMade + 1;
    const handler = this.handlers.get(kind)!;
    const log = this.log.logger.child({ jobId, kind, containerId: job.container_id, hostId: this.hostId });
    this.metrics.waiting.inc();
    const slot = await this.slot(job.id, log).finally(() => this.metrics.waiting.dec());
    if (!slot) {
      // Shutting down: not started, back to the queue now (Postgres keeps it `active` until it is claimed
      // again, as after a worker's crash).
      log.info('handed back at shutdown before it started');
      await bull.moveToDelayed(Date.now(), token);
      throw new DelayedError();
    }
    this.metrics.running.inc();
    let released = false;
    const releaseSlot = () => {
      if (released) return;
      released = true;
      this.metrics.running.dec();
      slot.release();
    };
    // A job that said it waited for a slot starts only if nobody cancelled it meanwhile.
    if (slot.noticed) {
      const start = await bookkeeping('its start', this.store.startAfterWait(job.id, bull.id!)).catch(
        release(releaseSlot),
      );
      if (!start.started) {
        releaseSlot();
        if (start.state && start.carried && PENDING_STATES.includes(start.state)) {
          // Pending, not ended: its claim is gone (a crash of PostgreSQL took back its relaxed commit, and
          // the row says `queued` or `waiting-retry` again). Let go as if cancelled, its BullMQ job would end
          // with nothing to publish it again, and its container's later jobs would wait behind it for ever:
          // it is handed back and claimed again instead.
          throw new BookkeepingError(
            'its start',
            new Error(`its claim is no longer recorded (the job is ${start.state})`),
          );
        }
        const why = start.carried ? (start.state ?? 'unknown') : 'superseded';
        log.info({ state: start.state, carried: start.carried }, 'let go while it waited for a worker slot');
        this.metrics.ended(kind, 'skipped');
        return { skipped: why };
      }
    }
    log.info({ attempt }, 'job started');
    const { ctx, settle } = await bookkeeping(
      'its context',
      this.context(job, handler, bull, doneSteps, log),
    ).catch(release(releaseSlot));
    // Finished steps whose records are still to write: with the job's end, whichever it is.
    const unrecorded: string[] = [];
    // The slot frees once the handler is done and its records settled: writing the end does not hold it.
    const done = async () => {
      try {
        unrecorded.push(...(await settle()));
      } finally {
        releaseSlot();
      }
    };
    // Time in the handler, for the metrics (counted once the run's end is settled, whichever it is).
    const started = performance.now();
    let ran: number | undefined;
    const seconds = () => (ran ??= (performance.now() - started) / 1000);
    try {
      const outcome = await handler.run(ctx);
      seconds();
      await done();
      // The end is written behind (see WrittenBehind): retried while PostgreSQL is away, never thrown here
      // (a handler whose work is done must not be recorded as failed because the record failed once).
      const written = this.behind.add(
        job.id,
        () => this.store.complete(job, outcome, unrecorded),
        async (err) => {
          // Postgres refuses this end (not only is it away): the job is recorded as failed, retryable.
          const failure: JobFailure = {
            code: 'END_NOT_RECORDED',
            message: `the job ran, but its end could not be recorded: ${err instanceof Error ? err.message : String(err)}`,
            step: null,
          };
          await this.store.fail(job, failure, bull.id!, (m) => this.afterFailure(ctx, handler, m, failure));
        },
      );
      endWrittenBehind(written);
      // A handler's own changes (`apply`: destroy, resize, template import) commit with the end before
      // BullMQ hears of it; the usual end does not hold the BullMQ job.
      if (outcome.apply) await written;
      this.metrics.ended(kind, 'completed', seconds());
      log.info('job completed');
      return outcome.result;
    } catch (e) {
      seconds();
      // The steps finished before the failure are recorded before it (a retry resumes after them).
      await done();
      // In order, and none after one that failed: a later step recorded without an earlier one would have
      // the retry run the earlier one again after it.
      for (const step of unrecorded) {
        const ok = await this.store.stepDone(job, step).then(
          () => true,
          (err: unknown) => (log.warn({ err, step }, 'step record failed'), false),
        );
        if (!ok) break;
      }
      const failure = classify(e);
      const maxAttempts = bull.opts.attempts ?? 1;
      // A failure or a retry is recorded before BullMQ hears of it, retried while PostgreSQL is away:
      // thrown at BullMQ unrecorded, the job's last attempt would end there while PostgreSQL kept it
      // `active`, and every later job of its container would wait behind it.
      if (!failure.permanent && attempt < maxAttempts) {
        const delayMs = 1_000 * 2 ** (attempt - 1);
        // What the failed attempt left (a restart's stop done, its start failed) goes into the row first:
        // a cancel while the retry waits projects the container from there (JobStore.observedAfterAttempt).
        if (job.container_id && kind !== 'container.create') {
          const status = await ctx.runtime.containers.get(job.container_id).then(
            (i) => i.status,
            () => null,
          );
          if (status)
            await this.store
              .observedAfterAttempt(job, status)
              .catch((err: unknown) => log.warn({ err }, 'container state after the attempt not recorded'));
        }
        await this.behind.add(
          job.id,
          () => this.store.waitingRetry(job, failure, attempt, delayMs, bull.id!),
          () => this.store.waitingRetry(job, bare(failure), attempt, delayMs, bull.id!),
        );
        this.metrics.ended(kind, 'retry', seconds());
        log.warn({ failure, attempt }, 'job failed, will retry');
        throw e;
      }
      await this.behind.add(
        job.id,
        () =>
          this.store.fail(job, failure, bull.id!, (m) =>
            this.afterFailure(ctx, handler, m, failure, e).catch((err: unknown) => {
              throw new CleanupFailed(err);
            }),
          ),
        // Refused for good (a trigger, a constraint, its clean-up failing): the failure alone, its code.
        () => this.store.fail(job, bare(failure), bull.id!),
        (err) => refusedByPostgres(err) || err instanceof CleanupFailed,
      );
      this.metrics.ended(kind, 'failed', seconds());
      log.warn({ failure, attempt }, 'job failed');
      throw new UnrecoverableError(`${failure.code}: ${failure.message}`);
    }
  }

  /**
   * Waits for an execution slot (see the class comment); answers its release, or null when the worker is
   * shutting down (the job is not to start). A job claimed ahead that waits a while says so in its
   * progress (`noticed`), written before the job starts so that it never overwrites the job's own progress.
   */
  private async slot(
    jobId: string,
    log: PinoLogger['logger'],
  ): Promise<{ release: () => void; noticed: boolean } | null> {
    if (this.closing) return null;
    if (!this.slots.isLocked()) return { release: (await this.slots.acquire())[1], noticed: false };
    let notice: Promise<void> | undefined;
    const timer = setTimeout(() => {
      notice = this.store
        .progress(jobId, SLOT_WAIT_STAGE, 0)
        .catch((err: unknown) => log.warn({ err }, 'progress record failed'));
    }, SLOT_WAIT_NOTICE_MS);
    try {
      const [, release] = await this.slots.acquire();
      return { release, noticed: notice !== undefined };
    } catch (e) {
      if (e === E_CANCELED) return null; // shutdown (see beforeApplicationShutdown)
      throw e;
    } finally {
      clearTimeout(timer);
      await notice;
    }
  }

  /**
   * The clean-up of a job that failed for good: its handler's own (onFailed), else its container's row as
   * the runtime has it (markContainerAfterFailure). `thrown`: what the handler threw, when the failure is
   * its operation's own (not a record PostgreSQL refused nor a worker lost, after which what the operation
   * did is not known).
   */
  private async afterFailure(
    ctx: JobContext,
    handler: JobHandler,
    m: Parameters<NonNullable<JobHandler['onFailed']>>[1],
    failure: JobFailure,
    thrown?: unknown,
  ) {
    // A handler's own clean-up reads the payload: not when the payload does not parse (what failed the
    // job, or a payload from before a stricter schema): the generic clean-up then.
    if (handler.onFailed && readable(ctx)) return handler.onFailed(ctx, m, failure);
    const id = ctx.job.container_id;
    if (!id) return;
    const status = await ctx.runtime.containers.get(id).then(
      (i) => i.status,
      () => 'error',
    );
    await markContainerAfterFailure(m, id, status, failure.code, {
      keptState:
        thrown !== undefined &&
        (handler.leftAsItWas?.(thrown instanceof StepError ? thrown.original : thrown) ?? false),
    });
  }

  /**
   * The handler's context, and `settle`. Step records and progress are written behind the handler, one
   * at a time in the order it made them (see JobContext). `settle` stops the writing, waits for the write
   * in flight and hands back the step records not yet started: the job's final write records them (the
   * completion statement, or step records before the failure); progress left is moot once the job ends.
   */
  private async context(
    job: StoredJob,
    handler: JobHandler,
    bull: Job<QueuedJobData>,
    done: Set<string>,
    log: PinoLogger['logger'],
  ): Promise<{ ctx: JobContext; settle: () => Promise<string[]> }> {
    const runtime = await this.runtime.get();
    type Record = ({ step: string } | { stage: string; percent: number }) & {
      /** Told the outcome of the write (a step run with `recorded`). */
      written?: { resolve: () => void; reject: (e: unknown) => void };
    };
    const queue: Record[] = [];
    let inFlight: Promise<void> | null = null;
    let settled = false;
    const write = (r: Record) =>
      'step' in r
        ? this.store.stepDone(job, r.step, {}, r.written !== undefined)
        : Promise.all([
            this.store.progress(job.id, r.stage, r.percent),
            bull.updateProgress({ stage: r.stage, percent: r.percent }),
          ]);
    let retryMs = 0;
    const pump = () => {
      if (inFlight || settled || queue.length === 0) return;
      const r = queue.shift()!;
      // A step record that cannot be written stays first in line and is tried again: the records after it
      // wait (a retry skips the recorded steps, and one recorded without an earlier one would have the
      // earlier step run again after it: a restart's stop after its start). Left unwritten when the
      // handler ends, they go with the job's end, in order. A progress record that fails is dropped.
      inFlight = write(r)
        .then(
          () => {
            retryMs = 0;
            r.written?.resolve();
          },
          (err: unknown) => {
            log.warn({ err, record: { ...r, written: undefined } }, 'record written behind failed');
            if ('step' in r && !r.written) {
              queue.unshift(r);
              retryMs = Math.min(retryMs ? retryMs * 2 : 100, 2_000);
              // A step waiting for its record behind this one does not wait for PostgreSQL to be back: its
              // attempt fails (and is retried); its record stays in line.
              for (const q of queue) {
                q.written?.reject(err);
                q.written = undefined;
              }
            } else r.written?.reject(err);
          },
        )
        .finally(() => {
          inFlight = null;
          if (retryMs) setTimeout(pump, retryMs);
          else pump();
        });
    };
    // Started on the next turn of the event loop, not at once: a record made by the handler's last step
    // is then still queued when the handler returns, and goes with the completion instead of delaying it.
    const behind = (r: Record) => {
      queue.push(r);
      setImmediate(pump);
    };
    let payload: JobContext['payload'] | undefined;
    const ctx: JobContext = {
      job,
      // Parsed when the handler reads it: a payload its schema refuses fails the job for good (classify).
      get payload() {
        return (payload ??= parseJobPayload(handler.kind as JobKind, job.params) as JobContext['payload']);
      },
      runtime,
      hostId: this.hostId!,
      dataRoot: this.config.runtime.dataRoot,
      step: async <T>(name: string, fn: () => Promise<T>, options?: StepOptions) => {
        if (done.has(name)) return undefined;
        let value: T;
        try {
          value = await fn();
        } catch (e) {
          throw new StepError(name, e);
        }
        done.add(name);
        if (!options?.recorded) {
          behind({ step: name });
          return value;
        }
        try {
          await new Promise<void>((resolve, reject) => behind({ step: name, written: { resolve, reject } }));
        } catch (e) {
          // Not recorded: the attempt fails (transient) and its retry runs the step again.
          throw new StepError(name, e);
        }
        return value;
      },
      progress: (stage, percent) => behind({ stage, percent }),
    };
    const settle = async () => {
      settled = true;
      while (inFlight) await inFlight;
      const left = queue.splice(0);
      return left.flatMap((r) => ('step' in r ? [r.step] : []));
    };
    return { ctx, settle };
  }

  /**
   * Graceful: stop taking jobs, hand back those claimed ahead, let the running ones finish (past the grace
   * BullMQ hands unfinished ones back) and wait for the ends written behind. Before the application's
   * shutdown hooks, which come after it: the host's offline mark (HostRegistrationService, in this module:
   * Nest runs one module's hooks side by side) and the database pools.
   */
  async beforeApplicationShutdown(): Promise<void> {
    if (!this.worker) return this.queue?.close();
    // Jobs claimed ahead do not start now: they go back to the queue (see `process`).
    this.closing = true;
    this.slots.cancel();
    clearInterval(this.sweeper);
    await this.sweeping;
    const deadline = Date.now() + this.config.worker.shutdownGraceMs;
    let timer: NodeJS.Timeout | undefined;
    const grace = new Promise<'grace'>(
      (r) => (timer = setTimeout(() => r('grace'), this.config.worker.shutdownGraceMs)),
    );
    try {
      // Not `close(true)` at the grace's end: once `close()` runs, BullMQ answers any later close with the
      // same promise (it waits for every handler). The shutdown goes on without them instead: their BullMQ
      // jobs stall once this process is gone and another worker (or this one restarted) takes them again.
      const closed = await Promise.race([this.worker.close().then(() => 'closed' as const), grace]);
      if (closed === 'grace') {
        this.log.warn(
          { running: this.config.worker.concurrency - this.slots.getValue() },
          'shutdown grace over with jobs still running: they are handed back when their locks lapse',
        );
        // They run on until the process ends: so does its hold on the data root.
        this.runtime.holdUntilExit();
      }
    } finally {
      clearTimeout(timer);
    }
    const left = await this.behind.drain(Math.max(deadline - Date.now(), 1_000));
    if (left > 0)
      this.log.warn({ left }, 'ends not recorded at shutdown: the next start requeues their jobs');
    await this.queue?.close().catch(() => undefined);
  }
}
