import { request as httpRequest } from 'node:http';
import type { AddressInfo } from 'node:net';
import { Client } from 'pg';
import { JobEnqueuer } from '../../apps/api/src/jobs/job-enqueuer';
import { JobNotifications } from '../../apps/api/src/jobs/job-notifications';
import { JobsService } from '../../apps/api/src/jobs/jobs.service';
import { startApiOnly, type ApiOnly } from '@test/support/api-only';
import { describeKernel } from '@test/support/kernel';
import { openNoopGate, startPipeline, waitJob, type Pipeline } from '@test/support/pipeline';
import { sleep, until } from '@test/support/worker-process';

const UNKNOWN = '00000000-0000-4000-8000-000000000000';

interface SseMessage {
  event: string;
  id?: string;
  data: { action?: string; state?: string; [k: string]: unknown };
}

/** A GET of a Server-Sent Events stream over plain HTTP: the request (to hang up) and its text as it comes. */
function openSse(
  server: import('node:http').Server,
  path: string,
  token: string,
  extraHeaders: Record<string, string> = {},
) {
  const { port } = server.address() as AddressInfo;
  const got = { status: 0, contentType: '', text: '', ended: false };
  let req!: ReturnType<typeof httpRequest>;
  const ended = new Promise<typeof got>((resolve, reject) => {
    req = httpRequest(
      {
        host: '127.0.0.1',
        port,
        path,
        headers: { Authorization: `Bearer ${token}`, Accept: 'text/event-stream', ...extraHeaders },
      },
      (res) => {
        got.status = res.statusCode!;
        got.contentType = String(res.headers['content-type']);
        res.setEncoding('utf8');
        res.on('data', (chunk: string) => (got.text += chunk));
        res.on('end', () => {
          got.ended = true;
          resolve(got);
        });
      },
    );
    req.on('error', reject);
    req.end();
  });
  return { req, got, ended };
}

/** The messages of a stream's text; comment-only blocks (`: keep-alive`) are none: EventSource ignores them. */
function sseMessages(text: string): SseMessage[] {
  return text
    .split(/\n\n/)
    .filter(
      (block) =>
        block.trim() !== '' &&
        !block
          .split('\n')
          .filter((l) => l !== '')
          .every((l) => l.startsWith(':')),
    )
    .map((block) => {
      const m: Partial<SseMessage> & { lines: string[] } = { lines: [] };
      for (const line of block.split('\n')) {
        const [, field, value] = /^(\w+): ?(.*)$/.exec(line) ?? [];
        if (field === 'event') m.event = value;
        else if (field === 'id') m.id = value;
        else if (field === 'data') m.lines.push(value);
      }
      const data = m.lines.join('\n');
      return { event: m.event ?? 'message', id: m.id, data: data ? JSON.parse(data) : {} };
    });
}

/** Reads a whole Server-Sent Events stream until the server closes it. */
async function readSse(
  server: import('node:http').Server,
  path: string,
  token: string,
  timeoutMs = 30_000,
  extraHeaders: Record<string, string> = {},
): Promise<{ status: number; contentType: string; messages: SseMessage[] }> {
  const sse = openSse(server, path, token, extraHeaders);
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(() => {
      sse.req.destroy();
      reject(new Error(`SSE stream ${path} did not close within ${timeoutMs} ms`));
    }, timeoutMs);
  });
  try {
    const got = await Promise.race([sse.ended, late]);
    return { status: got.status, contentType: got.contentType, messages: sseMessages(got.text) };
  } finally {
    clearTimeout(timer);
  }
}

async function listen(server: import('node:http').Server): Promise<void> {
  if (!server.listening) await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
}

