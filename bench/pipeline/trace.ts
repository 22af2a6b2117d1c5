import type { HostRuntime } from '@berth/runtime';
import type { OutboxRelay } from '../../apps/api/src/outbox/outbox.relay';
import type { JobStore } from '../../apps/worker/src/jobs/job-store';
import { nowMs } from '../lib/timing';
import type { BenchSystem } from './system';

/**
 * Moments of one job on its way through the pipeline (`nowMs()`: CLOCK_MONOTONIC, the same clock in every
 * process of the machine, so the API's and the worker's marks and the bench's compare), recorded by
 * wrapping the relay's publish (in the API process, see `installApiTrace`), and the worker's JobStore and
 * the runtime's create/start (in the worker process, see `installWorkerTrace`). Missing = not seen.
 */
export interface JobMarks {
  /** The relay's `Queue.add` for the job returned (BullMQ has it). */
  published?: number;
  /** The worker's processor started its claim in Postgres (BullMQ handed the job over). */
  picked?: number;
  /** The claim (`job.active` with its audit event) committed. */
  active?: number;
  /** Time spent inside ContainerRuntime.create + start for this job's container. */
  runtimeMs?: number;
  /** The last of those runtime calls returned. */
  runtimeEnd?: number;
  /** The worker called the completion (JobStore.complete). */
  completing?: number;
  /** `job.completed` committed. */
  completed?: number;
}

/** Messages of the bench's child processes (API, workers) to the bench (over the IPC channel). */
export type WorkerMessage =
  /** Up (the API: listening on loopback at `port`). */
  | { t: 'ready'; port?: number }
  /** Jobs completed since the previous message (batched: one message per event-loop turn at most). */
  | { t: 'completed'; n: number }
  /** The marks of one job, when it completed (detailed mode only). */
  | { t: 'marks'; jobId: string; marks: JobMarks }
  /** The API's relay published these jobs at `at` (detailed mode only). */
  | { t: 'published'; jobIds: string[]; at: number }
  /** The API process submitted every job of the noop run `run` (or failed to). */
  | { t: 'submitted'; run: number; error?: string };

/** Messages of the bench to its child processes. */
export type BenchMessage =
  | { t: 'detailed'; value: boolean }
  /**
   * To the API process: submit `n` `system.noop` jobs for host `hostId` through its JobEnqueuer, as its
   * request handlers do, `inflight` at a time, as API key `keyId`; answered with `submitted`.
   */
  | { t: 'noop'; run: number; n: number; inflight: number; hostId: string; keyId: string };

/** Per-job marks (merged from both processes), plus a hook called per completed job. */
export class PipelineTrace {
  readonly marks = new Map<string, JobMarks>();
  /** Called with the number of jobs completed (in a batch). */
  onCompleted?: (n: number) => void;
  private sys?: BenchSystem;
  private isDetailed = true;

  /** When false, only completions are counted (no per-job marks), for the throughput runs. */
  set detailed(value: boolean) {
    this.isDetailed = value;
    this.sys?.sendToChildren({ t: 'detailed', value });
  }
  get detailed(): boolean {
    return this.isDetailed;
  }

  private mark(jobId: string): JobMarks {
    let m = this.marks.get(jobId);
    if (!m) {
      m = {};
      this.marks.set(jobId, m);
    }
    return m;
  }

  /** Listens to the marks of the API and worker processes (once). */
  install(sys: BenchSystem): void {
    this.sys = sys;
    sys.onChildMessage((msg) => {
      if (msg.t === 'completed') this.onCompleted?.(msg.n);
      else if (msg.t === 'marks' && this.isDetailed) Object.assign(this.mark(msg.jobId), msg.marks);
      else if (msg.t === 'published' && this.isDetailed)
        for (const id of msg.jobIds) this.mark(id).published = msg.at;
    });
  }
}

/**
 * The API process's side: wraps its relay's publish (a claimed batch of outbox rows at once) and reports
 * when each job reached BullMQ.
 */
export function installApiTrace(
  relay: OutboxRelay,
  send: (m: WorkerMessage) => void,
): { setDetailed(value: boolean): void } {
  let detailed = true;
  type Publish = (rows: { job_id: string }[]) => Promise<void>;
  const r = relay as unknown as { publish: Publish };
  const publish = r.publish.bind(relay);
  r.publish = async (rows) => {
    await publish(rows);
    if (detailed) send({ t: 'published', jobIds: rows.map((row) => row.job_id), at: nowMs() });
  };
  return {
    setDetailed(value) {
      detailed = value;
    },
  };
}

/**
 * The worker process's side: wraps its JobStore and runtime, and reports marks and completions through
 * `send`. Completions are counted and sent once per event-loop turn (a message per job would cost the
 * worker process as much as a small job).
 */
export function installWorkerTrace(
  store: JobStore,
  rt: HostRuntime,
  send: (m: WorkerMessage) => void,
): { setDetailed(value: boolean): void } {
  let detailed = true;
  const marks = new Map<string, JobMarks>();
  const byContainer = new Map<string, string>();
  const mark = (id: string) => {
    let m = marks.get(id);
    if (!m) marks.set(id, (m = {}));
    return m;
  };
  let completed = 0;
  const flush = () => {
    send({ t: 'completed', n: completed });
    completed = 0;
  };

  const claim = store.claim.bind(store);
  store.claim = async (id, attempt, bullJobId) => {
    const t = nowMs();
    const c = await claim(id, attempt, bullJobId);
    if (detailed) {
      const m = mark(id);
      m.picked ??= t;
      if (c.job?.container_id) byContainer.set(c.job.container_id, id);
      if (c.activated) m.active = nowMs();
    }
    return c;
  };
  const complete = store.complete.bind(store);
  store.complete = async (job, ...rest) => {
    const t = nowMs();
    await complete(job, ...rest);
    if (detailed) {
      const m = mark(job.id);
      m.completing = t;
      m.completed = nowMs();
      marks.delete(job.id);
      if (job.container_id) byContainer.delete(job.container_id);
      send({ t: 'marks', jobId: job.id, marks: m });
    }
    if (completed++ === 0) setImmediate(flush);
  };

  const c = rt.containers;
  for (const op of ['create', 'start'] as const) {
    const original = c[op].bind(c) as (arg: never) => Promise<unknown>;
    const wrapped = async (arg: { id: string } | string) => {
      const t = nowMs();
      try {
        return await original(arg as never);
      } finally {
        const jobId = byContainer.get(typeof arg === 'string' ? arg : arg.id);
        if (jobId && detailed) {
          const m = mark(jobId);
          m.runtimeEnd = nowMs();
          m.runtimeMs = (m.runtimeMs ?? 0) + (m.runtimeEnd - t);
        }
      }
    };
    Object.defineProperty(c, op, { value: wrapped, configurable: true, writable: true });
  }
  return {
    setDetailed(value) {
      detailed = value;
      if (!value) marks.clear();
    },
  };
}
