import { existsSync, readFileSync } from 'node:fs';
import { describeKernel } from '@test/support/kernel';
import type { StorageDriverName } from '@berth/runtime';
import { openTestHost, spec, type TestHost } from './runtime-harness';

const needs = { root: true, programs: ['busybox', 'gcc', 'nsenter'] };

/** Mount points in this (the host's) mount namespace that lie under `dir`. */
function hostMountsUnder(dir: string): string[] {
  return readFileSync('/proc/self/mountinfo', 'utf8')
    .split('\n')
    .filter(Boolean)
    .map((l) => l.split(' ')[4])
    .filter((p) => p === dir || p.startsWith(`${dir}/`));
}

// The btrfs driver runs the full lifecycle in container-lifecycle.kernel-spec.ts; the other drivers get
// the same compact walk here. Their storage-level behaviour (and overlay's O(1) clone) is proven by
// the storage conformance suite.
describe.each<StorageDriverName>(['overlay', 'dir'])('container lifecycle on the %s driver', (driver) => {
  describeKernel(`unprivileged container on ${driver}`, needs, () => {
    let host: TestHost;
    const id = `drv-${driver}`;

    beforeAll(async () => {
      host = await openTestHost(`drv-${driver}`, { storageDriver: driver });
      expect(host.storage.info().name).toBe(driver);
      await host.templates.ensureBusybox();
    }, 120_000);
    afterAll(() => host?.close(), 120_000);

    it('creates and starts a container from the template, as an unprivileged root', async () => {
      const created = await host.containers.create(spec(id));
      expect(created.changed).toBe(true);
      expect(created.info.storageDriver).toBe(driver);
      const started = await host.containers.start(id);
      expect(started.info.status).toBe('running');
      const pid = started.info.init!.pid;
      expect(readFileSync(`/proc/${pid}/status`, 'utf8')).toMatch(/^Uid:\s+100000\s/m);
      expect((await host.containers.exec(id, ['hostname'])).stdout.trim()).toBe(id);
      expect((await host.containers.exec(id, ['id', '-u'])).stdout.trim()).toBe('0');
    });

    it('keeps a file written by exec across stop and start', async () => {
      const w = await host.containers.exec(id, ['sh', '-c', 'echo kept > /root/data && sync']);
      expect(w.code).toBe(0);
      const stopped = await host.containers.stop(id);
      expect(stopped.info.status).toBe('stopped');
      expect(await host.cgroups.pids(`${host.cgroupParent}/${id}`)).toEqual([]);
      // the overlay is mounted in the container's own mount namespace only: nothing stays on the host
      expect(hostMountsUnder(host.dataRoot)).toEqual([]);
      await host.containers.start(id);
      expect((await host.containers.exec(id, ['cat', '/root/data'])).stdout.trim()).toBe('kept');
    });

    it('keeps deletions of template files and replaced template directories across a restart', async () => {
      // on overlay: a whiteout for the file, an opaque directory (an xattr) for the replaced one
      const change = await host.containers.exec(id, [
        'sh',
        '-c',
        'rm /etc/shells && rm -rf /var/www && mkdir /var/www && echo new > /var/www/only && sync',
      ]);
      expect(change.code).toBe(0);
      await host.containers.restart(id);
      expect((await host.containers.exec(id, ['test', '-e', '/etc/shells'])).code).not.toBe(0);
      expect((await host.containers.exec(id, ['ls', '-A', '/var/www'])).stdout.trim()).toBe('only');
    });

    it('snapshots and rolls back the rootfs', async () => {
      await host.containers.exec(id, ['sh', '-c', 'echo one > /root/data && sync']);
      await host.containers.snapshot(id, 'snap1');
      expect(await host.containers.listSnapshots(id)).toEqual(
        expect.arrayContaining([expect.objectContaining({ name: 'snap1' })]),
      );
      await host.containers.exec(id, ['sh', '-c', 'echo two > /root/data && touch /root/later && sync']);
      await expect(host.containers.rollback(id, 'snap1')).rejects.toMatchObject({ code: 'WRONG_STATE' });
      await host.containers.stop(id);
      await host.containers.rollback(id, 'snap1');
      await host.containers.start(id);
      expect((await host.containers.exec(id, ['cat', '/root/data'])).stdout.trim()).toBe('one');
      expect((await host.containers.exec(id, ['test', '-e', '/root/later'])).code).not.toBe(0);
      // the template itself was never written to
      const other = await host.containers.create(spec(`${id}-2`));
      expect(other.changed).toBe(true);
      await host.containers.start(`${id}-2`);
      expect((await host.containers.exec(`${id}-2`, ['test', '-e', '/root/data'])).code).not.toBe(0);
      await host.containers.destroy(`${id}-2`);
    });

    it('destroys without leaving a volume, a mount, a cgroup or a record', async () => {
      const rootfs = host.storage.rootfsPath(id);
      expect((await host.containers.destroy(id)).changed).toBe(true);
      expect(await host.storage.list()).toEqual([]);
      expect(existsSync(rootfs)).toBe(false);
      expect(hostMountsUnder(host.dataRoot)).toEqual([]);
      expect(await host.cgroups.exists(`${host.cgroupParent}/${id}`)).toBe(false);
      expect(existsSync(host.containers.store.containerDir(id))).toBe(false);
      expect(await host.containers.list()).toEqual([]);
      expect((await host.containers.destroy(id)).changed).toBe(false);
    });
  });
});
