import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, symlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describeKernel } from '@test/support/kernel';
import { openHostRuntime, wipeHostRuntime, type HostRuntime } from '@berth/runtime';
import { removeTestCgroupParent } from '../src/cgroups/testing/kernel-processes';

const needs = { root: true, programs: ['btrfs', 'mkfs.btrfs', 'losetup'] };

describeKernel('a data root reached through a link', needs, () => {
  const base = mkdtempSync(join(tmpdir(), `berth-link-${process.pid}-`));
  const real = join(base, 'real');
  const link = join(base, 'link');
  const cgroupParent = `berth-test-link-${process.pid}`;
  let rt: HostRuntime | undefined;

  afterAll(async () => {
    if (rt) await wipeHostRuntime(rt);
    removeTestCgroupParent(cgroupParent);
    rmSync(base, { recursive: true, force: true });
  }, 60_000);

  it('is one btrfs pool, attached and mounted once however often it is opened', async () => {
    execFileSync('mkdir', ['-p', real]);
    symlinkSync(real, link);
    const open = () => openHostRuntime({ dataRoot: link, cgroupParent, storageDriver: 'btrfs' });
    rt = await open();
    rt = await open(); // a worker's restart
    const image = join(real, 'storage', 'btrfs', 'pool.img');
    const loops = execFileSync('losetup', ['-j', image]).toString().trim().split('\n').filter(Boolean);
    expect(loops).toHaveLength(1);
    const mounts = readFileSync('/proc/self/mountinfo', 'utf8')
      .split('\n')
      .filter((l) => l.split(' ')[4]?.startsWith(join(real, 'storage')));
    expect(mounts).toHaveLength(1);
  }, 60_000);
});
