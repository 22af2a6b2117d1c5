import { mkdir } from 'node:fs/promises';
import { resolve } from 'node:path';
import { Command, CommanderError, Option } from 'commander';
import { assertContainerName, parseSize } from '../common/validation';
import { assertContainerId } from '../container/container-store';
import type {
  ContainerInfo,
  ContainerResources,
  ContainerSpec,
  NetworkMode,
} from '../container/container.types';
import { openHostRuntime, type HostRuntime } from '../host-runtime';
import type { StorageDriverName } from '../storage/storage.driver';
import { CliUsageError, describeFailure, EXIT_OK, EXIT_USAGE, formatBytes, formatTable } from './cli.format';

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

/** Opens the host runtime a command works on; injected so the command layer can be tested with a fake. */
export type RuntimeOpener = (options: CliGlobalOptions) => Promise<HostRuntime>;

/** The real opener: creates the data root (0711, so unprivileged containers can reach their rootfs). */
export const openRuntimeForCli: RuntimeOpener = async (o) => {
  await mkdir(o.dataRoot, { recursive: true, mode: 0o711 });
  return openHostRuntime({
    dataRoot: o.dataRoot,
    cgroupParent: o.cgroupParent,
    storageDriver: o.storage,
    network: o.bridgeCidr ? { bridge: o.bridge, cidr: o.bridgeCidr, hostNetns: o.hostNetns } : undefined,
  });
};

function parseNumber(what: string): (value: string) => number {
  return (value) => {
    const n = Number(value);
    if (value.trim() === '' || !Number.isFinite(n))
      throw new CliUsageError(`${what} must be a number, got ${value}`);
    return n;
  };
}

const parseCpus = parseNumber('--cpus');
const parsePids = parseNumber('--pids');

function summary(info: ContainerInfo): string {
  return `${info.id}: ${info.status}${info.init ? ` (init pid ${info.init.pid})` : ''}`;
}

/**
 * Runs one CLI invocation (`argv` without node and the script) and resolves its exit code: 0 on success,
 * 1 with `error: <CODE>: <message>` on stderr for a failure, 2 for a usage error, and for `exec` the
 * command's own exit code. Never throws and never calls process.exit, so output is always flushed.
 */
export async function runCli(
  argv: readonly string[],
  io: CliIo,
  open: RuntimeOpener = openRuntimeForCli,
): Promise<number> {
  let exitCode = EXIT_OK;
  const program = buildProgram(io, open, (code) => (exitCode = code));
  try {
    await program.parseAsync([...argv], { from: 'user' });
    return exitCode;
  } catch (e) {
    if (e instanceof CommanderError) {
      // Commander already printed its message (see outputError); help and --version exit 0.
      return e.exitCode === 0 ? EXIT_OK : EXIT_USAGE;
    }
    const { line, exitCode: code } = describeFailure(e);
    io.stderr(`${line}\n`);
    return code;
  }
}

