import { existsSync, realpathSync } from 'node:fs';
import { promises as fs } from 'node:fs';
import { join } from 'node:path';
import { CgroupCapabilities, CgroupDriver, CgroupLimits, CgroupState, CgroupStats } from '../cgroup.driver';
import {
  CgroupBusyError,
  CgroupLimitRejectedError,
  CgroupNotFoundError,
  CgroupUnsupportedError,
  cgroupFsError,
} from '../cgroup.errors';
import {
  CPU_PERIOD_US,
  cpusToQuotaUs,
  cpuWeightToShares,
  ioWeightToBlkioWeight,
  validateLimits,
} from '../cgroup.limits';
import { validateCgroupPath, validatePid } from '../cgroup.paths';
import { ALL_DEVICES, CONTAINER_DEVICE_RULES } from '../device-rules';
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

/** Hierarchies a container group must be in; without them the v1 driver cannot work. */
export const V1_REQUIRED_CONTROLLERS = ['cpu', 'cpuacct', 'memory', 'pids', 'freezer'] as const;
/** Hierarchies used when mounted (`devices`: the devices a container may use, CONTAINER_DEVICE_RULES). */
export const V1_OPTIONAL_CONTROLLERS = ['blkio', 'cpuset', 'devices'] as const;

type V1Controller = (typeof V1_REQUIRED_CONTROLLERS)[number] | (typeof V1_OPTIONAL_CONTROLLERS)[number];

export interface CgroupV1Options {
  /** The tmpfs holding one mount per controller (`<root>/memory`, `<root>/cpu`, …). */
  root?: string;
  /** Default freeze/thaw timeout. */
  freezeTimeoutMs?: number;
}

/**
 * cgroup v1: one directory tree per controller. A group is the same relative path in every hierarchy;
 * co-mounted controllers (`cpu,cpuacct` with `cpu` and `cpuacct` symlinks) count once.
 */
export class CgroupV1Driver implements CgroupDriver {
  readonly version = 1 as const;
  readonly root: string;
  private readonly freezeTimeoutMs: number;
  /** controller → hierarchy mount directory (absolute, symlinks resolved). */
  private readonly mounts = new Map<V1Controller, string>();
  /** Distinct hierarchy directories, for operations done once per hierarchy. */
  private readonly hierarchies: string[];
  private readonly caps: CgroupCapabilities;

  constructor(options: CgroupV1Options = {}) {
    this.root = options.root ?? '/sys/fs/cgroup';
    this.freezeTimeoutMs = options.freezeTimeoutMs ?? 5000;
    for (const c of [...V1_REQUIRED_CONTROLLERS, ...V1_OPTIONAL_CONTROLLERS]) {
      const dir = join(this.root, c);
      if (existsSync(join(dir, 'cgroup.procs'))) this.mounts.set(c, realpathSync(dir));
    }
    const missing = V1_REQUIRED_CONTROLLERS.filter((c) => !this.mounts.has(c));
    if (missing.length > 0) {
      throw new CgroupUnsupportedError(`v1 controller(s) ${missing.join(', ')}`, {
        root: this.root,
        missing,
      });
    }
    this.hierarchies = [...new Set(this.mounts.values())];
    this.caps = this.probeCapabilities();
  }

  capabilities(): CgroupCapabilities {
    return structuredClone(this.caps);
  }

  async create(path: string, limits?: CgroupLimits): Promise<void> {
    const p = validateCgroupPath(path);
    if (limits) validateLimits(limits);
    const cpuset = this.mounts.get('cpuset');
    // The hierarchies side by side; in each, the group itself first: a start completes its group here, and
    // an existing one costs one round trip per hierarchy (the levels above are walked only when missing).
    await Promise.all(
      this.hierarchies.map(async (hierarchy) => {
        // (cpuset: every level, whose cpus and mems a crash may have left empty, is looked at each time)
        if (hierarchy !== cpuset && (await mkdirUnlessParentMissing(join(hierarchy, p)))) return;
        let dir = hierarchy;
        for (const segment of p.split('/')) {
          const parent = dir;
          dir = join(dir, segment);
          await mkdirIdempotent(dir);
          // A new cpuset group starts with empty cpus/mems, and the kernel refuses tasks until both are set.
          if (hierarchy === cpuset) {
            for (const file of ['cpuset.cpus', 'cpuset.mems'])
              await copyIfEmpty(join(parent, file), join(dir, file));
          }
        }
      }),
    );
    await this.restrictDevices(p);
    if (limits) await this.setLimits(p, limits);
  }

