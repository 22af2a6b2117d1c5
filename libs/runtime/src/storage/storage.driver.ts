/**
 * The storage driver interface (incus/LXC-style): templates are read-only root filesystems, containers get a
 * writable volume cloned from one, snapshots and rollback work per container. Callers ask `info()` what a
 * driver can do instead of asking which driver it is.
 *
 * Idempotency contract shared by every driver:
 * - creating something that exists: `createTemplateVolume` returns the path of an existing *unsealed*
 *   template (an interrupted import resumes) and throws TEMPLATE_EXISTS for a sealed one; `clone` returns the
 *   existing volume when it was cloned from the same template (a retried job step) and throws VOLUME_EXISTS
 *   when it came from another template or from nowhere Berth knows; `snapshot` throws SNAPSHOT_EXISTS (a
 *   snapshot taken later would not hold the same data).
 * - deleting something missing (`delete`, `deleteTemplate`, `deleteSnapshot`) is a no-op.
 * - `prepare`, `sealTemplate`, `mount`, `unmount`, `release` can be called any number of times.
 * - every id (template, container, snapshot name) must match `^[a-z0-9][a-z0-9_.-]{0,127}$` without `..`,
 *   otherwise INVALID_NAME is thrown before anything is touched.
 */

export type StorageDriverName = 'btrfs' | 'overlay' | 'dir';

export interface StorageDriverInfo {
  name: StorageDriverName;
  /** Cloning a template costs O(1) in time and space, whatever the template's size. */
  instantClone: boolean;
  /** Snapshots and rollback are supported (possibly by copying: see `instantSnapshot`). */
  snapshots: boolean;
  /** Snapshots are copy-on-write (O(1)); false means a snapshot copies the container's data. */
  instantSnapshot: boolean;
  /** The driver can enforce a per-volume size limit. */
  quota: boolean;
  /** The rootfs is only usable after `mount()` (or after the launcher mounted `mountSpec()`). */
  needsMount: boolean;
  /** Deleting a template is refused while containers cloned from it exist (TEMPLATE_IN_USE). */
  templatesPinnedByClones: boolean;
}

export interface StorageDriverOptions {
  /** Directory owned by this driver, inside the data root (e.g. `<dataRoot>/storage/btrfs`). Absolute. */
  root: string;
  /** btrfs: size of the sparse pool image created when no btrfs filesystem is given (default 20 GiB). */
  poolSizeBytes?: number;
  /**
   * btrfs: a directory on an existing btrfs filesystem to use as the pool instead of a loop-mounted image.
   * Berth then never mounts or unmounts anything.
   */
  btrfsPath?: string;
  /**
   * btrfs: the berth-launch helper whose `btrfs-snapshot` / `btrfs-delete` subcommands take snapshots and
   * delete subvolumes by ioctl (one static exec instead of the dynamic `btrfs` program), sent to one
   * long-lived `berth-launch btrfs-serve` (no spawn per operation; see BtrfsHelperServer). Default: the
   * build output (see `helperPath()`); a helper without `btrfs-serve` is spawned per operation, and when
   * it is not built, or is too old to know the subcommands, the driver uses the `btrfs` command instead.
   * `false` always uses the `btrfs` command.
   */
  nativeHelper?: string | false;
}

export interface CloneResult {
  /** Where the container's root filesystem is (usable once `mount()` has run when `info().needsMount`). */
  rootfs: string;
}

/** A mount the launcher can perform itself (one mount(2) in the helper instead of a `mount` process). */
export interface MountSpec {
  type: 'overlay';
  /** The mount source; carries the `berth` prefix so reconcile can find Berth's mounts. */
  source: string;
  /** Where to mount: the path `rootfsPath()` returns. */
  target: string;
  /** The mount(2) data string, e.g. `lowerdir=…,upperdir=…,workdir=…`. */
  options: string;
}

export interface SnapshotInfo {
  name: string;
  /** When the snapshot was taken (its directory's modification time). */
  createdAt: Date;
}

export interface StorageDriver {
  /** What this driver can do; constant for a driver, no I/O. */
  info(): StorageDriverInfo;

  /**
   * Makes the pool ready: creates the driver's directories and, for btrfs without `btrfsPath`, the sparse
   * image, its filesystem, the loop device and the mount. Reuses whatever a previous process left (mounted
   * pool, attached loop device, existing image). Must be called before any other operation.
   * Throws DEPENDENCY_MISSING when host programs are absent, COMMAND_FAILED/KERNEL_EPERM when the kernel
   * refuses.
   */
  prepare(): Promise<void>;