describe('jobs API: filters, pagination, long-poll', () => {
  let a: ApiOnly;
  let containerA: string;
  let containerB: string;
  let offlineHost: string;
  const all: string[] = [];

  beforeAll(async () => {
    a = await startApiOnly('jobsapi', { API_SSE_KEEPALIVE_MS: '200' });
    const mk = async (name: string) => {
      const res = await a.createStopped(name);
      expect(res.status).toBe(202);
      all.push(res.body.job.id);
      return res.body.container.id as string;
    };
    containerA = await mk('jobs-a');
    containerB = await mk('jobs-b');
    const start = await a.http().post(`/v1/containers/${containerA}/start`).set(a.auth()).send({});
    all.push(start.body.job.id);
    offlineHost = await a.addHost('jobsapi-offline', { stale: true });
    // 25 jobs written by one statement share their created_at: pagination must still see them all.
    const rows: { id: string }[] = await a.ds.query(
      `INSERT INTO jobs (kind, state, host_id, params, requested_by, created_at, finished_at)
       SELECT 'system.noop', CASE WHEN i % 3 = 0 THEN 'failed' WHEN i % 3 = 1 THEN 'completed' ELSE 'queued' END,
              $1, jsonb_build_object('n', i), 'test', now() - interval '2 days',
              CASE WHEN i % 3 = 2 THEN NULL ELSE now() END
       FROM generate_series(1, 25) AS i RETURNING id`,
      [offlineHost],
    );
    all.push(...rows.map((r) => r.id));
  }, 60_000);
  afterAll(() => a?.close(), 30_000);

  const list = async (query: string) => {
    const res = await a.http().get(`/v1/jobs?${query}`).set(a.auth());
    expect(res.status).toBe(200);
    return res.body as { items: { id: string; [k: string]: unknown }[]; nextCursor: string | null };
  };

  it('filters by state, kind, container, host and since', async () => {
    const failed = await list('state=failed&limit=500');
    expect(failed.items).toHaveLength(8);
    expect(failed.items.every((j) => j.state === 'failed')).toBe(true);

    const creates = await list('kind=container.create');
    expect(creates.items.map((j) => j.containerId).sort()).toEqual([containerA, containerB].sort());

    const ofA = await list(`container=${containerA}`);
    expect(ofA.items.map((j) => j.kind)).toEqual(['container.start', 'container.create']); // newest first

    const onOffline = await list(`host=${offlineHost}&limit=500`);
    expect(onOffline.items).toHaveLength(25);
    expect(onOffline.items.every((j) => j.hostId === offlineHost && j.kind === 'system.noop')).toBe(true);
    const onLive = await list(`host=${a.hostId}`);
    expect(onLive.items).toHaveLength(3);

    const hourAgo = new Date(Date.now() - 3_600_000).toISOString();
    const since = await list(`since=${hourAgo}`);
    expect(since.items.map((j) => j.id).sort()).toEqual(all.slice(0, 3).sort());
    // Without an offset: UTC, whatever the database server's time zone.
    expect((await list(`since=${hourAgo.slice(0, -1)}`)).items).toEqual(since.items);

    const combined = await list(`state=queued&kind=container.start&container=${containerA}&host=${a.hostId}`);
    expect(combined.items.map((j) => j.id)).toEqual([all[2]]);
    expect((await list(`container=${UNKNOWN}`)).items).toEqual([]);
  });

  it('pages with a cursor: pages do not overlap and together are complete', async () => {
    const seen: string[] = [];
    let cursor: string | null = null;
    let pages = 0;
    do {
      const page = await list(`limit=4${cursor ? `&cursor=${encodeURIComponent(cursor)}` : ''}`);
      expect(page.items.length).toBeLessThanOrEqual(4);
      seen.push(...page.items.map((j) => j.id));
      cursor = page.nextCursor;
      pages++;
      expect(pages).toBeLessThan(20);
    } while (cursor);
    expect(new Set(seen).size).toBe(seen.length);
    expect(seen.sort()).toEqual([...all].sort());
    expect(pages).toBe(Math.ceil(all.length / 4));
    // Filters and pages combine.
    const first = await list(`host=${offlineHost}&limit=10`);
    const second = await list(`host=${offlineHost}&limit=10&cursor=${encodeURIComponent(first.nextCursor!)}`);
    const third = await list(`host=${offlineHost}&limit=10&cursor=${encodeURIComponent(second.nextCursor!)}`);
    expect(third.nextCursor).toBeNull();
    expect(new Set([...first.items, ...second.items, ...third.items].map((j) => j.id)).size).toBe(25);
    // Another page size is the same list; other filters or another list are not (rows would be skipped).
    const next = encodeURIComponent(first.nextCursor!);
    expect((await list(`host=${offlineHost}&limit=3&cursor=${next}`)).items).toEqual(
      second.items.slice(0, 3),
    );
    for (const url of [
      `/v1/jobs?host=${a.hostId}&limit=10&cursor=${next}`,
      `/v1/jobs?host=${offlineHost}&state=failed&cursor=${next}`,
      `/v1/containers?cursor=${next}`,
    ]) {
      const res = await a.http().get(url).set(a.auth());
      expect({ url, status: res.status, code: res.body.code }).toEqual({
        url,
        status: 400,
        code: 'INVALID_CURSOR',
      });
      expect(res.body.detail).toMatch(/another list or of other filters/);
    }
  });

  it('refuses a bad cursor with 400 INVALID_CURSOR', async () => {
    for (const cursor of [
      'garbage',
      Buffer.from('["not a date","x"]').toString('base64url'),
      Buffer.from('{"a":1}').toString('base64url'),
    ]) {
      const res = await a.http().get(`/v1/jobs?cursor=${cursor}`).set(a.auth());
      expect(res.status).toBe(400);
      expect(res.headers['content-type']).toMatch(/^application\/problem\+json/);
      expect(res.body.code).toBe('INVALID_CURSOR');
    }
  });

  it('gets a job with its events', async () => {
    const res = await a.http().get(`/v1/jobs/${all[2]}`).set(a.auth());
    expect(res.status).toBe(200);
    expect(res.body).toMatchObject({
      id: all[2],
      kind: 'container.start',
      state: 'queued',
      containerId: containerA,
      hostId: a.hostId,
      params: { containerId: containerA, name: 'jobs-a' },
      error: null,
    });
    expect(res.body.events).toEqual([
      expect.objectContaining({
        action: 'job.queued',
        data: expect.objectContaining({ kind: 'container.start' }),
      }),
    ]);
    const missing = await a.http().get(`/v1/jobs/${UNKNOWN}`).set(a.auth());
    expect(missing.status).toBe(404);
    expect(missing.body.code).toBe('JOB_NOT_FOUND');
  });

  it('wait?timeout=1 returns after about a second with the job still queued on a stopped host, saying why', async () => {
    const [{ id: queued }] = await a.ds.query(
      `SELECT id FROM jobs WHERE host_id = $1 AND state = 'queued' LIMIT 1`,
      [offlineHost],
    );
    const t0 = Date.now();
    const res = await a.http().get(`/v1/jobs/${queued}/wait?timeout=1`).set(a.auth());
    const took = Date.now() - t0;
    expect(res.status).toBe(200);
    expect(res.body.state).toBe('queued');
    expect(res.body.waitingReason).toMatch(/^waiting for host jobsapi-offline: offline since \d{4}-/);
    expect(took).toBeGreaterThanOrEqual(900);
    expect(took).toBeLessThan(2_500);
  });

  it('a long-poll whose client hangs up stops following the job', async () => {
    const [{ id: queued }] = await a.ds.query(
      `SELECT id FROM jobs WHERE host_id = $1 AND state = 'queued' LIMIT 1`,
      [offlineHost],
    );
    const notifications = a.api.get(JobNotifications);
    const server = a.api.getHttpServer() as import('node:http').Server;
    await listen(server);
    const { port } = server.address() as AddressInfo;
    const req = httpRequest({
      host: '127.0.0.1',
      port,
      path: `/v1/jobs/${queued}/wait?timeout=60`,
      headers: a.auth(),
    });
    req.on('error', () => undefined);
    req.end();
    await until(
      'the long-poll to follow the job',
      async () => notifications.subscribers(queued) === 1,
      5_000,
    );
    req.destroy();
    // Not for the rest of its 60 s: as soon as the server sees the connection go.
    await until(
      'the long-poll to let go of the job',
      async () => notifications.subscribers(queued) === 0,
      3_000,
    );
  });

  it('wait returns at once when the job ends, and at once for an ended job', async () => {
    const job = all[2];
    const t0 = Date.now();
    const waiting = a
      .http()
      .get(`/v1/jobs/${job}/wait?timeout=30`)
      .set(a.auth())
      .then((r) => r);
    // Once it follows the job: an end before that would answer its first look instead.
    const notifications = a.api.get(JobNotifications);
    await until('the long-poll to follow the job', async () => notifications.subscribers(job) === 1, 5_000);
    // What a worker does when the job ends: from another connection, so only the notification wakes it.
    const other = new Client({ connectionString: a.databaseUrl });
    await other.connect();
    let endedAt: number;
    try {
      await other.query(
        `UPDATE jobs SET state = 'completed', finished_at = now(), updated_at = now() WHERE id = $1`,
        [job],
      );
      endedAt = Date.now();
    } finally {
      await other.end();
    }
    const res = await waiting;
    expect(res.status).toBe(200);
    expect(res.body.state).toBe('completed');
    expect(Date.now() - endedAt).toBeLessThan(1_500);
    expect(Date.now() - t0).toBeLessThan(3_000);
    const t1 = Date.now();
    const again = await a.http().get(`/v1/jobs/${job}/wait?timeout=30`).set(a.auth());
    expect(again.body.state).toBe('completed');
    expect(Date.now() - t1).toBeLessThan(1_000);
  });

  it('followers of jobs whose end was never notified still get it: one look for all, none per follower', async () => {
    const queued: string[] = (
      await a.ds.query(`SELECT id FROM jobs WHERE host_id = $1 AND state = 'queued' ORDER BY id LIMIT 3`, [
        offlineHost,
      ])
    ).map((r: { id: string }) => r.id);
    expect(queued).toHaveLength(3);
    const notifications = a.api.get(JobNotifications);
    const jobs = a.api.get(JobsService);
    const get = jobs.get.bind(jobs);
    let reads = 0;
    jobs.get = (id: string, ...rest) => {
      if (queued.includes(id)) reads++;
      return get(id, ...rest);
    };
    // The safety net's looks, counted by the tick that started them (one that starts while another is in
    // flight does nothing).
    const sweep = notifications.sweep;
    let ticks = 0;
    let inFlight = 0;
    const looked: number[] = [];
    notifications.sweep = async function (this: JobNotifications) {
      const tick = ++ticks;
      const alone = inFlight++ === 0;
      try {
        await sweep.call(this);
      } finally {
        inFlight--;
        if (alone) looked.push(tick);
      }
    };
    /** Waits for `n` looks that started after tick `from`. */
    const looks = (what: string, from: number, n: number) =>
      until(what, async () => looked.filter((t) => t > from).length >= n, (n + 2) * 1_000 + 5_000);
    await listen(a.api.getHttpServer());
    try {
      // Two long-polls and an event stream.
      const polls = queued.slice(0, 2).map((id) =>
        a
          .http()
          .get(`/v1/jobs/${id}/wait?timeout=30`)
          .set(a.auth())
          .then((r) => r),
      );
      const stream = openSse(a.api.getHttpServer(), `/v1/jobs/${queued[2]}/events`, a.token);
      await until(
        'the three followers to follow',
        async () => queued.every((id) => notifications.subscribers(id) === 1),
        5_000,
      );
      // While nothing happens, the followers do not read their jobs (the safety net is one query per tick;
      // its first look at a job has each follower look once more, then nothing). Counted from the end of a
      // look that started once all three followed, and the one after it, over two more looks.
      await looks('two looks at the three jobs', ticks, 2);
      const idle = reads;
      await looks('two more looks', ticks, 2);
      expect(reads).toBe(idle);
      // Changes without a notification (as while the LISTEN connection was down): a step record, which
      // touches only the audit trail, reaches the event stream …
      const other = new Client({ connectionString: a.databaseUrl });
      await other.connect();
      try {
        await other.query(`SET berth.defer_notify = on`);
        await other.query(
          `INSERT INTO audit_events (actor, action, subject_type, subject_id, job_id, data)
           VALUES ('test', 'job.step.done', 'job', $1, $1, '{"step": "silent"}')`,
          [queued[2]],
        );
        await until(
          'the silent step in the stream',
          async () => stream.got.text.includes('job.step.done'),
          3_000,
        );
        // … and the jobs' ends reach all three.
        await other.query(
          `UPDATE jobs SET state = 'completed', finished_at = now(), updated_at = now() WHERE id = ANY($1)`,
          [queued],
        );
      } finally {
        await other.end();
      }
      const t0 = Date.now();
      for (const res of await Promise.all(polls)) expect(res.body.state).toBe('completed');
      const sse = sseMessages((await stream.ended).text);
      // (These jobs were written without a job.queued event: the stream has the step, then its end.)
      expect(sse.map((m) => m.event)).toEqual(['job.step.done', 'end']);
      expect(sse[1].data.state).toBe('completed');
      expect(Date.now() - t0).toBeLessThan(2_500);
    } finally {
      jobs.get = get;
      notifications.sweep = sweep;
    }
  }, 30_000);

  it('a long-poll outlives a failed look at its job and still answers the end', async () => {
    // A job of the offline host that stays queued until the test ends it.
    const [{ id: job }] = await a.ds.query(
      `SELECT id FROM jobs WHERE host_id = $1 AND state = 'queued' ORDER BY id DESC LIMIT 1`,
      [offlineHost],
    );
    const jobs = a.api.get(JobsService);
    const get = jobs.get.bind(jobs);
    let reads = 0;
    // Its first look passes; the next one fails, as with PostgreSQL away for a moment.
    jobs.get = (id: string, ...rest) => {
      if (id === job && ++reads === 2) return Promise.reject(new Error('connection terminated (test)'));
      return get(id, ...rest);
    };
    try {
      const waiting = a
        .http()
        .get(`/v1/jobs/${job}/wait?timeout=30`)
        .set(a.auth())
        .then((r) => r);
      for (const t0 = Date.now(); reads < 2;) {
        if (Date.now() - t0 > 5_000) throw new Error(`the long-poll looked ${reads} times in 5 s`);
        await new Promise((r) => setTimeout(r, 10));
      }
      await a.ds.query(
        `UPDATE jobs SET state = 'completed', finished_at = now(), updated_at = now() WHERE id = $1`,
        [job],
      );
      const res = await waiting;
      expect(res.status).toBe(200);
      expect(res.body.state).toBe('completed');
    } finally {
      jobs.get = get;
    }
  });

  /**
   * Starts a long-poll on `job` and resolves once it listens, counting its reads of the job (JobsService.get):
   * `reads()` so far, `waiting` its answer, `restore()` undoes the counting. The safety net's looks
   * (JobNotifications.sweep) are held meanwhile: their first look at the job, and one after a step record,
   * wake the long-poll without an action and make it read the job, whenever their tick falls (the tests
   * below count the reads that notifications make).
   */
  const longPoll = async (job: string) => {
    const notifications = a.api.get(JobNotifications);
    const sweep = notifications.sweep;
    notifications.sweep = async () => undefined;
    const jobs = a.api.get(JobsService);
    const get = jobs.get.bind(jobs);
    let reads = 0;
    jobs.get = (id: string) => {
      if (id === job) reads++;
      return get(id);
    };
    const waiting = a
      .http()
      .get(`/v1/jobs/${job}/wait?timeout=30`)
      .set(a.auth())
      .then((r) => r);
    // Its first look, then the look it takes once it listens.
    while (reads < 2) await new Promise((r) => setTimeout(r, 10));
    await new Promise((r) => setTimeout(r, 50));
    const restore = () => {
      jobs.get = get;
      notifications.sweep = sweep;
    };
    return { reads: () => reads, waiting, restore };
  };

  it("a long-poll never reads the job again on a running job's notifications, and answers its end from the notification", async () => {
    const job = all[1];
    const poll = await longPoll(job);
    try {
      const before = poll.reads();
      // What a worker writes while the job runs and when it ends, from another connection: each audit
      // event notifies the API with its action.
      const other = new Client({ connectionString: a.databaseUrl });
      await other.connect();
      const event = (action: string, data: object) =>
        other.query(
          `INSERT INTO audit_events (actor, action, subject_type, subject_id, job_id, data)
           VALUES ('test', $2, 'job', $1, $1, $3)`,
          [job, action, JSON.stringify(data)],
        );
      try {
        await event('job.active', { attempt: 1 });
        await event('job.step.done', { step: 'clone' });
        await event('job.step.done', { step: 'start' });
        await new Promise((r) => setTimeout(r, 200));
        // Three changes, none of them an end: the job was not read again.
        expect(poll.reads()).toBe(before);
        await other.query('BEGIN');
        await other.query(
          `UPDATE jobs SET state = 'completed', finished_at = now(), updated_at = now() WHERE id = $1`,
          [job],
        );
        await event('job.completed', { result: {} });
        await other.query('COMMIT');
      } finally {
        await other.end();
      }
      const res = await poll.waiting;
      expect(res.body.state).toBe('completed');
      // The end's notification carried the job as it ended: not read again, and the same as a read.
      expect(poll.reads()).toBe(before);
      const read = await a.http().get(`/v1/jobs/${job}`).set(a.auth());
      const { events: _events, ...asRead } = read.body;
      expect(res.body).toEqual(asRead);
    } finally {
      poll.restore();
    }
  });

  it('a job whose row does not fit in a notification is read back at its end', async () => {
    const [{ id: job }] = await a.ds.query(
      `INSERT INTO jobs (kind, state, host_id, params, requested_by)
       VALUES ('system.noop', 'queued', $1, '{}', 'test') RETURNING id`,
      [offlineHost],
    );
    const poll = await longPoll(job);
    try {
      const before = poll.reads();
      const other = new Client({ connectionString: a.databaseUrl });
      await other.connect();
      // 9000 bytes of result: over PostgreSQL's 8000-byte payload with the rest of the row.
      const big = 'x'.repeat(9_000);
      try {
        await other.query('BEGIN');
        await other.query(
          `UPDATE jobs SET state = 'completed', result = $2, finished_at = now(), updated_at = now() WHERE id = $1`,
          [job, JSON.stringify({ big })],
        );
        await other.query(
          `INSERT INTO audit_events (actor, action, subject_type, subject_id, job_id, data)
           VALUES ('test', 'job.completed', 'job', $1, $1, '{}')`,
          [job],
        );
        await other.query('COMMIT');
      } finally {
        await other.end();
      }
      const res = await poll.waiting;
      expect(res.body).toMatchObject({ state: 'completed', result: { big } });
      expect(poll.reads()).toBe(before + 1);
    } finally {
      poll.restore();
    }
  });

  it('keeps an idle event stream alive with comment lines, which are no events', async () => {
    // The create of container A: queued for ever here (no worker), so its stream stays open and idle.
    await listen(a.api.getHttpServer());
    const sse = openSse(a.api.getHttpServer(), `/v1/jobs/${all[0]}/events`, a.token);
    sse.ended.catch(() => undefined);
    const blocks = () =>
      sse.got.text
        .split('\n\n')
        .map((b) => b.trim())
        .filter((b) => b !== '');
    const isEvent = (b: string) => b !== ': keep-alive';
    // API_SSE_KEEPALIVE_MS = 200: a few keep-alives once the job's one event has gone (however long the
    // stream took to open and send it), then a few more to see that nothing else comes.
    await until(
      'the job.queued event and two keep-alives after it',
      async () => {
        const b = blocks();
        const first = b.findIndex(isEvent);
        return first >= 0 && b.length - first > 2;
      },
      10_000,
    );
    await sleep(500);
    const { status, ended } = sse.got;
    const got = blocks();
    sse.req.destroy();
    expect(status).toBe(200);
    expect(ended).toBe(false);
    const events = got.filter(isEvent);
    expect(events).toHaveLength(1);
    expect(events[0]).toMatch(/^event: job\.queued\nid: \d+\ndata: /);
    const rest = got.slice(got.indexOf(events[0]) + 1);
    expect(rest.length).toBeGreaterThanOrEqual(2);
    expect(new Set(rest)).toEqual(new Set([': keep-alive']));
  });
});

