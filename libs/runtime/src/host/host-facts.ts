import { statfs, readFile } from 'node:fs/promises';
import { cpus, release, totalmem } from 'node:os';
import { dirname } from 'node:path';
import type { StorageDriver } from '../storage/storage.driver';

/** What a host offers to Berth, as detected from the kernel at worker start. */
export interface HostFacts {
  kernelVersion: string;
  cpuCount: number;
  memoryBytes: number;
  /**
   * Total bytes of the filesystem that holds the data root (or its nearest existing parent); the worker
   * replaces it with its storage pool's once its runtime is open (storageBytes).
   */
  diskBytes: number;
  cgroupVersion: 1 | 2;
  storageDrivers: string[];
  /** Namespaces this kernel offers (from /proc/self/ns). */
  namespaces: string[];
}

const V1_CONTROLLERS = ['cpu', 'memory', 'pids', 'freezer'];

/** cgroup v2 when /sys/fs/cgroup itself is cgroup2, else v1 (possibly hybrid) when v1 controllers exist. */
export function cgroupVersionFromMounts(mounts: string): 1 | 2 {
  const lines = mounts.split('\n').map((l) => l.split(' '));
  if (lines.some((f) => f[1] === '/sys/fs/cgroup' && f[2] === 'cgroup2')) return 2;
  const v1 = lines.filter((f) => f[2] === 'cgroup').flatMap((f) => (f[3] ?? '').split(','));
  if (V1_CONTROLLERS.every((c) => v1.includes(c))) return 1;
  return 2;
}

async function diskBytes(path: string): Promise<number> {
  for (let p = path; ; p = dirname(p)) {
    try {
      const s = await statfs(p);
      return s.blocks * s.bsize;
    } catch {
      if (p === '/') return 0;
    }
  }
}

/**
 * Total bytes of the filesystem the containers' volumes live on, for the host's disk capacity: the storage
 * pool (btrfs: its loop image's filesystem, not the disk under it), or the data root's filesystem for the
 * drivers that keep volumes in plain directories. The driver must be prepared.
 */
export async function storageBytes(storage: Pick<StorageDriver, 'rootfsPath'>): Promise<number> {
  return diskBytes(dirname(storage.rootfsPath('capacity')));
}

async function storageDrivers(): Promise<string[]> {
  const fs = await readFile('/proc/filesystems', 'utf8').catch(() => '');
  const have = (name: string) => new RegExp(`\\s${name}$`, 'm').test(fs);
  const drivers: string[] = [];
  if (have('btrfs')) drivers.push('btrfs');
  if (have('overlay')) drivers.push('overlay');
  drivers.push('dir');
  return drivers;
}

export async function detectHostFacts(dataRoot: string): Promise<HostFacts> {
  const [mounts, disk, drivers, ns] = await Promise.all([
    readFile('/proc/self/mounts', 'utf8'),
    diskBytes(dataRoot),
    storageDrivers(),
    import('node:fs/promises').then((f) => f.readdir('/proc/self/ns')).catch(() => []),
  ]);
  return {
    kernelVersion: release(),
    cpuCount: cpus().length,
    memoryBytes: totalmem(),
    diskBytes: disk,
    cgroupVersion: cgroupVersionFromMounts(mounts),
    storageDrivers: drivers,
    namespaces: ns.filter((n) => !n.endsWith('_for_children')).sort(),
  };
}
