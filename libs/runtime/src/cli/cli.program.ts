import { mkdir, readdir, realpath, rm, rmdir, stat } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { assertContainerName, parseSize } from '../common/validation';
import { assertContainerId } from '../container/container-store';
import type {
  ContainerInfo,
  ContainerResources,
  ContainerSpec,
  NetworkMode,
} from '../container/container.types';
import { RuntimeError } from '../common/errors';
import { openHostRuntime, wipeHostRuntime, type HostRuntime } from '../host-runtime';
import { LOCK_ID_FILE, lockDataRoot, OWNER_FILE } from '../host/data-root-owner';
import { removeBridge } from '../network/bridge';
import { mountsUnder } from '../storage/mount-table';
import type { StorageDriverName } from '../storage/storage.driver';
import { CliUsageError, describeFailure, EXIT_OK, formatBytes, formatTable } from './cli.format';
import { parseCommandLine, type CommandSpec, type OptionSpec, type OptionValues } from './cli.parser';

/** Options every command understands (flags only: the CLI reads no environment variable). */
export interface CliGlobalOptions {
  /** Absolute data root (records, storage pool, templates). */
  dataRoot: string;
  /** cgroup parent of this host's containers. */
  cgroupParent: string;
  storage: StorageDriverName | 'auto';
  /** Machine-readable output: one JSON document on stdout. */
  json: boolean;
  /** Host bridge for `--network bridge` (only used with `bridgeCidr`). */
  bridge: string;
  /** Address pool of the bridge; bridge networking is configured only when it is given. */
  bridgeCidr?: string;
  /** Named network namespace that plays the host for the bridge (simulated hosts). */
  hostNetns?: string;
}

/** Where the CLI writes; main.ts binds it to the process, tests to buffers. */
export interface CliIo {
  stdout(text: string): void;
  stderr(text: string): void;
}

/**
 * Opens the host runtime a command works on; injected so the command layer can be tested with a fake.
 * `exclusive`: the command changes the host, and must not run beside the data root's worker.
 */
export type RuntimeOpener = (options: CliGlobalOptions, exclusive: boolean) => Promise<HostRuntime>;

/**
 * The real opener: creates the data root (0711, so unprivileged containers can reach their rootfs); for a
 * command that changes the host, holds it first (lockDataRoot, until the CLI exits). With the worker
 * running, its host is the worker's: a container made or destroyed behind its back, or the half-made
 * containers `reconcile --remove` would take from under a running create, is what the lock is for.
 */
export const openRuntimeForCli: RuntimeOpener = async (o, exclusive) => {
  await mkdir(o.dataRoot, { recursive: true, mode: 0o711 });
  if (exclusive) await lockDataRoot(o.dataRoot).catch((e: unknown) => refusedBesideWorker(e, o.dataRoot));
  return openHostRuntime({
    dataRoot: o.dataRoot,
    cgroupParent: o.cgroupParent,
    storageDriver: o.storage,
    network: o.bridgeCidr ? { bridge: o.bridge, cidr: o.bridgeCidr, hostNetns: o.hostNetns } : undefined,
  });
};

/**
 * The options every command takes. Their defaults are the worker's settings from the same environment
 * variables (`BERTH_DATA_ROOT`, `BERTH_CGROUP_PARENT`, `BERTH_STORAGE_DRIVER`, `BERTH_BRIDGE`,
 * `BERTH_BRIDGE_CIDR`, `BERTH_HOST_NETNS`), so that on a host whose worker runs with them the CLI works on
 * the same data root without repeating them; a flag wins.
 */