describe('jobs API: shutting down with followers', () => {
  let a: ApiOnly;
  beforeAll(async () => {
    a = await startApiOnly('closing');
  }, 60_000);
  afterAll(() => a?.close(), 30_000);

  it('lets long-polls and event streams go at once, so the HTTP server can close', async () => {
    // A create that stays queued (no worker here).
    const job = (await a.createStopped('closing-1')).body.job.id as string;
    const server = a.api.getHttpServer() as import('node:http').Server;
    await listen(server);
    const { port } = server.address() as AddressInfo;
    const poll = new Promise<{ status: number; body: { state: string } }>((resolve, reject) => {
      const req = httpRequest(
        { host: '127.0.0.1', port, path: `/v1/jobs/${job}/wait?timeout=60`, headers: a.auth() },
        (res) => {
          let text = '';
          res.setEncoding('utf8');
          res.on('data', (c: string) => (text += c));
          res.on('end', () => resolve({ status: res.statusCode!, body: JSON.parse(text) }));
        },
      );
      req.on('error', reject);
      req.end();
    });
    const stream = openSse(server, `/v1/jobs/${job}/events`, a.token);
    const notifications = a.api.get(JobNotifications);
    await until('both to follow the job', async () => notifications.subscribers(job) === 2, 5_000);
    // The stream follows once it has sent what the job had (a close before that ends it empty: its client
    // reconnects and gets it all).
    await until(
      'the stream to send the job so far',
      async () => stream.got.text.includes('event: job.queued'),
      5_000,
    );
    const t0 = Date.now();
    await a.closeApi();
    // Not after the long-poll's 60 s: both let go when the shutdown began.
    expect(Date.now() - t0).toBeLessThan(3_000);
    const answered = await poll;
    expect(answered.status).toBe(200);
    expect(answered.body.state).toBe('queued');
    // The stream ended without `end` (the job has not ended): its client reconnects after its last event.
    const sse = await stream.ended;
    expect(sseMessages(sse.text).map((m) => m.event)).toEqual(['job.queued']);
  }, 30_000);

  it('ends at once an event stream asked for once the shutdown began', async () => {
    const b = await startApiOnly('closing2');
    try {
      const job = (await b.createStopped('closing-2')).body.job.id as string;
      await listen(b.api.getHttpServer());
      // The shutdown has begun (its hooks run before the HTTP server closes) when the stream is asked for.
      b.api.get(JobNotifications).beforeApplicationShutdown();
      const t0 = Date.now();
      const sse = await readSse(b.api.getHttpServer(), `/v1/jobs/${job}/events`, b.token, 10_000);
      expect(Date.now() - t0).toBeLessThan(2_000);
      expect(sse.status).toBe(200);
      expect(sse.messages.map((m) => m.event)).not.toContain('end');
    } finally {
      await b.close();
    }
  }, 30_000);
});

