import { detectCgroupLayout, detectCgroups } from './cgroup.detect';
import { FakeCgroupfs } from './testing/fake-cgroupfs';
import { CgroupV1Driver } from './v1/cgroup-v1.driver';
import { CgroupV2Driver } from './v2/cgroup-v2.driver';

describe('detectCgroups', () => {
  const fakes: FakeCgroupfs[] = [];
  const track = (f: FakeCgroupfs) => (fakes.push(f), f);
  afterEach(() => fakes.splice(0).forEach((f) => f.dispose()));

  it('chooses v2 on a pure cgroup2 root offering cpu, memory and pids', () => {
    const fake = track(FakeCgroupfs.v2());
    const driver = detectCgroups(fake.root);
    expect(driver).toBeInstanceOf(CgroupV2Driver);
    expect(driver.version).toBe(2);
    expect(driver.root).toBe(fake.root);
    expect(driver.capabilities().controllers).toEqual(['cpu', 'memory', 'pids', 'io']);
  });

  it('chooses v1 when the v1 controllers are mounted', () => {
    const fake = track(FakeCgroupfs.v1());
    const driver = detectCgroups(fake.root);
    expect(driver).toBeInstanceOf(CgroupV1Driver);
    expect(driver.version).toBe(1);
  });

  it('chooses v1 on a hybrid host whose unified mount only has hugetlb (like this machine)', () => {
    const fake = track(FakeCgroupfs.v1()).files({ 'unified/cgroup.controllers': 'hugetlb\n' });
    expect(detectCgroupLayout(fake.root)).toMatchObject({ version: 1, root: fake.root });
    expect(detectCgroups(fake.root).version).toBe(1);
  });

  it('chooses v2 under <root>/unified on a hybrid host where v2 holds the controllers', () => {
    const fake = track(new FakeCgroupfs()).files({ 'unified/cgroup.controllers': 'cpu io memory pids\n' });
    const driver = detectCgroups(fake.root);
    expect(driver.version).toBe(2);
    expect(driver.root).toBe(fake.path('unified'));
  });

  it('fails with UNSUPPORTED, naming what is missing, when neither layout is usable', () => {
    const fake = track(FakeCgroupfs.v2('cpu io'));
    expect(() => detectCgroups(fake.root)).toThrow(
      expect.objectContaining({
        code: 'UNSUPPORTED',
        context: expect.objectContaining({ v2Missing: ['memory', 'pids'] }),
      }),
    );
  });
});
