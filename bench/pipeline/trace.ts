import type { HostRuntime } from '@berth/runtime';
import { OutboxRelay } from '../../apps/api/src/outbox/outbox.relay';
import { JobStore } from '../../apps/worker/src/jobs/job-store';
import { nowMs } from '../lib/timing';
import type { BenchSystem } from './system';

/**
 * Moments of one job on its way through the pipeline (monotonic ms, `nowMs()`), recorded in-process by
 * wrapping the relay's publish, the worker's JobStore and the runtime's create/start. Missing = not seen.
 */
export interface JobMarks {
  /** The relay's `Queue.add` for the job returned (BullMQ has it). */
  published?: number;
  /** The worker's processor loaded the job from Postgres (BullMQ handed it over). */
  picked?: number;
  /** `job.active` committed. */
  active?: number;
  /** Time spent inside ContainerRuntime.create + start for this job's container. */
  runtimeMs?: number;
  /** `job.completed` committed. */
  completed?: number;
}

/** Per-job marks, plus a hook called when a job's completion commits. */
export class PipelineTrace {
  readonly marks = new Map<string, JobMarks>();
  private readonly byContainer = new Map<string, string>();
  onCompleted?: (jobId: string) => void;
  /** When false, only completions are counted (no per-job map), for the throughput runs. */
  detailed = true;

  private mark(jobId: string): JobMarks {
    let m = this.marks.get(jobId);
    if (!m) {
      m = {};
      this.marks.set(jobId, m);
    }
    return m;
  }

  /** Installs the wrappers on the running system (once). */
  install(sys: BenchSystem): void {
    // The relay publishes a claimed batch of outbox rows at once.
    type Publish = (rows: { job_id: string }[]) => Promise<void>;
    const relay = sys.api.get(OutboxRelay) as unknown as { publish: Publish };
    const publish = relay.publish.bind(relay);
    relay.publish = async (rows) => {
      await publish(rows);
      const t = nowMs();
      if (this.detailed) for (const row of rows) this.mark(row.job_id).published = t;
    };

    const store = sys.worker.get(JobStore);
    const load = store.load.bind(store);
    store.load = async (id) => {
      const t = nowMs();
      const job = await load(id);
      if (this.detailed) {
        const m = this.mark(id);
        m.picked ??= t;
        if (job?.container_id) this.byContainer.set(job.container_id, id);
      }
      return job;
    };
    const markActive = store.markActive.bind(store);
    store.markActive = async (job, attempt) => {
      await markActive(job, attempt);
      if (this.detailed) this.mark(job.id).active = nowMs();
    };
    const complete = store.complete.bind(store);
    store.complete = async (job, result, apply) => {
      await complete(job, result, apply);
      if (this.detailed) this.mark(job.id).completed = nowMs();
      this.onCompleted?.(job.id);
    };

    this.wrapRuntime(sys.runtime);
  }

  private wrapRuntime(rt: HostRuntime): void {
    const c = rt.containers;
    for (const op of ['create', 'start'] as const) {
      const original = c[op].bind(c) as (arg: never) => Promise<unknown>;
      const wrapped = async (arg: { id: string } | string) => {
        const t = nowMs();
        try {
          return await original(arg as never);
        } finally {
          const jobId = this.byContainer.get(typeof arg === 'string' ? arg : arg.id);
          if (jobId && this.detailed) {
            const m = this.mark(jobId);
            m.runtimeMs = (m.runtimeMs ?? 0) + (nowMs() - t);
          }
        }
      };
      Object.defineProperty(c, op, { value: wrapped, configurable: true, writable: true });
    }
  }
}
