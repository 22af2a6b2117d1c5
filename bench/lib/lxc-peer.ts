import { readdir, realpath, rmdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { run } from '@berth/runtime/common/exec';
import { findProcesses } from './proc';

/** Backing store of an LXC container path: `btrfs` (snapshot clones) or `dir` (overlay clones). */
export type LxcBacking = 'btrfs' | 'dir';

export interface LxcPeerOptions {
  /** The LXC path (`-P`): where this peer's containers live. On btrfs for `btrfs` backing. */
  lxcpath: string;
  /** Config given to lxc-create (`-f`): no network, no AppArmor (see KERNEL-FACTS.md). */
  configFile: string;
}

/** The config every bench container gets: nothing but an empty network namespace, no AppArmor here. */
export const LXC_BENCH_CONFIG = 'lxc.net.0.type = empty\nlxc.apparmor.profile = unconfined\n';

/**
 * The peer runtime, LXC 5 (Debian's `lxc`), driven through its command-line tools exactly as an operator
 * would: lxc-create (template), lxc-copy -s (clone), lxc-start + lxc-wait (start), lxc-stop, lxc-destroy.
 * Every method throws CommandFailedError when the tool fails.
 */
export class LxcPeer {
  constructor(private readonly opts: LxcPeerOptions) {}

  get lxcpath(): string {
    return this.opts.lxcpath;
  }

  /** Writes the shared bench config file (idempotent). */
  async writeConfig(): Promise<void> {
    await writeFile(this.opts.configFile, LXC_BENCH_CONFIG);
  }

  /** Creates a busybox template container (`lxc-create -t busybox -B <backing>`), stopped. */
  async createTemplate(name: string, backing: LxcBacking): Promise<void> {
    await run(
      'lxc-create',
      ['-P', this.lxcpath, '-n', name, '-t', 'busybox', '-B', backing, '-f', this.opts.configFile],
      { timeoutMs: 120_000 },
    );
  }

  /** Clones `source` into `name` as a snapshot: a btrfs snapshot, or with `overlay` an overlay on it. */
  async copy(source: string, name: string, overlay: boolean): Promise<void> {
    const args = ['-P', this.lxcpath, '-n', source, '-N', name, '-s'];
    if (overlay) args.push('-B', 'overlay');
    await run('lxc-copy', args, { timeoutMs: 60_000 });
  }

  /** Starts the container daemonized, and waits until LXC reports it RUNNING (init runs). */
  async start(name: string): Promise<void> {
    await run('lxc-start', ['-P', this.lxcpath, '-n', name], { timeoutMs: 60_000 });
    await run('lxc-wait', ['-P', this.lxcpath, '-n', name, '-s', 'RUNNING', '-t', '30'], {
      timeoutMs: 60_000,
    });
  }

  /** Stops the container: cleanly (init's shutdown, `lxc-stop`) or, with `kill`, at once (`lxc-stop -k`). */
  async stop(name: string, kill = false): Promise<void> {
    const args = ['-P', this.lxcpath, '-n', name];
    if (kill) args.push('-k');
    await run('lxc-stop', args, { timeoutMs: 90_000 });
  }

  /** Destroys a stopped container (`-f` also stops a running one first). */
  async destroy(name: string, force = false): Promise<void> {
    const args = ['-P', this.lxcpath, '-n', name];
    if (force) args.push('-f');
    await run('lxc-destroy', args, { timeoutMs: 90_000 });
  }

  /** Names of every container under this LXC path ([] when the path does not exist). */
  async list(): Promise<string[]> {
    const r = await run('lxc-ls', ['-P', this.lxcpath, '-1'], { okCodes: [0, 1] });
    return r.stdout
      .split('\n')
      .map((s) => s.trim())
      .filter(Boolean);
  }

  /** Pid of the `[lxc monitor] <lxcpath> <name>` process LXC keeps beside a running container. */
  async monitorPid(name: string): Promise<number | null> {
    const want = `[lxc monitor] ${this.lxcpath} ${name}`;
    const [pid] = await findProcesses((cmd) => cmd.trim() === want);
    return pid ?? null;
  }

  /** Kills and destroys every container of this LXC path (best effort, for cleanup). */
  async destroyAll(): Promise<void> {
    for (const name of await this.list().catch(() => [])) {
      await this.stop(name, true).catch(() => undefined);
      await this.destroy(name, true).catch(() => undefined);
    }
  }
}

/** The distinct cgroup v1/v2 hierarchy roots under /sys/fs/cgroup (cpu,cpuacct links collapsed). */
async function hierarchyRoots(base = '/sys/fs/cgroup'): Promise<string[]> {
  const roots = new Set<string>();
  for (const entry of await readdir(base).catch(() => [])) {
    const real = await realpath(join(base, entry)).catch(() => '');
    if (real) roots.add(real);
  }
  return [...roots];
}

async function rmdirTree(path: string): Promise<void> {
  const entries = await readdir(path, { withFileTypes: true }).catch(() => []);
  for (const e of entries) if (e.isDirectory()) await rmdirTree(join(path, e.name));
  await rmdir(path).catch(() => undefined);
}

/**
 * Removes the cgroups LXC (as root) leaves at the top of every hierarchy for the containers whose names
 * start with `namePrefix` (`lxc.payload.<name>`, `lxc.monitor.<name>`) and its shared `lxc.pivot`
 * (only when empty: rmdir refuses a group with processes, so another LXC user keeps its own).
 */
export async function removeLxcCgroups(namePrefix: string): Promise<void> {
  for (const root of await hierarchyRoots()) {
    for (const entry of await readdir(root).catch(() => [])) {
      const ours =
        entry.startsWith(`lxc.payload.${namePrefix}`) ||
        entry.startsWith(`lxc.monitor.${namePrefix}`) ||
        entry === 'lxc.pivot';
      if (ours) await rmdirTree(join(root, entry));
    }
  }
}
