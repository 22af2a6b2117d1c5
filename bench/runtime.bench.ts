/**
 * Runtime benchmark: Berth against LXC 5 on the same machine, in one run, side by side.
 *
 *   1. clone from template + start until init runs (btrfs loop pool; overlay)
 *   2. clean stop            3. destroy
 *   4. N containers created and started back to back (containers/s)
 *   5. host-side memory kept per running container (Berth's supervisor vs LXC's `[lxc monitor]`)
 *   6. 200 idle Berth containers at once (how many really run, time, host memory), then destroyed
 *
 * Run through `npm run bench` (scripts/bench.sh installs LXC, builds the helper, cleans up after a crash).
 * Settings (environment): BENCH_DIR, BENCH_RUNS (30), BENCH_LXC_STOP_RUNS (5), BENCH_BURST (100),
 * BENCH_LXC_BURST (100), BENCH_IDLE (200), BENCH_RESULTS_DIR (bench/results).
 */
import { cpus, release, totalmem } from 'node:os';
import { chmod, mkdir, readFile, rm } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { LoopPool } from '@berth/runtime';
import { run } from '@berth/runtime/common/exec';
import { benchSpec, openBenchHost, removeCgroupParent, type BenchHost } from './lib/berth-host';
import { LxcPeer, removeLxcCgroups } from './lib/lxc-peer';
import { compareRow, fmtBytes, fmtMs, markdownTable } from './lib/markdown';
import { memAvailableBytes, parentPid, processMemory, type ProcessMemory } from './lib/proc';
import { defaultResultsDir, writeResults } from './lib/results';
import { summarize, type Summary } from './lib/stats';
import { Samples, sleep, timed } from './lib/timing';

const intEnv = (name: string, fallback: number): number => {
  const v = Number(process.env[name] ?? fallback);
  if (!Number.isSafeInteger(v) || v < 0) throw new RangeError(`${name} must be a non-negative integer`);
  return v;
};

const config = {
  dir: resolve(process.env.BENCH_DIR ?? '/var/tmp/berth-bench'),
  resultsDir: resolve(process.env.BENCH_RESULTS_DIR ?? defaultResultsDir()),
  runs: intEnv('BENCH_RUNS', 30),
  warmup: 2,
  lxcStopRuns: intEnv('BENCH_LXC_STOP_RUNS', 5),
  burst: intEnv('BENCH_BURST', 100),
  lxcBurst: intEnv('BENCH_LXC_BURST', 100),
  idle: intEnv('BENCH_IDLE', 200),
  /** Pause between start and stop so every init has installed its signal handling (both peers alike). */
  settleMs: 200,
};

/** Host-global names carry the bench's own prefix: cleanup (here and in bench.sh) removes exactly these. */
const CGROUP_PARENT = 'berth-bench';
const LXC_PREFIX = 'berth-bench-';
const LXC_TEMPLATE = `${LXC_PREFIX}tpl`;
const MEMORY_CGROUP = '/sys/fs/cgroup/memory';

let aborted = false;
const checkAbort = () => {
  if (aborted) throw new Error('interrupted');
};
for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
  process.on(sig, () => {
    if (aborted) process.exit(130); // a second signal: give up on the orderly cleanup (bench.sh still cleans)
    aborted = true;
    log(`${sig}: finishing the current step, then cleaning up`);
  });
}

function log(msg: string): void {
  process.stderr.write(`bench: ${msg}\n`);
}

/** One column of the side-by-side: how to clone+start, stop and destroy a container with one runtime. */
interface Engine {
  key: string;
  create(id: string): Promise<void>;
  start(id: string): Promise<void>;
  /** Clean stop; resolves `forced` when the runtime had to SIGKILL. */
  stop(id: string): Promise<{ forced: boolean }>;
  kill(id: string): Promise<void>;
  destroy(id: string): Promise<void>;
  name(i: number, tag: string): string;
}