describeKernel('jobs API: events as Server-Sent Events from a real worker', { root: true }, () => {
  let p: Pipeline;
  let hostId: string;

  beforeAll(async () => {
    p = await startPipeline('jobsse', { BERTH_STORAGE_DRIVER: 'dir' });
    await listen(p.api.getHttpServer());
    [{ id: hostId }] = await p.ds.query(`SELECT id FROM hosts WHERE name = $1`, [p.hostName]);
  }, 120_000);
  afterAll(() => p?.close(), 60_000);

  /** A no-op job through the real path (job row + job.queued + outbox in one transaction). */
  const enqueueNoop = (n: number) =>
    p.ds.transaction((m) =>
      p.api.get(JobEnqueuer).enqueue(m, {
        kind: 'system.noop',
        hostId,
        payload: { n },
        principal: { keyId: 'test', tenantId: null, scopes: ['admin'], requestId: `sse-${n}` },
      }),
    );

  it('streams job.queued … job.completed, then `end` with the job, and closes', async () => {
    const job = await enqueueNoop(1);
    const { status, contentType, messages } = await readSse(
      p.api.getHttpServer(),
      `/v1/jobs/${job.id}/events`,
      p.token,
    );
    expect(status).toBe(200);
    expect(contentType).toMatch(/^text\/event-stream/);
    const names = messages.map((m) => m.event);
    expect(names[0]).toBe('job.queued');
    expect(names).toContain('job.active');
    expect(names.slice(-2)).toEqual(['job.completed', 'end']);
    expect(names.indexOf('job.active')).toBeLessThan(names.indexOf('job.completed'));
    // Each event once, in the order of the audit trail, carrying its id.
    const ids = messages.filter((m) => m.event !== 'end').map((m) => Number(m.id));
    expect(ids).toEqual([...ids].sort((x, y) => x - y));
    expect(new Set(ids).size).toBe(ids.length);
    for (const m of messages.slice(0, -1)) expect(m.data.action).toBe(m.event);
    expect(messages[messages.length - 1].data).toMatchObject({
      id: job.id,
      state: 'completed',
      result: { n: 1 },
    });
  }, 60_000);

  /** POST /v1/templates for the template `name`, with the rest of the body given. */
  const importTemplate = (name: string) => (body: object) =>
    p
      .http()
      .post('/v1/templates')
      .set(p.auth())
      .send({ name, ...body });

  it('a template whose every import failed takes a new source; the failed job is not run again with the old one', async () => {
    const name = `tpl-fix-${process.pid}`;
    const post = importTemplate(name);
    const wrong = await post({ source: 'tarball', path: `/nonexistent/rootfs-${process.pid}.tar` });
    expect(wrong.status).toBe(202);
    const failed = await waitJob(p, wrong.body.jobs[0].id);
    expect(failed.state).toBe('failed');
    // The corrected request: accepted (the name was held by nothing that worked), and it runs.
    const fixed = await post({ source: 'builtin:busybox' });
    expect(fixed.status).toBe(202);
    expect(fixed.body.template).toMatchObject({ id: wrong.body.template.id, source: 'builtin:busybox' });
    expect((await waitJob(p, fixed.body.jobs[0].id)).state).toBe('completed');
    const listed = (await p.http().get('/v1/templates').set(p.auth())).body as { name: string }[];
    expect(listed.find((t) => t.name === name)).toMatchObject({ ready: true, source: 'builtin:busybox' });
    const [event] = await p.ds.query(
      `SELECT data FROM audit_events WHERE subject_id = $1 AND action = 'template.import.requested'
        ORDER BY id DESC LIMIT 1`,
      [wrong.body.template.id],
    );
    expect(event.data).toMatchObject({
      source: 'builtin:busybox',
      replacedSource: `tarball:/nonexistent/rootfs-${process.pid}.tar`,
    });
    // The old job would import the old source under the name again.
    const retried = await p.http().post(`/v1/jobs/${wrong.body.jobs[0].id}/retry`).set(p.auth()).send({});
    expect({ status: retried.status, code: retried.body.code }).toEqual({
      status: 409,
      code: 'JOB_NOT_RETRYABLE',
    });
    // Ready somewhere: another source is refused.
    const again = await post({ source: 'tarball', path: '/srv/other.tar' });
    expect({ status: again.status, code: again.body.code }).toEqual({ status: 409, code: 'TEMPLATE_EXISTS' });
  }, 90_000);

  it('a cancelled import leaves no replica behind; a retried one is importing again until it ends', async () => {
    const post = importTemplate(`tpl-cancel-${process.pid}`);
    const replicas = async (templateId: string) =>
      (await p.ds.query(`SELECT state FROM template_replicas WHERE template_id = $1`, [templateId])) as {
        state: string;
      }[];
    // The worker's 4 slots and 4 claims ahead held by gated no-ops: the import stays queued meanwhile.
    const gate = `tpl-cancel-${process.pid}`;
    const holders = await Promise.all(
      Array.from({ length: 8 }, (_, n) =>
        p.ds.transaction((m) =>
          p.api.get(JobEnqueuer).enqueue(m, {
            kind: 'system.noop',
            hostId,
            payload: { n, holdMs: 60_000, gate },
            principal: { keyId: 'test', tenantId: null, scopes: ['admin'], requestId: `hold-${n}` },
          }),
        ),
      ),
    );
    try {
      await until('the worker to hold all eight', async () => {
        const [{ n }] = await p.ds.query(
          `SELECT count(*)::int AS n FROM jobs WHERE id = ANY($1) AND state = 'active'`,
          [holders.map((h) => h.id)],
        );
        return n === 8;
      });
      const wrong = await post({ source: 'tarball', path: `/nonexistent/cancelled-${process.pid}.tar` });
      expect(wrong.status).toBe(202);
      const templateId: string = wrong.body.template.id;
      const jobId: string = wrong.body.jobs[0].id;
      expect(await replicas(templateId)).toEqual([{ state: 'importing' }]);

      const cancelled = await p.http().post(`/v1/jobs/${jobId}/cancel`).set(p.auth()).send({});
      expect(cancelled.body).toMatchObject({ state: 'cancelled' });
      // Never ran: the host is as if it had not been asked (not "importing" for ever).
      expect(await replicas(templateId)).toEqual([]);

      // Retried, it is pending again: importing, and another source is refused meanwhile.
      const retried = await p.http().post(`/v1/jobs/${jobId}/retry`).set(p.auth()).send({});
      expect(retried.status).toBe(202);
      expect(await replicas(templateId)).toEqual([{ state: 'importing' }]);
      const other = await post({ source: 'builtin:busybox' });
      expect({ status: other.status, code: other.body.code }).toEqual({
        status: 409,
        code: 'TEMPLATE_EXISTS',
      });

      openNoopGate(p.dataRoot, gate);
      expect((await waitJob(p, jobId)).state).toBe('failed');
      expect(await replicas(templateId)).toEqual([{ state: 'failed' }]);
      // Now that no import of the old source is pending, the corrected request is taken.
      const fixed = await post({ source: 'builtin:busybox' });
      expect(fixed.status).toBe(202);
      expect((await waitJob(p, fixed.body.jobs[0].id)).state).toBe('completed');
    } finally {
      openNoopGate(p.dataRoot, gate);
      for (const h of holders) await waitJob(p, h.id);
    }
  }, 90_000);

  it('replays the events of an ended job and closes at once', async () => {
    const job = await enqueueNoop(2);
    await p.http().get(`/v1/jobs/${job.id}/wait?timeout=30`).set(p.auth());
    const t0 = Date.now();
    const { messages } = await readSse(p.api.getHttpServer(), `/v1/jobs/${job.id}/events`, p.token);
    expect(Date.now() - t0).toBeLessThan(1_500);
    expect(messages.map((m) => m.event)).toEqual(['job.queued', 'job.active', 'job.completed', 'end']);
    // A reconnect naming the first event it got: the rest, and `end`.
    const again = await readSse(p.api.getHttpServer(), `/v1/jobs/${job.id}/events`, p.token, 30_000, {
      'Last-Event-ID': messages[0].id!,
    });
    expect(again.messages.map((m) => m.event)).toEqual(['job.active', 'job.completed', 'end']);
    expect(again.messages[0].id).toBe(messages[1].id);
    // `end` carries the last event's id: a reconnect naming it gets only `end`, not the story again.
    expect(messages[3].id).toBe(messages[2].id);
    const last = await readSse(p.api.getHttpServer(), `/v1/jobs/${job.id}/events`, p.token, 30_000, {
      'Last-Event-ID': messages[3].id!,
    });
    expect(last.messages.map((m) => m.event)).toEqual(['end']);
  }, 60_000);

  it('answers an unknown job with 404 problem+json before any stream opens', async () => {
    const res = await p.http().get(`/v1/jobs/${UNKNOWN}/events`).set(p.auth());
    expect(res.status).toBe(404);
    expect(res.headers['content-type']).toMatch(/^application\/problem\+json/);
    expect(res.body.code).toBe('JOB_NOT_FOUND');
  });
});
