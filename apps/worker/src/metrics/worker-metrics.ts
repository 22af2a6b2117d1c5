import { Inject, Injectable, type OnApplicationBootstrap, type OnApplicationShutdown } from '@nestjs/common';
import { once } from 'node:events';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { PinoLogger } from 'nestjs-pino';
import { collectDefaultMetrics, Counter, Gauge, Histogram, Registry } from 'prom-client';
import { BERTH_CONFIG, type BerthConfig } from '@berth/config';

/** How a job's run on this worker ended. */
export type RunOutcome = 'completed' | 'retry' | 'failed' | 'skipped';

/**
 * Prometheus metrics of one worker (its host), served at `GET /metrics` on WORKER_METRICS_HOST:PORT when
 * the port is set (loopback by default; no API key: the worker has none to check). Every series carries
 * the host's name. The API's `/metrics` shows the pipeline from Postgres and Redis; this shows what the
 * host's worker does: jobs run by kind and outcome, how long their handlers took, slots in use and jobs
 * claimed ahead waiting for one.
 */
@Injectable()
export class WorkerMetrics implements OnApplicationBootstrap, OnApplicationShutdown {
  readonly registry = new Registry();
  private readonly runs: Counter<'kind' | 'outcome'>;
  private readonly durations: Histogram<'kind' | 'outcome'>;
  /** Handlers running now. */
  readonly running: Gauge;
  /** Jobs claimed ahead, waiting for a slot. */
  readonly waiting: Gauge;
  private server?: Server;

  constructor(
    @Inject(BERTH_CONFIG) private readonly config: BerthConfig,
    private readonly log: PinoLogger,
  ) {
    log.setContext(WorkerMetrics.name);
    this.registry.setDefaultLabels({ host: config.host.name });
    // The process's own metrics sample the event loop and observe every GC: only when they are served.
    if (config.worker.metrics.port !== 0) collectDefaultMetrics({ register: this.registry });
    const registers = [this.registry];
    this.runs = new Counter({
      name: 'berth_worker_jobs_total',
      help: "Jobs this worker ran to an end of its run, by kind and outcome ('retry': failed, will run again)",
      labelNames: ['kind', 'outcome'],
      registers,
    });
    this.durations = new Histogram({
      name: 'berth_worker_job_duration_seconds',
      help: "Time in the job's handler (the runtime's work), by kind and outcome",
      labelNames: ['kind', 'outcome'],
      buckets: [0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300],
      registers,
    });
    this.running = new Gauge({ name: 'berth_worker_slots_busy', help: 'Handlers running now', registers });
    this.waiting = new Gauge({
      name: 'berth_worker_jobs_waiting_for_slot',
      help: 'Jobs claimed ahead (WORKER_PREFETCH), waiting for a free slot',
      registers,
    });
    new Gauge({
      name: 'berth_worker_slots',
      help: 'Execution slots (WORKER_CONCURRENCY)',
      registers,
    }).set(config.worker.concurrency);
  }

  /** A job's run ended with `outcome`; `seconds` in its handler (none when it never started). */
  ended(kind: string, outcome: RunOutcome, seconds?: number): void {
    this.runs.inc({ kind, outcome });
    if (seconds !== undefined) this.durations.observe({ kind, outcome }, seconds);
  }

  async onApplicationBootstrap(): Promise<void> {
    const { host, port } = this.config.worker.metrics;
    if (port === 0) return;
    const server = createServer((req, res) => {
      if (req.method !== 'GET' || (req.url ?? '').split('?')[0] !== '/metrics') {
        res.writeHead(404, { 'Content-Type': 'text/plain' }).end('not found: GET /metrics\n');
        return;
      }
      this.registry.metrics().then(
        (body) => res.writeHead(200, { 'Content-Type': this.registry.contentType }).end(body),
        (e: unknown) => {
          this.log.warn({ err: e }, 'metrics failed');
          res.writeHead(500, { 'Content-Type': 'text/plain' }).end('metrics failed\n');
        },
      );
    });
    server.listen(port, host);
    await once(server, 'listening');
    this.server = server;
    this.log.info({ address: server.address() as AddressInfo }, 'serving metrics');
  }

  async onApplicationShutdown(): Promise<void> {
    const server = this.server;
    if (!server) return;
    this.server = undefined;
    server.closeAllConnections();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  }
}