const globalOptions = (env: NodeJS.ProcessEnv): readonly OptionSpec[] => [
  {
    name: 'data-root',
    type: 'string',
    value: 'dir',
    description: 'data root of this host',
    default: env.BERTH_DATA_ROOT || '/var/lib/berth',
  },
  {
    name: 'cgroup-parent',
    type: 'string',
    value: 'name',
    description: 'cgroup parent of the containers',
    default: env.BERTH_CGROUP_PARENT || 'berth',
  },
  {
    name: 'storage',
    type: 'string',
    value: 'driver',
    description: 'storage driver',
    choices: ['auto', 'btrfs', 'overlay', 'dir'],
    default: env.BERTH_STORAGE_DRIVER || 'auto',
  },
  { name: 'json', type: 'boolean', description: 'print one JSON document on stdout' },
  {
    name: 'bridge',
    type: 'string',
    value: 'name',
    description: 'host bridge for --network bridge',
    default: env.BERTH_BRIDGE || 'berth0',
  },
  {
    name: 'bridge-cidr',
    type: 'string',
    value: 'cidr',
    description: 'address pool of the bridge, e.g. 10.88.0.0/24 (enables --network bridge)',
    default: env.BERTH_BRIDGE_CIDR || undefined,
  },
  {
    name: 'host-netns',
    type: 'string',
    value: 'name',
    description: 'named netns that plays the host for the bridge',
    default: env.BERTH_HOST_NETNS || undefined,
  },
];

/** What a command's `run` gets: its parsed input and the ways to answer. */
interface CommandContext {
  args: Record<string, string | string[] | undefined>;
  options: OptionValues;
  globals: CliGlobalOptions;
  /** Opens the host runtime (only once the input was validated, so a typo touches nothing). */
  runtime(): Promise<HostRuntime>;
  /** Prints `value` as JSON with --json, else the human text. */
  print(value: unknown, human: string): void;
  io: CliIo;
  setExitCode(code: number): void;
}

type Run = (ctx: CommandContext) => Promise<void>;

const str = (v: unknown): string | undefined => (typeof v === 'string' ? v : undefined);

function num(options: OptionValues, name: string): number | undefined {
  const raw = str(options[name]);
  if (raw === undefined) return undefined;
  const n = Number(raw);
  if (raw.trim() === '' || !Number.isFinite(n))
    throw new CliUsageError(`--${name} must be a number, got ${raw}`);
  return n;
}

/** The container named by the first argument, validated as an id (UUIDs from the API included). */
function containerId(ctx: CommandContext): string {
  const id = ctx.args.name;
  assertContainerId(id);
  return id;
}

function summary(info: ContainerInfo): string {
  return `${info.id}: ${info.status}${info.init ? ` (init pid ${info.init.pid})` : ''}`;
}

const unchanged = (changed: boolean, text: string): string => (changed ? text : `${text} (unchanged)`);

/** A command on one container with no options: `<verb> <name>`. */
function lifecycle(
  verb: string,
  description: string,
  op: (rt: HostRuntime, id: string) => Promise<{ changed: boolean; info?: ContainerInfo }>,
): CommandSpec<Run> {
  return {
    name: verb,
    args: '<name>',
    description,
    async run(ctx) {
      const id = containerId(ctx);
      const r = await op(await ctx.runtime(), id);
      ctx.print(
        r,
        unchanged(
          r.changed,
          r.info ? summary(r.info) : `${id}: ${r.changed ? 'destroyed' : 'did not exist'}`,
        ),
      );
    },
  };
}

/** lockDataRoot's refusal, said for the CLI's user. */
function refusedBesideWorker(e: unknown, dataRoot: string): never {
  if (!(e instanceof RuntimeError) || e.code !== 'WRONG_STATE') throw e;
  const pid = e.context.pid as number | null;
  throw new RuntimeError(
    'WRONG_STATE',
    `the worker of ${dataRoot} runs${pid === null ? '' : ` (pid ${pid})`}: stop it first (npm run up -- stop, or its service), or change this host through the API`,
    { dataRoot, pid },
  );
}

/** Berth's own entries in a data root (what `wipe` removes; anything else there is left alone). */
const DATA_ROOT_ENTRIES = ['containers', 'network', 'storage', 'tmp'];
/** What else a data root may hold for `wipe` to go ahead (left there): the API's default admin key, a disk's lost+found. */
const DATA_ROOT_EXTRAS = ['admin.key', 'lost+found'];
/**
 * Berth's own files in a data root (removed with the entries): the worker's record and the lock's id, and
 * their temporary files (left by a process killed while writing them).
 */
const isBerthFile = (e: string) =>
  [OWNER_FILE, `${OWNER_FILE}.tmp`, LOCK_ID_FILE].includes(e) || /^lock\.id\.\d+\.tmp$/.test(e);

