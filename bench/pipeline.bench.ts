/**
 * Pipeline benchmark (issue 4, "Performance"): what the job pipeline adds on top of the runtime.
 *
 *   1. Latency: `POST /v1/containers` (clone + start, busybox, network none) until the job is completed as
 *      seen through `GET /v1/jobs/:id/wait`, p50/p99 over BENCH_PIPELINE_RUNS runs, next to the runtime's
 *      own create + start time for the same containers (measured inside the worker) and to create + start
 *      called directly on the same runtime (interleaved batches). Overhead = end to end − runtime, per run.
 *      Each stage of the way (accept, relay publish, BullMQ pick-up, job.active, runtime, job.completed,
 *      long-poll answer) is timed where it happens, so a slow stage shows by name.
 *   2. Throughput: `system.noop` jobs through the same path as the API's container operations
 *      (JobEnqueuer.submit, group-committed → outbox row handed to the relay → BullMQ → worker → job store
 *      + audit), against raw BullMQ (`Queue.add` + a no-op `Worker`) on the same Redis, same run: at the
 *      same concurrency (jobs running at once; the target's peer) and at Berth's fetch depth (concurrency +
 *      WORKER_PREFETCH: the jobs Berth's worker holds, running or claimed ahead). Both sides warm: each raw
 *      peer is one worker process for the whole part, and every side first runs BENCH_PIPELINE_WARMUP_JOBS.
 *      Rounds of one run each, alternating which goes first; the median round's ratio counts.
 *
 * Process layout (as in production, where API and worker are separate processes): the API (HTTP, enqueuer,
 * outbox relay), Berth's worker and the raw BullMQ peer's worker each run in their own process
 * (bench/pipeline/worker-child.ts); this process holds the HTTP clients and the raw peer's producers, and
 * has the API process submit Berth's noop jobs through its enqueuer. The API's and the worker's per-stage
 * marks come over IPC (same monotonic clock). Against the local Postgres and
 * Redis, with a dedicated database (dropped and recreated), its own BullMQ prefix, data root and cgroup
 * parent; everything is removed at the end. All traffic is on loopback.
 *
 * Run: `npx nest build bench && node --max-semi-space-size=32 dist/bench/bench/pipeline.bench.js` (compiled,
 * as production runs, with the API's and worker's production V8 flag: what scripts/bench.sh does). From the
 * sources (`node -r ts-node/register/transpile-only -r tsconfig-paths/register bench/pipeline.bench.ts`)
 * every process also pays for ts-node, which loads node:domain (see scripts/bench.sh).
 * Settings (environment): BENCH_DIR (/var/tmp/berth-bench), BENCH_RESULTS_DIR (bench/results),
 * BENCH_PIPELINE_RUNS (200), BENCH_PIPELINE_BATCH (20), BENCH_PIPELINE_JOBS (2000),
 * BENCH_PIPELINE_WARMUP_JOBS (6000), BENCH_PIPELINE_INFLIGHT (16), BENCH_PIPELINE_CONCURRENCY (4),
 * BENCH_PIPELINE_PREFETCH (= concurrency), BENCH_PIPELINE_ROUNDS (5).
 */
import { randomUUID } from 'node:crypto';
import { cpus, release, totalmem } from 'node:os';
import { join, resolve } from 'node:path';
import { Queue } from 'bullmq';
import { bullConnection, jobOptionsFor } from '@berth/jobs';
import { fmtMs, markdownTable } from './lib/markdown';
import { defaultResultsDir, writeResults } from './lib/results';
import { summarize, type Summary } from './lib/stats';
import { nowMs, Samples, sleep } from './lib/timing';
import { spawnChildWorker, startBenchSystem, type BenchSystem, type ChildWorker } from './pipeline/system';
import { runLanes } from './pipeline/lanes';
import { PipelineTrace } from './pipeline/trace';

const intEnv = (name: string, fallback: number, min = 1): number => {
  const v = Number(process.env[name] ?? fallback);
  if (!Number.isSafeInteger(v) || v < min) throw new RangeError(`${name} must be an integer ≥ ${min}`);
  return v;
};

/** Worker concurrency, Berth's worker and the raw BullMQ worker alike (Berth's default is 4). */
const concurrency = intEnv('BENCH_PIPELINE_CONCURRENCY', 4);

