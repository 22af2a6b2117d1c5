import { constants } from 'node:fs';
import { chown, open, readFile, stat } from 'node:fs/promises';
import { run } from '../common/exec';
import { RuntimeError } from '../common/errors';
import { assertContainerName, assertCpus, assertPidsMax } from '../common/validation';
import type { CgroupDriver } from '../cgroups/cgroup.driver';
import { cgroupPath } from '../cgroups/cgroup.paths';
import { CgroupBusyError } from '../cgroups/cgroup.errors';
import type { StorageDriver } from '../storage/storage.driver';
import { Reverter } from '../common/reverter';
import { isAlive, stopInit, waitForExit, type InitRef } from '../namespaces/init-process';
import { helperPath, launchContainer, type LaunchOptions } from '../namespaces/launcher';
import { execInContainer, type ExecResult } from '../namespaces/container-exec';
import { ensureBridge } from '../network/bridge';
import { Ipam } from '../network/ipam';
import { attachContainer, detachContainer, listVeths, VETH_HOST_PREFIX, vethNameFor } from '../network/veth';
import { unguardPort } from '../network/port-guard';
import { parseCidr, formatIpv4 } from '../network/ipv4';
import { assertContainerId, ContainerStore } from './container-store';
import type {
  ContainerConfig,
  ContainerInfo,
  ContainerResources,
  ContainerSpec,
  ContainerStatus,
  OperationResult,
  ReconcileReport,
} from './container.types';

export interface NetworkSettings {
  /** Host bridge for `bridge` mode (default `berth0`). */
  bridge: string;
  /** Address pool, e.g. `10.88.0.0/24`; the bridge takes the first host address as the gateway. */
  cidr: string;
  /** Named network namespace that plays the host (simulated hosts, tests). */
  hostNetns?: string;
}

export interface ContainerRuntimeOptions {
  dataRoot: string;
  cgroups: CgroupDriver;
  storage: StorageDriver;
  /** cgroup parent of this host's containers (default `berth`). */
  cgroupParent?: string;
  network?: NetworkSettings;
  /** Host uid/gid that container root maps to in unprivileged mode (default 100000, 65536 ids). */
  usernsHostUid?: number;
  /** Whether the kernel lets us use user namespaces (detected when omitted). */
  usernsSupported?: boolean;
  /** SIGTERM → SIGKILL grace for stop (default 10 s). */
  stopGraceMs?: number;
  /** berth-launch binary (default: the build output, see helperPath()). */
  helper?: string;
  /** Host limits for validation of resources. */
  hostCpus?: number;
  hostMemoryBytes?: number;
}

export const USERNS_RANGE = 65536;

/** Reads whether unprivileged user namespaces are available on this kernel. */
export async function detectUserns(): Promise<boolean> {
  try {
    return Number((await readFile('/proc/sys/user/max_user_namespaces', 'utf8')).trim()) > 0;
  } catch {
    return false;
  }
}

/**
 * Lifecycle of system containers on one host: create (clone + cgroup + config), start, stop, restart,
 * pause/resume, live resize, snapshot/rollback, exec, destroy, and `list`/`reconcile` that rebuild the
 * truth from disk + /proc + cgroupfs after a restart of the calling process. Every operation is
 * idempotent: asking for the state a container is already in succeeds with `changed: false`.
 *
 * Nothing here keeps a process handle: a container is found through its record (init pid + start time)
 * and its cgroup, so the worker may die and come back at any moment.
 */
export class ContainerRuntime {
  readonly store: ContainerStore;
  private readonly cgroupParent: string;
  private readonly stopGraceMs: number;
  private readonly usernsHostUid: number;
  private readonly ipam?: Ipam;
  private usernsSupported?: boolean;

  constructor(private readonly opts: ContainerRuntimeOptions) {
    this.store = new ContainerStore(opts.dataRoot);
    this.cgroupParent = opts.cgroupParent ?? 'berth';
    this.stopGraceMs = opts.stopGraceMs ?? 10_000;
    this.usernsHostUid = opts.usernsHostUid ?? 100_000;
    this.usernsSupported = opts.usernsSupported;
    if (opts.network) this.ipam = new Ipam(opts.dataRoot, { cidr: opts.network.cidr });
  }