function berthEngine(key: string, host: BenchHost, idPrefix: string): Engine {
  return {
    key,
    name: (i, tag) => `${idPrefix}${tag}${i}`,
    create: async (id) => void (await host.containers.create(benchSpec(id))),
    start: async (id) => void (await host.containers.start(id)),
    stop: async (id) => ({ forced: (await host.containers.stop(id)).forced }),
    kill: async (id) => void (await host.containers.stop(id, 0)),
    destroy: async (id) => void (await host.containers.destroy(id)),
  };
}

function lxcEngine(key: string, lxc: LxcPeer, overlay: boolean, idPrefix: string): Engine {
  return {
    key,
    name: (i, tag) => `${LXC_PREFIX}${idPrefix}${tag}${i}`,
    create: (id) => lxc.copy(LXC_TEMPLATE, id, overlay),
    start: (id) => lxc.start(id),
    stop: async (id) => {
      await lxc.stop(id);
      return { forced: false };
    },
    kill: (id) => lxc.stop(id, true),
    destroy: (id) => lxc.destroy(id),
  };
}

interface Env {
  berthBtrfs: BenchHost;
  berthOverlay: BenchHost;
  lxcBtrfs: LxcPeer;
  lxcDir: LxcPeer;
  lxcPool: LoopPool;
}

const partial: Partial<Env> = {};

async function setup(): Promise<Env> {
  await mkdir(config.dir, { recursive: true });
  await chmod(config.dir, 0o711);
  log(
    `preparing Berth (btrfs loop pool, overlay) and LXC (btrfs loop pool, dir+overlay) under ${config.dir}`,
  );
  partial.berthBtrfs = await openBenchHost('btrfs', join(config.dir, 'berth-btrfs'), CGROUP_PARENT);
  partial.berthOverlay = await openBenchHost('overlay', join(config.dir, 'berth-overlay'), CGROUP_PARENT);
  // LXC's btrfs column gets a pool of the same kind as Berth's: a sparse image on a loop device.
  partial.lxcPool = new LoopPool({
    image: join(config.dir, 'lxc-btrfs.img'),
    mountPoint: join(config.dir, 'lxc-btrfs'),
    sizeBytes: 8 * 1024 ** 3,
  });
  await partial.lxcPool.prepare();
  const configFile = join(config.dir, 'lxc.conf');
  partial.lxcBtrfs = new LxcPeer({ lxcpath: join(config.dir, 'lxc-btrfs'), configFile });
  partial.lxcDir = new LxcPeer({ lxcpath: join(config.dir, 'lxc-dir'), configFile });
  await mkdir(partial.lxcDir.lxcpath, { recursive: true });
  await partial.lxcBtrfs.writeConfig();
  await partial.lxcBtrfs.createTemplate(LXC_TEMPLATE, 'btrfs');
  await partial.lxcDir.createTemplate(LXC_TEMPLATE, 'dir');
  return partial as Env;
}

async function cleanup(): Promise<void> {
  log('cleaning up');
  await partial.lxcBtrfs?.destroyAll();
  await partial.lxcDir?.destroyAll();
  await partial.lxcPool?.release().catch((e: unknown) => log(`lxc pool release: ${String(e)}`));
  await removeLxcCgroups(LXC_PREFIX);
  await partial.berthBtrfs?.close().catch((e: unknown) => log(`berth btrfs close: ${String(e)}`));
  await partial.berthOverlay?.close().catch((e: unknown) => log(`berth overlay close: ${String(e)}`));
  await removeCgroupParent(CGROUP_PARENT);
  await rm(config.dir, { recursive: true, force: true });
}

