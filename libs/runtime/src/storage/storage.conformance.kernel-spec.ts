import { randomBytes, createHash } from 'node:crypto';
import { mkdtempSync } from 'node:fs';
import { mkdir, readFile, readdir, rm, statfs, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describeKernel, KernelNeeds } from '@test/support/kernel';
import { run } from '../common/exec';
import { RuntimeError } from '../common/errors';
import { BtrfsStorageDriver } from './btrfs.driver';
import { mountAt, mountsUnder } from './mount-table';
import { createStorageDriver, storageRoot } from './registry';
import { StorageDriver, StorageDriverName, StorageDriverOptions } from './storage.driver';
import { helperPath } from '../namespaces/launcher';
import { cleanStaleTestRoots, forceCleanTestRoot, loopDevicesUnder } from './testing/storage-test-cleanup';

/**
 * One conformance suite for every storage driver (containers/storage style): the same behaviour is demanded
 * of btrfs (on a loop-mounted pool image), overlay and dir. Each run gets its own data root; afterAll
 * unmounts and detaches everything under it even when a test failed.
 */

interface DriverCase {
  name: StorageDriverName;
  /** Shown in the test names (a driver may run twice with other options). */
  label: string;
  needs: KernelNeeds;
  /** Extra driver options (e.g. btrfs through the `btrfs` command instead of the helper). */
  options?: Partial<StorageDriverOptions>;
}

/** The built berth-launch helper, or where it would be (a missing path makes describeKernel skip loudly). */
function builtHelper(): string {
  try {
    return helperPath();
  } catch {
    return join(__dirname, '..', '..', 'native', 'build', 'berth-launch');
  }
}

const BTRFS_NEEDS: KernelNeeds = {
  root: true,
  programs: ['mkfs.btrfs', 'btrfs', 'losetup', 'mount', 'umount'],
  paths: ['/dev/loop-control'],
};

const cases: DriverCase[] = [
  // snapshots and deletes by ioctl through the berth-launch helper (scripts/build-native.sh builds it)
  { name: 'btrfs', label: 'btrfs', needs: { ...BTRFS_NEEDS, paths: [...BTRFS_NEEDS.paths!, builtHelper()] } },
  // the fallback when the helper is not built: the same contract through the `btrfs` command
  { name: 'btrfs', label: 'btrfs (btrfs command)', needs: BTRFS_NEEDS, options: { nativeHelper: false } },
  {
    name: 'overlay',
    label: 'overlay',
    needs: { root: true, programs: ['mount', 'umount', 'cp'], paths: ['/sys/module/overlay'] },
  },
  { name: 'dir', label: 'dir', needs: { root: true, programs: ['cp'] } },
];

const POOL_SIZE = 2 * 1024 ** 3;
const MiB = 1024 ** 2;

async function expectCode(promise: Promise<unknown>, code: string): Promise<void> {
  await expect(promise).rejects.toBeInstanceOf(RuntimeError);
  await expect(promise).rejects.toMatchObject({ code });
}

/** Every path under `dir`, relative, sorted: used to prove an operation created nothing. */
async function tree(dir: string): Promise<string[]> {
  const entries = await readdir(dir, { recursive: true });
  return entries.map(String).sort();
}

async function readText(path: string): Promise<string | null> {
  try {
    return await readFile(path, 'utf8');
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw error;
  }
}

async function fillTemplate(path: string): Promise<void> {
  await mkdir(join(path, 'etc'), { recursive: true });
  await mkdir(join(path, 'bin'), { recursive: true });
  await writeFile(join(path, 'etc/hostname'), 'template\n');
  await writeFile(join(path, 'etc/motd'), 'welcome\n');
  await writeFile(join(path, 'bin/hello'), '#!/bin/sh\necho hello\n', { mode: 0o755 });
}

function newDataRoot(): string {
  cleanStaleTestRoots(tmpdir());
  return mkdtempSync(join(tmpdir(), `berth-storage-test-${process.pid}-`));
}