  get storage(): StorageDriver {
    return this.opts.storage;
  }
  get cgroups(): CgroupDriver {
    return this.opts.cgroups;
  }

  /** Host uid that container root maps to in unprivileged mode; templates are shifted to it at import. */
  get usernsBase(): number {
    return this.usernsHostUid;
  }

  private cg(id: string): string {
    return cgroupPath(id, this.cgroupParent);
  }

  private async userns(): Promise<boolean> {
    this.usernsSupported ??= await detectUserns();
    return this.usernsSupported;
  }

  /** Validates a spec; throws a typed error before anything is touched. */
  validateSpec(spec: ContainerSpec): void {
    assertContainerId(spec.id);
    assertContainerName(spec.hostname);
    this.validateResources(spec.resources);
    if (!['none', 'bridge'].includes(spec.network?.mode)) {
      throw new RuntimeError(
        'INVALID_ARGUMENT',
        `unknown network mode ${JSON.stringify(spec.network?.mode)}`,
      );
    }
    if (spec.network.mode === 'bridge' && !this.opts.network) {
      throw new RuntimeError('UNSUPPORTED', 'bridge networking is not configured on this host');
    }
  }

  private validateResources(r: Partial<ContainerResources>): void {
    if (r.cpus !== undefined) assertCpus(r.cpus, this.opts.hostCpus);
    if (r.pidsMax !== undefined) assertPidsMax(r.pidsMax);
    if (r.memoryBytes !== undefined) {
      const host = this.opts.hostMemoryBytes ?? Number.MAX_SAFE_INTEGER;
      if (!Number.isSafeInteger(r.memoryBytes) || r.memoryBytes < 4 * 1024 * 1024 || r.memoryBytes > host) {
        throw new RuntimeError('INVALID_SIZE', `memory must be between 4 MiB and the host's ${host} bytes`, {
          memoryBytes: r.memoryBytes,
        });
      }
    }
  }

  /**
   * Creates a stopped container: clones the template, creates its cgroup with the limits, writes its
   * record. Idempotent for the same spec (a retried job step); a different spec under an existing id is
   * refused with CONTAINER_EXISTS. A failure leaves nothing behind.
   */
  async create(spec: ContainerSpec): Promise<OperationResult> {
    this.validateSpec(spec);
    const existing = await this.store.readConfig(spec.id);
    if (existing && !existing.creating) {
      if (JSON.stringify(existing.spec) !== JSON.stringify(spec)) {
        throw new RuntimeError('CONTAINER_EXISTS', `container ${spec.id} exists with another configuration`, {
          id: spec.id,
        });
      }
      return { changed: false, info: await this.get(spec.id) };
    }
    if (existing?.creating) {
      // A create of this id died half way (the process crashed): its leftovers (volume, cgroup,
      // address) would make this attempt fail, so clear them first and start over.
      await this.destroy(spec.id);
    }
    if (!(await this.storage.hasTemplate(spec.template))) {
      throw new RuntimeError('TEMPLATE_NOT_FOUND', `template ${spec.template} does not exist on this host`, {
        template: spec.template,
      });
    }
    // An unprivileged container never runs as the host's root: without user namespaces (off in the kernel,
    // or in this runtime's options) it is refused, not silently made privileged (which only admins may ask).
    if (!spec.privileged && !(await this.userns())) {
      throw new RuntimeError(
        'UNSUPPORTED',
        'this host cannot run unprivileged containers: user namespaces are not available (kernel: user.max_user_namespaces, unprivileged_userns_clone)',
        { id: spec.id },
      );
    }
    const usernsHostUid = spec.privileged ? null : this.usernsHostUid;
    const config: ContainerConfig = {
      spec,
      storageDriver: this.storage.info().name,
      usernsHostUid,
      createdAt: existing?.createdAt ?? new Date().toISOString(),
      creating: true,
    };
    const revert = new Reverter();
    try {
      await this.store.writeConfig(spec.id, config);
      revert.add('remove record', () => this.store.remove(spec.id));
      // Undo steps are registered before their step: a step that fails half way (a cgroup made in some
      // hierarchies, limits refused) leaves a partial result, and both undos are idempotent. Nothing but
      // this container can own a volume or cgroup of its id.
      revert.add('delete volume', () => this.storage.delete(spec.id));
      revert.add('destroy cgroup', () => this.cgroups.destroy(this.cg(spec.id)));
      // The volume and the cgroup do not depend on each other: made side by side (a v1 cgroup in 7
      // hierarchies takes ≈ 6 ms, the clone ≈ 11 ms). Both finish before a failure is undone.
      const made = await Promise.allSettled([
        this.storage.clone(spec.template, spec.id).then(async () => {
          if (usernsHostUid !== null) await this.prepareUnprivilegedRootfs(spec.id, usernsHostUid);
        }),
        this.cgroups.create(this.cg(spec.id), this.limitsOf(spec.resources)),
      ]);
      for (const r of made) if (r.status === 'rejected') throw r.reason;
      if (spec.network.mode === 'bridge' && this.ipam) {
        await this.ipam.allocate(spec.id, spec.network.address);
        revert.add('release address', () => this.ipam?.release(spec.id));
      }
      delete config.creating;
      await this.store.writeConfig(spec.id, config);
      revert.success();
    } catch (e) {
      await revert.fail();
      throw e;
    }
    // Built from what was just written (a new container has no init): no second read of the record.
    return { changed: true, info: await this.stoppedInfo(spec.id, config) };
  }

