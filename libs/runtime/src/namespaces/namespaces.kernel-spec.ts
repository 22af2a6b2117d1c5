import { spawn } from 'node:child_process';
import {
  chmodSync,
  constants,
  copyFileSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  rmdirSync,
  symlinkSync,
  writeFileSync,
} from 'node:fs';
import { open } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { describeKernel } from '@test/support/kernel';
import { run } from '../common/exec';
import { RuntimeError } from '../common/errors';
import { execInContainer } from './container-exec';
import { InitRef, isAlive, readProcStat, signalInit, stopInit, waitForExit } from './init-process';
import {
  buildLaunchArgs,
  helperPath,
  LaunchError,
  LaunchOptions,
  LaunchResult,
  launchContainer,
} from './launcher';
import { shiftOwnership } from './ownership-shift';

const REPO = resolve(__dirname, '..', '..', '..', '..');
const CONTROLLERS = ['memory', 'pids', 'cpu', 'freezer'];
const APPLETS = ['sh', 'ps', 'hostname', 'sleep', 'cat', 'mount', 'ls', 'id', 'echo', 'test', 'wc', 'touch'];

// init that records its cgroup as its very first act, exits at once on TERM, otherwise sleeps
const FAST_INIT = `#!/bin/sh
cat /proc/1/cgroup > /init-cgroup
trap 'exit 0' TERM
while :; do sleep 1 & wait $!; done
`;
// init that ignores TERM: only SIGKILL stops it
const STUBBORN_INIT = `#!/bin/sh
trap '' TERM
while :; do sleep 1; done
`;

function makeRootfs(dir: string): string {
  for (const d of ['bin', 'sbin', 'proc', 'sys', 'dev', 'tmp', 'etc', 'root'])
    mkdirSync(join(dir, d), { recursive: true });
  copyFileSync('/bin/busybox', join(dir, 'bin', 'busybox'));
  chmodSync(join(dir, 'bin', 'busybox'), 0o755);
  for (const a of APPLETS) symlinkSync('busybox', join(dir, 'bin', a));
  writeFileSync(join(dir, 'sbin', 'init'), FAST_INIT, { mode: 0o755 });
  writeFileSync(join(dir, 'sbin', 'stubborn'), STUBBORN_INIT, { mode: 0o755 });
  return dir;
}

function vmRssKiB(pid: number): number {
  const m = /^VmRSS:\s+(\d+) kB/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m ? Number(m[1]) : -1;
}

/** Waits until pid has a SIGTERM handler installed (SigCgt bit 15): before that, TERM to a ns init is dropped. */
async function waitForTermHandler(pid: number): Promise<void> {
  for (let i = 0; i < 400; i++) {
    const m = /^SigCgt:\s+([0-9a-f]+)$/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    if (m && (BigInt(`0x${m[1]}`) & 0x4000n) !== 0n) return;
    await new Promise((r) => setTimeout(r, 1));
  }
  throw new Error(`init ${pid} never installed a SIGTERM handler`);
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)];
}

/** Pids of live (non-zombie) processes whose command line mentions `needle`. */
function processesMentioning(needle: string): number[] {
  const found: number[] = [];
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name) || Number(name) === process.pid) continue;
    try {
      if (readFileSync(`/proc/${name}/cmdline`, 'utf8').includes(needle)) found.push(Number(name));
    } catch {
      // vanished meanwhile
    }
  }
  return found;
}