/**
 * `wipe --yes`: empties this host for good (decommissioning it, or a local install's `npm run up --
 * purge`): every container destroyed, the templates deleted, the storage pool released (unmounted, its
 * loop device detached), the cgroup parent and the bridge removed (the bridge only when nothing is
 * attached to it), then Berth's directories in the data root, and the data root itself when that leaves
 * it empty (a data root that is a mount point of its own stays). Refuses, before touching anything, a data
 * root that holds anything else (a mistyped path, a home directory: not Berth's to empty), and refuses to
 * delete a directory while anything is still mounted below the data root, or to start while the data
 * root's worker runs (the worker holds it: lockDataRoot; and wipe holds it while it works). A cgroup parent belongs to one data root (reconcile
 * removes the groups under it that this data root does not know).
 */
async function wipe(ctx: CommandContext): Promise<void> {
  if (ctx.options.yes !== true)
    throw new CliUsageError('wipe destroys every container and template of this host: confirm with --yes');
  const { cgroupParent, bridge, hostNetns } = ctx.globals;
  // Opening the runtime would make a data root (and a storage pool) only to wipe them.
  const root = await realpath(ctx.globals.dataRoot).catch(() => null);
  if (root === null || !(await stat(root)).isDirectory()) {
    ctx.print(
      { containers: [], templates: [], bridgeRemoved: false, dataRootRemoved: false },
      `nothing to wipe: ${ctx.globals.dataRoot} does not exist`,
    );
    return;
  }
  const foreign = (await readdir(root)).filter(
    (e) => !DATA_ROOT_ENTRIES.includes(e) && !DATA_ROOT_EXTRAS.includes(e) && !isBerthFile(e),
  );
  if (foreign.length > 0)
    throw new RuntimeError(
      'WRONG_STATE',
      `${root} holds more than Berth's data (${foreign.slice(0, 5).join(', ')}${foreign.length > 5 ? ', …' : ''}): not wiping it`,
      { dataRoot: root, foreign: foreign.slice(0, 20) },
    );
  // Held while wiping: a worker starting now waits for nothing, it is refused (and the other way round).
  const lock = await lockDataRoot(root).catch((e: unknown) => refusedBesideWorker(e, root));
  try {
    await wipeLocked(ctx, root, cgroupParent, bridge, hostNetns);
  } finally {
    await lock.release();
  }
}

/** wipe's work, the data root held (lockDataRoot) and checked to hold Berth's data only. */
async function wipeLocked(
  ctx: CommandContext,
  root: string,
  cgroupParent: string,
  bridge: string,
  hostNetns: string | undefined,
): Promise<void> {
  // Mounts and loop devices are recorded under the real path (a data root reached through a symlink).
  ctx.globals.dataRoot = root;
  const rt = await ctx.runtime();
  const containers = (await rt.containers.list()).map((c) => c.id);
  const templates = await rt.templates.list();
  await wipeHostRuntime(rt);
  const left = await rt.containers.list().catch(() => []);
  if (left.length > 0)
    throw new RuntimeError(
      'WRONG_STATE',
      `containers could not be destroyed: ${left.map((c) => c.id).join(', ')}`,
    );
  // wipeHostRuntime goes on past a failure; a pool that would not go away says why here.
  await rt.storage.release();
  await rt.cgroups.destroy(cgroupParent);
  let bridgeRemoved = false;
  const ports = await readdir(`/sys/class/net/${bridge}/brif`).catch(() => null);
  if (!hostNetns && ports !== null && ports.length === 0) bridgeRemoved = await removeBridge(bridge);
  const mounted = (await mountsUnder(root)).map((m) => m.mountPoint).filter((m) => m !== root);
  if (mounted.length > 0)
    throw new RuntimeError(
      'WRONG_STATE',
      `still mounted in the data root, not removing it: ${mounted.join(', ')}`,
    );
  for (const entry of [...DATA_ROOT_ENTRIES, ...(await readdir(root)).filter(isBerthFile)])
    await rm(join(root, entry), { recursive: true, force: true });
  const dataRootRemoved = await rmdir(root).then(
    () => true,
    () => false,
  );
  ctx.print(
    { containers, templates, bridgeRemoved, dataRootRemoved },
    [
      `destroyed ${containers.length} container(s), deleted ${templates.length} template(s)`,
      `released the storage pool, removed cgroup parent ${cgroupParent}${bridgeRemoved ? ` and bridge ${bridge}` : ''}`,
      dataRootRemoved
        ? `removed ${root}`
        : `removed Berth's directories in ${root} (it stays: not empty, or a mount point)`,
    ].join('\n'),
  );
}