  /**
   * The group may use only the devices of CONTAINER_DEVICE_RULES. A group that restricts nothing yet (new:
   * it starts with its parent's `a *:* rwm`) is emptied first (`a` to devices.deny), then given each rule;
   * one restricted already is given the rules it lacks (adding one is idempotent: a create interrupted
   * half-way through them completes here). A group made before the devices hierarchy was used, holding a
   * running container, is left as it is: emptying it would refuse its processes /dev/null for a moment;
   * its next start (no process in it) restricts it.
   */
  private async restrictDevices(p: string): Promise<void> {
    const mount = this.mounts.get('devices');
    if (!mount) return;
    const dir = join(mount, p);
    const list = ((await readOptional(join(dir, 'devices.list'))) ?? '').split('\n').map((l) => l.trim());
    if (list.includes(ALL_DEVICES)) {
      if ((await readOptional(join(dir, 'cgroup.procs')))?.trim()) return;
      await writeControl(join(dir, 'devices.deny'), 'a');
    } else if (CONTAINER_DEVICE_RULES.every((r) => list.includes(r))) return;
    for (const rule of CONTAINER_DEVICE_RULES) {
      if (!list.includes(rule)) await writeControl(join(dir, 'devices.allow'), rule);
    }
  }

  procsFiles(path: string): string[] {
    const p = validateCgroupPath(path);
    return this.hierarchies.map((h) => join(h, p, 'cgroup.procs'));
  }

  async addProcess(path: string, pid: number): Promise<void> {
    validatePid(pid);
    for (const file of this.procsFiles(path)) await writePid(file, pid, path);
  }

  async setLimits(path: string, limits: CgroupLimits): Promise<void> {
    const p = validateCgroupPath(path);
    validateLimits(limits);
    const { cpus, cpuWeight, memoryBytes, pidsMax, ioWeight } = limits;
    if (cpus !== undefined) {
      const cpu = await this.groupDir('cpu', p);
      if (cpus === null) await writeControl(join(cpu, 'cpu.cfs_quota_us'), '-1');
      else {
        await writeControl(join(cpu, 'cpu.cfs_period_us'), String(CPU_PERIOD_US));
        await writeControl(join(cpu, 'cpu.cfs_quota_us'), String(cpusToQuotaUs(cpus)));
      }
    }
    if (cpuWeight !== undefined) {
      await writeControl(
        join(await this.groupDir('cpu', p), 'cpu.shares'),
        String(cpuWeightToShares(cpuWeight)),
      );
    }
    if (memoryBytes !== undefined) await this.setMemory(p, memoryBytes);
    if (pidsMax !== undefined) {
      await writeControl(
        join(await this.groupDir('pids', p), 'pids.max'),
        pidsMax === null ? 'max' : String(pidsMax),
      );
    }
    if (ioWeight !== undefined && this.blkioWeightFile) {
      const blkio = await this.groupDir('blkio', p);
      await writeControl(join(blkio, this.blkioWeightFile), String(ioWeightToBlkioWeight(ioWeight)));
    }
  }

  async freeze(path: string, timeoutMs = this.freezeTimeoutMs): Promise<void> {
    const p = validateCgroupPath(path);
    const file = join(await this.groupDir('freezer', p), 'freezer.state');
    await writeControl(file, 'FROZEN');
    try {
      // Re-writing FROZEN while FREEZING retries tasks that were forking or in a syscall (runc does so).
      await waitUntil(
        async () => (await readOptional(file))?.trim() === 'FROZEN',
        { path: p, wanted: 'FROZEN', timeoutMs },
        () => writeControl(file, 'FROZEN'),
      );
    } catch (e) {
      await writeControl(file, 'THAWED').catch(() => undefined);
      throw e;
    }
  }

