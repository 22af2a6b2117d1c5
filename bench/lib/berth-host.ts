import { chmod, mkdir, rm, rmdir } from 'node:fs/promises';
import { join } from 'node:path';
import {
  openHostRuntime,
  type ContainerSpec,
  type HostRuntime,
  type StorageDriverName,
  wipeHostRuntime,
} from '@berth/runtime';

/** A Berth host runtime opened for the bench: own data root, own cgroup parent, removed by `close()`. */
export interface BenchHost extends HostRuntime {
  dataRoot: string;
  cgroupParent: string;
  driver: StorageDriverName;
  /** Destroys every container, removes orphans and templates, releases the pool, removes the data root. */
  close(): Promise<void>;
}

const V1_CONTROLLERS = [
  'cpu',
  'cpuacct',
  'memory',
  'pids',
  'freezer',
  'cpuset',
  'blkio',
  'devices',
  'unified',
];

/**
 * Opens a Berth runtime on `driver` with its data root at `dataRoot` (created, mode 0711 so unprivileged
 * containers can traverse it) and containers under the cgroup parent `cgroupParent`, and makes sure the
 * busybox template exists. Throws what openHostRuntime throws (e.g. DEPENDENCY_MISSING).
 */
export async function openBenchHost(
  driver: StorageDriverName,
  dataRoot: string,
  cgroupParent: string,
): Promise<BenchHost> {
  await mkdir(dataRoot, { recursive: true });
  await chmod(dataRoot, 0o711);
  const rt = await openHostRuntime({
    dataRoot,
    cgroupParent,
    storageDriver: driver,
    btrfsPoolBytes: 8 * 1024 ** 3,
    stopGraceMs: 3_000,
  });
  await rt.templates.ensureBusybox();
  return {
    ...rt,
    dataRoot,
    cgroupParent,
    driver,
    async close() {
      await wipeHostRuntime(rt);
      await rm(dataRoot, { recursive: true, force: true });
    },
  };
}

/** Removes the (empty) bench cgroup parent from every hierarchy; groups with processes are left. */
export async function removeCgroupParent(cgroupParent: string): Promise<void> {
  for (const c of V1_CONTROLLERS) await rmdir(join('/sys/fs/cgroup', c, cgroupParent)).catch(() => undefined);
}

/** A busybox container spec as the bench uses it: no network, 1 CPU, 64 MiB, 64 pids, unprivileged. */
export function benchSpec(id: string): ContainerSpec {
  return {
    id,
    hostname: id,
    template: 'busybox',
    resources: { cpus: 1, memoryBytes: 64 * 1024 * 1024, pidsMax: 64 },
    network: { mode: 'none' },
    privileged: false,
  };
}