/** Phases 1-3: rounds of clone+start, clean stop, destroy for every engine, the engines interleaved. */
async function lifecycleRounds(engines: Engine[], samples: Samples): Promise<{ berthForced: number }> {
  let berthForced = 0;
  const total = config.warmup + config.runs;
  for (let round = 0; round < total; round++) {
    checkAbort();
    const record = round >= config.warmup;
    const r = round - config.warmup;
    const add = (key: string, ms: number) => record && samples.add(key, ms);
    // Rotate the order each round so no engine always runs right after another's teardown.
    const order = engines.map((_, i) => engines[(i + round) % engines.length]);
    const ids = new Map(order.map((e) => [e.key, e.name(round, 'l')]));
    for (const e of order) {
      const id = ids.get(e.key)!;
      const c = await timed(() => e.create(id));
      const s = await timed(() => e.start(id));
      add(`${e.key}.clone`, c.ms);
      add(`${e.key}.start`, s.ms);
      add(`${e.key}.cloneStart`, c.ms + s.ms);
    }
    await sleep(config.settleMs);
    for (const e of order) {
      const id = ids.get(e.key)!;
      const isLxc = e.key.startsWith('lxc');
      if (!isLxc || (record && r < config.lxcStopRuns)) {
        const s = await timed(() => e.stop(id));
        add(`${e.key}.stop`, s.ms);
        if (s.value.forced && record) berthForced++;
      } else {
        const k = await timed(() => e.kill(id));
        add(`${e.key}.kill`, k.ms);
      }
    }
    for (const e of order) {
      const d = await timed(() => e.destroy(ids.get(e.key)!));
      add(`${e.key}.destroy`, d.ms);
    }
    if (record && (r + 1) % 10 === 0) log(`lifecycle: ${r + 1}/${config.runs} rounds`);
  }
  return { berthForced };
}

interface BurstResult {
  key: string;
  count: number;
  started: number;
  seconds: number;
  perSecond: number;
  /** Drop of MemAvailable while they ran, divided by the count (kernel + container + runtime memory). */
  memPerContainerBytes: number;
  /** memory.usage_in_bytes of each container's own memory cgroup (its processes, page cache, kernel). */
  cgroupMemory: Summary | null;
  /** The runtime's own per-container processes (Berth's supervisor, LXC's monitor). */
  overhead: { rss: Summary | null; pss: Summary | null; processes: number };
  teardownSeconds: number;
}

/** Phases 4+5: `count` containers created and started back to back, then their host-side overhead. */
async function burst(
  e: Engine,
  count: number,
  overheadPid: (id: string) => Promise<number | null>,
  teardown: (id: string) => Promise<void>,
  memoryCgroup: (id: string) => string,
  samples: Samples,
): Promise<BurstResult> {
  const ids = Array.from({ length: count }, (_, i) => e.name(i, 'b'));
  await sleep(500);
  const memBefore = await memAvailableBytes();
  let started = 0;
  const t = await timed(async () => {
    for (const id of ids) {
      checkAbort();
      const c = await timed(() => e.create(id));
      const s = await timed(() => e.start(id));
      // first and last quarter apart: shows whether a step slows down as containers pile up
      samples.add(`${e.key}.burst.clone`, c.ms);
      samples.add(`${e.key}.burst.start`, s.ms);
      started++;
    }
  }).catch((err: unknown) => {
    log(`${e.key} burst stopped after ${started}: ${String(err)}`);
    return { ms: NaN, value: undefined };
  });
  await sleep(1_000);
  const memAfter = await memAvailableBytes();
  const mems: ProcessMemory[] = [];
  for (const id of ids.slice(0, started)) {
    const pid = await overheadPid(id);
    const m = pid ? await processMemory(pid) : null;
    if (m) mems.push(m);
  }
  const cgMem: number[] = [];
  for (const id of ids.slice(0, started)) {
    const text = await readFile(join(memoryCgroup(id), 'memory.usage_in_bytes'), 'utf8').catch(() => '');
    if (Number(text) > 0) cgMem.push(Number(text));
  }
  const rss = mems.map((m) => m.rssBytes);
  const pss = mems.flatMap((m) => (m.pssBytes === null ? [] : [m.pssBytes]));
  const td = await timed(async () => {
    for (const id of ids) await teardown(id).catch((err: unknown) => log(`${e.key} teardown ${id}: ${err}`));
  });
  const seconds = t.ms / 1000;
  return {
    key: e.key,
    count,
    started,
    seconds,
    perSecond: started / seconds,
    memPerContainerBytes: started ? (memBefore - memAfter) / started : NaN,
    cgroupMemory: cgMem.length ? summarize(cgMem) : null,
    overhead: {
      rss: rss.length ? summarize(rss) : null,
      pss: pss.length ? summarize(pss) : null,
      processes: mems.length,
    },
    teardownSeconds: td.ms / 1000,
  };
}