const settings = {
  dir: resolve(process.env.BENCH_DIR ?? '/var/tmp/berth-bench'),
  resultsDir: resolve(process.env.BENCH_RESULTS_DIR ?? defaultResultsDir()),
  runs: intEnv('BENCH_PIPELINE_RUNS', 200, 0),
  batch: intEnv('BENCH_PIPELINE_BATCH', 20),
  warmup: 3,
  jobs: intEnv('BENCH_PIPELINE_JOBS', 2000, 0),
  /** Jobs through each side of the throughput comparison before its measured rounds. */
  warmupJobs: intEnv('BENCH_PIPELINE_WARMUP_JOBS', 6000),
  /** Jobs being submitted at once (concurrent API clients) in the throughput runs, both sides alike. */
  inflight: intEnv('BENCH_PIPELINE_INFLIGHT', 16),
  /** Throughput rounds (one raw BullMQ run and one Berth run each); the median round is the result. */
  rounds: intEnv('BENCH_PIPELINE_ROUNDS', 5),
  concurrency,
  /** Berth's WORKER_PREFETCH (jobs claimed ahead of a free slot); as in Berth, it follows the concurrency. */
  prefetch: intEnv('BENCH_PIPELINE_PREFETCH', concurrency, 0),
  /** Upper bound of any single wait (a job that never ends fails the bench instead of hanging it). */
  jobTimeoutS: 60,
  throughputTimeoutMs: 300_000,
};

const MiB = 1024 * 1024;
const RESOURCES = { cpus: 1, memoryBytes: 64 * MiB, pidsMax: 64 };

let aborted = false;
for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
  process.on(sig, () => {
    if (aborted) process.exit(130);
    aborted = true;
    log(`${sig}: finishing the current step, then cleaning up`);
  });
}
const checkAbort = () => {
  if (aborted) throw new Error('interrupted');
};

function log(msg: string): void {
  process.stderr.write(`bench: ${msg}\n`);
}

function expectStatus(what: string, res: { status: number; body: unknown }, status: number): void {
  if (res.status !== status)
    throw new Error(`${what}: HTTP ${res.status} (wanted ${status}): ${JSON.stringify(res.body)}`);
}

async function waitJob(sys: BenchSystem, jobId: string): Promise<void> {
  const res = await sys.call('GET', `/v1/jobs/${jobId}/wait?timeout=${settings.jobTimeoutS}`);
  expectStatus(`wait ${jobId}`, res, 200);
  if (res.body.state !== 'completed')
    throw new Error(
      `job ${jobId} ended ${res.body.state}: ${res.body.error?.code} ${res.body.error?.message}`,
    );
}

/** Destroys containers through the API (outside every timed part) and waits for each destroy job. */
async function destroyAll(sys: BenchSystem, ids: string[]): Promise<void> {
  const jobs: string[] = [];
  for (const id of ids) {
    const res = await sys.call('DELETE', `/v1/containers/${id}`);
    expectStatus(`destroy ${id}`, res, 202);
    jobs.push(res.body.job!.id);
  }
  for (const j of jobs) await waitJob(sys, j);
}

// ---------------------------------------------------------------------------------------------------------
// 1. Latency

interface LatencyResult {
  summaries: Record<string, Summary>;
  /** Median of each stage, in the order a job passes them (ms from the previous stage). */
  stages: { stage: string; p50: number; p99: number }[];
}