  async thaw(path: string, timeoutMs = this.freezeTimeoutMs): Promise<void> {
    const p = validateCgroupPath(path);
    const file = join(await this.groupDir('freezer', p), 'freezer.state');
    await writeControl(file, 'THAWED');
    await waitUntil(async () => (await readOptional(file))?.trim() === 'THAWED', {
      path: p,
      wanted: 'THAWED',
      timeoutMs,
    });
  }

  async state(path: string): Promise<CgroupState> {
    const p = validateCgroupPath(path);
    if (!(await this.exists(p))) return 'missing';
    const s = await readOptional(join(this.dir('freezer', p), 'freezer.state'));
    return s?.trim() === 'FROZEN' ? 'frozen' : 'running';
  }

  async stats(path: string): Promise<CgroupStats> {
    const p = validateCgroupPath(path);
    const memory = await this.groupDir('memory', p);
    const [usage, current, peak, pids, oom] = await Promise.all([
      readNumber(join(this.dir('cpuacct', p), 'cpuacct.usage')),
      readNumber(join(memory, 'memory.usage_in_bytes')),
      readNumber(join(memory, 'memory.max_usage_in_bytes')),
      readNumber(join(this.dir('pids', p), 'pids.current')),
      readOptional(join(memory, 'memory.oom_control')),
    ]);
    return {
      cpuUsageNs: usage ?? 0,
      memoryCurrentBytes: current ?? 0,
      memoryPeakBytes: peak ?? null,
      pidsCurrent: pids ?? 0,
      oomKills: parseKeyed(oom ?? '').get('oom_kill') ?? 0,
    };
  }

  async pids(path: string): Promise<number[]> {
    const p = validateCgroupPath(path);
    // Union over hierarchies: a process half-way through joining is in some of them only.
    const all = await Promise.all(this.hierarchies.map((h) => treePids(join(h, p))));
    return [...new Set(all.flat())].sort((a, b) => a - b);
  }

  async killAll(path: string, signal: NodeJS.Signals): Promise<void> {
    await signalGroupFrozen(this, validateCgroupPath(path), signal);
  }

  async destroy(path: string): Promise<void> {
    const p = validateCgroupPath(path);
    const remaining = await this.pids(p);
    if (remaining.length > 0) throw new CgroupBusyError(p, remaining);
    for (const h of this.hierarchies) await removeGroupTree(join(h, p), p);
  }

  async list(parent: string): Promise<string[]> {
    const p = validateCgroupPath(parent);
    const names = await Promise.all(this.hierarchies.map((h) => childGroups(join(h, p))));
    return [...new Set(names.flat())].sort();
  }

  async exists(path: string): Promise<boolean> {
    const p = validateCgroupPath(path);
    for (const h of this.hierarchies) if (await pathExists(join(h, p))) return true;
    return false;
  }

