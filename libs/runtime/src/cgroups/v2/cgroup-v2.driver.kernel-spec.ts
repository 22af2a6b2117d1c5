import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describeKernel } from '@test/support/kernel';
import {
  GroupProcess,
  eventually,
  isAlive,
  killAndDestroy,
  procCgroups,
  removeStaleTestParents,
  waitForExec,
  spawnInGroup,
} from '../testing/kernel-processes';
import { CgroupV2Driver } from './cgroup-v2.driver';

const UNIFIED = '/sys/fs/cgroup/unified';
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/**
 * KERNEL-FACTS: on these hosts cgroup v2 is the hybrid `unified` mount with only hugetlb; cpu, memory,
 * pids and io are bound to v1 and cannot be enabled there. So v2 limits are proven on the fake tree
 * (cgroup-v2.driver.spec.ts), and this suite proves v2's core files for real: joining, cgroup.freeze +
 * cgroup.events, cgroup.kill, cpu.stat, rmdir.
 */
describeKernel(
  'CgroupV2Driver on the real hybrid unified mount (no resource controllers can be enabled here: limits are fake-tree tested)',
  { root: true, programs: ['sh', 'sleep', 'yes'], paths: [`${UNIFIED}/cgroup.controllers`] },
  () => {
    jest.setTimeout(20_000);
    const parent = `berth-test-${process.pid}`;
    let driver: CgroupV2Driver;
    let group: string;
    let seq = 0;
    const procs: GroupProcess[] = [];
    const start = (argv: string[]) => {
      const p = spawnInGroup(driver, group, argv);
      procs.push(p);
      return p;
    };

    beforeAll(async () => {
      driver = new CgroupV2Driver({ root: UNIFIED });
      await removeStaleTestParents(driver, UNIFIED);
      await killAndDestroy(driver, parent);
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

    it('reports that no limit works here and refuses a memory limit with UNSUPPORTED', async () => {
      const offered = readFileSync(join(UNIFIED, 'cgroup.controllers'), 'utf8');
      expect(offered).not.toMatch(/\bmemory\b/); // if this fails the host changed: extend this suite
      expect(driver.capabilities().limits.memoryBytes).toBe(false);
      await expect(driver.setLimits(group, { memoryBytes: 64 << 20 })).rejects.toMatchObject({
        code: 'UNSUPPORTED',
      });
    });

    it('joins through its single cgroup.procs file, freezes via cgroup.freeze until cgroup.events says frozen, and thaws', async () => {
      expect(driver.procsFiles(group)).toEqual([join(UNIFIED, group, 'cgroup.procs')]);
      const busy = start(['yes']);
      await waitForExec(busy, 'yes');
      await eventually(async () => (await driver.pids(group)).includes(busy.pid), 5000, 'pid in group');
      expect(procCgroups(busy.pid).get('')).toBe(`/${group}`);

      await driver.freeze(group);
      expect(await driver.state(group)).toBe('frozen');
      expect(readFileSync(join(UNIFIED, group, 'cgroup.events'), 'utf8')).toMatch(/frozen 1/);
      const frozenAt = (await driver.stats(group)).cpuUsageNs;
      await sleep(300);
      expect((await driver.stats(group)).cpuUsageNs).toBe(frozenAt);

      await driver.thaw(group);
      expect(await driver.state(group)).toBe('running');
      await eventually(async () => (await driver.stats(group)).cpuUsageNs > frozenAt, 5000, 'cpu time again');
    });

    it('kills every process with cgroup.kill, then destroy removes the group', async () => {
      expect(driver.capabilities().atomicKill).toBe(true);
      const shell = start(['sh', '-c', 'sleep 1000 & sleep 1000 & exec sleep 1000']);
      await eventually(async () => (await driver.pids(group)).length === 3, 5000, '3 processes');
      await expect(driver.destroy(group)).rejects.toMatchObject({ code: 'CGROUP_BUSY' });
      await driver.killAll(group, 'SIGKILL');
      expect((await shell.exited).signal).toBe('SIGKILL');
      await eventually(async () => (await driver.pids(group)).length === 0, 5000, 'group empty');
      await driver.destroy(group);
      expect(existsSync(join(UNIFIED, group))).toBe(false);
      expect(await driver.state(group)).toBe('missing');
    });

    it('delivers SIGTERM to every process through freeze, signal, thaw', async () => {
      const a = start(['sleep', '1000']);
      const b = start(['sleep', '1000']);
      await eventually(async () => (await driver.pids(group)).length === 2, 5000, '2 processes');
      await driver.killAll(group, 'SIGTERM');
      expect((await a.exited).signal).toBe('SIGTERM');
      expect((await b.exited).signal).toBe('SIGTERM');
      expect(await driver.state(group)).toBe('running');
    });
  },
);