  /**
   * Undoes what `prepare` mounted or attached (btrfs loop pool: unmount, detach the loop device). Data stays
   * on disk; `prepare` brings it back. Container rootfs mounts must be unmounted first (WRONG_STATE).
   */
  release(): Promise<void>;

  /**
   * Creates an empty writable template volume and returns its path, to be filled with a rootfs and then
   * sealed. Returns the same path when the template exists but is not sealed yet; throws TEMPLATE_EXISTS
   * when it is sealed, INVALID_NAME for a bad id.
   */
  createTemplateVolume(templateId: string): Promise<string>;

  /**
   * Makes a filled template read-only and available for clones (btrfs: read-only subvolume). Idempotent.
   * Throws TEMPLATE_NOT_FOUND when the template volume does not exist.
   */
  sealTemplate(templateId: string): Promise<void>;

  /** Path of a template's root filesystem (whether or not it exists). Throws INVALID_NAME for a bad id. */
  templatePath(templateId: string): string;

  /** True when the template exists and is sealed (ready for clones). Unsealed templates answer false. */
  hasTemplate(templateId: string): Promise<boolean>;

  /**
   * Deletes a template, sealed or not. No-op when missing. Throws TEMPLATE_IN_USE when clones depend on it
   * (drivers with `templatesPinnedByClones`).
   */
  deleteTemplate(templateId: string): Promise<void>;

  /** Ids of the sealed templates, sorted. */
  listTemplates(): Promise<string[]>;

  /**
   * Creates the container's writable volume from a sealed template. Throws TEMPLATE_NOT_FOUND when the
   * template is missing or unsealed, VOLUME_EXISTS when the container has a volume from another template.
   * Returns the existing volume when it was already cloned from this template. A failed clone leaves nothing.
   */
  clone(templateId: string, containerId: string): Promise<CloneResult>;

  /** Where the container's rootfs is (or will be once mounted). Throws INVALID_NAME for a bad id. */
  rootfsPath(containerId: string): string;

  /**
   * Makes the rootfs usable (overlay: mounts it; others: no-op). Idempotent: an existing mount is kept.
   * Throws VOLUME_NOT_FOUND when the container has no volume.
   */
  mount(containerId: string): Promise<void>;

  /** Unmounts the rootfs when mounted (overlay); no-op otherwise and when the volume is missing. */
  unmount(containerId: string): Promise<void>;

  /** True when the rootfs is usable right now (always true for drivers that do not need a mount). */
  isMounted(containerId: string): Promise<boolean>;

  /**
   * The mount the launcher must perform to make the rootfs usable, or null when none is needed.
   * Throws VOLUME_NOT_FOUND when the container has no volume.
   */
  mountSpec(containerId: string): Promise<MountSpec | null>;

  /** Takes a snapshot. Throws VOLUME_NOT_FOUND, SNAPSHOT_EXISTS, INVALID_NAME. */
  snapshot(containerId: string, snapshotName: string): Promise<SnapshotInfo>;

  /** The container's snapshots, oldest first; empty when it has none or no volume. */
  listSnapshots(containerId: string): Promise<SnapshotInfo[]>;

  /**
   * Replaces the container's volume with the snapshot's content; the snapshot itself stays. The container
   * must be stopped; a mounted overlay rootfs is unmounted and mounted again around the swap.
   * Throws VOLUME_NOT_FOUND, SNAPSHOT_NOT_FOUND. On failure the volume is left as it was.
   */
  rollback(containerId: string, snapshotName: string): Promise<void>;

  /** Deletes one snapshot; no-op when missing. */
  deleteSnapshot(containerId: string, snapshotName: string): Promise<void>;

  /**
   * Deletes the container's volume and all its snapshots (unmounting its rootfs first); no-op when missing.
   * Throws WRONG_STATE when something else is still mounted inside the volume (never deletes across a mount).
   */
  delete(containerId: string): Promise<void>;

  /**
   * Disk space the container's own data takes, in bytes: what deleting the volume would roughly free
   * (btrfs: exclusive extents, not those shared with the template or snapshots; overlay: allocated blocks of
   * the upper layer; dir: allocated blocks of the rootfs, hard links once).
   * Throws VOLUME_NOT_FOUND.
   */
  usage(containerId: string): Promise<number>;

  /** Ids of the containers that have a volume (for reconcile and orphan detection), sorted. */
  list(): Promise<string[]>;
}
