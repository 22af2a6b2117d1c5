/**
 * The cgroup layer's one interface (shaped like opencontainers/cgroups' `Manager` and youki's
 * `CgroupManager`). A container's group is addressed by a path relative to the cgroupfs root, normally
 * `<parent>/<containerId>` (see `cgroupPath`), where the parent (default `berth`) is per host so
 * simulated hosts and parallel test runs never share groups.
 *
 * Implementations: `CgroupV1Driver` (one directory per controller hierarchy) and `CgroupV2Driver` (the
 * unified hierarchy), chosen by `detectCgroups`. Shared code never asks which one it holds; it asks
 * `capabilities()` what works.
 */

/** Resource limits. `undefined` leaves a limit untouched; `null` removes it (unlimited). */
export interface CgroupLimits {
  /** CPU bandwidth in (fractional) cores: 0.5 → quota 50000 per period 100000. */
  cpus?: number | null;
  /** Relative CPU weight 1..10000 (default 100). v1 maps it to cpu.shares (100 → 1024). */
  cpuWeight?: number;
  /** Hard memory limit in bytes (≥ 1 MiB). Swap is always kept off for the group. */
  memoryBytes?: number | null;
  /** Maximum number of processes/threads in the group (≥ 1). */
  pidsMax?: number | null;
  /** Relative IO weight 1..10000 (default 100). Ignored where the host has no weight knob: see capabilities. */
  ioWeight?: number;
}

export type CgroupState = 'running' | 'frozen' | 'missing';

export interface CgroupStats {
  /** Total CPU time consumed by the group, in nanoseconds. */
  cpuUsageNs: number;
  memoryCurrentBytes: number;
  /** High-water mark of memory usage; null when the kernel does not track it (v2 before 5.19). */
  memoryPeakBytes: number | null;
  pidsCurrent: number;
  /** How many times the kernel's OOM killer killed a process of this group. */
  oomKills: number;
}

/** What this host's cgroups can do, so callers ask for features rather than versions. */
export interface CgroupCapabilities {
  version: 1 | 2;
  /** Controllers the driver manages on this host (e.g. `cpu`, `memory`, `pids`, `freezer`/`io`). */
  controllers: string[];
  limits: {
    cpus: boolean;
    cpuWeight: boolean;
    memoryBytes: boolean;
    /** Whether swap can be turned off exactly (v1 memsw / v2 memory.swap.max) rather than by swappiness. */
    swapLimit: boolean;
    pidsMax: boolean;
    ioWeight: boolean;
  };
  freeze: boolean;
  /** `cgroup.kill` kills a whole group atomically; otherwise killAll freezes, signals, thaws. */
  atomicKill: boolean;
}

export interface CgroupDriver {
  readonly version: 1 | 2;

  /** Absolute cgroupfs root the driver works under (e.g. `/sys/fs/cgroup`). */
  readonly root: string;

  /** Which controllers and limits work on this host. */
  capabilities(): CgroupCapabilities;

  /**
   * Creates the group (and missing ancestors) in every hierarchy the driver manages, makes it joinable
   * (v1: cpuset.cpus/mems copied from the parent; v2: controllers enabled in the ancestors'
   * cgroup.subtree_control), then applies `limits` if given. Idempotent: an existing group is kept and
   * only the limits are applied.
   * @throws InvalidArgumentError (INVALID_PATH / INVALID_ARGUMENT) on a bad path or limit,
   *   RuntimeError KERNEL_EPERM / KERNEL_ERROR when the kernel refuses.
   */
  create(path: string, limits?: CgroupLimits): Promise<void>;

  /**
   * The absolute `cgroup.procs` files a launcher must write its own pid to (each one, before it unshares
   * namespaces) to join the group: one per hierarchy on v1, exactly one on v2. Pure: does not touch the
   * filesystem, so the list can be handed to a helper program before the group exists.
   * @throws RuntimeError INVALID_PATH on a bad path.
   */
  procsFiles(path: string): string[];

  /**
   * Moves process `pid` (all its threads) into the group in every hierarchy.
   * @throws CgroupNotFoundError when the group is missing, RuntimeError NOT_FOUND when the process is gone.
   */
  addProcess(path: string, pid: number): Promise<void>;

  /**
   * Changes limits of an existing group, live. Lowering memory below current usage makes the kernel
   * reclaim first; when it cannot, the old limit stays and CgroupLimitRejectedError is thrown.
   * @throws CgroupNotFoundError, CgroupLimitRejectedError (CGROUP_LIMIT_REJECTED),
   *   RuntimeError UNSUPPORTED when a limit's controller is not available (except ioWeight, which is
   *   skipped: see capabilities), INVALID_ARGUMENT on an out-of-range value.
   */
  setLimits(path: string, limits: CgroupLimits): Promise<void>;

  /**
   * Freezes every process of the group and waits until the kernel reports the group really frozen.
   * @throws CgroupNotFoundError, RuntimeError TIMEOUT after `timeoutMs` (default 5000; the group is thawed
   *   again so it is not left half frozen).
   */
  freeze(path: string, timeoutMs?: number): Promise<void>;

  /**
   * Thaws the group and waits until the kernel reports it thawed.
   * @throws CgroupNotFoundError, RuntimeError TIMEOUT.
   */
  thaw(path: string, timeoutMs?: number): Promise<void>;

  /** `missing` when the group does not exist, `frozen` when fully frozen, else `running`. */
  state(path: string): Promise<CgroupState>;

  /**
   * Usage counters of the group.
   * @throws CgroupNotFoundError.
   */
  stats(path: string): Promise<CgroupStats>;

  /** Every pid in the group and its descendants, sorted, without duplicates; [] when the group is missing. */
  pids(path: string): Promise<number[]>;

  /**
   * Sends `signal` to every process in the group and its descendants (v2 SIGKILL: atomically via
   * cgroup.kill). Otherwise it freezes the group, signals each pid and thaws it, so no fork escapes and
   * the signal is delivered: a paused (frozen) group is left thawed. Does not wait for the processes to
   * exit: poll `pids` for that. No-op when the group is missing.
   */
  killAll(path: string, signal: NodeJS.Signals): Promise<void>;

  /**
   * Removes the group and its descendant groups (leaf first) from every hierarchy. Idempotent: a missing
   * group is fine.
   * @throws CgroupBusyError (CGROUP_BUSY) when processes remain in it; nothing is removed then.
   */
  destroy(path: string): Promise<void>;

  /** Names of the child groups directly under `parent` (union over hierarchies); [] when it is missing. */
  list(parent: string): Promise<string[]>;

  /** Whether the group exists in any hierarchy (a partial group from a crash counts: destroy it). */
  exists(path: string): Promise<boolean>;
}