  /**
   * Overlay upper and work dirs are created by host root: hand them to container root, which mounts the
   * overlay inside its user namespace (a work dir it cannot write makes the kernel mount `/` read-only).
   * Run at create and at every start (a rollback or an older create may have left them root's).
   */
  private async prepareUnprivilegedRootfs(id: string, hostUid: number): Promise<void> {
    const spec = await this.storage.mountSpec(id);
    for (const key of ['upperdir', 'workdir']) {
      const dir = spec?.options.match(new RegExp(`(?:^|,)${key}=([^,]+)`))?.[1];
      if (dir) await chown(dir, hostUid, hostUid);
    }
  }

  private limitsOf(r: ContainerResources) {
    return { cpus: r.cpus, memoryBytes: r.memoryBytes, pidsMax: r.pidsMax };
  }

  private async requireConfig(id: string): Promise<ContainerConfig> {
    assertContainerId(id);
    const config = await this.store.readConfig(id);
    if (!config || config.creating) {
      throw new RuntimeError('CONTAINER_NOT_FOUND', `container ${id} does not exist`, { id });
    }
    return config;
  }

  /** The container's live init, or null when it is not running. */
  private async liveInit(id: string): Promise<InitRef | null> {
    const ref = await this.store.readInit(id);
    return ref && (await isAlive(ref)) ? ref : null;
  }

  /** The truth about one container, from its record, /proc and cgroupfs. Throws CONTAINER_NOT_FOUND. */
  async get(id: string): Promise<ContainerInfo> {
    const config = await this.requireConfig(id);
    return this.infoOf(id, config);
  }

  /** The info of a container known to be stopped (just created or just stopped), without reading /proc. */
  private async stoppedInfo(id: string, config: ContainerConfig): Promise<ContainerInfo> {
    const ip = this.ipam ? await this.ipam.get(id) : null;
    return {
      id,
      status: 'stopped',
      spec: config.spec,
      storageDriver: config.storageDriver,
      init: null,
      ipAddress: ip?.address ?? null,
      createdAt: config.createdAt,
    };
  }

  private async infoOf(id: string, config: ContainerConfig): Promise<ContainerInfo> {
    const init = await this.liveInit(id);
    // An init the host never released runs no container (see `held`): the container is not running.
    return this.infoWith(id, config, init && (await this.held(id, init)) ? null : init);
  }

