import { Inject, Injectable, type OnApplicationBootstrap, type OnApplicationShutdown } from '@nestjs/common';
import { DelayedError, type Job, UnrecoverableError, Worker } from 'bullmq';
import { PinoLogger } from 'nestjs-pino';
import { ZodError } from 'zod';
import { BERTH_CONFIG, type BerthConfig } from '@berth/config';
import {
  bullConnection,
  hostQueueName,
  parseJobPayload,
  type JobKind,
  type QueuedJobData,
} from '@berth/jobs';
import { RuntimeError } from '@berth/runtime';
import { HostRegistrationService } from '../host/host-registration.service';
import { HostRuntimeService } from '../runtime/host-runtime.service';
import type { JobContext, JobHandler } from './job-context';
import { buildRegistry } from './job-registry';
import { JobStore, type JobFailure, type StoredJob } from './job-store';
import { markContainerAfterFailure } from './shared/container-sync';

/** How long a job waits before looking again when an earlier job of its container is unfinished. */
const FIFO_RECHECK_MS = 100;

const FINAL_STATES = ['completed', 'cancelled', 'failed'];

class StepError extends Error {
  constructor(
    readonly step: string,
    readonly original: unknown,
  ) {
    super(original instanceof Error ? original.message : String(original));
  }
}

/** Permanent: the request or the state is wrong; retrying the same job cannot help. */
export function classify(e: unknown): JobFailure & { permanent: boolean } {
  const step = e instanceof StepError ? e.step : null;
  const err = e instanceof StepError ? e.original : e;
  if (err instanceof RuntimeError)
    return { code: err.code, message: err.message, step, permanent: err.permanent };
  if (err instanceof ZodError)
    return { code: 'INVALID_PAYLOAD', message: err.message, step, permanent: true };
  return {
    code: 'INTERNAL',
    message: err instanceof Error ? err.message : String(err),
    step,
    permanent: false,
  };
}

/**
 * Consumes this host's queue (`host-<id>`): per-container FIFO, recorded idempotent steps, transient errors
 * retried with exponential backoff by BullMQ, permanent ones failed at once, every transition written to
 * Postgres (the record; Redis is transport). Processors are thin: the work is in libs/runtime.
 */
@Injectable()
export class JobRunner implements OnApplicationBootstrap, OnApplicationShutdown {
  private worker?: Worker<QueuedJobData>;
  private readonly handlers = buildRegistry();
  private hostId?: string;

  constructor(
    @Inject(BERTH_CONFIG) private readonly config: BerthConfig,
    private readonly registration: HostRegistrationService,
    private readonly runtime: HostRuntimeService,
    private readonly store: JobStore,
    private readonly log: PinoLogger,
  ) {
    log.setContext(JobRunner.name);
  }

  async onApplicationBootstrap(): Promise<void> {
    this.hostId = await this.registration.registered;
    await this.runtime.get();
    const queue = hostQueueName(this.hostId);
    this.worker = new Worker<QueuedJobData>(queue, (job, token) => this.process(job, token), {
      connection: bullConnection(this.config.redis.url),
      prefix: this.config.redis.bullPrefix,
      concurrency: this.config.worker.concurrency,
      lockDuration: this.config.worker.lockMs,
      stalledInterval: this.config.worker.lockMs,
      // A worker killed mid-job makes its jobs stalled: they are retried, not failed, up to this many times.
      maxStalledCount: 5,
    });
    this.worker.on('error', (e) => this.log.warn({ err: e }, 'queue error'));
    this.log.info({ queue, concurrency: this.config.worker.concurrency }, 'consuming host queue');
  }

