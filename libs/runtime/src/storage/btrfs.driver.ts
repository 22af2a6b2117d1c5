import { mkdir, rename, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { run } from '../common/exec';
import { CommandFailedError, DependencyMissingError, RuntimeError } from '../common/errors';
import { helperPath } from '../namespaces/launcher';
import { BtrfsHelperServer } from './btrfs-helper-server';
import { LoopPool, runBtrfsTool } from './loop-pool';
import { mountAt } from './mount-table';
import { withReverter } from '../common/reverter';
import {
  CloneResult,
  MountSpec,
  SnapshotInfo,
  StorageDriver,
  StorageDriverInfo,
  StorageDriverOptions,
} from './storage.driver';
import { validateVolumeId } from './volume-id';
import {
  VolumeMeta,
  listIds,
  listSnapshotEntries,
  pathExists,
  validateDriverRoot,
  requireVolumeDir,
  snapshotPathIn,
  newSnapshotPath,
  requireSnapshotDir,
} from './volume-files';
import { isDirectory } from './directory-templates';

/**
 * btrfs: templates are subvolumes made read-only when sealed, a clone is a writable snapshot of the template
 * (O(1), one spawn of the static berth-launch helper, which takes it by ioctl; the `btrfs` command when the
 * helper is not built), snapshots are read-only snapshots, rollback swaps in a writable snapshot of one.
 * The pool is either a directory on an existing btrfs filesystem (`btrfsPath`) or a sparse image under the
 * root, loop-mounted at `<root>/pool`. Layout inside the pool: templates/<id>, containers/<id>,
 * snapshots/<container>/<name> (subvolumes); bookkeeping in `<root>/meta/`.
 */
export class BtrfsStorageDriver implements StorageDriver {
  private readonly root: string;
  private readonly pool: string;
  private readonly loop?: LoopPool;
  private readonly meta: VolumeMeta;
  private preparing?: Promise<void>;
  /** The helper for snapshot/delete by ioctl; null: use the `btrfs` command; undefined: not looked up yet. */
  private helper?: string | null;
  /** The long-lived helper taking this driver's requests (started at the first one). */
  private server?: BtrfsHelperServer;

  constructor(options: StorageDriverOptions) {
    this.root = validateDriverRoot(options.root);
    if (options.btrfsPath !== undefined) {
      this.pool = validateDriverRoot(options.btrfsPath);
    } else {
      this.pool = join(this.root, 'pool');
      this.loop = new LoopPool({
        image: join(this.root, 'pool.img'),
        mountPoint: this.pool,
        sizeBytes: options.poolSizeBytes,
      });
    }
    // Bookkeeping lives outside the pool: a file dirtied on btrfs right before a snapshot makes the snapshot's
    // transaction commit flush it too (measured ≈ 2 ms more per clone).
    this.meta = new VolumeMeta(join(this.root, 'meta'));
    if (options.nativeHelper === false) this.helper = null;
    else if (options.nativeHelper !== undefined) this.helper = options.nativeHelper;
  }

  info(): StorageDriverInfo {
    return {
      name: 'btrfs',
      instantClone: true,
      snapshots: true,
      instantSnapshot: true,
      quota: false,
      needsMount: false,
      templatesPinnedByClones: false,
    };
  }

  /** Where the btrfs filesystem holding the volumes is (for statfs-based capacity checks). */
  poolPath(): string {
    return this.pool;
  }

  prepare(): Promise<void> {
    // Concurrent callers in one process share one preparation instead of racing losetup/mount.
    this.preparing ??= this.doPrepare().finally(() => {
      this.preparing = undefined;
    });
    return this.preparing;
  }

  private async doPrepare(): Promise<void> {
    await mkdir(this.root, { recursive: true });
    if (this.loop) await this.loop.prepare();
    else if ((await mountAt(this.pool)) === undefined && !(await isDirectory(this.pool))) {
      throw new RuntimeError('INVALID_PATH', `btrfs pool directory ${this.pool} does not exist`, {
        path: this.pool,
      });
    }
    for (const d of ['templates', 'containers', 'snapshots'])
      await mkdir(join(this.pool, d), { recursive: true });
    await this.meta.init();
  }

  async release(): Promise<void> {
    this.server?.close();
    this.server = undefined;
    await this.loop?.release();
  }

  /** The loop device(s) backing the pool image (empty with `btrfsPath` or when released). */
  async loopDevices(): Promise<string[]> {
    return this.loop ? this.loop.devices() : [];
  }

  async createTemplateVolume(templateId: string): Promise<string> {
    const path = this.templatePath(templateId);
    if (await this.meta.isSealed(templateId)) {
      throw new RuntimeError('TEMPLATE_EXISTS', `template ${templateId} already exists and is sealed`, {
        templateId,
      });
    }
    if (!(await pathExists(path))) await runBtrfsTool('btrfs', ['subvolume', 'create', '--', path]);
    return path;
  }

  async sealTemplate(templateId: string): Promise<void> {
    const path = this.templatePath(templateId);
    if (!(await isDirectory(path))) {
      throw new RuntimeError('TEMPLATE_NOT_FOUND', `template ${templateId} does not exist`, {
        templateId,
        path,
      });
    }
    if (await this.meta.isSealed(templateId)) return;
    await runBtrfsTool('btrfs', ['property', 'set', '-ts', path, 'ro', 'true']);
    await this.meta.setSealed(templateId);
  }

  templatePath(templateId: string): string {
    return join(this.pool, 'templates', validateVolumeId(templateId, 'template'));
  }

  async hasTemplate(templateId: string): Promise<boolean> {
    const path = this.templatePath(templateId);
    return (await this.meta.isSealed(templateId)) && (await isDirectory(path));
  }

  async deleteTemplate(templateId: string): Promise<void> {
    const path = this.templatePath(templateId);
    // Clones are independent snapshots: the template can go while they live on.
    await this.meta.clearSealed(templateId);
    await this.deleteSubvolumes([path]);
  }

  async listTemplates(): Promise<string[]> {
    const ids = await listIds(join(this.pool, 'templates'));
    const sealed = await Promise.all(ids.map(async (id) => ((await this.hasTemplate(id)) ? id : '')));
    return sealed.filter(Boolean);
  }

  async clone(templateId: string, containerId: string): Promise<CloneResult> {
    const target = this.rootfsPath(containerId);
    if (!(await this.hasTemplate(templateId))) {
      throw new RuntimeError(
        'TEMPLATE_NOT_FOUND',
        `template ${templateId} does not exist or is not sealed yet`,
        {
          templateId,
        },
      );
    }
    if (await pathExists(target)) {
      if ((await this.meta.origin(containerId)) === templateId) return { rootfs: target };
      throw new RuntimeError('VOLUME_EXISTS', `container ${containerId} already has a volume`, {
        containerId,
        templateId,
      });
    }
    return withReverter(async (revert) => {
      await this.meta.setOrigin(containerId, templateId);
      revert.add('forget the origin', () => this.meta.clearOrigin(containerId));
      // A snapshot appears atomically: nothing partial to undo if it fails.
      await this.snapshotSubvolume(this.templatePath(templateId), target, false);
      return { rootfs: target };
    });
  }

  rootfsPath(containerId: string): string {
    return join(this.pool, 'containers', validateVolumeId(containerId, 'container'));
  }

  async mount(containerId: string): Promise<void> {
    await this.requireVolume(containerId);
  }

  async unmount(containerId: string): Promise<void> {
    validateVolumeId(containerId, 'container');
  }

  isMounted(containerId: string): Promise<boolean> {
    return isDirectory(this.rootfsPath(containerId));
  }

  async mountSpec(containerId: string): Promise<MountSpec | null> {
    await this.requireVolume(containerId);
    return null;
  }

  async snapshot(containerId: string, snapshotName: string): Promise<SnapshotInfo> {
    const volume = await this.requireVolume(containerId);
    const target = await newSnapshotPath(this.pool, containerId, snapshotName);
    await this.snapshotSubvolume(volume, target, true);
    return { name: snapshotName, createdAt: new Date() };
  }

  listSnapshots(containerId: string): Promise<SnapshotInfo[]> {
    return listSnapshotEntries(join(this.pool, 'snapshots', validateVolumeId(containerId, 'container')));
  }

  async rollback(containerId: string, snapshotName: string): Promise<void> {
    const volume = await this.requireVolume(containerId);
    const source = await requireSnapshotDir(
      this.snapshotPath(containerId, snapshotName),
      containerId,
      snapshotName,
    );
    // Fixed names: a retry after a crash finds and clears the leftovers (one job per container at a time).
    const fresh = join(this.pool, 'containers', `.rollback-${containerId}`);
    const old = join(this.pool, 'containers', `.old-${containerId}`);
    await this.deleteSubvolumes([fresh, old]);
    await withReverter(async (revert) => {
      await this.snapshotSubvolume(source, fresh, false);
      revert.add('delete the rollback snapshot', () => this.deleteSubvolumes([fresh]));
      await rename(volume, old);
      revert.add('put the old volume back', () => rename(old, volume));
      await rename(fresh, volume);
    });
    await this.deleteSubvolumes([old]);
  }

  async deleteSnapshot(containerId: string, snapshotName: string): Promise<void> {
    await this.deleteSubvolumes([this.snapshotPath(containerId, snapshotName)]);
  }

  async delete(containerId: string): Promise<void> {
    const volume = this.rootfsPath(containerId);
    const snapshotsDir = join(this.pool, 'snapshots', containerId);
    const snapshots = (await listIds(snapshotsDir)).map((name) => join(snapshotsDir, name));
    // One spawn for the volume and all its snapshots.
    await this.deleteSubvolumes([...snapshots, volume]);
    await rm(snapshotsDir, { recursive: true, force: true });
    await this.meta.clearOrigin(containerId);
  }

  async usage(containerId: string): Promise<number> {
    const volume = await this.requireVolume(containerId);
    // Walks the extents (FIEMAP), no quota groups needed; "Exclusive" is what deleting the volume frees.
    const { stdout } = await runBtrfsTool('btrfs', ['filesystem', 'du', '-s', '--raw', '--', volume]);
    const row = stdout
      .trim()
      .split('\n')
      .map((line) => line.trim().split(/\s+/))
      .find((cols) => cols.length >= 4 && /^\d+$/.test(cols[0]) && /^\d+$/.test(cols[1]));
    if (!row) {
      throw new RuntimeError('COMMAND_FAILED', `cannot parse btrfs filesystem du output for ${volume}`, {
        stdout,
      });
    }
    return Number(row[1]);
  }

  list(): Promise<string[]> {
    return listIds(join(this.pool, 'containers'));
  }

  /**
   * Which tool takes snapshots and deletes subvolumes: the berth-launch helper's path, or null for the
   * `btrfs` command (helper not built). Looked up once per driver.
   */
  subvolumeTool(): string | null {
    if (this.helper === undefined) {
      try {
        this.helper = helperPath();
      } catch (error) {
        if (!(error instanceof DependencyMissingError)) throw error;
        this.helper = null;
      }
    }
    return this.helper;
  }

  /**
   * Runs `berth-launch <args>` (through the long-lived helper when it can take it, else spawned) and
   * answers true, or false when the helper cannot do it (missing, or built before it knew the btrfs
   * subcommands): the caller then uses the `btrfs` command and so does every later call. Throws
   * CommandFailedError when the helper ran and the kernel refused.
   */
  private async viaHelper(args: string[]): Promise<boolean> {
    const helper = this.subvolumeTool();
    if (helper === null) return false;
    if (this.server?.helper !== helper) {
      this.server?.close();
      this.server = new BtrfsHelperServer(helper);
    }
    const served = await this.server.run(args);
    if (served) {
      if (served.code === 0) return true;
      throw new CommandFailedError(helper, args, served.code, served.output);
    }
    let result;
    try {
      result = await run(helper, args, { okCodes: [0, 1, 2] });
    } catch (error) {
      if (!(error instanceof DependencyMissingError)) throw error;
      this.helper = null;
      return false;
    }
    if (result.code === 0) return true;
    // An older helper takes the subcommand for a launch option and answers with its JSON usage error.
    if (result.code === 2 && result.stdout.includes('"error":"args"')) {
      this.helper = null;
      return false;
    }
    throw new CommandFailedError(helper, args, result.code, result.stderr);
  }

  /** Snapshots subvolume `source` as `target` (must not exist), read-only when asked. */
  private async snapshotSubvolume(source: string, target: string, readonly: boolean): Promise<void> {
    if (await this.viaHelper(['btrfs-snapshot', source, target, ...(readonly ? ['--readonly'] : [])])) return;
    await runBtrfsTool('btrfs', [
      '-q',
      'subvolume',
      'snapshot',
      ...(readonly ? ['-r'] : []),
      '--',
      source,
      target,
    ]);
  }

  /** Deletes the subvolumes that exist, in one spawn; missing ones are skipped. */
  private async deleteSubvolumes(paths: string[]): Promise<void> {
    const present: string[] = [];
    for (const p of paths) if (await pathExists(p)) present.push(p);
    if (present.length === 0) return;
    try {
      if (!(await this.viaHelper(['btrfs-delete', ...present])))
        await runBtrfsTool('btrfs', ['-q', 'subvolume', 'delete', '--', ...present]);
    } catch (error) {
      if (!(error instanceof CommandFailedError)) throw error;
      // A subvolume the container created inside its own (e.g. by systemd) blocks the delete: since Linux
      // 4.18 root may rmdir empty subvolumes, so a recursive remove clears the nest.
      for (const p of present) if (await pathExists(p)) await rm(p, { recursive: true, force: true });
    }
  }

  private snapshotPath(containerId: string, snapshotName: string): string {
    return snapshotPathIn(this.pool, containerId, snapshotName);
  }

  private requireVolume(containerId: string): Promise<string> {
    return requireVolumeDir(this.rootfsPath(containerId), containerId);
  }
}
