import type { ContainerInfo, HostRuntime } from '@berth/runtime';
import type { JobKind, JobPayload } from '@berth/jobs';
import type { EntityManager } from 'typeorm';
import type { StoredJob } from './job-store';

export interface StepOptions {
  /**
   * The step returns only once its record is written (and fails the attempt, to be retried, when it
   * cannot be): for a step whose record a later step relies on (e.g. a check whose answer a retry must not
   * ask again, after the next step changed it).
   */
  recorded?: boolean;
}

/** What a job handler gets: its payload, the host runtime, and idempotent, recorded steps. */
export interface JobContext<K extends JobKind = JobKind> {
  job: StoredJob;
  payload: JobPayload<K>;
  runtime: HostRuntime;
  hostId: string;
  /** This host's data root (BERTH_DATA_ROOT): a handler's own files live under it. */
  dataRoot: string;
  /**
   * Runs `fn` as a named step unless an earlier attempt finished it (recorded in the job's events), so a
   * retry resumes after the last finished step. Each step must itself be idempotent: a crash between the
   * step and its record repeats it. The record is written behind (in order, before the job's end), so
   * the next step does not wait for it.
   */
  step<T>(name: string, fn: () => Promise<T>, options?: StepOptions): Promise<T | undefined>;
  /** Reports `{stage, percent}` to Postgres and BullMQ, written behind like the step records. */
  progress(stage: string, percent: number): void;
}

/** A handler's answer: the job result and the database changes that go with completing it. */
export interface JobOutcome {
  result: Record<string, unknown>;
  /** The container as the runtime now reports it: its row (state, address, target state) follows. */
  container?: ContainerInfo;
  /** Other changes, in the completion's transaction. */
  apply?: (m: EntityManager) => Promise<void>;
}

/** One handler per job kind (apps/worker/src/jobs/<kind>/). */
export interface JobHandler<K extends JobKind = JobKind> {
  kind: K;
  run(ctx: JobContext<K>): Promise<JobOutcome>;
  /** Database changes when the job fails for good (e.g. the container goes to `error`). */
  onFailed?(ctx: JobContext<K>, m: EntityManager, error: { code: string }): Promise<void>;
  /**
   * For a job that is not to change its container's state (resize, snapshot): whether its operation's
   * failure `error` (as a step threw it) left the container as the job found it. Then, when the container
   * is still in the state its row records, it is not marked in error (its `error_code` stays as it was; see
   * markContainerAfterFailure). Absent: a failure marks it. Not asked when the handler has onFailed.
   */
  leftAsItWas?(error: unknown): boolean;
}