async function latency(sys: BenchSystem, trace: PipelineTrace): Promise<LatencyResult> {
  const s = new Samples();
  const stage = new Samples();
  let seq = 0;

  const viaApi = async (record: boolean): Promise<string> => {
    const name = `lat-${seq++}`;
    const t0 = nowMs();
    const res = await sys.call('POST', '/v1/containers', {
      name,
      template: 'busybox',
      ...RESOURCES,
      network: 'none',
    });
    const tAccepted = nowMs();
    expectStatus(`create ${name}`, res, 202);
    const jobId = res.body.job!.id;
    await waitJob(sys, jobId);
    const tDone = nowMs();
    if (record) {
      // The long-poll may answer (NOTIFY at commit) before the worker's own `complete` call has returned
      // (and the marks come from other processes).
      for (let i = 0; i < 200; i++) {
        const m = trace.marks.get(jobId);
        if (m?.completed && m.published) break;
        await sleep(1);
      }
      const m = trace.marks.get(jobId);
      if (!m?.published || !m.picked || !m.active || m.runtimeMs === undefined || !m.completed)
        throw new Error(`job ${jobId}: incomplete trace ${JSON.stringify(m)}`);
      const e2e = tDone - t0;
      s.add('e2e', e2e);
      s.add('runtimeInPipeline', m.runtimeMs);
      s.add('overhead', e2e - m.runtimeMs);
      stage.add('POST sent → 202 received', tAccepted - t0);
      stage.add('POST sent → relay published (overlaps the 202)', m.published - t0);
      stage.add('published → worker picked up', m.picked - m.published);
      stage.add('picked → job.active committed', m.active - m.picked);
      stage.add('active → completed, minus runtime', m.completed - m.active - m.runtimeMs);
      if (m.runtimeEnd !== undefined && m.completing !== undefined) {
        stage.add('  of which: runtime done → completion called', m.completing - m.runtimeEnd);
        stage.add('  of which: the completion statement', m.completed - m.completing);
      }
      stage.add('completed → long-poll answered', tDone - m.completed);
    }
    trace.marks.delete(jobId);
    return res.body.container!.id;
  };

  const direct = async (record: boolean): Promise<string> => {
    const id = randomUUID();
    const t0 = nowMs();
    await sys.runtime.containers.create({
      id,
      hostname: `direct-${seq++}`,
      template: 'busybox',
      resources: RESOURCES,
      network: { mode: 'none' },
      privileged: false,
    });
    await sys.runtime.containers.start(id);
    if (record) s.add('runtimeDirect', nowMs() - t0);
    return id;
  };

  log(`latency: ${settings.warmup} warm-up runs`);
  const warm: string[] = [];
  for (let i = 0; i < settings.warmup; i++) warm.push(await viaApi(false));
  await destroyAll(sys, warm);
  for (let i = 0; i < settings.warmup; i++) await sys.runtime.containers.destroy(await direct(false));

  for (let done = 0; done < settings.runs;) {
    checkAbort();
    const n = Math.min(settings.batch, settings.runs - done);
    // Interleaved batches: the API path and the direct runtime see the same host state and drift.
    const viaApiIds: string[] = [];
    for (let i = 0; i < n; i++) viaApiIds.push(await viaApi(true));
    const directIds: string[] = [];
    for (let i = 0; i < n; i++) directIds.push(await direct(true));
    await destroyAll(sys, viaApiIds);
    for (const id of directIds) await sys.runtime.containers.destroy(id);
    done += n;
    log(`latency: ${done}/${settings.runs} (e2e p50 so far ${fmtMs(summarize(s.get('e2e')).p50)})`);
  }

  const summaries = Object.fromEntries(Object.entries(s.all()).map(([k, v]) => [k, summarize(v)]));
  const stages = Object.entries(stage.all()).map(([name, v]) => {
    const sum = summarize(v);
    return { stage: name, p50: sum.p50, p99: sum.p99 };
  });
  return { summaries, stages };
}

// ---------------------------------------------------------------------------------------------------------
// 2. Throughput

interface ThroughputRun {
  jobs: number;
  seconds: number;
  jobsPerSecond: number;
}

/** Runs `produce` (which submits `n` jobs); resolves when it and `finished` (all n done) resolve. */
async function drive(
  n: number,
  produce: () => Promise<unknown>,
  finished: Promise<void>,
): Promise<ThroughputRun> {
  const t0 = nowMs();
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(
      () => reject(new Error(`throughput run did not finish in ${settings.throughputTimeoutMs} ms`)),
      settings.throughputTimeoutMs,
    );
  });
  try {
    await Promise.race([Promise.all([produce(), finished]), timeout]);
  } finally {
    clearTimeout(timer);
  }
  const seconds = (nowMs() - t0) / 1000;
  return { jobs: n, seconds, jobsPerSecond: n / seconds };
}

/** A promise resolved once the returned `tick` has counted `n` (`tick(k)` counts k at once). */
function countdown(n: number): { tick: (k?: number) => void; done: Promise<void> } {
  let left = n;
  let resolveDone!: () => void;
  const done = new Promise<void>((r) => (resolveDone = r));
  return {
    tick: (k = 1) => {
      left -= k;
      if (left <= 0) resolveDone();
    },
    done,
  };
}