describe.each(cases)('storage driver conformance: $label', ({ name, label, needs, options }) => {
  describeKernel(`${label} driver`, needs, () => {
    let dataRoot: string;
    let root: string;
    let driver: StorageDriver;
    const tpl = 'base-tpl';
    const other = 'other-tpl';

    beforeAll(async () => {
      dataRoot = newDataRoot();
      root = storageRoot(dataRoot, name);
      driver = createStorageDriver(name, { root, poolSizeBytes: POOL_SIZE, ...options });
      await driver.prepare();
    }, 60_000);

    afterAll(async () => {
      try {
        for (const id of await driver.list()) await driver.unmount(id);
        await driver.release();
      } finally {
        forceCleanTestRoot(dataRoot);
      }
    }, 60_000);

    it('prepare is idempotent, also from a new driver object on the same root (a restarted worker)', async () => {
      await driver.prepare();
      const again = createStorageDriver(name, { root, poolSizeBytes: POOL_SIZE, ...options });
      await again.prepare();
      if (name === 'btrfs') {
        const pool = (driver as BtrfsStorageDriver).poolPath();
        expect((await mountAt(pool))?.fsType).toBe('btrfs');
        expect(await mountsUnder(pool)).toHaveLength(1);
        expect(loopDevicesUnder(dataRoot)).toHaveLength(1);
      }
    });

    it('creates, fills and seals a template; creating again returns it while unsealed, fails once sealed', async () => {
      const path = await driver.createTemplateVolume(tpl);
      expect(path).toBe(driver.templatePath(tpl));
      await fillTemplate(path);
      expect(await driver.hasTemplate(tpl)).toBe(false);
      expect(await driver.createTemplateVolume(tpl)).toBe(path);
      expect(await readText(join(path, 'etc/hostname'))).toBe('template\n');

      await driver.sealTemplate(tpl);
      await driver.sealTemplate(tpl);
      expect(await driver.hasTemplate(tpl)).toBe(true);
      expect(await driver.listTemplates()).toEqual([tpl]);
      await expectCode(driver.createTemplateVolume(tpl), 'TEMPLATE_EXISTS');
      await expectCode(driver.sealTemplate('missing-tpl'), 'TEMPLATE_NOT_FOUND');

      const second = await driver.createTemplateVolume(other);
      await writeFile(join(second, 'marker'), 'other\n');
      await driver.sealTemplate(other);
      expect(await driver.listTemplates()).toEqual([tpl, other].sort());
    });

    if (name === 'btrfs') {
      it('a sealed btrfs template is read-only', async () => {
        await expect(
          writeFile(join(driver.templatePath(tpl), 'etc/hostname'), 'changed'),
        ).rejects.toMatchObject({
          code: 'EROFS',
        });
      });
    }

    it('clones are isolated from the template and from each other', async () => {
      const a = await driver.clone(tpl, 'ct-a');
      const b = await driver.clone(tpl, 'ct-b');
      expect(a.rootfs).toBe(driver.rootfsPath('ct-a'));
      await driver.mount('ct-a');
      await driver.mount('ct-a');
      await driver.mount('ct-b');
      expect(await driver.isMounted('ct-a')).toBe(true);

      expect(await readText(join(a.rootfs, 'etc/hostname'))).toBe('template\n');
      await writeFile(join(a.rootfs, 'etc/hostname'), 'ct-a\n');
      await writeFile(join(a.rootfs, 'new-file'), 'only in a\n');
      await rm(join(a.rootfs, 'etc/motd'));

      expect(await readText(join(driver.templatePath(tpl), 'etc/hostname'))).toBe('template\n');
      expect(await readText(join(driver.templatePath(tpl), 'etc/motd'))).toBe('welcome\n');
      expect(await readText(join(driver.templatePath(tpl), 'new-file'))).toBeNull();
      expect(await readText(join(b.rootfs, 'etc/hostname'))).toBe('template\n');
      expect(await readText(join(b.rootfs, 'etc/motd'))).toBe('welcome\n');
      expect(await readText(join(b.rootfs, 'new-file'))).toBeNull();
      expect(await driver.list()).toEqual(['ct-a', 'ct-b']);
    });

    if (name === 'btrfs') {
      it('a clone that fails half way leaves nothing behind (no volume, no origin record)', async () => {
        // A "sealed" template that is a plain directory, not a subvolume: the snapshot step fails.
        const pool = (driver as BtrfsStorageDriver).poolPath();
        await mkdir(join(pool, 'templates', 'broken-tpl'));
        await writeFile(join(root, 'meta', 'templates', 'broken-tpl.sealed'), '');
        const before = await tree(root);
        await expectCode(driver.clone('broken-tpl', 'ct-broken'), 'COMMAND_FAILED');
        expect(await tree(root)).toEqual(before);
        expect(await driver.list()).not.toContain('ct-broken');
        await rm(join(root, 'meta', 'templates', 'broken-tpl.sealed'));
        await rm(join(pool, 'templates', 'broken-tpl'), { recursive: true });
      });

      it('prepare after the pool was unmounted reuses the attached loop device', async () => {
        const pool = (driver as BtrfsStorageDriver).poolPath();
        const [device] = loopDevicesUnder(dataRoot);
        await run('umount', ['--', pool]);
        expect(await mountAt(pool)).toBeUndefined();
        await createStorageDriver(name, { root, poolSizeBytes: POOL_SIZE, ...options }).prepare();
        expect(loopDevicesUnder(dataRoot)).toEqual([device]);
        expect((await mountAt(pool))?.fsType).toBe('btrfs');
        expect(await driver.list()).toEqual(['ct-a', 'ct-b']);
        expect(await readText(join(driver.rootfsPath('ct-a'), 'etc/hostname'))).toBe('ct-a\n');
      });
    }

    it('clone is idempotent for the same template and refuses another template or a missing one', async () => {
      expect(await driver.clone(tpl, 'ct-a')).toEqual({ rootfs: driver.rootfsPath('ct-a') });
      expect(await readText(join(driver.rootfsPath('ct-a'), 'etc/hostname'))).toBe('ct-a\n');
      await expectCode(driver.clone(other, 'ct-a'), 'VOLUME_EXISTS');
      await expectCode(driver.clone('no-such-tpl', 'ct-c'), 'TEMPLATE_NOT_FOUND');
      const unsealed = await driver.createTemplateVolume('unsealed-tpl');
      await expectCode(driver.clone('unsealed-tpl', 'ct-c'), 'TEMPLATE_NOT_FOUND');
      expect(await driver.list()).toEqual(['ct-a', 'ct-b']);
      await driver.deleteTemplate('unsealed-tpl');
      expect(await readText(unsealed)).toBeNull();
    });

    it('describes the mount the launcher must do (overlay) or none', async () => {
      const spec = await driver.mountSpec('ct-b');
      if (driver.info().needsMount) {
        expect(spec).toEqual({
          type: 'overlay',
          source: 'berth-overlay',
          target: driver.rootfsPath('ct-b'),
          options: expect.stringContaining(`lowerdir=${driver.templatePath(tpl)},upperdir=`),
        });
        // The spec really mounts: unmount, mount it by hand, see the template's files.
        await driver.unmount('ct-b');
        expect(await driver.isMounted('ct-b')).toBe(false);
        expect(await readdir(driver.rootfsPath('ct-b'))).toEqual([]);
        await run('mount', ['-t', spec!.type, '-o', spec!.options, spec!.source, spec!.target]);
        expect(await driver.isMounted('ct-b')).toBe(true);
        expect(await readText(join(driver.rootfsPath('ct-b'), 'etc/motd'))).toBe('welcome\n');
      } else {
        expect(spec).toBeNull();
      }
      await expectCode(driver.mountSpec('no-such-ct'), 'VOLUME_NOT_FOUND');
      await expectCode(driver.mount('no-such-ct'), 'VOLUME_NOT_FOUND');
    });

    it('snapshot, modify, rollback restores the snapshot (deleted files stay deleted)', async () => {
      const rootfs = driver.rootfsPath('ct-a');
      const snap = await driver.snapshot('ct-a', 'snap-1');
      expect(snap.name).toBe('snap-1');
      expect((await driver.listSnapshots('ct-a')).map((s) => s.name)).toEqual(['snap-1']);
      await expectCode(driver.snapshot('ct-a', 'snap-1'), 'SNAPSHOT_EXISTS');

      await writeFile(join(rootfs, 'etc/hostname'), 'changed\n');
      await rm(join(rootfs, 'new-file'));
      await writeFile(join(rootfs, 'after-snapshot'), 'x');
      await writeFile(join(rootfs, 'etc/motd'), 'resurrected\n');

      await driver.rollback('ct-a', 'snap-1');
      expect(await driver.isMounted('ct-a')).toBe(true);
      expect(await readText(join(rootfs, 'etc/hostname'))).toBe('ct-a\n');
      expect(await readText(join(rootfs, 'new-file'))).toBe('only in a\n');
      expect(await readText(join(rootfs, 'after-snapshot'))).toBeNull();
      expect(await readText(join(rootfs, 'etc/motd'))).toBeNull();
      expect(await readText(join(rootfs, 'bin/hello'))).toBe('#!/bin/sh\necho hello\n');

      // Rolling back twice to the same snapshot works: the snapshot itself was not consumed.
      await writeFile(join(rootfs, 'etc/hostname'), 'changed again\n');
      await driver.rollback('ct-a', 'snap-1');
      expect(await readText(join(rootfs, 'etc/hostname'))).toBe('ct-a\n');

      await expectCode(driver.rollback('ct-a', 'no-snap'), 'SNAPSHOT_NOT_FOUND');
      await expectCode(driver.rollback('no-such-ct', 'snap-1'), 'VOLUME_NOT_FOUND');
      await expectCode(driver.snapshot('no-such-ct', 'snap-1'), 'VOLUME_NOT_FOUND');
      // Leftover temporaries of the swap are gone.
      expect((await readdir(join(rootfs, '..'))).filter((n) => n.startsWith('.'))).toEqual([]);

      await driver.snapshot('ct-a', 'snap-2');
      await driver.deleteSnapshot('ct-a', 'snap-2');
      await driver.deleteSnapshot('ct-a', 'snap-2');
      expect((await driver.listSnapshots('ct-a')).map((s) => s.name)).toEqual(['snap-1']);
      expect(await driver.listSnapshots('no-such-ct')).toEqual([]);
    });

    it('usage grows when data is written', async () => {
      const before = await driver.usage('ct-b');
      await writeFile(join(driver.rootfsPath('ct-b'), 'blob'), randomBytes(8 * MiB));
      await run('sync', ['-f', driver.rootfsPath('ct-b')]);
      const after = await driver.usage('ct-b');
      expect(after - before).toBeGreaterThanOrEqual(7 * MiB);
      await expectCode(driver.usage('no-such-ct'), 'VOLUME_NOT_FOUND');
    });

    it('rejects bad ids with INVALID_NAME and creates nothing', async () => {
      const beforeTree = await tree(root);
      const bad = ['../escape', 'a/b', '.hidden', 'UPPER', '', 'a..b', 'x'.repeat(129)];
      for (const id of bad) {
        await expectCode(driver.createTemplateVolume(id), 'INVALID_NAME');
        await expectCode(driver.clone(id, 'ct-new'), 'INVALID_NAME');
        await expectCode(driver.clone(tpl, id), 'INVALID_NAME');
        await expectCode(driver.snapshot('ct-a', id), 'INVALID_NAME');
        await expectCode(driver.snapshot(id, 'snap-x'), 'INVALID_NAME');
        await expectCode(driver.delete(id), 'INVALID_NAME');
        await expectCode(driver.deleteTemplate(id), 'INVALID_NAME');
        expect(() => driver.rootfsPath(id)).toThrow(RuntimeError);
      }
      expect(await tree(root)).toEqual(beforeTree);
    });

    it('deletes a container with its snapshots, leaving nothing; deleting again is a no-op', async () => {
      const rootfs = driver.rootfsPath('ct-a');
      await driver.delete('ct-a');
      await driver.delete('ct-a');
      expect(await driver.list()).toEqual(['ct-b']);
      expect(await readText(rootfs)).toBeNull();
      expect(await mountsUnder(rootfs)).toEqual([]);
      expect(await driver.listSnapshots('ct-a')).toEqual([]);
      expect((await tree(root)).filter((p) => p.includes('ct-a'))).toEqual([]);
    });

    it('deleting a template refuses while clones depend on it (where they do), then removes it', async () => {
      if (driver.info().templatesPinnedByClones) {
        await expectCode(driver.deleteTemplate(tpl), 'TEMPLATE_IN_USE');
        expect(await driver.hasTemplate(tpl)).toBe(true);
        await driver.delete('ct-b');
        await driver.deleteTemplate(tpl);
      } else {
        // Clones are independent: the clone survives its template.
        await driver.deleteTemplate(tpl);
        expect(await readText(join(driver.rootfsPath('ct-b'), 'etc/motd'))).toBe('welcome\n');
        await driver.delete('ct-b');
      }
      await driver.deleteTemplate(tpl);
      await driver.deleteTemplate(other);
      expect(await driver.hasTemplate(tpl)).toBe(false);
      expect(await driver.listTemplates()).toEqual([]);
      expect(await driver.list()).toEqual([]);
      expect(await readText(driver.templatePath(tpl))).toBeNull();
    });

    it('release leaves no mount and no loop device; prepare brings the pool back', async () => {
      await driver.release();
      await driver.release();
      expect(await mountsUnder(dataRoot)).toEqual([]);
      expect(loopDevicesUnder(dataRoot)).toEqual([]);
      await driver.prepare();
      expect(await driver.list()).toEqual([]);
      await driver.release();
      expect(await mountsUnder(dataRoot)).toEqual([]);
      expect(loopDevicesUnder(dataRoot)).toEqual([]);
    });
  });
});