const COMMANDS: readonly CommandSpec<Run>[] = [
  {
    name: 'template build-busybox',
    args: '[name]',
    description: 'build the built-in busybox template offline (idempotent)',
    async run(ctx) {
      const r = await (await ctx.runtime()).templates.ensureBusybox(str(ctx.args.name) ?? 'busybox');
      ctx.print(r, `template ${r.name} ${r.changed ? 'built' : 'already exists'}`);
    },
  },
  {
    name: 'template import',
    args: '<name> <archive>',
    description: 'import a rootfs tarball (.tar, .tar.gz, .tar.zst, .tar.xz) as a template',
    async run(ctx) {
      const rt = await ctx.runtime();
      const r = await rt.templates.importTarball(str(ctx.args.name)!, resolve(str(ctx.args.archive)!));
      ctx.print(r, `template ${r.name} imported`);
    },
  },
  {
    name: 'template list',
    args: '',
    description: 'list templates',
    async run(ctx) {
      const names = await (await ctx.runtime()).templates.list();
      ctx.print(names, names.join('\n'));
    },
  },
  {
    name: 'template rm',
    args: '<name>',
    description: 'delete a template (refused while containers depend on it)',
    async run(ctx) {
      const name = str(ctx.args.name)!;
      await (await ctx.runtime()).templates.delete(name);
      ctx.print({ name, removed: true }, `template ${name} removed`);
    },
  },
  {
    name: 'create',
    args: '<name>',
    description: 'create a stopped container (the name is its id and hostname)',
    options: [
      {
        name: 'template',
        type: 'string',
        value: 'name',
        description: 'template to clone',
        default: 'busybox',
      },
      { name: 'cpus', type: 'string', value: 'n', description: 'CPU cores, fractions allowed', default: '1' },
      {
        name: 'memory',
        type: 'string',
        value: 'size',
        description: 'memory limit, e.g. 256M',
        default: '256M',
      },
      {
        name: 'pids',
        type: 'string',
        value: 'n',
        description: 'maximum number of processes',
        default: '256',
      },
      { name: 'privileged', type: 'boolean', description: 'container root is host root (no user namespace)' },
      {
        name: 'network',
        type: 'string',
        value: 'mode',
        description: 'network',
        choices: ['none', 'bridge'],
        default: 'none',
      },
    ],
    async run(ctx) {
      const id = ctx.args.name;
      // A container created here must be a DNS label: it is also the hostname.
      assertContainerName(id);
      const o = ctx.options;
      const spec: ContainerSpec = {
        id,
        hostname: id,
        template: str(o.template)!,
        resources: { cpus: num(o, 'cpus')!, memoryBytes: parseSize(o.memory), pidsMax: num(o, 'pids')! },
        network: { mode: str(o.network) as NetworkMode },
        privileged: o.privileged === true,
      };
      const r = await (await ctx.runtime()).containers.create(spec);
      ctx.print(r, r.changed ? `created ${summary(r.info)}` : `${id} already exists with this configuration`);
    },
  },
  lifecycle('start', 'start the container (idempotent)', (rt, id) => rt.containers.start(id)),
  {
    name: 'stop',
    args: '<name>',
    description: 'SIGTERM the init, SIGKILL after the grace period (idempotent)',
    options: [
      { name: 'grace', type: 'string', value: 'seconds', description: 'seconds before SIGKILL (default 10)' },
    ],
    async run(ctx) {
      const id = containerId(ctx);
      const grace = num(ctx.options, 'grace');
      const rt = await ctx.runtime();
      const r = await rt.containers.stop(id, grace === undefined ? undefined : Math.round(grace * 1000));
      ctx.print(
        r,
        unchanged(r.changed, `${summary(r.info)}${r.forced ? ' (killed after the grace period)' : ''}`),
      );
    },
  },
  lifecycle('restart', 'stop then start the container', (rt, id) => rt.containers.restart(id)),
  lifecycle('pause', 'freeze every process of the container', (rt, id) => rt.containers.pause(id)),
  lifecycle('resume', 'thaw a paused container', (rt, id) => rt.containers.resume(id)),
  lifecycle('destroy', 'remove the container and all it owns (idempotent)', (rt, id) =>
    rt.containers.destroy(id),
  ),
  {
    name: 'resize',
    args: '<name>',
    description: 'change limits, live when running',
    options: [
      { name: 'cpus', type: 'string', value: 'n', description: 'CPU cores' },
      { name: 'memory', type: 'string', value: 'size', description: 'memory limit, e.g. 512M' },
      { name: 'pids', type: 'string', value: 'n', description: 'maximum number of processes' },
    ],
    async run(ctx) {
      const id = containerId(ctx);
      const o = ctx.options;
      const resources: Partial<ContainerResources> = {};
      if (o.cpus !== undefined) resources.cpus = num(o, 'cpus');
      if (o.memory !== undefined) resources.memoryBytes = parseSize(o.memory);
      if (o.pids !== undefined) resources.pidsMax = num(o, 'pids');
      if (Object.keys(resources).length === 0)
        throw new CliUsageError('resize wants --cpus, --memory or --pids');
      const r = await (await ctx.runtime()).containers.resize(id, resources);
      const res = r.info.spec.resources;
      ctx.print(
        r,
        unchanged(
          r.changed,
          `${id}: cpus ${res.cpus}, memory ${formatBytes(res.memoryBytes)}, pids ${res.pidsMax}`,
        ),
      );
    },
  },
  {
    name: 'snapshot',
    args: '<name> <snap>',
    description: "snapshot the container's volume",
    async run(ctx) {
      const id = containerId(ctx);
      const s = await (await ctx.runtime()).containers.snapshot(id, str(ctx.args.snap)!);
      ctx.print(s, `snapshot ${id}@${s.name} created`);
    },
  },
  {
    name: 'rollback',
    args: '<name> <snap>',
    description: 'roll a stopped container back to a snapshot',
    async run(ctx) {
      const id = containerId(ctx);
      const r = await (await ctx.runtime()).containers.rollback(id, str(ctx.args.snap)!);
      ctx.print(r, `${id} rolled back to ${str(ctx.args.snap)}`);
    },
  },
  {
    name: 'exec',
    args: '<name> <command...>',
    description: 'run a command in a running container, its exit code becomes ours: exec web1 -- ps -o pid',
    options: [
      { name: 'timeout', type: 'string', value: 'seconds', description: 'kill the command after this long' },
    ],
    async run(ctx) {
      const id = containerId(ctx);
      const timeout = num(ctx.options, 'timeout');
      const r = await (
        await ctx.runtime()
      ).containers.exec(id, ctx.args.command as string[], {
        timeoutMs: timeout === undefined ? undefined : Math.round(timeout * 1000),
      });
      if (ctx.globals.json) ctx.print(r, '');
      else {
        ctx.io.stdout(r.stdout);
        ctx.io.stderr(r.stderr);
      }
      ctx.setExitCode(r.code);
    },
  },
  {
    name: 'list',
    args: '',
    description: 'list containers: name, status, init pid, ip, memory (used/limit)',
    async run(ctx) {
      const rt = await ctx.runtime();
      const infos = await rt.containers.list();
      const rows = [['NAME', 'STATUS', 'INIT', 'IP', 'MEMORY']];
      for (const c of infos) {
        const limit = formatBytes(c.spec.resources.memoryBytes);
        let memory = limit;
        if (c.status === 'running' || c.status === 'paused') {
          const used = await rt.containers.stats(c.id).then(
            (s) => s.memoryCurrentBytes,
            () => null,
          );
          memory = `${formatBytes(used)}/${limit}`;
        }
        rows.push([c.id, c.status, c.init ? String(c.init.pid) : '-', c.ipAddress ?? '-', memory]);
      }
      ctx.print(infos, infos.length === 0 ? 'no containers' : formatTable(rows));
    },
  },
  {
    name: 'stats',
    args: '<name>',
    description: 'usage counters: cpu, memory, pids, OOM kills, disk',
    async run(ctx) {
      const s = await (await ctx.runtime()).containers.stats(containerId(ctx));
      ctx.print(
        s,
        formatTable([
          ['cpu', `${(s.cpuUsageNs / 1e9).toFixed(3)} s`],
          ['memory', formatBytes(s.memoryCurrentBytes)],
          ['memory peak', formatBytes(s.memoryPeakBytes)],
          ['pids', String(s.pidsCurrent)],
          ['oom kills', String(s.oomKills)],
          ['disk', formatBytes(s.diskBytes)],
        ]),
      );
    },
  },
  {
    name: 'reconcile',
    args: '',
    description: 'report orphans, half-created containers and dead inits (--remove: remove them)',
    options: [{ name: 'remove', type: 'boolean', description: 'remove orphans and half-created containers' }],
    async run(ctx) {
      const report = await (
        await ctx.runtime()
      ).containers.reconcile({ remove: ctx.options.remove === true });
      const sections: [string, string[]][] = [
        ['orphan cgroups', report.orphanCgroups],
        ['orphan volumes', report.orphanVolumes],
        ['orphan veths', report.orphanVeths],
        ['orphan addresses', report.orphanAddresses],
        ['half-created containers', report.halfCreated],
        ['dead inits (now stopped)', report.deadInits],
      ];
      const lines = sections
        .filter(([, items]) => items.length)
        .map(([t, items]) => `${t}: ${items.join(', ')}`);
      if (lines.length === 0) lines.push('nothing to reconcile');
      else if (report.removed) lines.push('removed');
      ctx.print(report, lines.join('\n'));
    },
  },
  {
    name: 'wipe',
    args: '',
    description:
      'empty this host for good: every container and template, the storage pool, the cgroup parent, the data root (--yes)',
    options: [{ name: 'yes', type: 'boolean', description: 'confirm: everything of this host is destroyed' }],
    run: wipe,
  },
];

