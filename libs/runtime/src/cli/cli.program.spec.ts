import { RuntimeError } from '../common/errors';
import type { ContainerInfo, ContainerSpec } from '../container/container.types';
import type { HostRuntime } from '../host-runtime';
import { formatBytes, formatTable } from './cli.format';
import { runCli, type CliGlobalOptions } from './cli.program';

/** A fake host runtime: only what the commands under test call, recording the calls. */
function fakeHost() {
  const info = (id: string, status: ContainerInfo['status'] = 'stopped'): ContainerInfo => ({
    id,
    status,
    spec: {
      id,
      hostname: id,
      template: 'busybox',
      resources: { cpus: 1, memoryBytes: 256 * 1024 * 1024, pidsMax: 256 },
      network: { mode: 'none' },
      privileged: false,
    },
    storageDriver: 'btrfs',
    init: status === 'running' ? { pid: 4242, startTime: 1 } : null,
    ipAddress: null,
    createdAt: '2026-01-01T00:00:00.000Z',
  });
  const containers = {
    create: jest.fn(async (spec: ContainerSpec) => ({ changed: true, info: { ...info(spec.id), spec } })),
    start: jest.fn(async (id: string) => ({ changed: true, info: info(id, 'running') })),
    exec: jest.fn(async (_id: string, _argv: string[]) => ({ code: 7, stdout: 'out\n', stderr: 'err\n' })),
    list: jest.fn(async () => [info('web1', 'running'), info('db1')]),
    stats: jest.fn(async () => ({ memoryCurrentBytes: 3 * 1024 * 1024 })),
    resize: jest.fn(),
  };
  const opened: CliGlobalOptions[] = [];
  const exclusive: boolean[] = [];
  const open = jest.fn(async (o: CliGlobalOptions, changes: boolean) => {
    opened.push(o);
    exclusive.push(changes);
    return { containers, templates: {} } as unknown as HostRuntime;
  });
  return { containers, open, opened, exclusive };
}

async function cli(argv: string[], host = fakeHost(), env: NodeJS.ProcessEnv = {}) {
  let stdout = '';
  let stderr = '';
  const io = { stdout: (t: string) => (stdout += t), stderr: (t: string) => (stderr += t) };
  const code = await runCli(argv, io, host.open, env);
  return { code, stdout, stderr, host };
}