async function berthNoop(sys: BenchSystem, trace: PipelineTrace, keyId: string, n: number) {
  const c = countdown(n);
  trace.onCompleted = c.tick;
  try {
    // In the API process, as its handlers write a request's job (JobEnqueuer.submit: e.g. a container
    // operation), `inflight` at a time.
    return await drive(n, () => sys.submitNoops(n, settings.inflight, keyId), c.done);
  } finally {
    trace.onCompleted = undefined;
  }
}

/**
 * The raw BullMQ peer: `Queue.add` from this process, a no-op `Worker` in its own process (like Berth's
 * worker). One process per concurrency for the whole throughput part, warmed up like Berth's worker and
 * reused for every round: a worker spawned per run spent most of a 2000-job run in V8's unoptimized tiers
 * (1600-2200 jobs/s here against 2800-3500 once warm, measured 2026-12-02), and Berth's worker, which
 * lives through the whole bench, never did. A peer waits idle (blocked in Redis) while the others run.
 */
interface RawPeer {
  queue: Queue;
  worker: ChildWorker;
  /** The countdown of the run in progress. */
  onCompleted?: (n: number) => void;
}

async function startRawPeer(sys: BenchSystem, concurrency: number): Promise<RawPeer> {
  const name = `raw-bench-c${concurrency}`;
  const peer: Partial<RawPeer> = {};
  peer.queue = new Queue(name, {
    connection: bullConnection(sys.config.redis.url),
    prefix: sys.config.redis.bullPrefix,
  });
  try {
    peer.worker = await spawnChildWorker(
      ['raw', name, String(concurrency)],
      sys.workerEnv,
      (m) => m.t === 'completed' && peer.onCompleted?.(m.n),
    );
  } catch (e) {
    await peer.queue.close();
    throw e;
  }
  return peer as RawPeer;
}

async function stopRawPeer(peer: RawPeer): Promise<void> {
  await peer.worker.stop();
  await peer.queue.obliterate({ force: true }).catch(() => undefined);
  await peer.queue.close();
}

let rawRuns = 0;
async function rawBullmq(peer: RawPeer, n: number): Promise<ThroughputRun> {
  const tag = `run${rawRuns++}`;
  const c = countdown(n);
  peer.onCompleted = c.tick;
  try {
    return await drive(
      n,
      () =>
        runLanes(n, settings.inflight, (i) =>
          peer.queue.add('system.noop', { n: i }, jobOptionsFor('system.noop', `${tag}-${i}`)),
        ),
      c.done,
    );
  } finally {
    peer.onCompleted = undefined;
  }
}

