import { promises as fs, readFileSync } from 'node:fs';
import { release } from 'node:os';
import { join } from 'node:path';
import { RuntimeError } from '../../common/errors';
import { CgroupCapabilities, CgroupDriver, CgroupLimits, CgroupState, CgroupStats } from '../cgroup.driver';
import {
  CgroupBusyError,
  CgroupLimitRejectedError,
  CgroupNotFoundError,
  CgroupUnsupportedError,
  cgroupFsError,
} from '../cgroup.errors';
import { CPU_PERIOD_US, cpusToQuotaUs, validateLimits } from '../cgroup.limits';
import { validateCgroupPath, validatePid } from '../cgroup.paths';
import { signalGroupFrozen } from '../cgroup.signal';
import {
  childGroups,
  errnoOf,
  parseKeyed,
  pathExists,
  readNumber,
  readOptional,
  removeGroupTree,
  treePids,
  waitUntil,
  writeControl,
  writeRaw,
  writePid,
} from '../cgroupfs.io';

/** Controllers the v2 driver enables for container groups when the host offers them. */
export const V2_WANTED_CONTROLLERS = ['cpu', 'memory', 'pids', 'io'] as const;
/** Controllers without which v2 cannot enforce Berth's core limits (detection prefers v1 then). */
export const V2_REQUIRED_CONTROLLERS = ['cpu', 'memory', 'pids'] as const;

export interface CgroupV2Options {
  /** The cgroup2 mount (`/sys/fs/cgroup` on a pure v2 host, `/sys/fs/cgroup/unified` on a hybrid one). */
  root?: string;
  /** Default freeze/thaw timeout. */
  freezeTimeoutMs?: number;
  /** Kernel release, for features that only show below the root (cgroup.kill ≥ 5.14). Default: os.release(). */
  kernelRelease?: string;
}

/**
 * cgroup v2: one unified tree. Controllers reach a group only when every ancestor lists them in
 * cgroup.subtree_control; the driver manages whichever of cpu/memory/pids/io the root offers, and the
 * core features (join, freeze, kill, stats of cpu time) work even with none of them.
 */
export class CgroupV2Driver implements CgroupDriver {
  readonly version = 2 as const;
  readonly root: string;
  private readonly freezeTimeoutMs: number;
  private readonly controllers: string[];
  private readonly caps: CgroupCapabilities;

  constructor(options: CgroupV2Options = {}) {
    this.root = options.root ?? '/sys/fs/cgroup';
    this.freezeTimeoutMs = options.freezeTimeoutMs ?? 5000;
    let available: string[];
    try {
      available = readFileSync(join(this.root, 'cgroup.controllers'), 'utf8').trim().split(/\s+/);
    } catch (e) {
      throw new CgroupUnsupportedError('v2 (no cgroup.controllers at the root)', {
        root: this.root,
        cause: errnoOf(e),
      });
    }
    this.controllers = V2_WANTED_CONTROLLERS.filter((c) => available.includes(c));
    const has = (c: string) => this.controllers.includes(c);
    this.caps = {
      version: 2,
      controllers: [...this.controllers],
      limits: {
        cpus: has('cpu'),
        cpuWeight: has('cpu'),
        memoryBytes: has('memory'),
        swapLimit: has('memory'),
        pidsMax: has('pids'),
        ioWeight: has('io'),
      },
      freeze: true,
      atomicKill: kernelAtLeast(options.kernelRelease ?? release(), 5, 14),
    };
  }

  capabilities(): CgroupCapabilities {
    return structuredClone(this.caps);
  }

  async create(path: string, limits?: CgroupLimits): Promise<void> {
    const p = validateCgroupPath(path);
    if (limits) validateLimits(limits);
    let dir = this.root;
    // What the parent offers its children; read from cgroup.controllers, which the kernel fills from the
    // grandparent's subtree_control (a fake tree may lack it: then what we enabled one level up).
    let offered = this.controllers;
    for (const segment of p.split('/')) {
      const listed = await readOptional(join(dir, 'cgroup.controllers'));
      if (listed !== undefined) offered = tokens(listed);
      const wanted = this.controllers.filter((c) => offered.includes(c));
      await this.enableSubtree(dir, wanted);
      offered = wanted;
      dir = join(dir, segment);
      try {
        await fs.mkdir(dir);
      } catch (e) {
        if (errnoOf(e) !== 'EEXIST') throw cgroupFsError('mkdir', dir, e);
      }
    }
    if (limits) await this.setLimits(p, limits);
  }