  /**
   * Whether `init` is a launch its host never released: the start's mark is there (a bridge start whose
   * caller was killed while it set up the network) and init still runs the launcher, not the container's
   * program (its executable is the helper's inode; after the exec it is the container's). The mark alone
   * would also catch a caller killed after the release and before it removed the mark.
   */
  private async held(id: string, init: InitRef): Promise<boolean> {
    if (!(await this.store.isStarting(id))) return false;
    try {
      const [exe, helper] = await Promise.all([
        stat(`/proc/${init.pid}/exe`),
        stat(helperPath(this.opts.helper)),
      ]);
      return exe.dev === helper.dev && exe.ino === helper.ino;
    } catch {
      return false;
    }
  }

  private async infoWith(id: string, config: ContainerConfig, init: InitRef | null): Promise<ContainerInfo> {
    let status: ContainerStatus = config.creating ? 'creating' : 'stopped';
    if (init) status = (await this.cgroups.state(this.cg(id))) === 'frozen' ? 'paused' : 'running';
    const ip = this.ipam ? await this.ipam.get(id) : null;
    return {
      id,
      status,
      spec: config.spec,
      storageDriver: config.storageDriver,
      init,
      ipAddress: ip?.address ?? null,
      createdAt: config.createdAt,
    };
  }

  /** Every container with a record, rebuilt from disk + /proc + cgroupfs (no memory of the caller needed). */
  /**
   * Bounds the containers' console logs (init's stdout and stderr, appended by the kernel to
   * `console.log` beside the config: outside the storage pool, so no quota holds it). A log past
   * `maxBytes` keeps its last `keepBytes` after a line saying so; init appends (O_APPEND) after that. What
   * init writes between the read and the truncation is lost: it is a console. Answers the ids trimmed.
   */
  async trimConsoleLogs(maxBytes: number, keepBytes = Math.floor(maxBytes / 8)): Promise<string[]> {
    if (!(maxBytes > 0) || !(keepBytes >= 0) || keepBytes > maxBytes) {
      throw new RuntimeError('INVALID_ARGUMENT', `invalid console log bounds ${maxBytes}/${keepBytes}`);
    }
    const trimmed: string[] = [];
    for (const id of await this.store.ids()) {
      const file = this.store.logFile(id);
      const size = await stat(file).then(
        (st) => st.size,
        () => 0,
      );
      if (size <= maxBytes) continue;
      // Gone since (a destroy meanwhile): nothing to bound.
      const f = await open(file, constants.O_RDWR | constants.O_NOFOLLOW).catch(
        (e: NodeJS.ErrnoException) => {
          if (e.code === 'ENOENT') return null;
          throw e;
        },
      );
      if (!f) continue;
      try {
        const tail = Buffer.alloc(keepBytes);
        const { bytesRead } = await f.read(tail, 0, keepBytes, size - keepBytes);
        await f.truncate(0);
        const note = `[berth: console log over ${maxBytes} bytes: the ${size - bytesRead} before these dropped]\n`;
        await f.write(Buffer.concat([Buffer.from(note), tail.subarray(0, bytesRead)]), 0, undefined, 0);
      } finally {
        await f.close();
      }
      trimmed.push(id);
    }
    return trimmed;
  }

  async list(): Promise<ContainerInfo[]> {
    const out: ContainerInfo[] = [];
    for (const id of await this.store.ids()) {
      const config = await this.store.readConfig(id);
      if (config) out.push(await this.infoOf(id, config));
    }
    return out;
  }