async function throughput(sys: BenchSystem, trace: PipelineTrace) {
  const [key] = await sys.ds.query(`SELECT id FROM api_keys WHERE name = 'bench'`);
  const keyId = key.id as string;
  trace.detailed = false;
  // Raw BullMQ at Berth's fetch depth too, when it differs from the concurrency.
  const depth = settings.concurrency + settings.prefetch;
  const deep = depth !== settings.concurrency;
  const peers: RawPeer[] = [];
  try {
    const peer = await startRawPeer(sys, settings.concurrency);
    peers.push(peer);
    const deepPeer = deep ? await startRawPeer(sys, depth) : null;
    if (deepPeer) peers.push(deepPeer);
    // The same number of jobs through each side before the measured rounds (their processes stay warm).
    log(`throughput: warm-up (${settings.warmupJobs} jobs each)`);
    await berthNoop(sys, trace, keyId, settings.warmupJobs);
    for (const p of peers) await rawBullmq(p, settings.warmupJobs);
    // Rounds of raw BullMQ runs and one Berth run, the order alternating (this VM's speed drifts by tens
    // of percent within a minute): each round's ratio compares runs made seconds apart, and the result is
    // the median round.
    const rounds: {
      raw: ThroughputRun;
      rawDeep: ThroughputRun | null;
      berth: ThroughputRun;
      ratio: number;
      ratioDeep: number | null;
    }[] = [];
    const rawDeep = () => (deepPeer ? rawBullmq(deepPeer, settings.jobs) : null);
    for (let r = 0; r < settings.rounds; r++) {
      checkAbort();
      log(`throughput: round ${r + 1}/${settings.rounds}, ${settings.jobs} jobs each`);
      let raw: ThroughputRun;
      let deepRun: ThroughputRun | null;
      let berth: ThroughputRun;
      if (r % 2 === 0) {
        raw = await rawBullmq(peer, settings.jobs);
        berth = await berthNoop(sys, trace, keyId, settings.jobs);
        deepRun = await rawDeep();
      } else {
        deepRun = await rawDeep();
        berth = await berthNoop(sys, trace, keyId, settings.jobs);
        raw = await rawBullmq(peer, settings.jobs);
      }
      rounds.push({
        raw,
        rawDeep: deepRun,
        berth,
        ratio: berth.jobsPerSecond / raw.jobsPerSecond,
        ratioDeep: deepRun ? berth.jobsPerSecond / deepRun.jobsPerSecond : null,
      });
    }
    const [{ completed }] = await sys.ds.query(
      `SELECT count(*)::int AS completed FROM jobs WHERE kind = 'system.noop' AND state = 'completed'`,
    );
    const expected = settings.jobs * settings.rounds + settings.warmupJobs;
    if (completed !== expected)
      throw new Error(`expected ${expected} completed noop jobs in Postgres, found ${completed}`);
    const median = (xs: number[]) => summarize(xs).p50;
    return {
      rounds,
      berthJobsPerSecond: median(rounds.map((x) => x.berth.jobsPerSecond)),
      rawJobsPerSecond: median(rounds.map((x) => x.raw.jobsPerSecond)),
      ratio: median(rounds.map((x) => x.ratio)),
      rawDeepJobsPerSecond: deep ? median(rounds.map((x) => x.rawDeep!.jobsPerSecond)) : null,
      ratioDeep: deep ? median(rounds.map((x) => x.ratioDeep!)) : null,
    };
  } finally {
    for (const p of peers) await stopRawPeer(p).catch(() => undefined);
  }
}

// ---------------------------------------------------------------------------------------------------------

type ThroughputResult = Awaited<ReturnType<typeof throughput>>;

async function main(): Promise<void> {
  const tag = `bench-pipeline-${process.pid}`;
  log(`booting API and worker (own processes) (database berth_bench_${process.pid}, prefix ${tag})`);
  const sys = await startBenchSystem({
    dataRoot: join(settings.dir, 'berth-pipeline'),
    cgroupParent: 'berth-bench-pipeline',
    database: `berth_bench_${process.pid}`,
    bullPrefix: tag,
    hostName: tag,
    workerConcurrency: settings.concurrency,
    env: { WORKER_PREFETCH: String(settings.prefetch) },
  });
  try {
    const trace = new PipelineTrace();
    trace.install(sys);
    let lat: LatencyResult | null = null;
    if (settings.runs > 0) {
      log('importing the busybox template through the API');
      const imp = await sys.call('POST', '/v1/templates', { name: 'busybox', source: 'builtin:busybox' });
      expectStatus('template import', imp, 202);
      for (const j of imp.body.jobs ?? []) await waitJob(sys, j.id);
      lat = await latency(sys, trace);
    }
    checkAbort();
    const tp = settings.jobs > 0 ? await throughput(sys, trace) : null;

    const driver = sys.runtime.storage.info().name;
    const overhead = lat?.summaries.overhead.p50;
    const data = {
      benchmark: 'pipeline',
      date: new Date().toISOString(),
      machine: {
        cpus: cpus().length,
        cpuModel: cpus()[0]?.model,
        memoryBytes: totalmem(),
        kernel: release(),
        node: process.version,
        storageDriver: driver,
      },
      settings,
      layout: LAYOUT,
      latency: lat,
      throughput: tp,
      targets: {
        overheadP50Ms: overhead === undefined ? null : { target: 10, value: overhead, met: overhead <= 10 },
        throughputRatio: tp ? { target: 0.5, value: tp.ratio, met: tp.ratio >= 0.5 } : null,
      },
    };
    const written = await writeResults(settings.resultsDir, 'pipeline', data);
    log(`results: ${written.dated}`);
    process.stdout.write(report(driver, lat, tp));
  } finally {
    log('cleaning up');
    await sys.close();
  }
}

const ok = (met: boolean) => (met ? 'met' : 'NOT met');

