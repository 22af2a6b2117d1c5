import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { RuntimeError } from '../common/errors';
import { copyTreeAtomic, replaceWithCopy } from './copy-tree';
import { DirectoryTemplates, isDirectory } from './directory-templates';
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
  allocatedBytes,
  listIds,
  listSnapshotEntries,
  pathExists,
  removeTree,
  validateDriverRoot,
  requireVolumeDir,
  snapshotPathIn,
  requireSnapshotDir,
  newSnapshotPath,
} from './volume-files';

/**
 * Plain directories: a clone is `cp -a --reflink=auto` of the template (extents shared on btrfs/xfs, a full
 * copy elsewhere), snapshots are copies too. Works on any filesystem, needs nothing mounted.
 * Layout under root: templates/<id>, containers/<id>, snapshots/<container>/<name>, meta/.
 */
export class DirStorageDriver implements StorageDriver {
  private readonly root: string;
  private readonly meta: VolumeMeta;
  private readonly templates: DirectoryTemplates;

  constructor(options: StorageDriverOptions) {
    this.root = validateDriverRoot(options.root);
    this.meta = new VolumeMeta(join(this.root, 'meta'));
    // Clones are full copies: deleting the template never breaks them.
    this.templates = new DirectoryTemplates(join(this.root, 'templates'), this.meta, async () => []);
  }

  info(): StorageDriverInfo {
    return {
      name: 'dir',
      instantClone: false,
      snapshots: true,
      instantSnapshot: false,
      quota: false,
      needsMount: false,
      templatesPinnedByClones: false,
    };
  }

  async prepare(): Promise<void> {
    for (const d of ['templates', 'containers', 'snapshots'])
      await mkdir(join(this.root, d), { recursive: true });
    await this.meta.init();
  }

  async release(): Promise<void> {
    // Nothing mounted or attached.
  }

  createTemplateVolume(templateId: string): Promise<string> {
    return this.templates.create(templateId);
  }

  sealTemplate(templateId: string): Promise<void> {
    return this.templates.seal(templateId);
  }

  templatePath(templateId: string): string {
    return this.templates.path(templateId);
  }

  hasTemplate(templateId: string): Promise<boolean> {
    return this.templates.has(templateId);
  }

  deleteTemplate(templateId: string): Promise<void> {
    return this.templates.delete(templateId);
  }

  listTemplates(): Promise<string[]> {
    return this.templates.list();
  }

  async clone(templateId: string, containerId: string): Promise<CloneResult> {
    const target = this.rootfsPath(containerId);
    const source = await this.templates.requireSealed(templateId);
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
      await copyTreeAtomic(source, target);
      return { rootfs: target };
    });
  }

  rootfsPath(containerId: string): string {
    return join(this.root, 'containers', validateVolumeId(containerId, 'container'));
  }

  async mount(containerId: string): Promise<void> {
    await this.requireVolume(containerId);
  }

  async unmount(containerId: string): Promise<void> {
    validateVolumeId(containerId, 'container');
  }

  async isMounted(containerId: string): Promise<boolean> {
    return isDirectory(this.rootfsPath(containerId));
  }

  async mountSpec(containerId: string): Promise<MountSpec | null> {
    await this.requireVolume(containerId);
    return null;
  }

  async snapshot(containerId: string, snapshotName: string): Promise<SnapshotInfo> {
    const volume = await this.requireVolume(containerId);
    const target = await newSnapshotPath(this.root, containerId, snapshotName);
    await copyTreeAtomic(volume, target);
    return { name: snapshotName, createdAt: new Date() };
  }

  listSnapshots(containerId: string): Promise<SnapshotInfo[]> {
    return listSnapshotEntries(join(this.root, 'snapshots', validateVolumeId(containerId, 'container')));
  }

  async rollback(containerId: string, snapshotName: string): Promise<void> {
    const volume = await this.requireVolume(containerId);
    const source = await this.requireSnapshot(containerId, snapshotName);
    await replaceWithCopy(source, volume);
  }

  async deleteSnapshot(containerId: string, snapshotName: string): Promise<void> {
    await removeTree(this.snapshotPath(containerId, snapshotName));
  }

  async delete(containerId: string): Promise<void> {
    const volume = this.rootfsPath(containerId);
    await removeTree(join(this.root, 'snapshots', containerId));
    await removeTree(volume);
    await this.meta.clearOrigin(containerId);
  }

  async usage(containerId: string): Promise<number> {
    return allocatedBytes(await this.requireVolume(containerId));
  }

  list(): Promise<string[]> {
    return listIds(join(this.root, 'containers'));
  }

  private snapshotPath(containerId: string, snapshotName: string): string {
    return snapshotPathIn(this.root, containerId, snapshotName);
  }

  private requireVolume(containerId: string): Promise<string> {
    return requireVolumeDir(this.rootfsPath(containerId), containerId);
  }

  private requireSnapshot(containerId: string, snapshotName: string): Promise<string> {
    return requireSnapshotDir(this.snapshotPath(containerId, snapshotName), containerId, snapshotName);
  }
}
