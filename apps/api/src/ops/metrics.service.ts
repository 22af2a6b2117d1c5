import { Injectable, Logger } from '@nestjs/common';
import { InjectDataSource } from '@nestjs/typeorm';
import type { NextFunction, Request, Response } from 'express';
import { collectDefaultMetrics, Gauge, Histogram, Registry } from 'prom-client';
import type { DataSource } from 'typeorm';
import { hostQueueName } from '@berth/jobs';
import { HostsService } from '../hosts/hosts.controller';
import type { HostDto } from '../hosts/hosts.responses';
import { OutboxRelay } from '../outbox/outbox.relay';
import { QUEUE_BOARD_PATH } from './queue-board';

/** The BullMQ job states reported per host queue. */
const QUEUE_STATES = ['waiting', 'prioritized', 'delayed', 'active', 'failed'] as const;

/** What the pipeline looks like at one scrape (read once per scrape, shared by the gauges). */
interface Snapshot {
  /** Per source: whether it answered (its gauges are empty when it did not). */
  up: { postgres: boolean; redis: boolean };
  hosts: HostDto[];
  containers: { host: string; state: string; n: number }[];
  outbox: number;
  queues: { host: string; counts: Record<string, number> }[];
}

/**
 * Prometheus metrics of this API process (`GET /metrics`, admin keys only): the process's own
 * (prom-client's defaults), its HTTP requests, and the pipeline as Postgres and Redis see it at the scrape
 * (hosts, containers, outbox backlog, per-host BullMQ queues). The pipeline gauges are the same from every
 * API process: scrape one, or aggregate with `max`. Each app has its own registry (tests run several).
 */
@Injectable()
export class MetricsService {
  readonly registry = new Registry();
  private readonly log = new Logger(MetricsService.name);
  private readonly http: Histogram<'method' | 'route' | 'status'>;
  private pending?: Promise<Snapshot>;