  private async process(bull: Job<QueuedJobData>, token?: string): Promise<unknown> {
    const { jobId, kind } = bull.data;
    const attempt = bull.attemptsMade + 1;
    // One round trip: load, FIFO check, `active` mark with its audit event, finished steps.
    const claim = await this.store.claim(jobId, attempt);
    const job = claim.job;
    // Postgres is the record: a job it does not know, or one already ended, is not run (again).
    if (!job || FINAL_STATES.includes(job.state)) {
      this.log.info({ jobId, state: job?.state }, 'skipping a job that is not pending');
      return { skipped: job?.state ?? 'unknown' };
    }
    if (claim.blocked) {
      await bull.moveToDelayed(Date.now() + FIFO_RECHECK_MS, token);
      throw new DelayedError();
    }
    if (!claim.activated) {
      // Ended (cancelled) between BullMQ's hand-over and the claim.
      this.log.info({ jobId }, 'skipping a job that ended meanwhile');
      return { skipped: 'ended' };
    }
    const handler = this.handlers.get(kind)!;
    const log = this.log.logger.child({ jobId, kind, containerId: job.container_id, hostId: this.hostId });
    log.info({ attempt }, 'job started');
    const { ctx, settle } = await this.context(job, handler, bull, claim.doneSteps, log);
    try {
      const outcome = await handler.run(ctx);
      await settle();
      await this.store.complete(job, outcome.result, outcome.apply, outcome.container);
      log.info('job completed');
      return outcome.result;
    } catch (e) {
      await settle();
      const failure = classify(e);
      const maxAttempts = bull.opts.attempts ?? 1;
      if (!failure.permanent && attempt < maxAttempts) {
        const delayMs = 1_000 * 2 ** (attempt - 1);
        await this.store.waitingRetry(job, failure, attempt, delayMs);
        log.warn({ failure, attempt }, 'job failed, will retry');
        throw e;
      }
      await this.store.fail(job, failure, (m) => this.afterFailure(ctx, handler, m, failure));
      log.warn({ failure, attempt }, 'job failed');
      throw new UnrecoverableError(`${failure.code}: ${failure.message}`);
    }
  }

  private async afterFailure(
    ctx: JobContext,
    handler: JobHandler,
    m: Parameters<NonNullable<JobHandler['onFailed']>>[1],
    failure: JobFailure,
  ) {
    if (handler.onFailed) return handler.onFailed(ctx, m, failure);
    const id = ctx.job.container_id;
    if (!id) return;
    const status = await ctx.runtime.containers.get(id).then(
      (i) => i.status,
      () => 'error',
    );
    await markContainerAfterFailure(m, id, status, failure.code);
  }

  /**
   * The handler's context, and `settle`: waits for the records written behind (step records and progress,
   * in the order the handler made them; see JobContext). The job's end is written after them.
   */
  private async context(
    job: StoredJob,
    handler: JobHandler,
    bull: Job<QueuedJobData>,
    done: Set<string>,
    log: PinoLogger['logger'],
  ): Promise<{ ctx: JobContext; settle: () => Promise<void> }> {
    const runtime = await this.runtime.get();
    let behind: Promise<void> = Promise.resolve();
    // A record that cannot be written is logged, not fatal: a lost step record repeats an idempotent step
    // on a retry, and the job's final write (which waits for these) fails loudly if Postgres is away.
    const writeBehind = (what: string, fn: () => Promise<unknown>) => {
      behind = behind.then(fn).then(
        () => undefined,
        (err: unknown) => log.warn({ err, what }, 'record written behind failed'),
      );
    };
    const ctx: JobContext = {
      job,
      payload: parseJobPayload(handler.kind as JobKind, job.params) as JobContext['payload'],
      runtime,
      hostId: this.hostId!,
      step: async <T>(name: string, fn: () => Promise<T>) => {
        if (done.has(name)) return undefined;
        let value: T;
        try {
          value = await fn();
        } catch (e) {
          throw new StepError(name, e);
        }
        done.add(name);
        writeBehind(`step ${name}`, () => this.store.stepDone(job, name));
        return value;
      },
      // Postgres (the record) and BullMQ (the dashboard) side by side.
      progress: (stage, percent) =>
        writeBehind(`progress ${stage}`, () =>
          Promise.all([this.store.progress(job.id, stage, percent), bull.updateProgress({ stage, percent })]),
        ),
    };
    return { ctx, settle: () => behind };
  }

  /** Graceful: stop taking jobs and let the active ones finish (BullMQ hands unfinished ones back). */
  async onApplicationShutdown(): Promise<void> {
    if (!this.worker) return;
    let timer: NodeJS.Timeout | undefined;
    const grace = new Promise<void>((r) => (timer = setTimeout(r, this.config.worker.shutdownGraceMs)));
    try {
      await Promise.race([this.worker.close(), grace.then(() => this.worker?.close(true))]);
    } finally {
      clearTimeout(timer);
    }
  }
}