  /**
   * Starts the container's init in its own namespaces and cgroup, detached from the caller.
   * Idempotent: a running container answers `changed: false`. Refuses a paused one (WRONG_STATE: resume).
   */
  async start(id: string): Promise<OperationResult> {
    assertContainerId(id);
    // Independent reads run side by side: each is a thread-pool round trip, together one.
    const [config, init] = await Promise.all([this.requireConfig(id), this.liveInit(id)]);
    // An init its host never released (see `held`) has not exec'd the container's program: it goes below
    // (killRemaining) and a new one is launched.
    const held = init !== null && (await this.held(id, init));
    const info = await this.infoWith(id, config, held ? null : init);
    if (!held) {
      if (info.status === 'running') return { changed: false, info };
      if (info.status === 'paused') {
        throw new RuntimeError('WRONG_STATE', `container ${id} is paused: resume it instead`, { id });
      }
    }
    const { spec } = config;
    const [, , mount] = await Promise.all([
      // create() made the group with its limits and resize() keeps them: only a group lost since (a host
      // reboot, reconcile) gets them again here. An existing one is completed (idempotent): a hierarchy the
      // runtime uses since it was made, the devices it may use.
      this.cgroups
        .exists(this.cg(id))
        .then((exists) =>
          this.cgroups.create(this.cg(id), exists ? undefined : this.limitsOf(spec.resources)),
        ),
      // A previous init may have left processes behind only if it was killed abnormally: clear them.
      this.killRemaining(id).then(() => this.store.clearInit(id)),
      this.storage.mountSpec(id),
    ]);
    const bridge = spec.network.mode === 'bridge' && this.opts.network;
    let fifo: string | undefined;
    if (bridge) {
      fifo = this.store.fifoPath(id);
      await run('mkfifo', ['-m', '0600', fifo], { okCodes: [0, 1] });
    }
    const launch: LaunchOptions = {
      rootfs: this.storage.rootfsPath(id),
      stateDir: this.store.stateDir(id),
      hostname: spec.hostname,
      cgroupProcs: this.cgroups.procsFiles(this.cg(id)),
      logFile: this.store.logFile(id),
      net: bridge ? 'new' : 'none',
      syncFifo: fifo,
      helper: this.opts.helper,
    };
    if (config.usernsHostUid !== null) launch.userns = { hostUid: config.usernsHostUid, count: USERNS_RANGE };
    if (mount) {
      if (config.usernsHostUid !== null) await this.prepareUnprivilegedRootfs(id, config.usernsHostUid);
      const o = Object.fromEntries(mount.options.split(',').map((kv) => kv.split('=') as [string, string]));
      launch.overlay = { lower: o.lowerdir, upper: o.upperdir, work: o.workdir };
    } else {
      await this.storage.mount(id);
    }
    if (bridge) await this.store.markStarting(id);
    const ref = await launchContainer(launch);
    let ipAddress: string | null = null;
    if (bridge && fifo) {
      let attachError: unknown;
      try {
        ipAddress = await this.attachNetwork(id, ref.pid);
      } catch (e) {
        attachError = e;
      }
      // Release init whether or not the network came up (it waits on the FIFO before exec). Without
      // blocking: an init that gave up waiting (see LaunchOptions.syncTimeoutMs) has closed its end.
      try {
        const fh = await open(fifo, constants.O_WRONLY | constants.O_NONBLOCK);
        try {
          await fh.write('g');
        } finally {
          await fh.close();
        }
      } catch (e) {
        attachError ??= new RuntimeError(
          'KERNEL_ERROR',
          `container ${id}: init was gone before the host released it`,
          { id },
          { cause: e },
        );
      }
      if (!attachError) await this.store.clearStarting(id);
      else {
        // A container without the network it was asked for is not started: stop it, report the cause.
        await this.stop(id, 0).catch(() => undefined);
        throw attachError;
      }
    }
    return {
      changed: true,
      info: { ...info, status: 'running', init: { pid: ref.pid, startTime: ref.startTime }, ipAddress },
    };
  }

  /** Attaches the container's veth to the bridge; returns its address. */
  private async attachNetwork(id: string, pid: number): Promise<string> {
    const net = this.opts.network!;
    const pool = parseCidr(net.cidr);
    const gateway = formatIpv4(pool.network + 1);
    await ensureBridge({ name: net.bridge, cidr: `${gateway}/${pool.prefixLen}`, hostNetns: net.hostNetns });
    const alloc = await this.ipam!.allocate(id);
    await attachContainer({
      containerId: id,
      pid,
      bridge: net.bridge,
      address: alloc.address,
      prefixLen: pool.prefixLen,
      gateway,
      hostNetns: net.hostNetns,
    });
    return alloc.address;
  }

