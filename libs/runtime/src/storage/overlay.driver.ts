import { mkdir, rename, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { run } from '../common/exec';
import { RuntimeError } from '../common/errors';
import { copyTreeAtomic, replaceWithCopy } from './copy-tree';
import { DirectoryTemplates, isDirectory } from './directory-templates';
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
  allocatedBytes,
  listIds,
  listSnapshotEntries,
  pathExists,
  removeTree,
  validateDriverRoot,
  requireVolumeDir,
  snapshotPathIn,
  newSnapshotPath,
  requireSnapshotDir,
} from './volume-files';

/** Source name of every overlay mount Berth makes, so reconcile can tell them from anyone else's. */
export const OVERLAY_MOUNT_SOURCE = 'berth-overlay';

/**
 * overlayfs: the sealed template is the lowerdir, each container gets upper/ and work/ and a rootfs/ mount
 * point. Cloning creates three empty directories (no process spawned); the rootfs is usable once mounted,
 * either by `mount()` or by the launcher from `mountSpec()`. Snapshots copy the upper layer.
 * Layout under root: templates/<id>, containers/<id>/{upper,work,rootfs}, snapshots/<container>/<name>
 * (copies of upper), meta/.
 */
export class OverlayStorageDriver implements StorageDriver {
  private readonly root: string;
  private readonly meta: VolumeMeta;
  private readonly templates: DirectoryTemplates;

  constructor(options: StorageDriverOptions) {
    this.root = validateDriverRoot(options.root);
    this.meta = new VolumeMeta(join(this.root, 'meta'));
    // A clone's lowerdir is the template itself: it must outlive every clone.
    this.templates = new DirectoryTemplates(join(this.root, 'templates'), this.meta, async (templateId) => {
      const clones = await this.meta.clonesOf(templateId);
      const present = await Promise.all(
        clones.map(async (id) => ((await isDirectory(this.volumeDir(id))) ? id : '')),
      );
      return present.filter(Boolean);
    });
  }

  info(): StorageDriverInfo {
    return {
      name: 'overlay',
      instantClone: true,
      snapshots: true,
      instantSnapshot: false,
      quota: false,
      needsMount: true,
      templatesPinnedByClones: true,
    };
  }

  async prepare(): Promise<void> {
    for (const d of ['templates', 'containers', 'snapshots'])
      await mkdir(join(this.root, d), { recursive: true });
    await this.meta.init();
  }

  async release(): Promise<void> {
    const containers = await this.list();
    for (const id of containers) {
      if (await this.isMounted(id)) {
        throw new RuntimeError('WRONG_STATE', `rootfs of ${id} is still mounted: unmount it before release`, {
          containerId: id,
        });
      }
    }
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
    const dir = this.volumeDir(containerId);
    await this.templates.requireSealed(templateId);
    const rootfs = join(dir, 'rootfs');
    if (await pathExists(dir)) {
      if ((await this.meta.origin(containerId)) === templateId) return { rootfs };
      throw new RuntimeError('VOLUME_EXISTS', `container ${containerId} already has a volume`, {
        containerId,
        templateId,
      });
    }
    return withReverter(async (revert) => {
      await this.meta.setOrigin(containerId, templateId);
      revert.add('forget the origin', () => this.meta.clearOrigin(containerId));
      // Built under a temporary name and renamed: the volume appears whole or not at all.
      const tmp = join(this.root, 'containers', `.clone-${containerId}`);
      await rm(tmp, { recursive: true, force: true });
      revert.add('remove the partial volume', () => rm(tmp, { recursive: true, force: true }));
      for (const sub of ['upper', 'work', 'rootfs']) await mkdir(join(tmp, sub), { recursive: true });
      await rename(tmp, dir);
      return { rootfs };
    });
  }

  rootfsPath(containerId: string): string {
    return join(this.volumeDir(containerId), 'rootfs');
  }