/** Berth's host-side process for a container: the supervisor, init's parent (`supervisorPid`). */
async function berthSupervisor(host: BenchHost, id: string): Promise<number | null> {
  const init = (await host.containers.get(id)).init;
  return init ? parentPid(init.pid) : null;
}

interface IdleResult {
  asked: number;
  running: number;
  startSeconds: number;
  /** MemAvailable drop: every other process on the machine moves it too (noisy on a shared host). */
  memUsedBytes: number;
  /** memory.usage_in_bytes of the bench's cgroup parent: all containers' processes, page cache, kernel. */
  containersMemoryBytes: number;
  supervisorRssTotalBytes: number;
  /**
   * The runtime's `list()` of them all, median of 5: what the worker reads on every pass of its look at
   * its containers (WORKER_OBSERVE_INTERVAL_MS, ContainerObserver).
   */
  listMs: number;
  destroySeconds: number;
}

/** Phase 6: `count` idle Berth containers at once, counted from the runtime's truth, then destroyed. */
async function idleFleet(host: BenchHost, count: number): Promise<IdleResult> {
  const ids = Array.from({ length: count }, (_, i) => `bi${i}`);
  await sleep(500);
  const memBefore = await memAvailableBytes();
  const t = await timed(async () => {
    for (const id of ids) {
      checkAbort();
      await host.containers.create(benchSpec(id));
      await host.containers.start(id).catch((err: unknown) => log(`idle start ${id}: ${String(err)}`));
    }
  });
  await sleep(2_000);
  const running = (await host.containers.list()).filter((c) => c.status === 'running').map((c) => c.id);
  const lists: number[] = [];
  for (let i = 0; i < 5; i++) lists.push((await timed(() => host.containers.list())).ms);
  lists.sort((a, b) => a - b);
  const memAfter = await memAvailableBytes();
  const parentUsage = await readFile(join(MEMORY_CGROUP, host.cgroupParent, 'memory.usage_in_bytes'), 'utf8');
  let supervisorRss = 0;
  for (const id of running) {
    const pid = await berthSupervisor(host, id);
    supervisorRss += (pid && (await processMemory(pid))?.rssBytes) || 0;
  }
  const d = await timed(async () => {
    for (const id of ids) await host.containers.destroy(id);
  });
  return {
    asked: count,
    running: running.length,
    startSeconds: t.ms / 1000,
    memUsedBytes: memBefore - memAfter,
    containersMemoryBytes: Number(parentUsage.trim()),
    supervisorRssTotalBytes: supervisorRss,
    listMs: lists[2],
    destroySeconds: d.ms / 1000,
  };
}

async function machine() {
  const lxcVersion = (await run('lxc-start', ['--version']).catch(() => ({ stdout: '?' }))).stdout.trim();
  return {
    cpus: cpus().length,
    cpuModel: cpus()[0]?.model ?? '?',
    memoryBytes: totalmem(),
    kernel: release(),
    node: process.version,
    lxc: lxcVersion,
  };
}

