import { closeSync, existsSync, openSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describeKernel } from '@test/support/kernel';
import { CgroupDriver } from '../cgroup.driver';
import { detectCgroups } from '../cgroup.detect';
import { ALL_DEVICES, CONTAINER_DEVICE_RULES } from '../device-rules';
import {
  GroupProcess,
  eventually,
  isAlive,
  killAndDestroy,
  procCgroups,
  procState,
  removeStaleTestParents,
  waitForExec,
  spawnInGroup,
} from '../testing/kernel-processes';

const ROOT = '/sys/fs/cgroup';
const MiB = 1024 * 1024;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describeKernel(
  'CgroupV1Driver on the real cgroup v1 hierarchies',
  { root: true, programs: ['sh', 'sleep', 'tail', 'head', 'yes'], paths: [`${ROOT}/memory/cgroup.procs`] },
  () => {
    jest.setTimeout(30_000);
    const parent = `berth-test-${process.pid}`;
    let driver: CgroupDriver;
    let group: string;
    let seq = 0;
    const procs: GroupProcess[] = [];
    const start = (argv: string[]) => {
      const p = spawnInGroup(driver, group, argv);
      procs.push(p);
      return p;
    };
    const file = (controller: string, name: string) =>
      readFileSync(join(ROOT, controller, group, name), 'utf8').trim();

    beforeAll(async () => {
      driver = detectCgroups(ROOT);
      await removeStaleTestParents(driver, join(ROOT, 'memory'));
      await killAndDestroy(driver, parent); // a previous run with a recycled pid
    });
    beforeEach(async () => {
      group = `${parent}/g${++seq}`;
      await driver.create(group);
    });
    afterEach(async () => {
      await killAndDestroy(driver, group);
      for (const p of procs.splice(0)) if (isAlive(p.pid)) p.child.kill('SIGKILL');
    });
    afterAll(async () => {
      if (driver) await killAndDestroy(driver, parent);
    });

    it('is detected as v1 on this hybrid host (v2 there only has hugetlb)', () => {
      expect(driver.version).toBe(1);
      expect(driver.capabilities()).toMatchObject({
        version: 1,
        limits: { cpus: true, memoryBytes: true, pidsMax: true },
        freeze: true,
      });
    });

    it('creates the group in every hierarchy and a launcher writing its pid to procsFiles() joins all of them', async () => {
      const files = driver.procsFiles(group);
      for (const f of files) expect(existsSync(f)).toBe(true);
      expect(files.length).toBeGreaterThanOrEqual(5);
      const sleeper = start(['sleep', '1000']);
      await eventually(async () => (await driver.pids(group)).includes(sleeper.pid), 5000, 'pid in group');
      // The script joins the hierarchies one after the other, then execs: on a busy machine the first join
      // shows well before the last.
      await eventually(
        () => readFileSync(`/proc/${sleeper.pid}/comm`, 'utf8').trim() === 'sleep',
        5000,
        'every hierarchy joined (sleep exec’d)',
      );
      const cg = procCgroups(sleeper.pid);
      for (const c of ['cpu', 'cpuacct', 'memory', 'pids', 'freezer', 'cpuset'])
        expect(cg.get(c)).toBe(`/${group}`);

      const other = start(['sleep', '1000']);
      // The second one is spawned into the same group by the script; addProcess is proven on a fresh group.
      const g2 = `${parent}/added`;
      await driver.create(g2);
      try {
        await driver.addProcess(g2, other.pid);
        expect(procCgroups(other.pid).get('memory')).toBe(`/${g2}`);
        expect(await driver.pids(g2)).toEqual([other.pid]);
      } finally {
        await killAndDestroy(driver, g2);
      }
    });

    it("lets the group's processes open only the devices of CONTAINER_DEVICE_RULES, even as root", async () => {
      expect(file('devices', 'devices.list').split('\n').sort()).toEqual([...CONTAINER_DEVICE_RULES].sort());
      // Root (this test's processes) opens the loop devices' control on the host; in the group it may not.
      const opens = async (node: string) => {
        const p = start(['sh', '-c', ': < "$0"', node]);
        const { code } = await p.exited;
        return { node, code, err: p.stderr().trim() };
      };
      expect(await opens('/dev/null')).toEqual({ node: '/dev/null', code: 0, err: '' });
      expect(await opens('/dev/loop-control')).toEqual({
        node: '/dev/loop-control',
        code: expect.any(Number),
        err: expect.stringMatching(/Operation not permitted/),
      });
      expect(() => closeSync(openSync('/dev/loop-control', 'r'))).not.toThrow();
      // Made again (a start completes its group), it keeps the rules; the parent lets its other children
      // use all devices still (the rules are the container's, not the host's).
      await driver.create(group);
      expect(file('devices', 'devices.list').split('\n').sort()).toEqual([...CONTAINER_DEVICE_RULES].sort());
      expect(readFileSync(join(ROOT, 'devices', parent, 'devices.list'), 'utf8').trim()).toBe(ALL_DEVICES);
    });

    it('puts the cpu quota in cpu.cfs_quota_us and throttles a busy loop, and a live change takes effect', async () => {
      await driver.setLimits(group, { cpus: 0.5 });
      expect(file('cpu', 'cpu.cfs_quota_us')).toBe('50000');
      expect(file('cpu', 'cpu.cfs_period_us')).toBe('100000');
      await waitForExec(start(['yes']), 'yes');
      const usageOver = async (ms: number) => {
        const before = (await driver.stats(group)).cpuUsageNs;
        await sleep(ms);
        return ((await driver.stats(group)).cpuUsageNs - before) / (ms * 1e6);
      };
      await sleep(200);
      const half = await usageOver(1000);
      expect(half).toBeGreaterThan(0.05); // it runs (loose: other tests may load the host)
      expect(half).toBeLessThan(0.65);
      await driver.setLimits(group, { cpus: 0.2 });
      expect(file('cpu', 'cpu.cfs_quota_us')).toBe('20000');
      await sleep(200);
      const fifth = await usageOver(1000);
      expect(fifth).toBeGreaterThan(0.02);
      expect(fifth).toBeLessThan(0.3);
      expect(Number(/nr_throttled (\d+)/.exec(file('cpu', 'cpu.stat'))?.[1])).toBeGreaterThan(0);
    });

    it('OOM-kills a memory hog inside the group only, and counts it in oomKills', async () => {
      const ownMemory = procCgroups(process.pid).get('memory') ?? '/';
      const ownOom = () =>
        Number(
          /oom_kill (\d+)/.exec(
            readFileSync(join(ROOT, 'memory', ownMemory, 'memory.oom_control'), 'utf8'),
          )?.[1],
        );
      const ownBefore = ownOom();
      await driver.setLimits(group, { memoryBytes: 32 * MiB });
      expect(file('memory', 'memory.limit_in_bytes')).toBe(String(32 * MiB));
      const hog = start(['tail', '/dev/zero']); // buffers an endless line
      const { signal } = await hog.exited;
      expect(signal).toBe('SIGKILL');
      const stats = await driver.stats(group);
      expect(stats.oomKills).toBeGreaterThanOrEqual(1);
      expect(stats.memoryPeakBytes).toBeLessThanOrEqual(32 * MiB);
      expect(stats.memoryPeakBytes).toBeGreaterThan(16 * MiB);
      expect(ownOom()).toBe(ownBefore);
    });

    it('refuses to lower memory below what the group uses with CGROUP_LIMIT_REJECTED and keeps the old limit', async () => {
      await driver.setLimits(group, { memoryBytes: 256 * MiB });
      // tail holds one 64 MiB line while sleep keeps the pipe open.
      start(['sh', '-c', '{ head -c 67108864 /dev/zero; exec sleep 1000; } | tail']);
      await eventually(
        async () => (await driver.stats(group)).memoryCurrentBytes > 64 * MiB,
        10_000,
        '64 MiB used',
      );
      await expect(driver.setLimits(group, { memoryBytes: 16 * MiB })).rejects.toMatchObject({
        code: 'CGROUP_LIMIT_REJECTED',
      });
      expect(file('memory', 'memory.limit_in_bytes')).toBe(String(256 * MiB));
      // A live change the kernel can satisfy is applied while the process runs.
      await driver.setLimits(group, { memoryBytes: 128 * MiB });
      expect(file('memory', 'memory.limit_in_bytes')).toBe(String(128 * MiB));
      expect((await driver.stats(group)).oomKills).toBe(0);
      expect((await driver.pids(group)).length).toBeGreaterThanOrEqual(3);
    });

    it('stops a fork loop at pids.max, and raising it live lets forks succeed again', async () => {
      await driver.setLimits(group, { pidsMax: 5 });
      const loop = start([
        'sh',
        '-c',
        'i=0; while [ $i -lt 20 ]; do sleep 1000 & i=$((i+1)); done; exec sleep 1000',
      ]);
      await eventually(
        () => /fork|resource temporarily unavailable/i.test(loop.stderr()),
        5000,
        'a fork failure',
      );
      const stats = await driver.stats(group);
      expect(stats.pidsCurrent).toBeLessThanOrEqual(5);
      expect(Number(/max (\d+)/.exec(file('pids', 'pids.events'))?.[1])).toBeGreaterThan(0);

      await driver.setLimits(group, { pidsMax: 50 });
      expect(file('pids', 'pids.max')).toBe('50');
      start(['sh', '-c', 'sleep 1000 & sleep 1000 & exec sleep 1000']);
      await eventually(
        async () => (await driver.stats(group)).pidsCurrent > 5,
        5000,
        'forks beyond the old limit',
      );
    });

    it('freezes (tasks in D, no cpu time) and thaws (cpu time again)', async () => {
      const busy = start(['yes']);
      await waitForExec(busy, 'yes');
      await driver.freeze(group);
      expect(await driver.state(group)).toBe('frozen');
      expect(file('freezer', 'freezer.state')).toBe('FROZEN');
      expect(procState(busy.pid)).toBe('D');
      const frozenAt = (await driver.stats(group)).cpuUsageNs;
      await sleep(300);
      expect((await driver.stats(group)).cpuUsageNs).toBe(frozenAt);

      await driver.thaw(group);
      expect(await driver.state(group)).toBe('running');
      await eventually(async () => (await driver.stats(group)).cpuUsageNs > frozenAt, 5000, 'cpu time again');
      expect(procState(busy.pid)).not.toBe('D');
    });

    it('killAll reaches every process (also of a frozen group), then destroy leaves nothing behind', async () => {
      start(['sh', '-c', 'sleep 1000 & sleep 1000 & exec sleep 1000']);
      await eventually(async () => (await driver.pids(group)).length === 3, 5000, '3 processes');
      await expect(driver.destroy(group)).rejects.toMatchObject({ code: 'CGROUP_BUSY' });
      await driver.freeze(group);
      const pids = await driver.pids(group);
      await driver.killAll(group, 'SIGKILL');
      await eventually(async () => (await driver.pids(group)).length === 0, 5000, 'group empty');
      expect(await driver.state(group)).toBe('running');
      for (const pid of pids)
        await eventually(() => !isAlive(pid) || procState(pid) === 'Z', 5000, `${pid} dead`);
      await driver.destroy(group);
      expect(await driver.exists(group)).toBe(false);
      expect(await driver.state(group)).toBe('missing');
      for (const c of ['cpu', 'cpuacct', 'memory', 'pids', 'freezer', 'blkio', 'cpuset']) {
        expect(existsSync(join(ROOT, c, group))).toBe(false);
      }
      expect(await driver.list(parent)).not.toContain(group.split('/')[1]);
      await driver.destroy(group); // idempotent
    });

    it('delivers a catchable signal (SIGTERM) to every process', async () => {
      const a = start(['sleep', '1000']);
      const b = start(['sleep', '1000']);
      await eventually(async () => (await driver.pids(group)).length === 2, 5000, '2 processes');
      await driver.killAll(group, 'SIGTERM');
      expect((await a.exited).signal).toBe('SIGTERM');
      expect((await b.exited).signal).toBe('SIGTERM');
    });
  },
);
