import { constants } from 'node:fs';
import { access, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { RuntimeError } from '../common/errors';
import { BtrfsStorageDriver } from './btrfs.driver';
import { DirStorageDriver } from './dir.driver';
import { BTRFS_HINT } from './loop-pool';
import { OverlayStorageDriver } from './overlay.driver';
import { StorageDriver, StorageDriverName, StorageDriverOptions } from './storage.driver';
import { validateDriverRoot } from './volume-files';

export type StorageDriverFactory = (options: StorageDriverOptions) => StorageDriver;

const factories: Record<StorageDriverName, StorageDriverFactory> = {
  btrfs: (options) => new BtrfsStorageDriver(options),
  overlay: (options) => new OverlayStorageDriver(options),
  dir: (options) => new DirStorageDriver(options),
};

/** Local mode's order of preference (DESIGN.md §9): instant clones first. */
export const STORAGE_DRIVER_PREFERENCE: readonly StorageDriverName[] = ['btrfs', 'overlay', 'dir'];

export function storageDriverNames(): StorageDriverName[] {
  return Object.keys(factories) as StorageDriverName[];
}

export function isStorageDriverName(name: unknown): name is StorageDriverName {
  return typeof name === 'string' && Object.prototype.hasOwnProperty.call(factories, name);
}

/**
 * Builds a driver by name. Nothing touches the disk until `prepare()`. Throws INVALID_ARGUMENT for an
 * unknown name, INVALID_PATH for a bad root.
 */
export function createStorageDriver(name: string, options: StorageDriverOptions): StorageDriver {
  if (!isStorageDriverName(name)) {
    throw new RuntimeError(
      'INVALID_ARGUMENT',
      `unknown storage driver ${JSON.stringify(name)}: use one of ${storageDriverNames().join(', ')}`,
      { name },
    );
  }
  return factories[name](options);
}

/** The conventional root of a driver inside the data root: `<dataRoot>/storage/<name>`. */
export function storageRoot(dataRoot: string, name: StorageDriverName): string {
  return join(validateDriverRoot(dataRoot), 'storage', name);
}

export interface StorageDriverDetection {
  name: StorageDriverName;
  usable: boolean;
  /** Why it is not usable, phrased as what to do. */
  reason?: string;
}

/** What detection reads from the host; injectable so the logic can be unit-tested. */
export interface StorageHostProbe {
  isRoot(): boolean;
  hasProgram(name: string): Promise<boolean>;
  filesystems(): Promise<string[]>;
  /** Kernel modules that can be loaded on demand (modules.dep / modules.builtin names). */
  loadableModules(): Promise<string[]>;
  exists(path: string): Promise<boolean>;
}

/**
 * Which drivers work on this host: btrfs needs root, btrfs-progs, loop devices and the btrfs filesystem
 * (registered or loadable); overlay needs root and overlayfs; dir always works. The data root is checked
 * for being a valid path only: nothing is created.
 */
export async function detectStorageDrivers(
  dataRoot: string,
  probe: StorageHostProbe = hostProbe,
): Promise<StorageDriverDetection[]> {
  validateDriverRoot(dataRoot);
  const root = probe.isRoot();
  const filesystems = await probe.filesystems();
  const modules = await probe.loadableModules();

  const btrfsMissing: string[] = [];
  if (!root) btrfsMissing.push('mounting needs root');
  for (const program of ['mkfs.btrfs', 'btrfs', 'losetup', 'mount', 'umount']) {
    if (!(await probe.hasProgram(program))) btrfsMissing.push(`${program} is missing (${BTRFS_HINT})`);
  }
  if (!(await probe.exists('/dev/loop-control')))
    btrfsMissing.push('no loop devices (/dev/loop-control is missing)');
  if (!filesystems.includes('btrfs') && !modules.includes('btrfs'))
    btrfsMissing.push('the kernel has no btrfs');

  const overlayMissing: string[] = [];
  if (!root) overlayMissing.push('mounting needs root');
  if (!(await probe.hasProgram('mount'))) overlayMissing.push('mount is missing (install util-linux)');
  if (!filesystems.includes('overlay') && !modules.includes('overlay'))
    overlayMissing.push('the kernel has no overlayfs');

  const detection = (name: StorageDriverName, missing: string[]): StorageDriverDetection =>
    missing.length === 0 ? { name, usable: true } : { name, usable: false, reason: missing.join('; ') };
  return [
    detection('btrfs', btrfsMissing),
    detection('overlay', overlayMissing),
    { name: 'dir', usable: true },
  ];
}

/** The first usable driver in preference order (dir is always usable). */
export function preferredStorageDriver(detections: readonly StorageDriverDetection[]): StorageDriverName {
  for (const name of STORAGE_DRIVER_PREFERENCE)
    if (detections.find((d) => d.name === name)?.usable) return name;
  return 'dir';
}

/** Parses /proc/filesystems ("nodev\toverlay", "\tbtrfs"). */
export function parseProcFilesystems(text: string): string[] {
  return text
    .split('\n')
    .map((line) => line.trim().split(/\s+/).pop() ?? '')
    .filter(Boolean);
}

const PROGRAM_DIRS = ['/usr/local/sbin', '/usr/local/bin', '/usr/sbin', '/usr/bin', '/sbin', '/bin'];

const hostProbe: StorageHostProbe = {
  isRoot: () => process.getuid?.() === 0,
  async hasProgram(name) {
    // The standard system directories, where Debian's packages put these tools (config is not ours to read).
    for (const dir of PROGRAM_DIRS) {
      try {
        await access(join(dir, name), constants.X_OK);
        return true;
      } catch {
        // next directory
      }
    }
    return false;
  },
  async filesystems() {
    try {
      return parseProcFilesystems(await readFile('/proc/filesystems', 'utf8'));
    } catch {
      return [];
    }
  },
  async loadableModules() {
    const release = (await readFile('/proc/sys/kernel/osrelease', 'utf8').catch(() => '')).trim();
    const names: string[] = [];
    for (const file of ['modules.dep', 'modules.builtin']) {
      const text = await readFile(`/lib/modules/${release}/${file}`, 'utf8').catch(() => '');
      for (const m of text.matchAll(/(?:^|\/)([\w-]+)\.ko(?:\.\w+)?:?/gm)) names.push(m[1]);
    }
    return names;
  },
  async exists(path) {
    try {
      await access(path);
      return true;
    } catch {
      return false;
    }
  },
};
