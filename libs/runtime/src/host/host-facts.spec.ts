import { cgroupVersionFromMounts, detectHostFacts } from './host-facts';

describe('cgroupVersionFromMounts', () => {
  it('sees a pure v2 host', () => {
    expect(cgroupVersionFromMounts('cgroup2 /sys/fs/cgroup cgroup2 rw,nosuid 0 0\n')).toBe(2);
  });
  it('sees a v1 (or hybrid) host by its v1 controllers', () => {
    const m = ['cpu', 'memory', 'pids', 'freezer']
      .map((c) => `cgroup /sys/fs/cgroup/${c} cgroup rw,relatime,${c} 0 0`)
      .concat('cgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0')
      .join('\n');
    expect(cgroupVersionFromMounts(m)).toBe(1);
  });
});

describe('detectHostFacts', () => {
  it('reports this machine', async () => {
    const f = await detectHostFacts('/nonexistent/berth/data');
    expect(f.cpuCount).toBeGreaterThan(0);
    expect(f.memoryBytes).toBeGreaterThan(0);
    expect(f.diskBytes).toBeGreaterThan(0);
    expect(f.kernelVersion).toMatch(/^\d+\.\d+/);
    expect(f.storageDrivers).toContain('dir');
    expect(f.namespaces).toEqual(expect.arrayContaining(['pid', 'net', 'mnt']));
  });
});
