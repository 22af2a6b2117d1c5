import { realpath } from 'node:fs/promises';
import { availableParallelism, totalmem } from 'node:os';
import { dirname, join, relative, resolve } from 'node:path';
import { RuntimeError } from './common/errors';
import { detectCgroups } from './cgroups/cgroup.detect';
import type { CgroupDriver } from './cgroups/cgroup.driver';
import {
  createStorageDriver,
  detectStorageDrivers,
  preferredStorageDriver,
  storageRoot,
} from './storage/registry';
import type { StorageDriver, StorageDriverName } from './storage/storage.driver';
import { ContainerRuntime, detectUserns, type NetworkSettings } from './container/container-runtime';
import { TemplateLibrary } from './container/template-library';

export interface HostRuntimeOptions {
  dataRoot: string;
  cgroupParent?: string;
  /** `auto` picks btrfs (loop pool), else overlay, else dir. */
  storageDriver?: StorageDriverName | 'auto';
  /** Size of the sparse btrfs pool image when Berth creates one. */
  btrfsPoolBytes?: number;
  /** A directory on an existing btrfs filesystem to use instead of a loop pool. */
  btrfsPath?: string;
  network?: NetworkSettings;
  /** Unprivileged containers by default when the kernel supports user namespaces (default true). */
  userns?: boolean;
  usernsHostUid?: number;
  stopGraceMs?: number;
  cgroupRoot?: string;
  helper?: string;
}

export interface HostRuntime {
  containers: ContainerRuntime;
  templates: TemplateLibrary;
  storage: StorageDriver;
  cgroups: CgroupDriver;
}

/** `path` with its links resolved, as far as it exists (the rest, not made yet, appended as it is). */
export async function resolvedPath(path: string): Promise<string> {
  const absolute = resolve(path);
  let existing = absolute;
  for (;;) {
    try {
      const real = await realpath(existing);
      return join(real, relative(existing, absolute));
    } catch {
      const parent = dirname(existing);
      if (parent === existing) return absolute;
      existing = parent;
    }
  }
}

/**
 * Wires a host's runtime from detection: cgroup driver, storage driver (prepared: the btrfs loop pool is
 * created or re-attached), containers and templates. Used by the worker, the CLI and the benchmarks.
 */
export async function openHostRuntime(given: HostRuntimeOptions): Promise<HostRuntime> {
  // The kernel reports mounts and loop devices' backing files by their real paths: a data root reached
  // through a link, compared as written, looked unmounted at each open (its pool attached and mounted
  // once more every time).
  const options = { ...given, dataRoot: await resolvedPath(given.dataRoot) };
  const cgroups = detectCgroups(options.cgroupRoot);
  let name = options.storageDriver ?? 'auto';
  const detections = await detectStorageDrivers(options.dataRoot);
  if (name === 'auto') name = preferredStorageDriver(detections);
  const detection = detections.find((d) => d.name === name);
  if (detection && !detection.usable) {
    throw new RuntimeError(
      'DEPENDENCY_MISSING',
      `storage driver ${name} cannot run here: ${detection.reason}`,
      {
        driver: name,
      },
    );
  }
  const storage = createStorageDriver(name, {
    root: storageRoot(options.dataRoot, name),
    poolSizeBytes: options.btrfsPoolBytes,
    btrfsPath: options.btrfsPath,
  });
  await storage.prepare();
  const userns = (options.userns ?? true) && (await detectUserns());
  const usernsHostUid = options.usernsHostUid ?? 100_000;
  const containers = new ContainerRuntime({
    dataRoot: options.dataRoot,
    cgroups,
    storage,
    cgroupParent: options.cgroupParent,
    network: options.network,
    usernsHostUid,
    usernsSupported: userns,
    stopGraceMs: options.stopGraceMs,
    helper: options.helper,
    hostCpus: availableParallelism(),
    hostMemoryBytes: totalmem(),
  });
  const templates = new TemplateLibrary({
    dataRoot: options.dataRoot,
    storage,
    usernsHostUid: userns ? usernsHostUid : null,
  });
  return { containers, templates, storage, cgroups };
}

/**
 * Empties a host: destroys every container, removes what reconcile finds, deletes the templates and
 * releases the storage pool (the btrfs loop device). For tests, benchmarks and decommissioning a data root;
 * best effort, so one failure does not leave the rest behind.
 */
export async function wipeHostRuntime(rt: HostRuntime): Promise<void> {
  for (const c of await rt.containers.list().catch(() => []))
    await rt.containers.destroy(c.id).catch(() => undefined);
  await rt.containers.reconcile({ remove: true }).catch(() => undefined);
  for (const t of await rt.templates.list().catch(() => []))
    await rt.templates.delete(t).catch(() => undefined);
  await rt.storage.release().catch(() => undefined);
}