describeKernel(
  'namespaces: berth-launch + nsenter (kernel)',
  { root: true, programs: ['nsenter', 'gcc', 'timeout'], paths: ['/bin/busybox'] },
  () => {
    jest.setTimeout(30_000);
    const cgParent = `berth-test-${process.pid}`;
    let work: string;
    let rootfs: string;
    let usernsRootfs: string;
    const launched: InitRef[] = [];

    /** The cases' groups: `c1` for all but the failed start's, which has its own (`fail`). */
    const GROUPS = ['c1', 'fail'];
    const cgroupProcs = (group = 'c1'): string[] =>
      CONTROLLERS.map((c) => `/sys/fs/cgroup/${c}/${cgParent}/${group}/cgroup.procs`);
    const stateDir = (name: string): string => {
      const d = join(work, 'state', name);
      mkdirSync(d, { recursive: true });
      return d;
    };
    const launch = async (name: string, extra: Partial<LaunchOptions> = {}): Promise<LaunchResult> => {
      const r = await launchContainer({
        rootfs,
        stateDir: stateDir(name),
        logFile: join(work, `${name}.log`),
        hostname: name,
        ...extra,
      });
      launched.push(r);
      return r;
    };

    beforeAll(async () => {
      await run('bash', [join(REPO, 'scripts', 'build-native.sh')]);
      work = mkdtempSync(join(tmpdir(), `berth-ns-${process.pid}-`));
      // a user-namespaced root (uid 100000) must be able to traverse to its rootfs
      chmodSync(work, 0o711);
      rootfs = makeRootfs(join(work, 'rootfs'));
      usernsRootfs = makeRootfs(join(work, 'rootfs-userns'));
      for (const c of CONTROLLERS)
        for (const g of GROUPS) mkdirSync(`/sys/fs/cgroup/${c}/${cgParent}/${g}`, { recursive: true });
    });

    afterAll(async () => {
      for (const ref of launched) {
        await signalInit(ref, 'SIGKILL');
        await waitForExit(ref, 2000);
      }
      for (const c of CONTROLLERS) {
        for (const d of [...GROUPS.map((g) => `${cgParent}/${g}`), cgParent]) {
          const path = `/sys/fs/cgroup/${c}/${d}`;
          for (let i = 0; i < 50 && existsSync(path); i++) {
            try {
              rmdirSync(path);
            } catch {
              await new Promise((r) => setTimeout(r, 20));
            }
          }
        }
      }
      if (work) rmSync(work, { recursive: true, force: true });
    });

    it('starts init as PID 1 of its own namespaces, pivoted into the rootfs, inside its cgroup', async () => {
      const ref = await launch('c1', { cgroupProcs: cgroupProcs() });
      expect(await isAlive(ref)).toBe(true);

      // in the cgroup, as seen from the host, and already when init ran its first command
      const hostView = readFileSync(`/proc/${ref.pid}/cgroup`, 'utf8');
      for (const c of ['memory', 'pids', 'freezer'])
        expect(hostView).toMatch(new RegExp(`:${c}:/${cgParent}/c1$`, 'm'));
      for (const file of cgroupProcs())
        expect(readFileSync(file, 'utf8').split('\n')).toContain(String(ref.pid));
      // (The shell creates the file before `cat` writes into it: wait for its content, not for the file.)
      const written = () =>
        existsSync(join(rootfs, 'init-cgroup')) &&
        /\n$/.test(readFileSync(join(rootfs, 'init-cgroup'), 'utf8'));
      for (let i = 0; i < 400 && !written(); i++) await new Promise((r) => setTimeout(r, 5));
      expect(readFileSync(join(rootfs, 'init-cgroup'), 'utf8')).toMatch(
        new RegExp(`:memory:/${cgParent}/c1$`, 'm'),
      );

      // init is PID 1 and ps sees only the container's processes
      const ps = await execInContainer(ref, ['ps', '-o', 'pid,args']);
      expect(ps.code).toBe(0);
      const pids = ps.stdout
        .trim()
        .split('\n')
        .slice(1)
        .map((l) => Number(l.trim().split(/\s+/)[0]));
      expect(pids).toContain(1);
      expect(ps.stdout).toMatch(/^\s*1\s+(\{init\} )?\/bin\/sh \/sbin\/init/m);
      expect(pids.length).toBeLessThan(8);
      expect(Math.max(...pids)).toBeLessThan(50);

      // its own hostname; the host's processes are invisible
      expect((await execInContainer(ref, ['hostname'])).stdout.trim()).toBe('c1');
      expect((await execInContainer(ref, ['test', '-e', `/proc/${process.pid}/status`])).code).toBe(1);

      // pivot_root, not chroot: no host mount and no old root are reachable
      const mountinfo = (await execInContainer(ref, ['cat', '/proc/self/mountinfo'])).stdout;
      const mountPoints = mountinfo
        .trim()
        .split('\n')
        .map((l) => l.split(' ')[4]);
      expect(mountPoints[0]).toBe('/');
      expect(mountPoints).toEqual(
        expect.arrayContaining(['/proc', '/sys', '/dev', '/dev/pts', '/dev/shm', '/dev/null']),
      );
      for (const mp of mountPoints)
        expect(mp === '/' || ['/proc', '/sys', '/dev'].some((p) => mp.startsWith(p))).toBe(true);
      expect(mountinfo).not.toContain('.berth-oldroot');
      expect((await execInContainer(ref, ['ls', '-a', '/'])).stdout).not.toContain('.berth-oldroot');
      expect((await execInContainer(ref, ['sh', '-c', 'echo x > /dev/null && cat /dev/null'])).code).toBe(0);

      // supervisor is init's parent and is detached from us
      const initStat = await readProcStat(ref.pid);
      expect(initStat?.ppid).toBe(ref.supervisorPid);
      expect((await readProcStat(ref.supervisorPid))?.ppid).not.toBe(process.pid);
      expect(JSON.parse(readFileSync(join(work, 'state', 'c1', 'init.pid'), 'utf8'))).toEqual({
        pid: ref.pid,
        startTime: ref.startTime,
        supervisorPid: ref.supervisorPid,
      });
    });

    it('exec returns the exit code, stdout, stderr and feeds stdin', async () => {
      const ref = await launch('exec1');
      const r = await execInContainer(ref, ['sh', '-c', 'echo out; echo err >&2; exit 3']);
      expect(r).toEqual({ code: 3, stdout: 'out\n', stderr: 'err\n' });
      expect((await execInContainer(ref, ['cat'], { input: 'hello' })).stdout).toBe('hello');
      await expect(execInContainer(ref, ['sleep', '5'], { timeoutMs: 300 })).rejects.toMatchObject({
        code: 'TIMEOUT',
      });
      // the timed-out command did not stay behind in the container
      const ps = await execInContainer(ref, ['ps', '-o', 'args']);
      expect(ps.stdout).not.toContain('sleep 5');
    });

    it('keeps the container running when the launching process is SIGKILLed', async () => {
      const args = buildLaunchArgs({
        rootfs,
        stateDir: stateDir('orphan'),
        hostname: 'orphan',
        logFile: join(work, 'orphan.log'),
      });
      const script = `const { spawn } = require('node:child_process');
      const p = spawn(process.argv[1], JSON.parse(process.argv[2]), { stdio: ['ignore', 'pipe', 'inherit'] });
      p.stdout.on('data', (d) => process.stdout.write(d));
      setInterval(() => {}, 1000);`;
      const child = spawn(process.execPath, ['-e', script, helperPath(), JSON.stringify(args)], {
        stdio: ['ignore', 'pipe', 'inherit'],
      });
      const line = await new Promise<string>((res, rej) => {
        let buf = '';
        child.stdout.on('data', (d: Buffer) => {
          buf += d.toString();
          if (buf.includes('\n')) res(buf);
        });
        child.on('exit', () => rej(new Error(`launcher child exited early: ${buf}`)));
      });
      const ref = JSON.parse(line) as LaunchResult;
      launched.push(ref);
      child.kill('SIGKILL');
      await new Promise((r) => child.once('exit', r));
      await new Promise((r) => setTimeout(r, 100));
      expect(await isAlive(ref)).toBe(true);
      expect((await readProcStat(ref.pid))?.ppid).toBe(ref.supervisorPid);
      expect((await execInContainer(ref, ['hostname'])).stdout.trim()).toBe('orphan');
    });

    it('stops in under 200 ms on SIGTERM and the supervisor records the exit and goes', async () => {
      const ref = await launch('stop1');
      const state = join(work, 'state', 'stop1');
      await waitForTermHandler(ref.pid);
      const result = await stopInit(ref, 2000);
      console.log(`stop by SIGTERM took ${result.elapsedMs} ms`);
      expect(result.forced).toBe(false);
      expect(result.elapsedMs).toBeLessThan(200);
      expect(await isAlive(ref)).toBe(false);
      const supervisor = {
        pid: ref.supervisorPid,
        startTime: (await readProcStat(ref.supervisorPid))?.startTime ?? -1,
      };
      expect(await waitForExit(supervisor, 200)).toBe(true);
      for (let i = 0; i < 40 && !existsSync(join(state, 'exit.status')); i++)
        await new Promise((r) => setTimeout(r, 5));
      expect(JSON.parse(readFileSync(join(state, 'exit.status'), 'utf8'))).toMatchObject({
        pid: ref.pid,
        code: 0,
        signal: null,
      });
    });

    it('falls back to SIGKILL when init ignores SIGTERM', async () => {
      const ref = await launch('stubborn', { init: ['/sbin/stubborn'] });
      await new Promise((r) => setTimeout(r, 50)); // let the script install its trap
      const result = await stopInit(ref, 300);
      expect(result.forced).toBe(true);
      expect(await isAlive(ref)).toBe(false);
      for (let i = 0; i < 40 && !existsSync(join(work, 'state', 'stubborn', 'exit.status')); i++)
        await new Promise((r) => setTimeout(r, 5));
      expect(JSON.parse(readFileSync(join(work, 'state', 'stubborn', 'exit.status'), 'utf8'))).toMatchObject({
        code: null,
        signal: 9,
      });
    });

    it('never mistakes a pid with another start time for the container', async () => {
      const ref = await launch('recycle');
      const impostor = { pid: ref.pid, startTime: ref.startTime + 1 };
      expect(await isAlive(impostor)).toBe(false);
      expect(await signalInit(impostor, 'SIGKILL')).toBe(false);
      expect(await isAlive(ref)).toBe(true);
      await expect(execInContainer(impostor, ['true'])).rejects.toMatchObject({ code: 'WRONG_STATE' });
    });

    it('runs unprivileged: container root is uid 100000 on the host', async () => {
      const shifted = await shiftOwnership(usernsRootfs, 100000);
      expect(shifted.changed).toBeGreaterThan(10);
      expect(await shiftOwnership(usernsRootfs, 100000)).toMatchObject({ skipped: true, changed: 0 });
      const ref = await launch('userns1', {
        rootfs: usernsRootfs,
        userns: { hostUid: 100000, count: 65536 },
        net: 'new',
        cgroupProcs: cgroupProcs(),
      });
      expect(ref.warnings).toEqual([]);
      const status = readFileSync(`/proc/${ref.pid}/status`, 'utf8');
      expect(status).toMatch(/^Uid:\s+100000\s+100000\s+100000\s+100000$/m);
      expect(status).toMatch(/^Gid:\s+100000\s+100000\s+100000\s+100000$/m);
      const id = await execInContainer(
        ref,
        ['sh', '-c', 'id -u; id -g; hostname; touch /root/x && echo wrote'],
        { userns: true },
      );
      expect(id.stdout.split('\n')).toEqual(['0', '0', 'userns1', 'wrote', '']);
      expect(
        (await execInContainer(ref, ['cat', '/proc/self/uid_map'], { userns: true })).stdout
          .trim()
          .split(/\s+/),
      ).toEqual(['0', '100000', '65536']);
      await waitForTermHandler(ref.pid);
      const stop = await stopInit(ref, 2000);
      expect(stop.forced).toBe(false);
    });

    it("opens no device node of its root filesystem, and keeps none of the host's supplementary groups", async () => {
      // A node for /dev/null's device outside /dev: readable and writable by all, if devices opened there.
      await run('mknod', ['-m', '0666', join(usernsRootfs, 'planted-node'), 'c', '1', '3']);
      const groups = process.getgroups!();
      process.setgroups!([...groups, 4242]);
      let ref: LaunchResult;
      try {
        ref = await launch('userns-nodev', {
          rootfs: usernsRootfs,
          userns: { hostUid: 100000, count: 65536 },
          net: 'new',
        });
      } finally {
        process.setgroups!(groups);
      }
      try {
        const planted = await execInContainer(ref, ['sh', '-c', 'echo x > /planted-node'], { userns: true });
        expect(planted.code).not.toBe(0);
        expect(planted.stderr).toMatch(/Permission denied/);
        // Its own /dev still works.
        expect((await execInContainer(ref, ['sh', '-c', 'echo x > /dev/null'], { userns: true })).code).toBe(
          0,
        );
        const status = readFileSync(`/proc/${ref.pid}/status`, 'utf8');
        expect(status).toMatch(/^Groups:\s*$/m);
      } finally {
        await stopInit(ref, 2000);
        rmSync(join(usernsRootfs, 'planted-node'));
      }
    });

    it('under a user namespace without its own netns it skips /sys and says so', async () => {
      const ref = await launch('userns2', {
        rootfs: usernsRootfs,
        userns: { hostUid: 100000, count: 65536 },
        net: 'host',
      });
      expect(ref.warnings.join(' ')).toMatch(/mount-sys/);
      expect(await isAlive(ref)).toBe(true);
    });

    it('waits on the sync FIFO before exec and mounts an overlay rootfs itself', async () => {
      const ov = join(work, 'ov');
      for (const d of ['upper', 'work', 'merged']) mkdirSync(join(ov, d), { recursive: true });
      const fifo = join(work, 'sync.fifo');
      await run('mkfifo', [fifo]);
      const ref = await launch('ov1', {
        rootfs: join(ov, 'merged'),
        overlay: { lower: rootfs, upper: join(ov, 'upper'), work: join(ov, 'work') },
        syncFifo: fifo,
      });
      expect(readFileSync(`/proc/${ref.pid}/cmdline`, 'utf8')).toContain('berth-launch'); // not exec'd yet
      writeFileSync(fifo, 'x');
      // Up to 5 s: a busy machine (other test suites beside this one) takes its time to exec.
      for (
        let i = 0;
        i < 1000 && !readFileSync(`/proc/${ref.pid}/cmdline`, 'utf8').includes('/sbin/init');
        i++
      )
        await new Promise((r) => setTimeout(r, 5));
      expect(readFileSync(`/proc/${ref.pid}/cmdline`, 'utf8')).toContain('/sbin/init');
      await execInContainer(ref, ['touch', '/written-in-container']);
      expect(existsSync(join(ov, 'upper', 'written-in-container'))).toBe(true);
      expect(existsSync(join(rootfs, 'written-in-container'))).toBe(false);
      await stopInit(ref, 2000);
    });

    it('an init nobody releases from the sync FIFO gives up after its wait instead of hanging', async () => {
      const fifo = join(work, 'held.fifo');
      await run('mkfifo', [fifo]);
      // 1.5 s: long enough to see it waiting on a busy machine, short for a test.
      const ref = await launch('held1', { syncFifo: fifo, syncTimeoutMs: 1_500 });
      expect(readFileSync(`/proc/${ref.pid}/cmdline`, 'utf8')).toContain('berth-launch'); // waiting, not exec'd
      for (let i = 0; i < 1000 && (await isAlive(ref)); i++) await new Promise((r) => setTimeout(r, 10));
      expect(await isAlive(ref)).toBe(false);
      // Its end of the FIFO is closed: a late release fails at once instead of blocking the host.
      const late = await open(fifo, constants.O_WRONLY | constants.O_NONBLOCK).catch((e: unknown) => e);
      expect(late).toMatchObject({ code: 'ENXIO' });
    });

    it('reports a failed start with a typed error naming the step, and leaves nothing running', async () => {
      const missing = join(work, `no-such-rootfs-${process.pid}`);
      const err = await launchContainer({ rootfs: missing, stateDir: stateDir('fail1') }).catch(
        (e: unknown) => e,
      );
      expect(err).toBeInstanceOf(LaunchError);
      expect(err).toMatchObject({ code: 'KERNEL_ERROR', step: 'rootfs', errno: 2 });
      expect(processesMentioning(missing)).toEqual([]);

      // a failure deep inside (init missing, after pivot_root) also cleans up: nothing of it stays in the cgroup
      // (a group of its own: the containers of the cases before live on in c1, their inits forking a
      // `sleep` every second)
      const before = readFileSync(cgroupProcs('fail')[1], 'utf8');
      expect(before).toBe('');
      const err2 = await launch('fail2', {
        init: ['/sbin/missing-init'],
        cgroupProcs: cgroupProcs('fail'),
      }).catch((e: unknown) => e);
      expect(err2).toMatchObject({ code: 'KERNEL_ERROR', step: 'exec', errno: 2 });
      expect(err2).toBeInstanceOf(RuntimeError);
      // The failed supervisor has called _exit by now, but the kernel closes a dying task's files (the
      // helper's report pipe: EOF) before it takes the task out of its cgroups: on a busy machine it can
      // still be listed for a moment. Whatever this start put in the cgroup must be gone shortly.
      const joined = () => readFileSync(cgroupProcs('fail')[1], 'utf8').split('\n').filter(Boolean);
      const deadline = Date.now() + 2_000;
      while (joined().length > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
      expect(joined()).toEqual([]);
      expect(processesMentioning('/sbin/missing-init')).toEqual([]);
    });

    it('measures launch latency and supervisor memory', async () => {
      const times: number[] = [];
      const timesNoCgroup: number[] = [];
      const stops: number[] = [];
      const rss: number[] = [];
      for (let i = 0; i < 15; i++) {
        let t0 = process.hrtime.bigint();
        const ref = await launch(`m${i}`, { cgroupProcs: cgroupProcs() });
        times.push(Number(process.hrtime.bigint() - t0) / 1e6);
        rss.push(vmRssKiB(ref.supervisorPid));
        await waitForTermHandler(ref.pid);
        stops.push((await stopInit(ref, 2000)).elapsedMs);
        t0 = process.hrtime.bigint();
        const bare = await launch(`n${i}`);
        timesNoCgroup.push(Number(process.hrtime.bigint() - t0) / 1e6);
        await stopInit(bare, 0);
      }
      console.log(
        `launch until init runs: median ${median(times).toFixed(2)} ms with 4 v1 cgroups, ` +
          `${median(timesNoCgroup).toFixed(2)} ms without (n=${times.length}); ` +
          `stop by SIGTERM median ${median(stops)} ms; supervisor VmRSS median ${median(rss)} KiB`,
      );
      expect(median(rss)).toBeLessThan(1024);
      expect(median(stops)).toBeLessThan(200);
      expect(median(times)).toBeLessThan(150);
    });
  },
);