  /** SIGKILLs whatever is still in the container's cgroup and waits until it is empty. */
  private async killRemaining(id: string, timeoutMs = 5_000): Promise<void> {
    const path = this.cg(id);
    if ((await this.cgroups.pids(path)).length === 0) return;
    if ((await this.cgroups.state(path)) === 'frozen') await this.cgroups.thaw(path);
    const end = Date.now() + timeoutMs;
    while ((await this.cgroups.pids(path)).length > 0) {
      if (Date.now() > end) throw new RuntimeError('TIMEOUT', `processes of ${id} survive SIGKILL`, { id });
      await this.cgroups.killAll(path, 'SIGKILL');
      await new Promise((r) => setTimeout(r, 5));
    }
  }

  /**
   * Stops the container: SIGTERM to init, SIGKILL after `graceMs`, then waits until no process of the
   * container is left. Idempotent: a stopped container answers `changed: false`. A paused container is
   * thawed first (frozen processes cannot handle SIGTERM).
   */
  async stop(id: string, graceMs = this.stopGraceMs): Promise<OperationResult & { forced: boolean }> {
    const config = await this.requireConfig(id);
    const init = await this.liveInit(id);
    if (!init) {
      await this.killRemaining(id);
      await this.cleanupAfterStop(id, config);
      return { changed: false, forced: false, info: await this.stoppedInfo(id, config) };
    }
    if ((await this.cgroups.state(this.cg(id))) === 'frozen') await this.cgroups.thaw(this.cg(id));
    // An init never released by its host (see `held`) has no handler for SIGTERM yet: no grace to wait.
    const { forced } = await stopInit(init, (await this.held(id, init)) ? 0 : graceMs);
    await waitForExit(init, 5_000);
    await this.killRemaining(id);
    await this.cleanupAfterStop(id, config);
    return { changed: true, forced, info: await this.stoppedInfo(id, config) };
  }

  private async cleanupAfterStop(id: string, config: ContainerConfig): Promise<void> {
    if (config.spec.network.mode === 'bridge' && this.opts.network) {
      await detachContainer(id, this.opts.network.hostNetns);
    }
    // A stopped container keeps no init record: reconcile's deadInits then means "died behind Berth's
    // back", not "was stopped cleanly".
    await this.store.clearInit(id);
  }

  /** Stop then start. */
  async restart(id: string): Promise<OperationResult> {
    await this.stop(id);
    return this.start(id);
  }

  /** Freezes every process of a running container (none can run until resume). Idempotent. */
  async pause(id: string): Promise<OperationResult> {
    const info = await this.get(id);
    if (info.status === 'paused') return { changed: false, info };
    if (info.status !== 'running') {
      throw new RuntimeError('WRONG_STATE', `container ${id} is ${info.status}, not running`, { id });
    }
    await this.cgroups.freeze(this.cg(id));
    return { changed: true, info: await this.get(id) };
  }

  /** Thaws a paused container. Idempotent on a running one. */
  async resume(id: string): Promise<OperationResult> {
    const info = await this.get(id);
    if (info.status === 'running') return { changed: false, info };
    if (info.status !== 'paused') {
      throw new RuntimeError('WRONG_STATE', `container ${id} is ${info.status}, not paused`, { id });
    }
    await this.cgroups.thaw(this.cg(id));
    return { changed: true, info: await this.get(id) };
  }