/**
 * Commands that only look (the others change the host: they hold its data root, see openRuntimeForCli;
 * `wipe` holds it itself, before its checks).
 */
const LOOKING = ['template list', 'list', 'stats', 'exec'];
const changesHost = (command: string, o: OptionValues) =>
  !LOOKING.includes(command) && command !== 'wipe' && !(command === 'reconcile' && o.remove !== true);

/**
 * Runs one CLI invocation (`argv` without node and the script) and resolves its exit code: 0 on success,
 * 1 with `error: <CODE>: <message>` on stderr for a failure, 2 with `error: USAGE: …` for a usage error,
 * and for `exec` the command's own exit code. Never throws and never calls process.exit, so output is
 * always flushed.
 */
export async function runCli(
  argv: readonly string[],
  io: CliIo,
  open: RuntimeOpener = openRuntimeForCli,
  env: NodeJS.ProcessEnv = {},
): Promise<number> {
  let exitCode = EXIT_OK;
  try {
    const parsed = parseCommandLine(argv, globalOptions(env), COMMANDS);
    if (parsed.kind === 'help') {
      io.stdout(parsed.text);
      return EXIT_OK;
    }
    const o = parsed.options;
    const globals: CliGlobalOptions = {
      dataRoot: resolve(str(o['data-root'])!),
      cgroupParent: str(o['cgroup-parent'])!,
      storage: str(o.storage) as CliGlobalOptions['storage'],
      json: o.json === true,
      bridge: str(o.bridge)!,
      bridgeCidr: str(o['bridge-cidr']),
      hostNetns: str(o['host-netns']),
    };
    let runtime: Promise<HostRuntime> | undefined;
    await parsed.command.run({
      args: parsed.args,
      options: o,
      globals,
      runtime: () => (runtime ??= open(globals, changesHost(parsed.command.name, o))),
      print(value, human) {
        if (globals.json) io.stdout(`${JSON.stringify(value, null, 2)}\n`);
        else if (human) io.stdout(human.endsWith('\n') ? human : `${human}\n`);
      },
      io,
      setExitCode: (code) => (exitCode = code),
    });
    return exitCode;
  } catch (e) {
    const { line, exitCode: code } = describeFailure(e);
    io.stderr(`${line}\n`);
    return code;
  }
}