describe('runCli', () => {
  it('holds the data root (beside no worker) for the commands that change the host, not for those that look', async () => {
    const holds = async (argv: string[]) => (await cli(argv)).host.exclusive[0];
    for (const argv of [['list'], ['stats', 'web1'], ['exec', 'web1', '--', 'true'], ['reconcile']])
      expect({ argv, holds: await holds(argv) }).toEqual({ argv, holds: false });
    for (const argv of [
      ['create', 'web1'],
      ['start', 'web1'],
      ['reconcile', '--remove'],
    ])
      expect({ argv, holds: await holds(argv) }).toEqual({ argv, holds: true });
  });

  it("defaults to the worker's runtime settings from the environment; a flag wins", async () => {
    const env = {
      BERTH_DATA_ROOT: '/srv/berth',
      BERTH_CGROUP_PARENT: 'berth-a',
      BERTH_STORAGE_DRIVER: 'overlay',
      BERTH_BRIDGE: 'berth1',
      BERTH_BRIDGE_CIDR: '10.99.0.0/24',
      BERTH_HOST_NETNS: 'berth-h1',
    };
    const fromEnv = await cli(['list'], fakeHost(), env);
    expect(fromEnv.code).toBe(0);
    expect(fromEnv.host.opened[0]).toMatchObject({
      dataRoot: '/srv/berth',
      cgroupParent: 'berth-a',
      storage: 'overlay',
      bridge: 'berth1',
      bridgeCidr: '10.99.0.0/24',
      hostNetns: 'berth-h1',
    });
    const flags = await cli(['--data-root', '/srv/other', '--storage', 'dir', 'list'], fakeHost(), env);
    expect(flags.host.opened[0]).toMatchObject({
      dataRoot: '/srv/other',
      storage: 'dir',
      cgroupParent: 'berth-a',
    });
    // Without them, the worker's own defaults.
    const bare = await cli(['list']);
    expect(bare.host.opened[0]).toMatchObject({
      dataRoot: '/var/lib/berth',
      cgroupParent: 'berth',
      storage: 'auto',
      bridge: 'berth0',
      bridgeCidr: undefined,
      hostNetns: undefined,
    });
    // A driver the worker would not take either is a usage error, said as such.
    const bad = await cli(['list'], fakeHost(), { BERTH_STORAGE_DRIVER: 'zfs' });
    expect(bad).toMatchObject({ code: 2 });
    expect(bad.stderr).toMatch(/--storage must be one of auto, btrfs, overlay, dir, got zfs/);
  });

  it('builds the spec from the flags (sizes through parseSize) and reports the result', async () => {
    const r = await cli([
      'create',
      'web1',
      '--memory',
      '1.5G',
      '--cpus',
      '0.5',
      '--pids',
      '64',
      '--privileged',
    ]);
    expect(r.code).toBe(0);
    expect(r.host.containers.create).toHaveBeenCalledWith({
      id: 'web1',
      hostname: 'web1',
      template: 'busybox',
      resources: { cpus: 0.5, memoryBytes: 1.5 * 1024 ** 3, pidsMax: 64 },
      network: { mode: 'none' },
      privileged: true,
    });
    expect(r.stdout).toBe('created web1: stopped\n');
  });

  it('takes global options before or after the command and resolves the data root', async () => {
    const r = await cli(['list', '--json', '--data-root', 'rel/dir', '--cgroup-parent', 'berth-x']);
    expect(r.host.opened[0]).toMatchObject({
      dataRoot: `${process.cwd()}/rel/dir`,
      cgroupParent: 'berth-x',
      storage: 'auto',
      json: true,
    });
    expect((JSON.parse(r.stdout) as ContainerInfo[]).map((c) => c.status)).toEqual(['running', 'stopped']);
    const defaults = await cli(['--storage', 'dir', 'list']);
    expect(defaults.host.opened[0]).toMatchObject({
      dataRoot: '/var/lib/berth',
      cgroupParent: 'berth',
      storage: 'dir',
    });
  });

  it('prints list as a table: name, status, init pid, ip, memory used/limit', async () => {
    const r = await cli(['list']);
    expect(r.stdout).toBe(
      [
        'NAME  STATUS   INIT  IP  MEMORY',
        'web1  running  4242  -   3M/256M',
        'db1   stopped  -     -   256M',
        '',
      ].join('\n'),
    );
  });

  it("exec passes everything after -- to the command and returns the command's exit code", async () => {
    const r = await cli(['exec', 'web1', '--', 'ps', '-o', 'pid,comm', '--json']);
    expect(r.host.containers.exec).toHaveBeenCalledWith('web1', ['ps', '-o', 'pid,comm', '--json'], {
      timeoutMs: undefined,
    });
    expect(r).toMatchObject({ code: 7, stdout: 'out\n', stderr: 'err\n' });
  });

  it('refuses a bad container name with INVALID_NAME before opening the runtime', async () => {
    const r = await cli(['create', 'Bad_Name']);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/^error: INVALID_NAME: [^\n]*\n$/);
    expect(r.host.open).not.toHaveBeenCalled();
    expect((await cli(['start', '../etc'])).stderr).toMatch(/^error: INVALID_NAME: /);
  });

  it('reports a RuntimeError as one line with its code and exit 1, never a stack', async () => {
    const host = fakeHost();
    host.containers.start.mockRejectedValueOnce(
      new RuntimeError('WRONG_STATE', 'container web1 is paused:\nresume it instead'),
    );
    const r = await cli(['start', 'web1'], host);
    expect(r).toMatchObject({
      code: 1,
      stdout: '',
      stderr: 'error: WRONG_STATE: container web1 is paused: resume it instead\n',
    });
    const other = fakeHost();
    other.containers.start.mockRejectedValueOnce(new TypeError('boom'));
    expect(await cli(['start', 'web1'], other)).toMatchObject({ code: 1, stderr: 'error: INTERNAL: boom\n' });
  });

  it('answers usage errors with exit 2 and one USAGE line, touching nothing', async () => {
    for (const argv of [
      ['frobnicate'],
      ['create'],
      ['create', 'web1', '--network', 'wifi'],
      ['create', 'web1', '--cpus', 'many'],
      ['resize', 'web1'],
      ['--storage', 'zfs', 'list'],
      ['create', 'web1', '--remove'], // another command's option
      ['template'],
      ['exec', 'web1', 'ps', '-o', 'pid'], // options of the command need -- before them
      ['start', 'web1', 'extra'],
      ['create', 'web1', '--memory'],
    ]) {
      const r = await cli(argv);
      expect({ argv, code: r.code }).toEqual({ argv, code: 2 });
      expect(r.stderr).toMatch(/^error: USAGE: /);
      expect(r.host.containers.create).not.toHaveBeenCalled();
      expect(r.host.containers.resize).not.toHaveBeenCalled();
    }
    const size = await cli(['create', 'web1', '--memory', 'lots']);
    expect(size.code).toBe(1);
    expect(size.stderr).toMatch(/^error: INVALID_SIZE: /);
  });

  it('prints help with exit 0', async () => {
    const r = await cli(['--help']);
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/Usage: berth-runtime/);
    expect(r.stdout).toMatch(/exec <name> <command\.\.\.> \[options\]/);
    const create = await cli(['create', '--help']);
    expect(create.code).toBe(0);
    expect(create.stdout).toMatch(/--memory <size>\s+memory limit, e\.g\. 256M \(default 256M\)/);
    expect(create.host.open).not.toHaveBeenCalled();
  });
});

describe('formatBytes / formatTable', () => {
  it('formats sizes the way parseSize reads them', () => {
    expect(formatBytes(268435456)).toBe('256M');
    expect(formatBytes(1536)).toBe('1.5K');
    expect(formatBytes(512)).toBe('512');
    expect(formatBytes(null)).toBe('-');
  });

  it('pads columns to the widest cell and trims line ends', () => {
    expect(
      formatTable([
        ['A', 'BB'],
        ['ccc', ''],
      ]),
    ).toBe('A    BB\nccc\n');
    expect(formatTable([])).toBe('');
  });
});