function latencyReport(driver: string, lat: LatencyResult): string[] {
  const L = lat.summaries;
  const row = (label: string, x: Summary) => [label, fmtMs(x.p50), fmtMs(x.p99), fmtMs(x.mean)];
  return [
    `### Pipeline latency: create + start one busybox container (${driver}, ${L.e2e.n} runs)`,
    '',
    markdownTable(
      ['', 'p50', 'p99', 'mean'],
      [
        row('POST /v1/containers → job completed (wait)', L.e2e),
        row('runtime create + start, inside that job', L.runtimeInPipeline),
        row('runtime create + start, called directly', L.runtimeDirect),
        row('pipeline overhead (end to end − runtime, per run)', L.overhead),
      ],
    ),
    '',
    `Overhead target p50 ≤ 10 ms: ${ok(L.overhead.p50 <= 10)}. Read against the runtime called directly ` +
      `instead (end to end p50 − direct p50, counting the runtime's slowdown inside the job as the ` +
      `pipeline's too): ${fmtMs(L.e2e.p50 - L.runtimeDirect.p50)}.`,
    '',
    'Where the time goes (after the first two rows, each stage starts where the previous one ended):',
    '',
    markdownTable(
      ['stage', 'p50', 'p99'],
      lat.stages.map((x) => [x.stage, fmtMs(x.p50), fmtMs(x.p99)]),
    ),
    '',
  ];
}

function throughputReport(tp: ThroughputResult): string[] {
  const rate = (r: number) => `${Math.round(r)} jobs/s`;
  const pct = (x: number) => `${(x * 100).toFixed(0)} %`;
  const depth = settings.concurrency + settings.prefetch;
  const deep = tp.ratioDeep !== null;
  return [
    `### Pipeline throughput: system.noop, ${settings.jobs} jobs per run, ${settings.inflight} submitters, worker concurrency ${settings.concurrency} (Berth: + ${settings.prefetch} claimed ahead)`,
    '',
    markdownTable(
      [
        'round',
        `raw BullMQ Queue.add + Worker, concurrency ${settings.concurrency}`,
        ...(deep ? [`raw BullMQ, concurrency ${depth}`] : []),
        'Berth: enqueuer + outbox + relay + BullMQ + worker + audit',
        `Berth / raw (${settings.concurrency})`,
        ...(deep ? [`Berth / raw (${depth})`] : []),
      ],
      [
        ...tp.rounds.map((r, i) => [
          `${i + 1} (${i % 2 === 0 ? 'raw first' : 'raw last'})`,
          rate(r.raw.jobsPerSecond),
          ...(deep ? [rate(r.rawDeep!.jobsPerSecond)] : []),
          rate(r.berth.jobsPerSecond),
          pct(r.ratio),
          ...(deep ? [pct(r.ratioDeep!)] : []),
        ]),
        [
          'median',
          rate(tp.rawJobsPerSecond),
          ...(deep ? [rate(tp.rawDeepJobsPerSecond!)] : []),
          rate(tp.berthJobsPerSecond),
          pct(tp.ratio),
          ...(deep ? [pct(tp.ratioDeep!)] : []),
        ],
      ],
    ),
    '',
    `Berth / raw BullMQ at the same concurrency, median of ${tp.rounds.length} rounds: ${pct(tp.ratio)} (target ≥ 50 %: ${ok(tp.ratio >= 0.5)}).` +
      (deep ? ` Against raw BullMQ at Berth's fetch depth (${depth}): ${pct(tp.ratioDeep!)}.` : ''),
    '',
  ];
}

/** How the bench lays out its processes (printed with the results, stored in the JSON). */
const LAYOUT =
  "Processes, as in production: Berth's API (HTTP, enqueuer, outbox relay; the throughput runs' noop " +
  "jobs are submitted through its enqueuer there), Berth's worker and the raw BullMQ peer's worker each in " +
  "their own process; the bench process holds the HTTP clients and the raw peer's producers. Both " +
  'throughput peers are warmed up with the same number of jobs and kept for every round.';

function report(driver: string, lat: LatencyResult | null, tp: ThroughputResult | null): string {
  return [LAYOUT, '', ...(lat ? latencyReport(driver, lat) : []), ...(tp ? throughputReport(tp) : [])].join(
    '\n',
  );
}

main().then(
  () => process.exit(0),
  (e: unknown) => {
    log(`failed: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}`);
    process.exit(1);
  },
);