/** O(1) clone: a 120 MiB template clones in well under a second without copying its data. */
describe.each(cases.filter((c) => c.name !== 'dir' && !c.options))(
  'storage driver O(1) clone: $name',
  ({ name, needs }) => {
    describeKernel(`${name} instant clone`, needs, () => {
      let dataRoot: string;
      let driver: StorageDriver;
      const files = 120;
      let sampleHash: string;

      beforeAll(async () => {
        dataRoot = newDataRoot();
        driver = createStorageDriver(name, { root: storageRoot(dataRoot, name), poolSizeBytes: POOL_SIZE });
        await driver.prepare();
        const path = await driver.createTemplateVolume('big');
        await mkdir(join(path, 'data'));
        for (let i = 0; i < files; i++) {
          const chunk = randomBytes(MiB);
          if (i === 7) sampleHash = createHash('sha256').update(chunk).digest('hex');
          await writeFile(join(path, 'data', `f${i}`), chunk);
        }
        await driver.sealTemplate('big');
        await run('sync', ['-f', path]);
      }, 120_000);

      afterAll(async () => {
        try {
          for (const id of await driver.list()) await driver.unmount(id);
          await driver.release();
        } finally {
          forceCleanTestRoot(dataRoot);
        }
      }, 60_000);

      it('clones in well under a second without using the template size again', async () => {
        const pool = name === 'btrfs' ? (driver as BtrfsStorageDriver).poolPath() : dataRoot;
        const usedBefore = await usedBytes(pool);
        const started = process.hrtime.bigint();
        const { rootfs } = await driver.clone('big', 'ct-big');
        await driver.mount('ct-big');
        const elapsedMs = Number(process.hrtime.bigint() - started) / 1e6;
        await run('sync', ['-f', rootfs]);
        const grown = (await usedBytes(pool)) - usedBefore;

        expect(elapsedMs).toBeLessThan(500);
        expect(grown).toBeLessThan(16 * MiB);
        const sample = await readFile(join(rootfs, 'data', 'f7'));
        expect(createHash('sha256').update(sample).digest('hex')).toBe(sampleHash);
        expect((await readdir(join(rootfs, 'data'))).length).toBe(files);
        if (name === 'overlay') {
          expect(await readdir(join(rootfs, '..', 'upper'))).toEqual([]);
        }
        expect(await driver.usage('ct-big')).toBeLessThan(4 * MiB);
      });
    });
  },
);

async function usedBytes(path: string): Promise<number> {
  const s = await statfs(path);
  return (s.blocks - s.bfree) * s.bsize;
}
