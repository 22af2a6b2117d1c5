import { mkdtempSync } from 'node:fs';
import { chmod, mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describeKernel } from '@test/support/kernel';
import { run } from '../common/exec';
import { RuntimeError } from '../common/errors';
import { helperPath } from '../namespaces/launcher';
import { BtrfsHelperServer } from './btrfs-helper-server';
import { BtrfsStorageDriver } from './btrfs.driver';
import { storageRoot } from './registry';
import { StorageDriverOptions } from './storage.driver';
import { cleanStaleTestRoots, forceCleanTestRoot } from './testing/storage-test-cleanup';

/**
 * The btrfs driver takes snapshots and deletes subvolumes through berth-launch's ioctl subcommands, and
 * falls back to the `btrfs` command when the helper is missing or too old to know them. The requests go to
 * one long-lived `berth-launch btrfs-serve` (a helper without it is spawned per request). A wrapper script
 * in front of the real helper records every call, and every request sent to its server, so the tests see
 * which path was taken.
 */

function builtHelper(): string {
  try {
    return helperPath();
  } catch {
    return join(__dirname, '..', '..', 'native', 'build', 'berth-launch');
  }
}

const REAL_HELPER = builtHelper();

describeKernel(
  'btrfs driver: snapshots through the berth-launch helper, btrfs command fallback',
  {
    root: true,
    programs: ['mkfs.btrfs', 'btrfs', 'losetup', 'mount', 'umount'],
    paths: ['/dev/loop-control', REAL_HELPER],
  },
  () => {
    let dataRoot: string;
    let root: string;
    let callLog: string;
    let serverLog: string;
    let wrapper: string;
    const tpl = 'helper-tpl';

    const driverWith = (options: Partial<StorageDriverOptions>) =>
      new BtrfsStorageDriver({ root, poolSizeBytes: 1024 ** 3, ...options });

    /**
     * The helper subcommands the wrapper saw since the last call, one line each, spawned or sent to its
     * server (a request line, `<id> TAB <subcommand> TAB <args…>`, reads like the spawn's arguments).
     */
    async function takeCalls(): Promise<string[]> {
      const text = await readFile(callLog, 'utf8').catch(() => '');
      // Emptied, not removed: a server's tee keeps appending to the file it opened.
      await writeFile(callLog, '');
      return text
        .split('\n')
        .filter((line) => line && line !== 'btrfs-serve')
        .map((line) => (line.includes('\t') ? line.split('\t').slice(1).join(' ') : line));
    }

    /** How many `btrfs-serve` servers the wrapper started since the last call. */
    async function takeServers(): Promise<number> {
      const text = await readFile(serverLog, 'utf8').catch(() => '');
      await rm(serverLog, { force: true });
      return text.split('\n').filter(Boolean).length;
    }

    async function isReadonly(path: string): Promise<boolean> {
      const { stdout } = await run('btrfs', ['property', 'get', '-ts', path, 'ro']);
      return stdout.trim() === 'ro=true';
    }

    beforeAll(async () => {
      cleanStaleTestRoots(tmpdir());
      dataRoot = mkdtempSync(join(tmpdir(), `berth-storage-test-${process.pid}-`));
      root = storageRoot(dataRoot, 'btrfs');
      callLog = join(dataRoot, 'calls.log');
      serverLog = join(dataRoot, 'servers.log');
      wrapper = join(dataRoot, 'helper-wrapper');
      // A server's requests are copied to the call log on their way in (tee: line by line, unbuffered).
      await writeFile(
        wrapper,
        `#!/bin/sh\n` +
          `if [ "$1" = btrfs-serve ]; then echo serve >> '${serverLog}'; tee -a '${callLog}' | '${REAL_HELPER}' "$@"; exit; fi\n` +
          `echo "$*" >> '${callLog}'\nexec '${REAL_HELPER}' "$@"\n`,
      );
      await chmod(wrapper, 0o755);
      const driver = driverWith({ nativeHelper: false });
      await driver.prepare();
      const path = await driver.createTemplateVolume(tpl);
      await mkdir(join(path, 'etc'));
      await writeFile(join(path, 'etc/hostname'), 'template\n');
      await driver.sealTemplate(tpl);
    }, 60_000);

    afterAll(async () => {
      try {
        const driver = driverWith({ nativeHelper: false });
        for (const id of await driver.list()) await driver.delete(id);
        await driver.release();
      } finally {
        forceCleanTestRoot(dataRoot);
      }
    }, 60_000);

    it('uses the built helper by default', () => {
      expect(driverWith({}).subvolumeTool()).toBe(REAL_HELPER);
      expect(driverWith({ nativeHelper: false }).subvolumeTool()).toBeNull();
    });

    it('clone, snapshot, rollback and delete go through the helper, with the btrfs semantics', async () => {
      const driver = driverWith({ nativeHelper: wrapper });
      const { rootfs } = await driver.clone(tpl, 'ct-h');
      expect(await takeCalls()).toEqual([`btrfs-snapshot ${driver.templatePath(tpl)} ${rootfs}`]);
      expect(await isReadonly(rootfs)).toBe(false);
      await writeFile(join(rootfs, 'etc/hostname'), 'ct-h\n');

      await driver.snapshot('ct-h', 'snap1');
      const [snapCall] = await takeCalls();
      expect(snapCall).toMatch(/^btrfs-snapshot \S+\/containers\/ct-h \S+\/snap1 --readonly$/);
      const snapPath = snapCall.split(' ')[2];
      expect(await isReadonly(snapPath)).toBe(true);

      await writeFile(join(rootfs, 'etc/hostname'), 'changed\n');
      await driver.rollback('ct-h', 'snap1');
      const rollbackCalls = await takeCalls();
      expect(rollbackCalls.map((c) => c.split(' ')[0])).toEqual(['btrfs-snapshot', 'btrfs-delete']);
      expect(await readFile(join(rootfs, 'etc/hostname'), 'utf8')).toBe('ct-h\n');
      expect(await isReadonly(rootfs)).toBe(false);

      await driver.delete('ct-h');
      expect(await takeCalls()).toEqual([`btrfs-delete ${snapPath} ${rootfs}`]);
      expect(await driver.list()).toEqual([]);
      expect(await driver.listSnapshots('ct-h')).toEqual([]);
      await driver.delete('ct-h');
      expect(await takeCalls()).toEqual([]);
      // All of it through one long-lived helper: no spawn per operation.
      expect(await takeServers()).toBe(1);
    });

    it('side by side requests to the server each get their own answer', async () => {
      const driver = driverWith({ nativeHelper: wrapper });
      const ids = ['ct-p1', 'ct-p2', 'ct-p3', 'ct-p4'];
      const clones = await Promise.all(ids.map((id) => driver.clone(tpl, id)));
      for (const { rootfs } of clones)
        expect(await readFile(join(rootfs, 'etc/hostname'), 'utf8')).toBe('template\n');
      // One of these is refused by the kernel (it exists), the others succeed.
      const again = (
        driver as unknown as { snapshotSubvolume(s: string, t: string, r: boolean): Promise<void> }
      ).snapshotSubvolume(driver.templatePath(tpl), clones[0].rootfs, false);
      const results = await Promise.allSettled([
        again,
        ...ids.slice(1).map((id) => driver.snapshot(id, 'pre')),
      ]);
      expect(results.map((r) => r.status)).toEqual(['rejected', 'fulfilled', 'fulfilled', 'fulfilled']);
      expect((results[0] as PromiseRejectedResult).reason).toMatchObject({ code: 'COMMAND_FAILED' });
      await Promise.all(ids.map((id) => driver.delete(id)));
      expect(await driver.list()).toEqual([]);
      expect(await takeServers()).toBe(1);
      await takeCalls();
    });

    it('a server that dies is replaced at the next request', async () => {
      const driver = driverWith({ nativeHelper: wrapper });
      await driver.clone(tpl, 'ct-k1');
      expect(await takeServers()).toBe(1);
      // Kill the server (the wrapper, its tee and the helper behind it), as a crash would.
      type Served = { server?: { current?: { child: { pid?: number } } } };
      const pid = (driver as unknown as Served).server?.current?.child.pid;
      expect(pid).toEqual(expect.any(Number));
      await run('pkill', ['-KILL', '-P', String(pid)], { okCodes: [0, 1] });
      try {
        process.kill(pid!, 'SIGKILL');
      } catch {
        // the wrapper may already have ended with its pipeline
      }
      for (let i = 0; i < 100 && (driver as unknown as Served).server?.current; i++)
        await new Promise((r) => setTimeout(r, 20));
      expect((driver as unknown as Served).server?.current).toBeUndefined();
      await driver.clone(tpl, 'ct-k2');
      expect(await takeServers()).toBe(1);
      await driver.delete('ct-k1');
      await driver.delete('ct-k2');
      expect(await driver.list()).toEqual([]);
      await takeCalls();
    });

    it('a closed server answers what it was asked; the next request starts another', async () => {
      const server = new BtrfsHelperServer(REAL_HELPER);
      const missing = join(dataRoot, 'no-such-subvolume');
      const first = server.run(['btrfs-delete', missing]);
      server.close();
      const second = server.run(['btrfs-delete', `${missing}-2`]);
      expect(await first).toEqual({ code: 1, output: expect.stringContaining(`(${missing})`) });
      expect(await second).toEqual({ code: 1, output: expect.stringContaining(`(${missing}-2)`) });
      server.close();
    });

    it('a delete of more subvolumes than the server reads at once is spawned', async () => {
      const driver = driverWith({ nativeHelper: wrapper });
      await driver.clone(tpl, 'ct-many');
      for (let i = 0; i < 63; i++) await driver.snapshot('ct-many', `s${i}`);
      await writeFile(callLog, '');
      await driver.delete('ct-many');
      const raw = (await readFile(callLog, 'utf8')).split('\n').filter(Boolean);
      // One spawn (its arguments as the wrapper saw them, space-separated), not a request to the server.
      expect(raw).toHaveLength(1);
      expect(raw[0]).not.toContain('\t');
      expect(raw[0].split(' ')).toHaveLength(1 + 64);
      expect(await driver.list()).toEqual([]);
      await takeCalls();
    }, 60_000);

    it('a helper without the server is spawned per request', async () => {
      // A berth-launch built before btrfs-serve: the subcommands, but its launch usage error for the server.
      const older = join(dataRoot, 'older-helper');
      await writeFile(
        older,
        `#!/bin/sh\necho "$*" >> '${callLog}'\n` +
          `if [ "$1" = btrfs-serve ]; then echo '{"error":"args","errno":22,"message":"unknown option"}'; exit 2; fi\n` +
          `exec '${REAL_HELPER}' "$@"\n`,
      );
      await chmod(older, 0o755);
      const driver = driverWith({ nativeHelper: older });
      const { rootfs } = await driver.clone(tpl, 'ct-older');
      await driver.delete('ct-older');
      expect(await takeCalls()).toEqual([
        `btrfs-snapshot ${driver.templatePath(tpl)} ${rootfs}`,
        `btrfs-delete ${rootfs}`,
      ]);
      expect(driver.subvolumeTool()).toBe(older);
    });

    it('a kernel refusal through the helper is COMMAND_FAILED, not a silent fallback', async () => {
      const driver = driverWith({ nativeHelper: wrapper });
      await driver.clone(tpl, 'ct-twice');
      const target = driver.rootfsPath('ct-twice');
      // The template dir is a subvolume, the target exists: the kernel answers EEXIST.
      const snapshot = (
        driver as unknown as { snapshotSubvolume(s: string, t: string, r: boolean): Promise<void> }
      ).snapshotSubvolume(driver.templatePath(tpl), target, false);
      await expect(snapshot).rejects.toBeInstanceOf(RuntimeError);
      await expect(snapshot).rejects.toMatchObject({ code: 'COMMAND_FAILED' });
      expect(driver.subvolumeTool()).toBe(wrapper);
      await driver.delete('ct-twice');
      await takeCalls();
    });

    it('falls back to the btrfs command when the helper is missing', async () => {
      const driver = driverWith({ nativeHelper: join(dataRoot, 'no-such-helper') });
      const { rootfs } = await driver.clone(tpl, 'ct-missing');
      expect(await readFile(join(rootfs, 'etc/hostname'), 'utf8')).toBe('template\n');
      expect(driver.subvolumeTool()).toBeNull();
      await driver.snapshot('ct-missing', 's');
      await driver.delete('ct-missing');
      expect(await driver.list()).toEqual([]);
    });

    it('falls back to the btrfs command when the helper predates the btrfs subcommands', async () => {
      // What a berth-launch built before the subcommands answers: its launch usage error.
      const stale = join(dataRoot, 'stale-helper');
      await writeFile(
        stale,
        `#!/bin/sh\necho "$*" >> '${callLog}'\necho '{"error":"args","errno":22,"message":"unknown option"}'\nexit 2\n`,
      );
      await chmod(stale, 0o755);
      const driver = driverWith({ nativeHelper: stale });
      const { rootfs } = await driver.clone(tpl, 'ct-stale');
      expect(await readFile(join(rootfs, 'etc/hostname'), 'utf8')).toBe('template\n');
      expect(await isReadonly(rootfs)).toBe(false);
      expect(driver.subvolumeTool()).toBeNull();
      await driver.snapshot('ct-stale', 's');
      await driver.delete('ct-stale');
      // asked for its server, then once for the subcommand, then never again
      expect(await takeCalls()).toEqual([expect.stringMatching(/^btrfs-snapshot /)]);
      expect(await driver.list()).toEqual([]);
    });
  },
);