  procsFiles(path: string): string[] {
    return [join(this.root, validateCgroupPath(path), 'cgroup.procs')];
  }

  async addProcess(path: string, pid: number): Promise<void> {
    validatePid(pid);
    await writePid(this.procsFiles(path)[0], pid, path);
  }

  async setLimits(path: string, limits: CgroupLimits): Promise<void> {
    const p = validateCgroupPath(path);
    validateLimits(limits);
    const dir = await this.groupDir(p);
    const { cpus, cpuWeight, memoryBytes, pidsMax, ioWeight } = limits;
    if (cpus !== undefined) {
      this.need('cpu', 'cpus');
      const quota = cpus === null ? 'max' : String(cpusToQuotaUs(cpus));
      await writeControl(join(dir, 'cpu.max'), `${quota} ${CPU_PERIOD_US}`);
    }
    if (cpuWeight !== undefined) {
      this.need('cpu', 'cpuWeight');
      await writeControl(join(dir, 'cpu.weight'), String(cpuWeight));
    }
    if (memoryBytes !== undefined) {
      this.need('memory', 'memoryBytes');
      await this.setMemory(p, dir, memoryBytes);
    }
    if (pidsMax !== undefined) {
      this.need('pids', 'pidsMax');
      await writeControl(join(dir, 'pids.max'), pidsMax === null ? 'max' : String(pidsMax));
    }
    // IO weight is best effort by contract (capabilities().limits.ioWeight says whether it applies).
    if (ioWeight !== undefined && this.controllers.includes('io')) {
      await writeControl(join(dir, 'io.weight'), `default ${ioWeight}`);
    }
  }

  async freeze(path: string, timeoutMs = this.freezeTimeoutMs): Promise<void> {
    const p = validateCgroupPath(path);
    const dir = await this.groupDir(p);
    await writeControl(join(dir, 'cgroup.freeze'), '1');
    try {
      await waitUntil(() => this.frozenFlag(dir, 1), { path: p, wanted: 'frozen', timeoutMs });
    } catch (e) {
      await writeControl(join(dir, 'cgroup.freeze'), '0').catch(() => undefined);
      throw e;
    }
  }

  async thaw(path: string, timeoutMs = this.freezeTimeoutMs): Promise<void> {
    const p = validateCgroupPath(path);
    const dir = await this.groupDir(p);
    await writeControl(join(dir, 'cgroup.freeze'), '0');
    await waitUntil(() => this.frozenFlag(dir, 0), { path: p, wanted: 'thawed', timeoutMs });
  }

  async state(path: string): Promise<CgroupState> {
    const dir = join(this.root, validateCgroupPath(path));
    if (!(await pathExists(dir))) return 'missing';
    return (await this.frozenFlag(dir, 1)) ? 'frozen' : 'running';
  }

  async stats(path: string): Promise<CgroupStats> {
    const dir = await this.groupDir(validateCgroupPath(path));
    const [cpuStat, current, peak, pids, events] = await Promise.all([
      readOptional(join(dir, 'cpu.stat')),
      readNumber(join(dir, 'memory.current')),
      readNumber(join(dir, 'memory.peak')),
      readNumber(join(dir, 'pids.current')),
      readOptional(join(dir, 'memory.events')),
    ]);
    return {
      cpuUsageNs: (parseKeyed(cpuStat ?? '').get('usage_usec') ?? 0) * 1000,
      memoryCurrentBytes: current ?? 0,
      memoryPeakBytes: peak ?? null,
      pidsCurrent: pids ?? 0,
      oomKills: parseKeyed(events ?? '').get('oom_kill') ?? 0,
    };
  }

  async pids(path: string): Promise<number[]> {
    const pids = await treePids(join(this.root, validateCgroupPath(path)));
    return [...new Set(pids)].sort((a, b) => a - b);
  }

  async killAll(path: string, signal: NodeJS.Signals): Promise<void> {
    const p = validateCgroupPath(path);
    const killFile = join(this.root, p, 'cgroup.kill');
    // cgroup.kill SIGKILLs the whole subtree in the kernel, racing no fork.
    if (signal === 'SIGKILL' && (await pathExists(killFile))) {
      await writeControl(killFile, '1');
      return;
    }
    await signalGroupFrozen(this, p, signal);
  }