async function main(): Promise<void> {
  const date = new Date();
  const samples = new Samples();
  let berthForced: number;
  const bursts: BurstResult[] = [];
  let idle: IdleResult | null = null;
  try {
    const env = await setup();
    const engines = [
      berthEngine('berthBtrfs', env.berthBtrfs, 'bb'),
      lxcEngine('lxcBtrfs', env.lxcBtrfs, false, 'lb'),
      berthEngine('berthOverlay', env.berthOverlay, 'bo'),
      lxcEngine('lxcOverlay', env.lxcDir, true, 'lo'),
    ];
    const [bB, lB, bO, lO] = engines;
    log(`lifecycle: ${config.runs} rounds (+${config.warmup} warm-up), 4 engines interleaved`);
    ({ berthForced } = await lifecycleRounds(engines, samples));
    const berthTeardown = (host: BenchHost) => async (id: string) => void (await host.containers.destroy(id));
    const lxcTeardown = (lxc: LxcPeer) => async (id: string) => {
      await lxc.stop(id, true);
      await lxc.destroy(id);
    };
    const berthMem = (id: string) => join(MEMORY_CGROUP, CGROUP_PARENT, id);
    const lxcMem = (id: string) => join(MEMORY_CGROUP, `lxc.payload.${id}`);
    type Pids = (id: string) => Promise<number | null>;
    type Down = (id: string) => Promise<void>;
    const plan: Array<[Engine, number, Pids, Down, (id: string) => string]> = [
      [
        bB,
        config.burst,
        (id) => berthSupervisor(env.berthBtrfs, id),
        berthTeardown(env.berthBtrfs),
        berthMem,
      ],
      [lB, config.lxcBurst, (id) => env.lxcBtrfs.monitorPid(id), lxcTeardown(env.lxcBtrfs), lxcMem],
      [
        bO,
        config.burst,
        (id) => berthSupervisor(env.berthOverlay, id),
        berthTeardown(env.berthOverlay),
        berthMem,
      ],
      [lO, config.lxcBurst, (id) => env.lxcDir.monitorPid(id), lxcTeardown(env.lxcDir), lxcMem],
    ];
    for (const [e, n, pidOf, down, mem] of plan) {
      if (n === 0) continue;
      checkAbort();
      log(`burst: ${n} × ${e.key}`);
      bursts.push(await burst(e, n, pidOf, down, mem, samples));
    }
    if (config.idle > 0) {
      checkAbort();
      log(`idle: ${config.idle} Berth containers (btrfs) at once`);
      idle = await idleFleet(env.berthBtrfs, config.idle);
    }
  } finally {
    await cleanup();
  }
  const summaries: Record<string, Summary> = {};
  for (const [k, v] of Object.entries(samples.all())) if (v.length) summaries[k] = summarize(v);
  const report = buildReport(summaries, (k) => samples.get(k), bursts, idle, berthForced);
  const written = await writeResults(config.resultsDir, 'runtime', {
    benchmark: 'runtime',
    date: date.toISOString(),
    machine: await machine(),
    config,
    summaries,
    bursts,
    idle,
    berthForcedStops: berthForced,
    targets: report.targets,
    markdown: report.markdown,
    samples: samples.all(),
  });
  process.stdout.write(`\n## Runtime benchmark, ${date.toISOString()}\n\n${report.markdown}\n\n`);
  process.stdout.write(`results: ${written.dated}\n         ${written.latest}\n`);
}

interface Target {
  target: string;
  measured: string;
  met: boolean;
}

