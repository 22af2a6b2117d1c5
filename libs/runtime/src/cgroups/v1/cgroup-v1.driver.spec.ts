import { existsSync, mkdirSync, symlinkSync } from 'node:fs';
import * as io from '../cgroupfs.io';
import { FakeCgroupfs } from '../testing/fake-cgroupfs';
import { ALL_DEVICES, CONTAINER_DEVICE_RULES } from '../device-rules';
import { CgroupV1Driver } from './cgroup-v1.driver';

const HIERARCHIES = ['blkio', 'cpu', 'cpuacct', 'cpuset', 'devices', 'freezer', 'memory', 'pids'];

describe('CgroupV1Driver on a fake v1 tree', () => {
  let fake: FakeCgroupfs;
  let driver: CgroupV1Driver;
  const group = 'berth/c1';

  beforeEach(() => {
    fake = FakeCgroupfs.v1({ memsw: true });
    driver = new CgroupV1Driver({ root: fake.root, freezeTimeoutMs: 300 });
  });
  afterEach(() => {
    jest.restoreAllMocks();
    fake.dispose();
  });

  describe('create', () => {
    it('creates the group in every managed hierarchy, not in others (net_cls)', async () => {
      fake.files({ 'net_cls/cgroup.procs': '1\n' });
      await driver.create(group);
      for (const h of HIERARCHIES) expect(existsSync(fake.path(`${h}/${group}`))).toBe(true);
      expect(existsSync(fake.path(`net_cls/${group}`))).toBe(false);
    });

    describe('the devices the group may use', () => {
      const writes = () => {
        const spy = jest.spyOn(io, 'writeControl');
        return () =>
          spy.mock.calls
            .filter(([file]) => String(file).startsWith(fake.path('devices/')))
            .map(([file, value]) => `${String(file).split('/').pop()} ${value}`);
      };
      /** The group as its parent's copy left it (all devices), with these processes in it. */
      const unrestricted = (procs: string) =>
        fake.files({
          [`devices/${group}/devices.list`]: `${ALL_DEVICES}\n`,
          [`devices/${group}/cgroup.procs`]: procs,
        });

      it('empties a new group (its parent lets it use all) and allows each of CONTAINER_DEVICE_RULES', async () => {
        unrestricted('');
        const written = writes();
        await driver.create(group);
        expect(written()).toEqual([
          'devices.deny a',
          ...CONTAINER_DEVICE_RULES.map((r) => `devices.allow ${r}`),
        ]);
        expect(CONTAINER_DEVICE_RULES).toEqual(expect.arrayContaining(['c 1:3 rwm', 'c 136:* rwm']));
        // No rule opens every device, nor reads or writes any block device (a disk).
        expect(CONTAINER_DEVICE_RULES.filter((r) => /^a |^b \S+ \S*[rw]/.test(r))).toEqual([]);
      });

      it('adds only the rules a restricted group lacks (a create interrupted half-way), none when it has them all', async () => {
        fake.files({
          [`devices/${group}/devices.list`]: CONTAINER_DEVICE_RULES.slice(0, 3).join('\n') + '\n',
        });
        let written = writes();
        await driver.create(group);
        expect(written()).toEqual(CONTAINER_DEVICE_RULES.slice(3).map((r) => `devices.allow ${r}`));
        jest.restoreAllMocks();
        fake.files({ [`devices/${group}/devices.list`]: CONTAINER_DEVICE_RULES.join('\n') + '\n' });
        written = writes();
        await driver.create(group);
        expect(written()).toEqual([]);
      });

      it('leaves a group that restricts nothing alone while processes run in it (made before the devices hierarchy was used)', async () => {
        unrestricted('42\n');
        const written = writes();
        await driver.create(group);
        expect(written()).toEqual([]);
      });

      it('restricts nothing on a host without the devices hierarchy', async () => {
        const bare = FakeCgroupfs.v1({ controllers: ['cpu', 'cpuacct', 'memory', 'pids', 'freezer'] });
        try {
          const written = jest.spyOn(io, 'writeControl');
          await new CgroupV1Driver({ root: bare.root }).create(group);
          expect(written.mock.calls.map(([f]) => String(f))).not.toContainEqual(
            expect.stringContaining('devices'),
          );
        } finally {
          bare.dispose();
        }
      });
    });

    it('copies cpuset.cpus and cpuset.mems from the parent at every new level, keeping set values', async () => {
      fake.files({ 'cpuset/berth/cpuset.cpus': '1\n', 'cpuset/berth/cpuset.mems': '\n' });
      await driver.create(group);
      expect(fake.read('cpuset/berth/cpuset.cpus')).toBe('1\n');
      expect(fake.read('cpuset/berth/cpuset.mems')).toBe('0');
      expect(fake.read(`cpuset/${group}/cpuset.cpus`)).toBe('1');
      expect(fake.read(`cpuset/${group}/cpuset.mems`)).toBe('0');
    });

    it('is idempotent', async () => {
      await driver.create(group, { pidsMax: 5 });
      await driver.create(group);
      expect(fake.read(`pids/${group}/pids.max`)).toBe('5');
    });
  });

  it('names one cgroup.procs per hierarchy for a launcher to join', () => {
    expect(driver.procsFiles(group).sort()).toEqual(
      HIERARCHIES.map((h) => fake.path(`${h}/${group}/cgroup.procs`)),
    );
  });

  it('counts co-mounted controllers (cpu,cpuacct behind symlinks) once', () => {
    const co = FakeCgroupfs.v1({ controllers: ['cpuset', 'memory', 'freezer', 'blkio', 'pids'] });
    try {
      co.files({ 'cpu,cpuacct/cgroup.procs': '1\n' });
      symlinkSync('cpu,cpuacct', co.path('cpu'));
      symlinkSync('cpu,cpuacct', co.path('cpuacct'));
      const d = new CgroupV1Driver({ root: co.root });
      const files = d.procsFiles(group);
      expect(files).toHaveLength(6);
      expect(files).toContain(co.path(`cpu,cpuacct/${group}/cgroup.procs`));
    } finally {
      co.dispose();
    }
  });

  it('refuses to run without a required hierarchy', () => {
    const partial = FakeCgroupfs.v1({ controllers: ['cpu', 'cpuacct', 'memory', 'freezer'] });
    try {
      expect(() => new CgroupV1Driver({ root: partial.root })).toThrow(
        expect.objectContaining({ code: 'UNSUPPORTED' }),
      );
    } finally {
      partial.dispose();
    }
  });

  describe('setLimits', () => {
    beforeEach(async () => {
      await driver.create(group);
      fake.files({
        [`memory/${group}/memory.limit_in_bytes`]: '9223372036854771712\n',
        [`memory/${group}/memory.memsw.limit_in_bytes`]: '9223372036854771712\n',
        [`memory/${group}/memory.usage_in_bytes`]: '300000000\n',
      });
    });

    it('writes cfs period 100000 and the quota for fractional cores; -1 for unlimited', async () => {
      await driver.setLimits(group, { cpus: 0.5 });
      expect(fake.read(`cpu/${group}/cpu.cfs_period_us`)).toBe('100000');
      expect(fake.read(`cpu/${group}/cpu.cfs_quota_us`)).toBe('50000');
      await driver.setLimits(group, { cpus: null });
      expect(fake.read(`cpu/${group}/cpu.cfs_quota_us`)).toBe('-1');
    });

    it('maps cpuWeight to cpu.shares proportionally (100 → 1024, clamped to 2..262144)', async () => {
      const shares = async (cpuWeight: number) => {
        await driver.setLimits(group, { cpuWeight });
        return fake.read(`cpu/${group}/cpu.shares`);
      };
      expect(await shares(100)).toBe('1024');
      expect(await shares(1)).toBe('10');
      expect(await shares(10000)).toBe('102400');
    });

    it('writes pids.max ("max" for unlimited)', async () => {
      await driver.setLimits(group, { pidsMax: 10 });
      expect(fake.read(`pids/${group}/pids.max`)).toBe('10');
      await driver.setLimits(group, { pidsMax: null });
      expect(fake.read(`pids/${group}/pids.max`)).toBe('max');
    });

    it('sets memory and memsw to the same value: memsw first when raising, second when lowering', async () => {
      const order: string[] = [];
      const real = io.writeRaw;
      jest.spyOn(io, 'writeRaw').mockImplementation(async (file, value) => {
        order.push(file.split('/').pop() as string);
        await real(file, value);
      });
      await driver.setLimits(group, { memoryBytes: 64 * 1024 * 1024 });
      expect(order).toEqual(['memory.limit_in_bytes', 'memory.memsw.limit_in_bytes']);
      expect(fake.read(`memory/${group}/memory.limit_in_bytes`)).toBe('67108864');
      expect(fake.read(`memory/${group}/memory.memsw.limit_in_bytes`)).toBe('67108864');
      order.length = 0;
      await driver.setLimits(group, { memoryBytes: 128 * 1024 * 1024 });
      expect(order).toEqual(['memory.memsw.limit_in_bytes', 'memory.limit_in_bytes']);
      expect(fake.read(`memory/${group}/memory.memsw.limit_in_bytes`)).toBe('134217728');
      order.length = 0;
      await driver.setLimits(group, { memoryBytes: null });
      expect(order).toEqual(['memory.memsw.limit_in_bytes', 'memory.limit_in_bytes']);
      expect(fake.read(`memory/${group}/memory.limit_in_bytes`)).toBe('-1');
    });

    it('turns swap off with memory.swappiness=0 when the kernel has no memsw', async () => {
      const noSwap = FakeCgroupfs.v1();
      try {
        const d = new CgroupV1Driver({ root: noSwap.root });
        await d.create(group);
        await d.setLimits(group, { memoryBytes: 32 * 1024 * 1024 });
        expect(noSwap.read(`memory/${group}/memory.limit_in_bytes`)).toBe('33554432');
        expect(noSwap.read(`memory/${group}/memory.swappiness`)).toBe('0');
        expect(d.capabilities().limits.swapLimit).toBe(false);
      } finally {
        noSwap.dispose();
      }
    });

    it('turns the kernel EBUSY (usage above a lower limit) into CGROUP_LIMIT_REJECTED with the usage', async () => {
      const real = io.writeRaw;
      jest.spyOn(io, 'writeRaw').mockImplementation(async (file, value) => {
        if (file.endsWith('memory.limit_in_bytes')) throw Object.assign(new Error('busy'), { code: 'EBUSY' });
        await real(file, value);
      });
      await expect(driver.setLimits(group, { memoryBytes: 16 * 1024 * 1024 })).rejects.toMatchObject({
        code: 'CGROUP_LIMIT_REJECTED',
        context: { limit: 'memoryBytes', requested: 16 * 1024 * 1024, current: 300000000 },
      });
      expect(fake.read(`memory/${group}/memory.memsw.limit_in_bytes`)).toBe('9223372036854771712\n');
    });

    it('writes blkio.weight when the host has it, and ignores ioWeight (reported in capabilities) when not', async () => {
      await driver.setLimits(group, { ioWeight: 100 });
      expect(existsSync(fake.path(`blkio/${group}/blkio.weight`))).toBe(false);
      expect(driver.capabilities().limits.ioWeight).toBe(false);

      const weighted = FakeCgroupfs.v1({ blkioWeight: true });
      try {
        const d = new CgroupV1Driver({ root: weighted.root });
        await d.create(group, { ioWeight: 200 });
        expect(weighted.read(`blkio/${group}/blkio.weight`)).toBe('1000');
        expect(d.capabilities().limits.ioWeight).toBe(true);
      } finally {
        weighted.dispose();
      }
    });

    it('fails with CGROUP_NOT_FOUND on a missing group', async () => {
      await expect(driver.setLimits('berth/nope', { cpus: 1 })).rejects.toMatchObject({
        code: 'CGROUP_NOT_FOUND',
      });
    });
  });

  it('freezes and thaws through freezer.state and reports the state', async () => {
    await driver.create(group);
    fake.files({ [`freezer/${group}/freezer.state`]: 'THAWED\n' });
    expect(await driver.state(group)).toBe('running');
    await driver.freeze(group);
    expect(fake.read(`freezer/${group}/freezer.state`)).toBe('FROZEN');
    expect(await driver.state(group)).toBe('frozen');
    await driver.thaw(group);
    expect(fake.read(`freezer/${group}/freezer.state`)).toBe('THAWED');
    expect(await driver.state(group)).toBe('running');
    expect(await driver.state('berth/nope')).toBe('missing');
  });

  it('parses stats from cpuacct.usage, memory usage files, pids.current and memory.oom_control', async () => {
    await driver.create(group);
    fake.files({
      [`cpuacct/${group}/cpuacct.usage`]: '987654321\n',
      [`memory/${group}/memory.usage_in_bytes`]: '2097152\n',
      [`memory/${group}/memory.max_usage_in_bytes`]: '8388608\n',
      [`pids/${group}/pids.current`]: '4\n',
      [`memory/${group}/memory.oom_control`]: 'oom_kill_disable 0\nunder_oom 0\noom_kill 3\n',
    });
    expect(await driver.stats(group)).toEqual({
      cpuUsageNs: 987654321,
      memoryCurrentBytes: 2097152,
      memoryPeakBytes: 8388608,
      pidsCurrent: 4,
      oomKills: 3,
    });
    await expect(driver.stats('berth/nope')).rejects.toMatchObject({ code: 'CGROUP_NOT_FOUND' });
  });

  it('lists pids as the union over hierarchies and descendant groups', async () => {
    await driver.create(group);
    fake.files({
      [`memory/${group}/cgroup.procs`]: '11\n12\n',
      [`cpu/${group}/cgroup.procs`]: '12\n',
      [`pids/${group}/sub/cgroup.procs`]: '5\n',
    });
    expect(await driver.pids(group)).toEqual([5, 11, 12]);
  });

  it('adds a process to every hierarchy', async () => {
    await driver.create(group);
    await driver.addProcess(group, 777);
    for (const h of HIERARCHIES) expect(fake.read(`${h}/${group}/cgroup.procs`)).toBe('777');
  });

  describe('destroy / list / exists', () => {
    it('refuses with CGROUP_BUSY while any hierarchy holds a process', async () => {
      await driver.create(group);
      fake.files({ [`freezer/${group}/cgroup.procs`]: '99\n' });
      await expect(driver.destroy(group)).rejects.toMatchObject({ code: 'CGROUP_BUSY' });
      for (const h of HIERARCHIES) expect(existsSync(fake.path(`${h}/${group}`))).toBe(true);
    });

    it('removes the group and its child groups from every hierarchy, idempotently', async () => {
      await driver.create(group);
      await driver.create('berth/c2');
      mkdirSync(fake.path(`memory/${group}/nested`));
      expect(await driver.list('berth')).toEqual(['c1', 'c2']);
      await driver.destroy(group);
      for (const h of HIERARCHIES) expect(existsSync(fake.path(`${h}/${group}`))).toBe(false);
      expect(await driver.exists(group)).toBe(false);
      expect(await driver.exists('berth/c2')).toBe(true);
      await driver.destroy(group);
      expect(await driver.list('berth')).toEqual(['c2']);
    });

    it('finds a group left in only one hierarchy by a crash, so reconcile can remove it', async () => {
      mkdirSync(fake.path('pids/berth/orphan'), { recursive: true });
      expect(await driver.list('berth')).toEqual(['orphan']);
      expect(await driver.exists('berth/orphan')).toBe(true);
      await driver.destroy('berth/orphan');
      expect(await driver.exists('berth/orphan')).toBe(false);
    });
  });
});