  async destroy(path: string): Promise<void> {
    const p = validateCgroupPath(path);
    const remaining = await this.pids(p);
    if (remaining.length > 0) throw new CgroupBusyError(p, remaining);
    await removeGroupTree(join(this.root, p), p);
  }

  async list(parent: string): Promise<string[]> {
    return (await childGroups(join(this.root, validateCgroupPath(parent)))).sort();
  }

  async exists(path: string): Promise<boolean> {
    return pathExists(join(this.root, validateCgroupPath(path)));
  }

  /**
   * memory.max alone would make the kernel OOM-kill the group's processes when it cannot reclaim down to
   * a lower limit. To give v1's "reclaim or refuse" behaviour instead, ask for reclaim first
   * (memory.reclaim, ≥ 5.19) and refuse when usage stays above the new limit; a kernel without
   * memory.reclaim cannot be asked, and a limit below the usage is refused there (the old one stays).
   */
  private async setMemory(p: string, dir: string, bytes: number | null): Promise<void> {
    if (bytes !== null) {
      const current = await readNumber(join(dir, 'memory.current'));
      const reclaim = join(dir, 'memory.reclaim');
      if (current !== undefined && current > bytes) {
        if (!(await pathExists(reclaim)))
          throw new CgroupLimitRejectedError(p, 'memoryBytes', bytes, current);
        // EAGAIN means "could not reclaim all of it": the check below decides.
        await writeRaw(reclaim, String(current - bytes)).catch(() => undefined);
        const after = (await readNumber(join(dir, 'memory.current'))) ?? 0;
        if (after > bytes) throw new CgroupLimitRejectedError(p, 'memoryBytes', bytes, after);
      }
    }
    await writeControl(join(dir, 'memory.max'), bytes === null ? 'max' : String(bytes));
    // Swap off; the file is absent when the kernel has no swap accounting (then there is nothing to limit).
    const swap = join(dir, 'memory.swap.max');
    if (await pathExists(swap)) await writeControl(swap, '0');
  }

  /** Enables the missing ones of `wanted` in a group's cgroup.subtree_control, in one write. */
  private async enableSubtree(dir: string, wanted: string[]): Promise<void> {
    if (wanted.length === 0) return;
    const file = join(dir, 'cgroup.subtree_control');
    const enabled = tokens((await readOptional(file)) ?? '');
    const missing = wanted.filter((c) => !enabled.includes(c));
    if (missing.length === 0) return;
    try {
      await writeRaw(file, missing.map((c) => `+${c}`).join(' '));
    } catch (e) {
      // EBUSY: the group holds processes itself (v2's no-internal-processes rule) or a controller is
      // bound to a v1 hierarchy.
      throw new RuntimeError(
        errnoOf(e) === 'EBUSY' ? 'KERNEL_ERROR' : 'KERNEL_EPERM',
        `cannot enable ${missing.join(', ')} in ${file} (${errnoOf(e) ?? String(e)}): ` +
          'the cgroup parent must not hold processes itself, and the controllers must not be used by cgroup v1',
        { file, controllers: missing, errno: errnoOf(e) },
        { cause: e },
      );
    }
  }

  private async frozenFlag(dir: string, wanted: 0 | 1): Promise<boolean> {
    const events = await readOptional(join(dir, 'cgroup.events'));
    return parseKeyed(events ?? '').get('frozen') === wanted;
  }

  private need(controller: string, limit: string): void {
    if (!this.controllers.includes(controller)) {
      throw new CgroupUnsupportedError(`limit ${limit} (controller ${controller})`, {
        root: this.root,
        limit,
      });
    }
  }

  private async groupDir(p: string): Promise<string> {
    const dir = join(this.root, p);
    if (!(await pathExists(dir))) throw new CgroupNotFoundError(p);
    return dir;
  }
}

/** Words of a controllers/subtree_control file; `+cpu` (as a fake tree may hold it) reads as `cpu`. */
function tokens(text: string): string[] {
  return text
    .trim()
    .split(/\s+/)
    .filter(Boolean)
    .map((t) => t.replace(/^\+/, ''));
}

function kernelAtLeast(kernelRelease: string, major: number, minor: number): boolean {
  const m = /^(\d+)\.(\d+)/.exec(kernelRelease);
  if (!m) return false;
  const [maj, min] = [Number(m[1]), Number(m[2])];
  return maj > major || (maj === major && min >= minor);
}