function buildProgram(io: CliIo, open: RuntimeOpener, setExitCode: (code: number) => void): Command {
  const program = new Command('berth-runtime')
    .description('Operate the containers of this host directly through libs/runtime (no API, no worker).')
    .addOption(new Option('--data-root <dir>', 'data root of this host').default('/var/lib/berth'))
    .addOption(new Option('--cgroup-parent <name>', 'cgroup parent of the containers').default('berth'))
    .addOption(
      new Option('--storage <driver>', 'storage driver')
        .choices(['auto', 'btrfs', 'overlay', 'dir'])
        .default('auto'),
    )
    .option('--json', 'print one JSON document on stdout', false)
    .option('--bridge <name>', 'host bridge for --network bridge', 'berth0')
    .option(
      '--bridge-cidr <cidr>',
      'address pool of the bridge (enables --network bridge), e.g. 10.88.0.0/24',
    )
    .option('--host-netns <name>', 'named network namespace that plays the host for the bridge')
    .showSuggestionAfterError(true);

  const configure = (cmd: Command): Command =>
    cmd.exitOverride().configureOutput({
      writeOut: (s) => io.stdout(s),
      writeErr: (s) => io.stderr(s),
      // Commander's own usage errors in the CLI's one-line format.
      outputError: (s, write) => write(`error: USAGE: ${s.replace(/^error:\s*/, '')}`),
    });
  configure(program);

  const globals = (cmd: Command): CliGlobalOptions => {
    const o = cmd.optsWithGlobals<Omit<CliGlobalOptions, 'dataRoot'> & { dataRoot: string }>();
    return { ...o, dataRoot: resolve(o.dataRoot), json: !!o.json };
  };
  /** Prints `value` as JSON with --json, else the human text. */
  const print = (cmd: Command, value: unknown, human: string): void => {
    if (globals(cmd).json) io.stdout(`${JSON.stringify(value, null, 2)}\n`);
    else if (human) io.stdout(human.endsWith('\n') ? human : `${human}\n`);
  };
  const withRuntime =
    <A extends unknown[]>(fn: (rt: HostRuntime, cmd: Command, ...args: A) => Promise<void>) =>
    async (...args: unknown[]): Promise<void> => {
      // Commander passes the declared arguments, then the options object, then the command itself.
      const cmd = args[args.length - 1] as Command;
      const rt = await open(globals(cmd));
      await fn(rt, cmd, ...(args.slice(0, -2) as A));
    };
  /** Validates a container name before the runtime is opened, so a typo touches nothing. */
  const containerAction = <A extends unknown[]>(
    fn: (rt: HostRuntime, cmd: Command, name: string, ...rest: A) => Promise<void>,
  ) => {
    const inner = withRuntime(fn);
    return async (...args: unknown[]): Promise<void> => {
      assertContainerId(args[0]);
      await inner(...args);
    };
  };

  // --- templates -------------------------------------------------------------------------------------
  const template = configure(program.command('template').description('manage templates'));
  configure(
    template
      .command('build-busybox [name]')
      .description('build the built-in busybox template offline (idempotent)')
      .action(
        withRuntime(async (rt, cmd, name?: string) => {
          const r = await rt.templates.ensureBusybox(name ?? 'busybox');
          print(cmd, r, `template ${r.name} ${r.changed ? 'built' : 'already exists'}`);
        }),
      ),
  );
  configure(
    template
      .command('import <name> <archive>')
      .description('import a rootfs tarball (.tar, .tar.gz, .tar.zst, .tar.xz) as a template')
      .action(
        withRuntime(async (rt, cmd, name: string, archive: string) => {
          const r = await rt.templates.importTarball(name, resolve(archive));
          print(cmd, r, `template ${r.name} imported`);
        }),
      ),
  );
  configure(
    template
      .command('list')
      .description('list templates')
      .action(
        withRuntime(async (rt, cmd) => {
          const names = await rt.templates.list();
          print(cmd, names, names.join('\n'));
        }),
      ),
  );
  configure(
    template
      .command('rm <name>')
      .description('delete a template (refused while containers depend on it)')
      .action(
        withRuntime(async (rt, cmd, name: string) => {
          await rt.templates.delete(name);
          print(cmd, { name, removed: true }, `template ${name} removed`);
        }),
      ),
  );

  // --- container lifecycle ---------------------------------------------------------------------------
  configure(
    program
      .command('create <name>')
      .description('create a stopped container (the name is its id and hostname)')
      .option('--template <name>', 'template to clone', 'busybox')
      .option('--cpus <n>', 'CPU cores (fractions allowed)', parseCpus, 1)
      .option('--memory <size>', 'memory limit, e.g. 256M', '256M')
      .option('--pids <n>', 'maximum number of processes', parsePids, 256)
      .option('--privileged', 'run container root as host root (no user namespace)', false)
      .addOption(new Option('--network <mode>', 'network mode').choices(['none', 'bridge']).default('none'))
      .action(async (name: unknown, ...rest: unknown[]) => {
        // A container created here must be a DNS label: it is also the hostname.
        assertContainerName(name);
        await withRuntime(async (rt, cmd, id: string) => {
          const o = cmd.opts<{
            template: string;
            cpus: number;
            memory: string;
            pids: number;
            privileged: boolean;
            network: NetworkMode;
          }>();
          const spec: ContainerSpec = {
            id,
            hostname: id,
            template: o.template,
            resources: { cpus: o.cpus, memoryBytes: parseSize(o.memory), pidsMax: o.pids },
            network: { mode: o.network },
            privileged: !!o.privileged,
          };
          const r = await rt.containers.create(spec);
          print(
            cmd,
            r,
            r.changed ? `created ${summary(r.info)}` : `${id} already exists with this configuration`,
          );
        })(name, ...rest);
      }),
  );

  const simple: [
    string,
    string,
    (rt: HostRuntime, id: string) => Promise<{ changed: boolean; info?: ContainerInfo }>,
  ][] = [
    ['start', 'start the container (idempotent)', (rt, id) => rt.containers.start(id)],
    ['restart', 'stop then start the container', (rt, id) => rt.containers.restart(id)],
    ['pause', 'freeze every process of the container', (rt, id) => rt.containers.pause(id)],
    ['resume', 'thaw a paused container', (rt, id) => rt.containers.resume(id)],
    [
      'destroy',
      'remove the container and everything it owns (idempotent)',
      (rt, id) => rt.containers.destroy(id),
    ],
  ];
  for (const [verb, description, op] of simple) {
    configure(
      program
        .command(`${verb} <name>`)
        .description(description)
        .action(
          containerAction(async (rt, cmd, id) => {
            const r = await op(rt, id);
            const human = r.info ? summary(r.info) : `${id}: ${r.changed ? 'destroyed' : 'did not exist'}`;
            print(cmd, r, r.changed ? human : `${human} (unchanged)`);
          }),
        ),
    );
  }

  configure(
    program
      .command('stop <name>')
      .description('SIGTERM the init, SIGKILL after the grace period (idempotent)')
      .option('--grace <seconds>', 'seconds before SIGKILL', parseNumber('--grace'))
      .action(
        containerAction(async (rt, cmd, id) => {
          const grace = cmd.opts<{ grace?: number }>().grace;
          const r = await rt.containers.stop(id, grace === undefined ? undefined : Math.round(grace * 1000));
          const human = `${summary(r.info)}${r.forced ? ' (killed after the grace period)' : ''}`;
          print(cmd, r, r.changed ? human : `${human} (unchanged)`);
        }),
      ),
  );

  configure(
    program
      .command('resize <name>')
      .description('change limits, live when running')
      .option('--cpus <n>', 'CPU cores', parseCpus)
      .option('--memory <size>', 'memory limit, e.g. 512M')
      .option('--pids <n>', 'maximum number of processes', parsePids)
      .action(
        containerAction(async (rt, cmd, id) => {
          const o = cmd.opts<{ cpus?: number; memory?: string; pids?: number }>();
          const resources: Partial<ContainerResources> = {};
          if (o.cpus !== undefined) resources.cpus = o.cpus;
          if (o.memory !== undefined) resources.memoryBytes = parseSize(o.memory);
          if (o.pids !== undefined) resources.pidsMax = o.pids;
          if (Object.keys(resources).length === 0)
            throw new CliUsageError('resize wants --cpus, --memory or --pids');
          const r = await rt.containers.resize(id, resources);
          const res = r.info.spec.resources;
          print(
            cmd,
            r,
            `${id}: cpus ${res.cpus}, memory ${formatBytes(res.memoryBytes)}, pids ${res.pidsMax}${r.changed ? '' : ' (unchanged)'}`,
          );
        }),
      ),
  );

  configure(
    program
      .command('snapshot <name> <snap>')
      .description("snapshot the container's volume")
      .action(
        containerAction(async (rt, cmd, id, snap: string) => {
          const s = await rt.containers.snapshot(id, snap);
          print(cmd, s, `snapshot ${id}@${s.name} created`);
        }),
      ),
  );
  configure(
    program
      .command('rollback <name> <snap>')
      .description('roll a stopped container back to a snapshot')
      .action(
        containerAction(async (rt, cmd, id, snap: string) => {
          const r = await rt.containers.rollback(id, snap);
          print(cmd, r, `${id} rolled back to ${snap}`);
        }),
      ),
  );

  configure(
    program
      .command('exec <name> <command...>')
      .description('run a command in a running container; its exit code becomes ours (use -- before it)')
      .option('--timeout <seconds>', 'kill the command after this long', parseNumber('--timeout'))
      .action(
        containerAction(async (rt, cmd, id, argv: string[]) => {
          const timeout = cmd.opts<{ timeout?: number }>().timeout;
          const r = await rt.containers.exec(id, argv, {
            timeoutMs: timeout === undefined ? undefined : Math.round(timeout * 1000),
          });
          if (globals(cmd).json) io.stdout(`${JSON.stringify(r, null, 2)}\n`);
          else {
            io.stdout(r.stdout);
            io.stderr(r.stderr);
          }
          setExitCode(r.code);
        }),
      ),
  );

  // --- inspection --------------------------------------------------------------------------------------
  configure(
    program
      .command('list')
      .description('list containers: name, status, init pid, ip, memory (used/limit)')
      .action(
        withRuntime(async (rt, cmd) => {
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
          print(cmd, infos, infos.length === 0 ? 'no containers' : formatTable(rows));
        }),
      ),
  );

  configure(
    program
      .command('stats <name>')
      .description('usage counters: cpu, memory, pids, OOM kills, disk')
      .action(
        containerAction(async (rt, cmd, id) => {
          const s = await rt.containers.stats(id);
          print(
            cmd,
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
        }),
      ),
  );

  configure(
    program
      .command('reconcile')
      .description('report (and with --remove, remove) orphans, half-created containers and dead inits')
      .option('--remove', 'remove orphans and half-created containers', false)
      .action(
        withRuntime(async (rt, cmd) => {
          const report = await rt.containers.reconcile({ remove: !!cmd.opts<{ remove: boolean }>().remove });
          const lines: string[] = [];
          const sections: [string, string[]][] = [
            ['orphan cgroups', report.orphanCgroups],
            ['orphan volumes', report.orphanVolumes],
            ['orphan veths', report.orphanVeths],
            ['orphan addresses', report.orphanAddresses],
            ['half-created containers', report.halfCreated],
            ['dead inits (now stopped)', report.deadInits],
          ];
          for (const [title, items] of sections)
            if (items.length) lines.push(`${title}: ${items.join(', ')}`);
          if (lines.length === 0) lines.push('nothing to reconcile');
          else if (report.removed) lines.push('removed');
          print(cmd, report, lines.join('\n'));
        }),
      ),
  );

  return program;
}