  /**
   * Memory limit with swap off. memsw (memory+swap) must stay ≥ the memory limit at every moment, so
   * when raising it goes first and when lowering it goes second (runc orders it the same way).
   */
  private async setMemory(p: string, bytes: number | null): Promise<void> {
    const dir = await this.groupDir('memory', p);
    const limitFile = join(dir, 'memory.limit_in_bytes');
    const value = bytes === null ? '-1' : String(bytes);
    const writeLimit = async () => {
      try {
        await writeRaw(limitFile, value);
      } catch (e) {
        // EBUSY: usage is above the new limit and the kernel could not reclaim enough; the old limit stays.
        if (errnoOf(e) === 'EBUSY' && bytes !== null) {
          const usage = await readNumber(join(dir, 'memory.usage_in_bytes')).catch(() => undefined);
          throw new CgroupLimitRejectedError(p, 'memoryBytes', bytes, usage ?? null, e);
        }
        throw cgroupFsError(`write ${value} to`, limitFile, e);
      }
    };
    if (!this.caps.limits.swapLimit) {
      await writeLimit();
      await writeControl(join(dir, 'memory.swappiness'), '0');
      return;
    }
    const memswFile = join(dir, 'memory.memsw.limit_in_bytes');
    const currentMemsw = (await readNumber(memswFile)) ?? Infinity;
    const writeMemsw = async () => {
      try {
        await writeRaw(memswFile, value);
      } catch (e) {
        if (errnoOf(e) === 'EBUSY' && bytes !== null) {
          const usage = await readNumber(join(dir, 'memory.memsw.usage_in_bytes')).catch(() => undefined);
          throw new CgroupLimitRejectedError(p, 'memoryBytes (memory+swap)', bytes, usage ?? null, e);
        }
        throw cgroupFsError(`write ${value} to`, memswFile, e);
      }
    };
    if (bytes === null || bytes > currentMemsw) {
      await writeMemsw();
      await writeLimit();
    } else {
      const previous = await readOptional(limitFile);
      await writeLimit();
      try {
        await writeMemsw();
      } catch (e) {
        // Put the old memory limit back so a rejected change leaves the group as it was.
        if (previous !== undefined) await writeRaw(limitFile, previous.trim()).catch(() => undefined);
        throw e;
      }
    }
  }

  private dir(controller: V1Controller, p: string): string {
    const mount = this.mounts.get(controller);
    if (!mount) throw new CgroupUnsupportedError(`v1 controller ${controller}`, { root: this.root });
    return join(mount, p);
  }

  /** The group's directory in a hierarchy, which must exist. */
  private async groupDir(controller: V1Controller, p: string): Promise<string> {
    const dir = this.dir(controller, p);
    if (!(await pathExists(dir))) throw new CgroupNotFoundError(p, { controller });
    return dir;
  }

  /** blkio weight knob: CFQ's blkio.weight, BFQ's blkio.bfq.weight, or none (no IO weights here). */
  private get blkioWeightFile(): string | undefined {
    const blkio = this.mounts.get('blkio');
    if (!blkio) return undefined;
    return ['blkio.weight', 'blkio.bfq.weight'].find((f) => existsSync(join(blkio, f)));
  }

  private probeCapabilities(): CgroupCapabilities {
    const has = (c: V1Controller, file: string) => {
      const m = this.mounts.get(c);
      return m !== undefined && existsSync(join(m, file));
    };
    return {
      version: 1,
      controllers: [...this.mounts.keys()],
      limits: {
        cpus: has('cpu', 'cpu.cfs_quota_us'),
        cpuWeight: has('cpu', 'cpu.shares'),
        memoryBytes: has('memory', 'memory.limit_in_bytes'),
        swapLimit: has('memory', 'memory.memsw.limit_in_bytes'),
        pidsMax: true, // pids.max only exists below the root, but the pids hierarchy is required
        ioWeight: this.blkioWeightFile !== undefined,
      },
      freeze: true,
      atomicKill: false,
    };
  }
}

async function mkdirIdempotent(dir: string): Promise<void> {
  try {
    await fs.mkdir(dir);
  } catch (e) {
    if (errnoOf(e) !== 'EEXIST') throw cgroupFsError('mkdir', dir, e);
  }
}

/** Makes `dir` (or finds it made); false, making nothing, when its parent is missing. */
async function mkdirUnlessParentMissing(dir: string): Promise<boolean> {
  try {
    await fs.mkdir(dir);
  } catch (e) {
    const code = errnoOf(e);
    if (code === 'ENOENT') return false;
    if (code !== 'EEXIST') throw cgroupFsError('mkdir', dir, e);
  }
  return true;
}

async function copyIfEmpty(from: string, to: string): Promise<void> {
  if ((await readOptional(to))?.trim()) return;
  const value = (await readOptional(from))?.trim();
  if (value) await writeControl(to, value);
}
