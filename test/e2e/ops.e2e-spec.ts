import type { Queue } from 'bullmq';
import { createTestKey } from '@test/support/pipeline';
import { startApiOnly, type ApiOnly } from '@test/support/api-only';
import { sample } from '@test/support/prometheus';
import { MetricsService } from '../../apps/api/src/ops/metrics.service';
import { OutboxRelay } from '../../apps/api/src/outbox/outbox.relay';

const MiB = 1024 * 1024;

describe('Ops: /metrics and the queue board', () => {
  let a: ApiOnly;
  let tenantKey: string;

  beforeAll(async () => {
    a = await startApiOnly('ops');
    tenantKey = await createTestKey(a.ds, []);
  }, 60_000);
  afterAll(() => a?.close(), 30_000);

  const metrics = async () => {
    // Bounded: a scrape that hangs fails here instead of holding the suite.
    const res = await a.http().get('/metrics').set(a.auth()).timeout(4_000);
    expect(res.status).toBe(200);
    expect(res.headers['content-type']).toMatch(/^text\/plain;.*version=0\.0\.4/);
    return res.text;
  };

  it('answers /metrics to admin keys only: 401 without a key, 403 for another key', async () => {
    const none = await a.http().get('/metrics');
    expect(none.status).toBe(401);
    expect(none.headers['content-type']).toMatch(/^application\/problem\+json/);
    expect(none.body.code).toBe('UNAUTHORIZED');
    const tenant = await a.http().get('/metrics').set(a.auth(tenantKey));
    expect(tenant.status).toBe(403);
    expect(tenant.body.code).toBe('FORBIDDEN');
    // That key is valid elsewhere: the refusal is about the endpoint.
    expect((await a.http().get('/v1/containers').set(a.auth(tenantKey))).status).toBe(200);
  });

  it('exposes the hosts, the containers, the outbox and the host queues as they are', async () => {
    const host = `ops-h1`;
    const before = await metrics();
    expect(sample(before, 'berth_metrics_source_up', { source: 'postgres' })).toBe(1);
    expect(sample(before, 'berth_metrics_source_up', { source: 'redis' })).toBe(1);
    expect(sample(before, 'berth_host_up', { host })).toBe(1);
    expect(sample(before, 'berth_host_draining', { host })).toBe(0);
    expect(sample(before, 'berth_host_capacity', { host, resource: 'memory_bytes' })).toBe(8 * 1024 * MiB);
    expect(sample(before, 'berth_host_heartbeat_age_seconds', { host })).toBeLessThan(60);
    expect(sample(before, 'process_resident_memory_bytes')).toBeGreaterThan(0);
    const waiting = sample(before, 'berth_queue_jobs', { host, state: 'waiting' }) ?? 0;

    // No worker here: the job is published and waits in the host's queue.
    const made = await a.createStopped('ops-1');
    expect(made.status).toBe(202);
    const stale = await a.addHost('ops-h2', { stale: true });
    expect((await a.http().post(`/v1/hosts/${stale}/drain`).set(a.auth())).status).toBe(200);
    // The relay publishes right after the commit: wait for it (bounded).
    const until = Date.now() + 10_000;
    let after = await metrics();
    while (
      (sample(after, 'berth_queue_jobs', { host, state: 'waiting' }) ?? 0) <= waiting &&
      Date.now() < until
    ) {
      await new Promise((r) => setTimeout(r, 100));
      after = await metrics();
    }
    expect(sample(after, 'berth_queue_jobs', { host, state: 'waiting' })).toBe(waiting + 1);
    expect(sample(after, 'berth_outbox_pending')).toBe(0);
    expect(sample(after, 'berth_containers', { host, state: 'creating' })).toBe(1);
    expect(sample(after, 'berth_host_reserved', { host, resource: 'memory_bytes' })).toBe(64 * MiB);
    expect(sample(after, 'berth_host_up', { host: 'ops-h2' })).toBe(0);
    expect(sample(after, 'berth_host_draining', { host: 'ops-h2' })).toBe(1);
  });

  it('answers a scrape when Redis does not: source_up 0 for it, its gauges left out', async () => {
    const metricsService = a.api.get(MetricsService);
    const relay = a.api.get(OutboxRelay);
    // A queue whose Redis never answers (BullMQ's calls wait forever while Redis is away).
    const dead = { getJobCounts: () => new Promise<never>(() => undefined) } as unknown as Queue;
    const queue = relay.queue.bind(relay);
    relay.queue = () => dead;
    metricsService.sourceTimeoutMs = 300;
    try {
      await new Promise((r) => setTimeout(r, 150)); // past the previous scrape's shared snapshot
      const started = Date.now();
      const text = await metrics();
      expect(Date.now() - started).toBeLessThan(2_000);
      expect(sample(text, 'berth_metrics_source_up', { source: 'redis' })).toBe(0);
      expect(sample(text, 'berth_metrics_source_up', { source: 'postgres' })).toBe(1);
      expect(sample(text, 'berth_queue_jobs', { host: 'ops-h1', state: 'waiting' })).toBeUndefined();
      expect(sample(text, 'berth_host_up', { host: 'ops-h1' })).toBe(1);
    } finally {
      relay.queue = queue;
      metricsService.sourceTimeoutMs = 3_000;
    }
    await new Promise((r) => setTimeout(r, 150));
    expect(sample(await metrics(), 'berth_metrics_source_up', { source: 'redis' })).toBe(1);
  });

  it('times HTTP requests by route pattern, never by raw path', async () => {
    const id = '00000000-0000-4000-8000-000000000000';
    expect((await a.http().get(`/v1/containers/${id}`).set(a.auth())).status).toBe(404);
    expect((await a.http().get('/no/such/path').set(a.auth())).status).toBe(404);
    const text = await metrics();
    const count = (labels: Record<string, string>) =>
      sample(text, 'berth_http_request_duration_seconds_count', labels);
    expect(count({ method: 'GET', route: '/v1/containers/:id', status: '404' })).toBeGreaterThanOrEqual(1);
    expect(count({ method: 'POST', route: '/v1/containers', status: '202' })).toBeGreaterThanOrEqual(1);
    expect(count({ method: 'GET', route: 'unmatched', status: '404' })).toBeGreaterThanOrEqual(1);
    expect(count({ method: 'GET', route: '/metrics', status: '403' })).toBeGreaterThanOrEqual(1);
    expect(text).not.toContain(id);
    expect(text).not.toContain('/no/such/path');
  });

  it('serves the queue board to admins, read-only, with every host queue', async () => {
    const none = await a.http().get('/admin/queues');
    expect(none.status).toBe(401);
    expect(none.headers['www-authenticate']).toMatch(/^Basic realm="Berth queues"/);
    expect(none.headers['content-type']).toMatch(/^application\/problem\+json/);
    expect((await a.http().get('/admin/queues').auth('x', 'not-a-key')).status).toBe(401);
    const tenant = await a.http().get('/admin/queues').set(a.auth(tenantKey));
    expect(tenant.status).toBe(403);
    expect(tenant.body.code).toBe('FORBIDDEN');

    // A browser: basic auth with the key as the password.
    const page = await a.http().get('/admin/queues').auth('admin', a.token);
    expect(page.status).toBe(200);
    expect(page.headers['content-type']).toMatch(/^text\/html/);
    const queues = await a.http().get('/admin/queues/api/queues').set(a.auth());
    expect(queues.status).toBe(200);
    const names = (queues.body.queues as { name: string; readOnlyMode: boolean }[]).map((q) => q.name);
    expect(names).toContain(`host-${a.hostId}`);
    expect((queues.body.queues as { readOnlyMode: boolean }[]).every((q) => q.readOnlyMode)).toBe(true);

    // No change through the board: jobs change through the API, where Postgres records them.
    const pause = await a.http().put('/admin/queues/api/queues/pause').set(a.auth());
    expect(pause.status).toBe(405);
    expect(pause.body.code).toBe('READ_ONLY');
    const clean = await a.http().put(`/admin/queues/api/queues/host-${a.hostId}/clean/waiting`).set(a.auth());
    expect(clean.status).toBe(405);
    // Its requests are timed as the board's, the refused ones too.
    const text = await metrics();
    const board = { method: 'PUT', route: '/admin/queues', status: '405' };
    expect(sample(text, 'berth_http_request_duration_seconds_count', board)).toBe(2);
  });
});
