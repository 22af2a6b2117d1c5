import { existsSync } from 'node:fs';
import { RuntimeError } from '../../common/errors';
import { FakeCgroupfs } from '../testing/fake-cgroupfs';
import { CgroupV2Driver } from './cgroup-v2.driver';

describe('CgroupV2Driver on a fake cgroup2 tree', () => {
  let fake: FakeCgroupfs;
  let driver: CgroupV2Driver;
  const group = 'berth/c1';

  beforeEach(() => {
    fake = FakeCgroupfs.v2();
    driver = new CgroupV2Driver({ root: fake.root, kernelRelease: '6.18.0', freezeTimeoutMs: 500 });
  });
  afterEach(() => fake.dispose());

  /** What the kernel would create in a new group of a host with all controllers and swap accounting. */
  const kernelFiles = (path = group) =>
    fake.files({
      [`${path}/cgroup.procs`]: '',
      [`${path}/cgroup.events`]: 'populated 0\nfrozen 0\n',
      [`${path}/cgroup.freeze`]: '0\n',
      [`${path}/cgroup.kill`]: '',
      [`${path}/cpu.max`]: 'max 100000\n',
      [`${path}/memory.max`]: 'max\n',
      [`${path}/memory.swap.max`]: 'max\n',
      [`${path}/memory.current`]: '0\n',
    });

  describe('create', () => {
    it('enables cpu, memory, pids and io in every ancestor subtree_control but not in the leaf', async () => {
      await driver.create(group);
      expect(fake.read('cgroup.subtree_control')).toBe('+cpu +memory +pids +io');
      expect(fake.read('berth/cgroup.subtree_control')).toBe('+cpu +memory +pids +io');
      expect(existsSync(fake.path(`${group}/cgroup.subtree_control`))).toBe(false);
      expect(existsSync(fake.path(group))).toBe(true);
    });

    it('is idempotent and writes only controllers that are not yet enabled', async () => {
      fake.files({ 'cgroup.subtree_control': 'cpu memory\n' }); // kernel format: no "+"
      await driver.create(group);
      expect(fake.read('cgroup.subtree_control')).toBe('+pids +io');
      fake.files({
        'cgroup.subtree_control': 'cpu io memory pids\n',
        'berth/cgroup.subtree_control': 'cpu io memory pids\n',
      });
      await driver.create(group);
      expect(fake.read('cgroup.subtree_control')).toBe('cpu io memory pids\n');
      expect(fake.read('berth/cgroup.subtree_control')).toBe('cpu io memory pids\n');
    });

    it('enables only what the parent offers (cgroup.controllers of an intermediate group)', async () => {
      fake.files({ 'berth/cgroup.controllers': 'cpu pids\n' });
      await driver.create(group);
      expect(fake.read('berth/cgroup.subtree_control')).toBe('+cpu +pids');
    });

    it('applies limits given at creation', async () => {
      await driver.create(group, { pidsMax: 42 });
      expect(fake.read(`${group}/pids.max`)).toBe('42');
    });

    it('refuses paths outside a berth group or escaping the root', async () => {
      for (const bad of ['../etc', '/berth/x', 'system.slice/x', 'berth/../x', 'berth/cgroup.procs', '']) {
        await expect(driver.create(bad)).rejects.toMatchObject({ code: 'INVALID_PATH' });
      }
    });
  });

  it('names exactly one cgroup.procs file for a launcher to join', () => {
    expect(driver.procsFiles(group)).toEqual([fake.path('berth/c1/cgroup.procs')]);
  });

  describe('setLimits', () => {
    beforeEach(async () => {
      await driver.create(group);
      kernelFiles();
    });

    it('writes cpu.max as "<quota> 100000" for fractional cores and "max 100000" for unlimited', async () => {
      await driver.setLimits(group, { cpus: 1.5 });
      expect(fake.read(`${group}/cpu.max`)).toBe('150000 100000');
      await driver.setLimits(group, { cpus: 0.001 });
      expect(fake.read(`${group}/cpu.max`)).toBe('1000 100000'); // kernel minimum quota
      await driver.setLimits(group, { cpus: null });
      expect(fake.read(`${group}/cpu.max`)).toBe('max 100000');
    });

    it('writes cpu.weight, pids.max and io.weight ("default N")', async () => {
      await driver.setLimits(group, { cpuWeight: 250, pidsMax: 64, ioWeight: 200 });
      expect(fake.read(`${group}/cpu.weight`)).toBe('250');
      expect(fake.read(`${group}/pids.max`)).toBe('64');
      expect(fake.read(`${group}/io.weight`)).toBe('default 200');
      await driver.setLimits(group, { pidsMax: null });
      expect(fake.read(`${group}/pids.max`)).toBe('max');
    });

    it('writes memory.max and turns swap off with memory.swap.max=0', async () => {
      await driver.setLimits(group, { memoryBytes: 256 * 1024 * 1024 });
      expect(fake.read(`${group}/memory.max`)).toBe('268435456');
      expect(fake.read(`${group}/memory.swap.max`)).toBe('0');
      await driver.setLimits(group, { memoryBytes: null });
      expect(fake.read(`${group}/memory.max`)).toBe('max');
    });

    it('reclaims before lowering memory below usage and refuses with a typed error when that fails', async () => {
      fake.files({ [`${group}/memory.current`]: '500000000\n', [`${group}/memory.reclaim`]: '' });
      const err = await driver.setLimits(group, { memoryBytes: 100 * 1024 * 1024 }).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(RuntimeError);
      expect(err).toMatchObject({ code: 'CGROUP_LIMIT_REJECTED', context: { current: 500000000 } });
      expect(fake.read(`${group}/memory.reclaim`)).toBe(String(500000000 - 100 * 1024 * 1024));
      expect(fake.read(`${group}/memory.max`)).toBe('max\n'); // old limit untouched
    });

    it('refuses to lower memory below usage on a kernel without memory.reclaim (memory.max would OOM-kill)', async () => {
      fake.files({ [`${group}/memory.current`]: '500000000\n' });
      await expect(driver.setLimits(group, { memoryBytes: 100 * 1024 * 1024 })).rejects.toMatchObject({
        code: 'CGROUP_LIMIT_REJECTED',
        context: { current: 500000000 },
      });
      expect(fake.read(`${group}/memory.max`)).toBe('max\n'); // old limit untouched
      // Above the usage it is written as usual.
      await driver.setLimits(group, { memoryBytes: 600 * 1000 * 1000 });
      expect(fake.read(`${group}/memory.max`)).toBe('600000000');
    });

    it('rejects out-of-range values before writing anything', async () => {
      await expect(driver.setLimits(group, { cpus: 0 })).rejects.toMatchObject({ code: 'INVALID_ARGUMENT' });
      await expect(driver.setLimits(group, { cpuWeight: 10001 })).rejects.toMatchObject({
        code: 'INVALID_ARGUMENT',
      });
      await expect(driver.setLimits(group, { memoryBytes: 1000 })).rejects.toMatchObject({
        code: 'INVALID_ARGUMENT',
      });
      await expect(driver.setLimits(group, { pidsMax: 0.5 })).rejects.toMatchObject({
        code: 'INVALID_ARGUMENT',
      });
      expect(fake.read(`${group}/cpu.max`)).toBe('max 100000\n');
    });

    it('fails with CGROUP_NOT_FOUND on a missing group', async () => {
      await expect(driver.setLimits('berth/nope', { pidsMax: 1 })).rejects.toMatchObject({
        code: 'CGROUP_NOT_FOUND',
      });
    });
  });

  describe('a host whose cgroup2 root offers no resource controllers (like a hybrid unified mount)', () => {
    it('creates without touching subtree_control, reports no limits, refuses memory, skips io weight', async () => {
      const bare = FakeCgroupfs.v2('hugetlb');
      try {
        const d = new CgroupV2Driver({ root: bare.root });
        await d.create(group);
        expect(bare.read('cgroup.subtree_control')).toBe('\n');
        expect(d.capabilities().limits).toEqual({
          cpus: false,
          cpuWeight: false,
          memoryBytes: false,
          swapLimit: false,
          pidsMax: false,
          ioWeight: false,
        });
        await expect(d.setLimits(group, { memoryBytes: 1 << 24 })).rejects.toMatchObject({
          code: 'UNSUPPORTED',
        });
        await d.setLimits(group, { ioWeight: 100 });
        expect(existsSync(bare.path(`${group}/io.weight`))).toBe(false);
      } finally {
        bare.dispose();
      }
    });
  });

  describe('freeze / thaw / state', () => {
    /** Until the driver's write of `value` to `file` shows (its writes are asynchronous). */
    const written = async (file: string, value: string) => {
      for (const t0 = Date.now(); fake.read(file) !== value; await new Promise((r) => setTimeout(r, 5)))
        if (Date.now() - t0 > 5_000) throw new Error(`${file} never became ${value}`);
    };
    beforeEach(async () => {
      await driver.create(group);
      kernelFiles();
    });

    it('writes cgroup.freeze=1 and resolves only once cgroup.events says frozen 1', async () => {
      let resolved = false;
      const freezing = driver.freeze(group).then(() => (resolved = true));
      await written(`${group}/cgroup.freeze`, '1');
      // A while for a driver that would not wait for cgroup.events to resolve anyway.
      await new Promise((r) => setTimeout(r, 60));
      expect(resolved).toBe(false);
      fake.files({ [`${group}/cgroup.events`]: 'populated 1\nfrozen 1\n' });
      await freezing;
      expect(resolved).toBe(true);
      expect(await driver.state(group)).toBe('frozen');
    });

    it('times out with TIMEOUT and thaws again when the kernel never reports frozen', async () => {
      await expect(driver.freeze(group, 80)).rejects.toMatchObject({ code: 'TIMEOUT' });
      expect(fake.read(`${group}/cgroup.freeze`)).toBe('0');
    });

    it('thaw writes 0 and waits for frozen 0', async () => {
      fake.files({
        [`${group}/cgroup.freeze`]: '1\n',
        [`${group}/cgroup.events`]: 'populated 1\nfrozen 1\n',
      });
      const thawing = driver.thaw(group);
      await written(`${group}/cgroup.freeze`, '0');
      fake.files({ [`${group}/cgroup.events`]: 'populated 1\nfrozen 0\n' });
      await thawing;
      expect(await driver.state(group)).toBe('running');
    });

    it('reports missing for a group that does not exist', async () => {
      expect(await driver.state('berth/nope')).toBe('missing');
    });
  });

  it('parses stats from cpu.stat, memory.current, memory.peak, pids.current and memory.events', async () => {
    await driver.create(group);
    fake.files({
      [`${group}/cpu.stat`]: 'usage_usec 123456\nuser_usec 100000\nsystem_usec 23456\nnr_periods 0\n',
      [`${group}/memory.current`]: '1048576\n',
      [`${group}/memory.peak`]: '4194304\n',
      [`${group}/pids.current`]: '3\n',
      [`${group}/memory.events`]: 'low 0\nhigh 0\nmax 7\noom 2\noom_kill 2\noom_group_kill 0\n',
    });
    expect(await driver.stats(group)).toEqual({
      cpuUsageNs: 123456000,
      memoryCurrentBytes: 1048576,
      memoryPeakBytes: 4194304,
      pidsCurrent: 3,
      oomKills: 2,
    });
  });

  it('lists pids of the group and its descendants, sorted and unique', async () => {
    await driver.create(group);
    fake.files({ [`${group}/cgroup.procs`]: '30\n10\n', [`${group}/sub/cgroup.procs`]: '20\n10\n' });
    expect(await driver.pids(group)).toEqual([10, 20, 30]);
    expect(await driver.pids('berth/nope')).toEqual([]);
  });

  it('kills with cgroup.kill for SIGKILL when the kernel has it', async () => {
    await driver.create(group);
    kernelFiles();
    await driver.killAll(group, 'SIGKILL');
    expect(fake.read(`${group}/cgroup.kill`)).toBe('1');
  });

  describe('destroy / list / exists', () => {
    it('refuses with CGROUP_BUSY while processes remain and removes nothing', async () => {
      await driver.create(group);
      fake.files({ [`${group}/cgroup.procs`]: '4242\n' });
      await expect(driver.destroy(group)).rejects.toMatchObject({
        code: 'CGROUP_BUSY',
        context: { pids: [4242] },
      });
      expect(await driver.exists(group)).toBe(true);
    });

    it('removes the group and its child groups leaf first, and is idempotent', async () => {
      await driver.create(group);
      await driver.create('berth/c2');
      kernelFiles();
      fake.files({ [`${group}/sub/cgroup.procs`]: '' });
      expect(await driver.list('berth')).toEqual(['c1', 'c2']);
      await driver.destroy(group);
      expect(await driver.exists(group)).toBe(false);
      expect(await driver.list('berth')).toEqual(['c2']);
      await driver.destroy(group);
      expect(await driver.list('berth-none')).toEqual([]);
    });
  });

  it('adds a process by writing its pid to cgroup.procs and reports a missing group', async () => {
    await driver.create(group);
    await driver.addProcess(group, 1234);
    expect(fake.read(`${group}/cgroup.procs`)).toBe('1234');
    await expect(driver.addProcess('berth/nope', 1234)).rejects.toMatchObject({ code: 'CGROUP_NOT_FOUND' });
    await expect(driver.addProcess(group, -1)).rejects.toMatchObject({ code: 'INVALID_ARGUMENT' });
  });
});