  constructor(
    @InjectDataSource() private readonly ds: DataSource,
    private readonly hosts: HostsService,
    private readonly relay: OutboxRelay,
  ) {
    collectDefaultMetrics({ register: this.registry });
    const registers = [this.registry];
    this.http = new Histogram({
      name: 'berth_http_request_duration_seconds',
      help: 'HTTP requests by method, route (the matched route pattern) and status, until the answer was sent',
      labelNames: ['method', 'route', 'status'],
      buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30],
      registers,
    });
    // Every gauge below reads the same snapshot: one set of queries per scrape.
    const snapshot = () => this.snapshot();
    const gauge = <L extends string>(
      name: string,
      help: string,
      labelNames: readonly L[],
      fill: (g: Gauge<L>, s: Snapshot) => void,
    ) =>
      new Gauge<L>({
        name,
        help,
        labelNames,
        registers,
        async collect() {
          const s = await snapshot();
          this.reset();
          fill(this, s);
        },
      });
    gauge('berth_metrics_source_up', 'Whether the scrape could read the source', ['source'], (g, s) => {
      g.set({ source: 'postgres' }, s.up.postgres ? 1 : 0);
      g.set({ source: 'redis' }, s.up.redis ? 1 : 0);
    });
    gauge('berth_host_up', 'Host online: its heartbeat is fresh (1) or not (0)', ['host'], (g, s) => {
      for (const h of s.hosts) g.set({ host: h.name }, h.state === 'online' ? 1 : 0);
    });
    gauge('berth_host_draining', 'Host draining: no new containers are placed there', ['host'], (g, s) => {
      for (const h of s.hosts) g.set({ host: h.name }, h.draining ? 1 : 0);
    });
    gauge('berth_host_heartbeat_age_seconds', "Age of the host's last heartbeat", ['host'], (g, s) => {
      const now = Date.now();
      for (const h of s.hosts) g.set({ host: h.name }, (now - Date.parse(h.lastHeartbeatAt)) / 1000);
    });
    const resources = [
      ['berth_host_capacity', 'Host capacity: cpus, memory_bytes, disk_bytes', 'capacity'],
      [
        'berth_host_reserved',
        "Host resources reserved by its containers (placement's accounting)",
        'reserved',
      ],
    ] as const;
    for (const [name, help, field] of resources) {
      gauge(name, help, ['host', 'resource'], (g, s) => {
        for (const h of s.hosts) {
          g.set({ host: h.name, resource: 'cpus' }, h[field].cpus);
          g.set({ host: h.name, resource: 'memory_bytes' }, h[field].memoryBytes);
          g.set({ host: h.name, resource: 'disk_bytes' }, h[field].diskBytes);
        }
      });
    }
    gauge('berth_containers', 'Containers not destroyed, by host and state', ['host', 'state'], (g, s) => {
      for (const c of s.containers) g.set({ host: c.host, state: c.state }, c.n);
    });
    gauge('berth_outbox_pending', 'Accepted jobs not yet published to their queue', [], (g, s) => {
      if (s.up.postgres) g.set(s.outbox);
    });
    gauge(
      'berth_queue_jobs',
      "Jobs in a host's BullMQ queue, by BullMQ state (Postgres is the record; this is the transport)",
      ['host', 'state'],
      (g, s) => {
        for (const q of s.queues)
          for (const state of QUEUE_STATES) g.set({ host: q.host, state }, q.counts[state] ?? 0);
      },
    );
  }

  /** The metrics in Prometheus's text format, and its content type. */
  async render(): Promise<{ contentType: string; body: string }> {
    return { contentType: this.registry.contentType, body: await this.registry.metrics() };
  }

  /** Express middleware timing every request (mounted first, so refused requests count too). */
  httpMiddleware() {
    return (req: Request, res: Response, next: NextFunction): void => {
      const end = this.http.startTimer();
      res.on('finish', () => {
        // The route's pattern, never the raw path (ids would make a series per container). The queue
        // board's pages and refusals (plain Express, no route) count as the board; no route otherwise, or
        // Nest's catch-all that answers 404, is `unmatched`.
        const route = (req.route as { path?: unknown } | undefined)?.path;
        end({
          method: req.method,
          route:
            typeof route === 'string' && !route.includes('*')
              ? `${req.baseUrl}${route}`
              : req.originalUrl.startsWith(QUEUE_BOARD_PATH)
                ? QUEUE_BOARD_PATH
                : 'unmatched',
          status: String(res.statusCode),
        });
      });
      next();
    };
  }

  /** One scrape's view of the pipeline; scrapes that overlap share it. */
  private snapshot(): Promise<Snapshot> {
    if (!this.pending) {
      this.pending = this.read().finally(() => {
        // Kept for the rest of this scrape's gauges (they ask within the same tick or the next ones).
        setTimeout(() => (this.pending = undefined), 100).unref();
      });
    }
    return this.pending;
  }

  /** How long a scrape waits for each source before it reports it down (BullMQ's Redis calls wait forever). */
  sourceTimeoutMs = 3_000;

  private async read(): Promise<Snapshot> {
    const s: Snapshot = {
      up: { postgres: true, redis: true },
      hosts: [],
      containers: [],
      outbox: 0,
      queues: [],
    };
    try {
      // Returned, not assigned as they come: a read that outlives its time must not change the snapshot.
      Object.assign(
        s,
        await this.bounded('Postgres', async () => ({
          hosts: await this.hosts.list(),
          containers: (await this.ds.query(
            `SELECT COALESCE(h.name, '') AS host, c.state, count(*)::int AS n
             FROM containers c LEFT JOIN hosts h ON h.id = c.host_id
             WHERE c.destroyed_at IS NULL GROUP BY 1, 2`,
          )) as Snapshot['containers'],
          outbox: (await this.ds.query(`SELECT count(*)::int AS n FROM outbox`))[0].n as number,
        })),
      );
    } catch (e) {
      s.up.postgres = false;
      this.log.warn(`metrics: ${e instanceof Error ? e.message : String(e)}`);
    }
    try {
      s.queues = await this.bounded('Redis', () =>
        Promise.all(
          s.hosts.map(async (h) => ({
            host: h.name,
            counts: await this.relay.queue(hostQueueName(h.id)).getJobCounts(...QUEUE_STATES),
          })),
        ),
      );
    } catch (e) {
      s.up.redis = false;
      s.queues = [];
      this.log.warn(`metrics: ${e instanceof Error ? e.message : String(e)}`);
    }
    return s;
  }

  /** `read()`, or an error once `sourceTimeoutMs` passed (the read goes on, its result unused). */
  private async bounded<T>(source: string, read: () => Promise<T>): Promise<T> {
    let timer: NodeJS.Timeout | undefined;
    const late = new Promise<never>((_, reject) => {
      timer = setTimeout(
        () => reject(new Error(`${source} did not answer within ${this.sourceTimeoutMs} ms`)),
        this.sourceTimeoutMs,
      );
    });
    const reading = read();
    reading.catch(() => undefined);
    try {
      return await Promise.race([reading, late]);
    } catch (e) {
      throw new Error(`${source} unreadable: ${e instanceof Error ? e.message : String(e)}`, { cause: e });
    } finally {
      clearTimeout(timer);
    }
  }
}