function buildReport(
  s: Record<string, Summary>,
  samplesOf: (key: string) => number[],
  bursts: BurstResult[],
  idle: IdleResult | null,
  berthForced: number,
): { markdown: string; targets: Target[] } {
  const p = (key: string, q: 'p50' | 'p99') => s[key]?.[q];
  const n = (key: string) => s[key]?.n ?? 0;
  const rows: string[][] = [];
  for (const [fs, b, l] of [
    ['btrfs', 'berthBtrfs', 'lxcBtrfs'],
    ['overlay', 'berthOverlay', 'lxcOverlay'],
  ] as const) {
    rows.push(
      compareRow(`clone + start p50 (${fs})`, p(`${b}.cloneStart`, 'p50'), p(`${l}.cloneStart`, 'p50')),
    );
    rows.push(
      compareRow(`clone + start p99 (${fs})`, p(`${b}.cloneStart`, 'p99'), p(`${l}.cloneStart`, 'p99')),
    );
    rows.push(compareRow(`… clone p50 (${fs})`, p(`${b}.clone`, 'p50'), p(`${l}.clone`, 'p50')));
    rows.push(compareRow(`… start p50 (${fs})`, p(`${b}.start`, 'p50'), p(`${l}.start`, 'p50')));
  }
  rows.push(
    compareRow(
      `clean stop p50 (btrfs; n = ${n('berthBtrfs.stop')} / ${n('lxcBtrfs.stop')})`,
      p('berthBtrfs.stop', 'p50'),
      p('lxcBtrfs.stop', 'p50'),
    ),
  );
  rows.push(compareRow('clean stop p99 (btrfs)', p('berthBtrfs.stop', 'p99'), p('lxcBtrfs.stop', 'p99')));
  rows.push(
    compareRow(
      `clean stop p50 (overlay; n = ${n('berthOverlay.stop')} / ${n('lxcOverlay.stop')})`,
      p('berthOverlay.stop', 'p50'),
      p('lxcOverlay.stop', 'p50'),
    ),
  );
  for (const fs of ['Btrfs', 'Overlay']) {
    rows.push(
      compareRow(
        `destroy p50 (${fs.toLowerCase()})`,
        p(`berth${fs}.destroy`, 'p50'),
        p(`lxc${fs}.destroy`, 'p50'),
      ),
    );
  }
  const burstOf = (key: string) => bursts.find((b) => b.key === key);
  const num = (v: number | null | undefined) =>
    v === null || v === undefined || !Number.isFinite(v) ? '—' : v.toFixed(1);
  for (const [fs, b, l] of [
    ['btrfs', 'berthBtrfs', 'lxcBtrfs'],
    ['overlay', 'berthOverlay', 'lxcOverlay'],
  ] as const) {
    const bb = burstOf(b);
    const lb = burstOf(l);
    if (!bb && !lb) continue;
    rows.push(
      compareRow(
        `create + start back to back, containers/s (${fs}; ${bb?.started ?? 0} / ${lb?.started ?? 0})`,
        bb?.perSecond,
        lb?.perSecond,
        num,
      ),
    );
  }
  const quarter = (key: string, last: boolean) => {
    const xs = s[key] ? samplesOf(key) : [];
    const q = Math.floor(xs.length / 4);
    return q ? summarize(last ? xs.slice(-q) : xs.slice(0, q)).p50 : undefined;
  };
  for (const fs of ['Btrfs', 'Overlay']) {
    for (const step of ['clone', 'start']) {
      const k = (who: string) => `${who}${fs}.burst.${step}`;
      rows.push(
        compareRow(
          `… burst ${step} p50, first → last quarter (${fs.toLowerCase()})`,
          quarter(k('berth'), false),
          quarter(k('lxc'), false),
        ),
      );
      rows[rows.length - 1][1] += ` → ${fmtMs(quarter(k('berth'), true))}`;
      rows[rows.length - 1][2] += ` → ${fmtMs(quarter(k('lxc'), true))}`;
      rows[rows.length - 1][3] = '';
    }
  }
  const ob = burstOf('berthBtrfs')?.overhead;
  const ol = burstOf('lxcBtrfs')?.overhead;
  rows.push(compareRow('host process per container, RSS p50', ob?.rss?.p50, ol?.rss?.p50, fmtBytes));
  rows.push(compareRow('host process per container, PSS p50', ob?.pss?.p50, ol?.pss?.p50, fmtBytes));
  rows.push(
    compareRow(
      'container memory cgroup usage p50 (btrfs)',
      burstOf('berthBtrfs')?.cgroupMemory?.p50,
      burstOf('lxcBtrfs')?.cgroupMemory?.p50,
      fmtBytes,
    ),
  );
  // MemAvailable drops stay in the JSON only: on a shared machine other work moves them (even below 0).
  let markdown = markdownTable(['measure', 'Berth', 'LXC', 'Berth / LXC'], rows);
  if (idle) {
    markdown +=
      '\n\n' +
      markdownTable(
        ['idle fleet (Berth, btrfs)', 'value'],
        [
          ['containers asked / really running', `${idle.asked} / ${idle.running}`],
          ['time to create + start them all', `${idle.startSeconds.toFixed(1)} s`],
          ['memory of all containers (cgroup usage of the parent)', fmtBytes(idle.containersMemoryBytes)],
          ['supervisors, RSS in total', fmtBytes(idle.supervisorRssTotalBytes)],
          [
            '… per container, containers + supervisors',
            fmtBytes(
              idle.running ? (idle.containersMemoryBytes + idle.supervisorRssTotalBytes) / idle.running : NaN,
            ),
          ],
          ['host MemAvailable drop (noisy: shared machine)', fmtBytes(idle.memUsedBytes)],
          ["the runtime's list() of them all, p50 of 5 (a worker's observation pass)", fmtMs(idle.listMs)],
          ['time to destroy them all', `${idle.destroySeconds.toFixed(1)} s`],
        ],
      );
  }
  const le = (a: number | undefined, b: number | undefined) => a !== undefined && b !== undefined && a <= b;
  const targets: Target[] = [
    {
      target: 'clone + start p50 ≤ LXC (btrfs)',
      measured: `${fmtMs(p('berthBtrfs.cloneStart', 'p50'))} vs ${fmtMs(p('lxcBtrfs.cloneStart', 'p50'))}`,
      met: le(p('berthBtrfs.cloneStart', 'p50'), p('lxcBtrfs.cloneStart', 'p50')),
    },
    {
      target: 'clone + start p50 ≤ LXC (overlay)',
      measured: `${fmtMs(p('berthOverlay.cloneStart', 'p50'))} vs ${fmtMs(p('lxcOverlay.cloneStart', 'p50'))}`,
      met: le(p('berthOverlay.cloneStart', 'p50'), p('lxcOverlay.cloneStart', 'p50')),
    },
    {
      target: 'clean stop ≤ 200 ms (p99, btrfs and overlay)',
      measured: `p50 ${fmtMs(p('berthBtrfs.stop', 'p50'))} / ${fmtMs(p('berthOverlay.stop', 'p50'))}, p99 ${fmtMs(
        p('berthBtrfs.stop', 'p99'),
      )} / ${fmtMs(p('berthOverlay.stop', 'p99'))}, forced ${berthForced}`,
      met:
        le(p('berthBtrfs.stop', 'p99'), 200) && le(p('berthOverlay.stop', 'p99'), 200) && berthForced === 0,
    },
    {
      target: 'host overhead per container ≤ 1 MiB RSS',
      measured: `supervisor RSS p50 ${fmtBytes(ob?.rss?.p50)}, max ${fmtBytes(ob?.rss?.max)}`,
      met: le(ob?.rss?.max, 1024 * 1024),
    },
    {
      target: `${config.idle} idle containers at once`,
      measured: idle
        ? `${idle.running} running, ${fmtBytes(idle.containersMemoryBytes + idle.supervisorRssTotalBytes)}`
        : 'not run',
      met: !!idle && idle.running === idle.asked && idle.asked >= 200,
    },
  ];
  markdown +=
    '\n\n' +
    markdownTable(
      ['target', 'measured', 'met'],
      targets.map((t) => [t.target, t.measured, t.met ? 'yes' : 'no']),
    );
  return { markdown, targets };
}

main().catch((e: unknown) => {
  log(`failed: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}`);
  process.exitCode = aborted ? 130 : 1;
});