  /**
   * Changes CPU, memory and pids limits; a running container gets them live (no restart). The record is
   * updated only after the kernel accepted the limits.
   */
  async resize(id: string, resources: Partial<ContainerResources>): Promise<OperationResult> {
    const config = await this.requireConfig(id);
    this.validateResources(resources);
    const next = { ...config.spec.resources, ...resources };
    if (JSON.stringify(next) === JSON.stringify(config.spec.resources)) {
      return { changed: false, info: await this.get(id) };
    }
    await this.cgroups.create(this.cg(id));
    try {
      await this.cgroups.setLimits(this.cg(id), this.limitsOf(next));
    } catch (e) {
      // The limits are written one by one (CPU before memory): a refused one (memory below what the
      // container holds) left the others at their new values. Back to the old ones, which config.json
      // still records and the kernel accepted before; the caller reports the refusal.
      const restore = await this.cgroups.setLimits(this.cg(id), this.limitsOf(config.spec.resources)).then(
        () => null,
        (err: unknown) => err,
      );
      // Said with the refusal: the limits may then be a mix of old and new (the runtime has no log).
      if (restore && e instanceof RuntimeError)
        Object.assign(e.context, {
          restoreFailed: restore instanceof Error ? restore.message : String(restore),
        });
      throw e;
    }
    config.spec = { ...config.spec, resources: next };
    await this.store.writeConfig(id, config);
    return { changed: true, info: await this.get(id) };
  }

  /** Takes a snapshot of the container's volume (any state; running containers get a crash-consistent one). */
  async snapshot(id: string, name: string) {
    await this.requireConfig(id);
    return this.storage.snapshot(id, name);
  }

  async listSnapshots(id: string) {
    await this.requireConfig(id);
    return this.storage.listSnapshots(id);
  }

  /** Rolls the volume back to a snapshot; the container must be stopped (WRONG_STATE otherwise). */
  async rollback(id: string, name: string): Promise<OperationResult> {
    const info = await this.get(id);
    if (info.status !== 'stopped') {
      throw new RuntimeError('WRONG_STATE', `container ${id} must be stopped to roll back`, { id });
    }
    await this.storage.rollback(id, name);
    return { changed: true, info: await this.get(id) };
  }

  /**
   * Runs a command inside a running container, in its namespaces, root and cgroups (so its limits
   * apply); returns its exit code and output (128 + signal when the command was killed, e.g. 137 after
   * an OOM kill). Throws CONTAINER_NOT_FOUND, WRONG_STATE when not running or paused, TIMEOUT after
   * timeoutMs.
   */
  async exec(
    id: string,
    argv: string[],
    options: { input?: string; timeoutMs?: number } = {},
  ): Promise<ExecResult> {
    const config = await this.requireConfig(id);
    const init = await this.liveInit(id);
    if (!init) throw new RuntimeError('WRONG_STATE', `container ${id} is not running`, { id });
    // a command joining a frozen group would freeze before its first instruction and hang the caller
    if ((await this.cgroups.state(this.cg(id))) === 'frozen') {
      throw new RuntimeError('WRONG_STATE', `container ${id} is paused: resume it first`, { id });
    }
    // the command joins the container's cgroups before it runs: it counts against the container's
    // memory and pids limits (and an OOM kill hits the container, never the caller)
    return execInContainer(init, argv, {
      ...options,
      userns: config.usernsHostUid !== null,
      cgroupProcs: this.cgroups.procsFiles(this.cg(id)),
      helper: this.opts.helper,
    });
  }

  /** Usage counters (cgroup stats + disk). */
  async stats(id: string) {
    await this.requireConfig(id);
    const [cgroup, diskBytes] = await Promise.all([
      this.cgroups.stats(this.cg(id)),
      this.storage.usage(id).catch(() => 0),
    ]);
    return { ...cgroup, diskBytes };
  }

