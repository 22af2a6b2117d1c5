import { Inject, Injectable, type BeforeApplicationShutdown } from '@nestjs/common';
import { PinoLogger } from 'nestjs-pino';
import { BERTH_CONFIG, type BerthConfig } from '@berth/config';
import { HostRuntimeService } from '../runtime/host-runtime.service';
import { JobStore, SETTLED_STATES } from './job-store';

/**
 * How many times its own duration a pass waits at least before the next one: the runtime's list reads a few
 * files per container (≈ 1 ms each on these VMs: 191 ms for 200 containers), so on a host with many
 * containers the passes would otherwise take a share of the CPU that grows with them. At 20, they take at
 * most ≈ 5 % of one core; below ≈ 250 containers the configured interval (5 s by default) is the longer.
 */
export const PASS_SPACING = 20;

/** The wait before the next pass: the interval, or PASS_SPACING times the last pass if that is longer. */
export function nextPassInMs(intervalMs: number, lastPassMs: number): number {
  return Math.max(intervalMs, Math.round(lastPassMs * PASS_SPACING));
}

/** A console log past this is cut to its last CONSOLE_LOG_KEEP_BYTES at the next pass. */
export const CONSOLE_LOG_MAX_BYTES = 16 * 1024 * 1024;
export const CONSOLE_LOG_KEEP_BYTES = 2 * 1024 * 1024;

/**
 * Keeps Postgres in step with what the kernel has of this host's containers when no job changes them: a
 * container powered off from inside (`poweroff -f` in the customer's VPS), an init killed by the OOM killer,
 * a reboot while no worker ran. Each whose runtime status differs from its row is written as it is, with a
 * `container.observed` event and its target state projected again through its pending jobs
 * (JobStore.observed): the API then accepts a start again, and billing stops counting it as running.
 *
 * One pass before the worker takes jobs (JobRunner: after a reboot every row may be wrong), then one every
 * WORKER_OBSERVE_INTERVAL_MS while it runs (or PASS_SPACING times the last pass's duration, on a host
 * with many containers), until its shutdown. A pass where nothing changed is one query and the runtime's
 * list, no write. Only between stopped, running and paused (a container being created or
 * destroyed is its job's), and never under a job: a container with a job `active` is skipped, and so is
 * one whose row was written between the pass's read and its write (a job ended meanwhile: the kernel was
 * read before its end), both checked again in the write's statement, so a job claimed meanwhile wins.
 */
@Injectable()
export class ContainerObserver implements BeforeApplicationShutdown {
  private timer?: NodeJS.Timeout;
  /** The pass in flight, awaited at shutdown (the database closes after). */
  private pass?: Promise<void>;
  private closed = false;

  constructor(
    @Inject(BERTH_CONFIG) private readonly config: BerthConfig,
    private readonly runtime: HostRuntimeService,
    private readonly store: JobStore,
    private readonly log: PinoLogger,
  ) {
    log.setContext(ContainerObserver.name);
  }

  /**
   * The start-up pass (its failure is the caller's: the worker does not start on a host it cannot read),
   * then the periodic ones; a periodic pass that fails (PostgreSQL away) is logged and tried at the next.
   */
  async start(hostId: string): Promise<void> {
    let t0 = performance.now();
    await this.observe(hostId);
    const next = (tookMs: number) => {
      if (this.closed) return;
      this.timer = setTimeout(
        () => {
          t0 = performance.now();
          this.pass = this.observe(hostId)
            .catch((err: unknown) => this.log.warn({ err }, 'container observation failed'))
            .finally(() => {
              this.pass = undefined;
              next(performance.now() - t0);
            });
        },
        nextPassInMs(this.config.worker.observeIntervalMs, tookMs),
      );
    };
    next(performance.now() - t0);
  }

  /** One pass: every settled container of the host whose runtime status differs from its row. */
  private async observe(hostId: string): Promise<void> {
    const rows = await this.store.settledContainers(hostId);
    // Read after the rows: a job that ends in between has bumped the row's version (see JobStore.observed).
    const rt = await this.runtime.get();
    const onHost = new Map((await rt.containers.list()).map((c) => [c.id, c.status as string]));
    for (const row of rows) {
      if (this.closed) return;
      const status = onHost.get(row.id);
      if (!status || status === row.state || !SETTLED_STATES.includes(status)) continue;
      if (await this.store.observed(row.id, row.state, status, {}, { version: row.version }))
        this.log.warn(
          { containerId: row.id, from: row.state, to: status },
          'container state observed on the host',
        );
    }
    // A container's console output lands outside its storage (no quota holds it): bounded here, so that
    // its init cannot fill the host's disk by writing to stdout.
    const trimmed = await rt.containers.trimConsoleLogs(CONSOLE_LOG_MAX_BYTES, CONSOLE_LOG_KEEP_BYTES);
    if (trimmed.length > 0) this.log.info({ containers: trimmed }, 'console logs trimmed to their last part');
  }

  /** No pass starts any more; the one in flight ends before the application's shutdown goes on. */
  async beforeApplicationShutdown(): Promise<void> {
    this.closed = true;
    clearTimeout(this.timer);
    await this.pass;
  }
}