  async mount(containerId: string): Promise<void> {
    const spec = await this.buildMountSpec(containerId);
    if (await mountAt(spec.target)) return;
    await run('mount', ['-t', spec.type, '-o', spec.options, '--', spec.source, spec.target]);
  }

  async unmount(containerId: string): Promise<void> {
    const target = this.rootfsPath(containerId);
    if (await mountAt(target)) await run('umount', ['--', target]);
  }

  async isMounted(containerId: string): Promise<boolean> {
    return (await mountAt(this.rootfsPath(containerId)))?.fsType === 'overlay';
  }

  mountSpec(containerId: string): Promise<MountSpec | null> {
    return this.buildMountSpec(containerId);
  }

  async snapshot(containerId: string, snapshotName: string): Promise<SnapshotInfo> {
    await this.requireVolume(containerId);
    const target = await newSnapshotPath(this.root, containerId, snapshotName);
    // cp -a keeps overlay whiteouts (0:0 character devices) and trusted.overlay.* xattrs (root only).
    await copyTreeAtomic(join(this.volumeDir(containerId), 'upper'), target);
    return { name: snapshotName, createdAt: new Date() };
  }

  listSnapshots(containerId: string): Promise<SnapshotInfo[]> {
    return listSnapshotEntries(join(this.root, 'snapshots', validateVolumeId(containerId, 'container')));
  }

  async rollback(containerId: string, snapshotName: string): Promise<void> {
    const dir = await this.requireVolume(containerId);
    const source = await requireSnapshotDir(
      this.snapshotPath(containerId, snapshotName),
      containerId,
      snapshotName,
    );
    // Changing layers under a live overlay mount is undefined behaviour: swap while unmounted.
    const wasMounted = await this.isMounted(containerId);
    if (wasMounted) await this.unmount(containerId);
    try {
      await replaceWithCopy(source, join(dir, 'upper'));
      // work/ holds overlay's in-flight state for the old upper layer: start it afresh.
      await rm(join(dir, 'work'), { recursive: true, force: true });
      await mkdir(join(dir, 'work'));
    } finally {
      if (wasMounted) await this.mount(containerId);
    }
  }

  async deleteSnapshot(containerId: string, snapshotName: string): Promise<void> {
    await removeTree(this.snapshotPath(containerId, snapshotName));
  }

  async delete(containerId: string): Promise<void> {
    const dir = this.volumeDir(containerId);
    await this.unmount(containerId);
    await removeTree(join(this.root, 'snapshots', containerId));
    await removeTree(dir);
    await this.meta.clearOrigin(containerId);
  }

  async usage(containerId: string): Promise<number> {
    return allocatedBytes(join(await this.requireVolume(containerId), 'upper'));
  }

  list(): Promise<string[]> {
    return listIds(join(this.root, 'containers'));
  }

  private volumeDir(containerId: string): string {
    return join(this.root, 'containers', validateVolumeId(containerId, 'container'));
  }

  private async buildMountSpec(containerId: string): Promise<MountSpec> {
    const dir = await this.requireVolume(containerId);
    const templateId = await this.meta.origin(containerId);
    if (!templateId || !(await this.templates.has(templateId))) {
      throw new RuntimeError('TEMPLATE_NOT_FOUND', `the template of container ${containerId} is missing`, {
        containerId,
        templateId,
      });
    }
    return {
      type: 'overlay',
      source: OVERLAY_MOUNT_SOURCE,
      target: join(dir, 'rootfs'),
      options: `lowerdir=${this.templatePath(templateId)},upperdir=${join(dir, 'upper')},workdir=${join(dir, 'work')}`,
    };
  }

  private snapshotPath(containerId: string, snapshotName: string): string {
    return snapshotPathIn(this.root, containerId, snapshotName);
  }

  private requireVolume(containerId: string): Promise<string> {
    const dir = this.volumeDir(containerId);
    return requireVolumeDir(dir, containerId, join(dir, 'upper'));
  }
}