  /**
   * Removes everything of the container: processes, cgroup, veth, address, volume with snapshots, record.
   * Idempotent: destroying a missing container succeeds with `changed: false`.
   */
  async destroy(id: string): Promise<{ changed: boolean }> {
    assertContainerId(id);
    const config = await this.store.readConfig(id);
    // A state directory without config.json (a crash before the first record write) counts too, so
    // reconcile can remove it.
    const known =
      config !== null ||
      (await this.store.ids()).includes(id) ||
      (await this.storage.list()).includes(id) ||
      (await this.cgroups.exists(this.cg(id)));
    if (!known) return { changed: false };
    if (config && !config.creating && (await this.liveInit(id))) await this.stop(id, 2_000);
    // The cgroup goes first: its removal is refused (CGROUP_BUSY) while a process is left, which is then
    // killed. One look at the group's processes instead of two (a kill pass and the removal's own check),
    // and the volume is still deleted only once nothing of the container runs.
    try {
      await this.cgroups.destroy(this.cg(id));
    } catch (e) {
      if (!(e instanceof CgroupBusyError)) throw e;
      await this.killRemaining(id);
      await this.cgroups.destroy(this.cg(id));
    }
    if (this.opts.network) {
      await detachContainer(id, this.opts.network.hostNetns);
      await this.ipam?.release(id);
    }
    await this.storage.delete(id);
    await this.store.remove(id);
    return { changed: true };
  }

  /**
   * Compares what exists on the host under Berth's names with the container records: cgroups, volumes,
   * veths and addresses without a record, containers whose creation never finished, and records whose
   * init died (e.g. the host rebooted). With `remove`, orphans and half-created containers are removed.
   */
  async reconcile(options: { remove?: boolean } = {}): Promise<ReconcileReport> {
    const ids = await this.store.ids();
    const configs = new Map<string, ContainerConfig | null>();
    for (const id of ids) configs.set(id, await this.store.readConfig(id));
    const complete = new Set([...configs].filter(([, c]) => c && !c.creating).map(([id]) => id));
    const halfCreated = [...configs].filter(([, c]) => !c || c.creating).map(([id]) => id);
    const orphanCgroups = (await this.cgroups.list(this.cgroupParent)).filter((n) => !configs.has(n));
    const orphanVolumes = (await this.storage.list()).filter((n) => !configs.has(n));
    let orphanVeths: string[] = [];
    let orphanAddresses: string[] = [];
    if (this.opts.network) {
      const expected = new Set([...configs.keys()].map((id) => vethNameFor(id)));
      orphanVeths = (await listVeths(this.opts.network.hostNetns))
        .map((v) => v.name)
        .filter((n) => !expected.has(n));
      orphanAddresses = (await this.ipam!.list())
        .filter((a) => !configs.has(a.containerId))
        .map((a) => a.containerId);
    }
    const deadInits: string[] = [];
    for (const id of complete) {
      const ref = await this.store.readInit(id);
      if (ref && !(await isAlive(ref))) {
        deadInits.push(id);
        await this.store.clearInit(id);
      }
    }
    if (options.remove) {
      for (const id of halfCreated) await this.destroy(id);
      for (const name of orphanCgroups) {
        await this.cgroups.killAll(`${this.cgroupParent}/${name}`, 'SIGKILL');
        await this.waitEmpty(`${this.cgroupParent}/${name}`);
        await this.cgroups.destroy(`${this.cgroupParent}/${name}`);
      }
      for (const id of orphanVolumes) await this.storage.delete(id);
      if (this.opts.network) {
        for (const veth of orphanVeths) {
          await run(
            'ip',
            [
              ...(this.opts.network.hostNetns ? ['-n', this.opts.network.hostNetns] : []),
              'link',
              'del',
              veth,
            ],
            {
              okCodes: [0, 1],
            },
          );
          // A host end's guard goes with it (a peer end, bp…, never had one).
          if (veth.startsWith(VETH_HOST_PREFIX)) await unguardPort(veth, this.opts.network.hostNetns);
        }
        for (const id of orphanAddresses) await this.ipam!.release(id);
      }
    }
    return {
      orphanCgroups,
      orphanVolumes,
      orphanVeths,
      orphanAddresses,
      halfCreated,
      deadInits,
      removed: !!options.remove,
    };
  }

  private async waitEmpty(path: string, timeoutMs = 5_000): Promise<void> {
    const end = Date.now() + timeoutMs;
    while ((await this.cgroups.pids(path)).length > 0 && Date.now() < end) {
      await this.cgroups.killAll(path, 'SIGKILL');
      await new Promise((r) => setTimeout(r, 10));
    }
  }
}
