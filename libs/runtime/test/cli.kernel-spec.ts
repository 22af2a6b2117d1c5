import { spawn } from 'node:child_process';
import { existsSync, readdirSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describeKernel } from '@test/support/kernel';
import { claimDataRoot, lockDataRoot, type ContainerInfo } from '@berth/runtime';
import { openTestHost, type TestHost } from './runtime-harness';

const needs = { root: true, programs: ['btrfs', 'mkfs.btrfs', 'busybox', 'nsenter', 'gcc'] };
const repoRoot = join(__dirname, '../../..');

interface CliRun {
  code: number | null;
  stdout: string;
  stderr: string;
}

/**
 * Runs the CLI as the operator would (`npm run runtime -- …` runs exactly this), with an argument array
 * and the test host's data root and cgroup parent.
 */
function cliIn(host: TestHost, args: string[], dataRoot = host.dataRoot): Promise<CliRun> {
  const argv = [
    '-r',
    'ts-node/register/transpile-only',
    '-r',
    'tsconfig-paths/register',
    join(repoRoot, 'libs/runtime/src/cli/main.ts'),
    '--data-root',
    dataRoot,
    '--cgroup-parent',
    host.cgroupParent,
    '--storage',
    'btrfs',
    ...args,
  ];
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, argv, { cwd: repoRoot, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, stdout, stderr }));
  });
}

describeKernel('runtime CLI against the real kernel', needs, () => {
  // The test host only provides a fresh data root + cgroup parent and the cleanup: every step under test
  // goes through the CLI process.
  let host: TestHost;
  const cli = (...args: string[]): Promise<CliRun> => cliIn(host, args);

  beforeAll(async () => {
    host = await openTestHost('cli', { storageDriver: 'btrfs' });
  }, 60_000);
  afterAll(() => host?.close(), 60_000);

  it('builds the busybox template, idempotently', async () => {
    const first = await cli('template', 'build-busybox');
    expect(first).toMatchObject({ code: 0, stderr: '' });
    expect(first.stdout).toContain('template busybox built');
    const again = await cli('template', 'build-busybox', '--json');
    expect(again.code).toBe(0);
    expect(JSON.parse(again.stdout)).toEqual({ name: 'busybox', changed: false });
    const list = await cli('template', 'list', '--json');
    expect(JSON.parse(list.stdout)).toEqual(['busybox']);
  }, 120_000);

  it('creates a container with the asked limits and starts it', async () => {
    const created = await cli('create', 'web1', '--memory', '256M', '--cpus', '0.5', '--pids', '100');
    expect(created).toMatchObject({ code: 0, stderr: '' });
    const limit = `/sys/fs/cgroup/memory/${host.cgroupParent}/web1/memory.limit_in_bytes`;
    expect(readFileSync(limit, 'utf8').trim()).toBe(String(256 * 1024 * 1024));
    const started = await cli('start', 'web1', '--json');
    expect(started.code).toBe(0);
    const info = (JSON.parse(started.stdout) as { info: ContainerInfo }).info;
    expect(info.status).toBe('running');
    expect(existsSync(`/proc/${info.init!.pid}`)).toBe(true);
  }, 60_000);

  it('exec runs in the container (its init is PID 1) and passes the exit code through', async () => {
    const ps = await cli('exec', 'web1', '--', 'ps', '-o', 'pid,comm');
    expect(ps.code).toBe(0);
    expect(ps.stdout).toMatch(/^\s*1\s+init$/m);
    const seven = await cli('exec', 'web1', '--', 'sh', '-c', 'echo out; echo err >&2; exit 7');
    expect(seven).toEqual({ code: 7, stdout: 'out\n', stderr: 'err\n' });
  }, 60_000);

  it('list shows the container running, as a table and as JSON', async () => {
    const table = await cli('list');
    expect(table.code).toBe(0);
    expect(table.stdout).toMatch(/^NAME\s+STATUS\s+INIT\s+IP\s+MEMORY$/m);
    expect(table.stdout).toMatch(/^web1\s+running\s+\d+\s+-\s+\S+\/256M$/m);
    const json = await cli('list', '--json');
    const list = JSON.parse(json.stdout) as ContainerInfo[];
    expect(list.map((c) => [c.id, c.status])).toEqual([['web1', 'running']]);
  }, 60_000);

  it('reports errors as one line with a stable code: 1 for runtime errors, 2 for usage errors', async () => {
    const bad = await cli('create', 'Bad_Name');
    expect(bad.code).toBe(1);
    expect(bad.stderr).toMatch(/^error: INVALID_NAME: .*Bad_Name.*\n$/);
    expect(bad.stderr).not.toMatch(/\n\s+at /); // no stack trace
    const missing = await cli('stop', 'nope');
    expect(missing.code).toBe(1);
    expect(missing.stderr).toMatch(/^error: CONTAINER_NOT_FOUND: /);
    const size = await cli('create', 'web2', '--memory', 'lots');
    expect(size.code).toBe(1);
    expect(size.stderr).toMatch(/^error: INVALID_SIZE: /);
    const usage = await cli('create', 'web2', '--network', 'wifi');
    expect(usage.code).toBe(2);
    expect(usage.stderr).toMatch(/^error: USAGE: /);
    expect((await cli('frobnicate')).code).toBe(2);
    // none of the refused commands created anything
    expect(await host.storage.list()).toEqual(['web1']);
  }, 60_000);

  it('stops and destroys the container, leaving nothing', async () => {
    const stopped = await cli('stop', 'web1', '--json');
    expect(stopped.code).toBe(0);
    expect((JSON.parse(stopped.stdout) as { info: ContainerInfo }).info.status).toBe('stopped');
    expect((await cli('destroy', 'web1')).code).toBe(0);
    expect(existsSync(`/sys/fs/cgroup/memory/${host.cgroupParent}/web1`)).toBe(false);
    expect(await host.storage.list()).toEqual([]);
    const again = await cli('destroy', 'web1', '--json');
    expect(JSON.parse(again.stdout)).toEqual({ changed: false });
    expect(JSON.parse((await cli('list', '--json')).stdout)).toEqual([]);
    const reconcile = await cli('reconcile', '--json');
    expect(JSON.parse(reconcile.stdout)).toMatchObject({
      orphanCgroups: [],
      orphanVolumes: [],
      halfCreated: [],
      deadInits: [],
    });
  }, 60_000);

  it('wipe --yes empties the host for good: containers, templates, pool, cgroup parent, data root', async () => {
    expect((await cli('create', 'web2')).code).toBe(0);
    expect((await cli('start', 'web2')).code).toBe(0);
    const refused = await cli('wipe');
    expect(refused.code).toBe(2);
    expect(refused.stderr).toMatch(/--yes/);
    expect(JSON.parse((await cli('list', '--json')).stdout)).toHaveLength(1);
    // A data root that holds anything but Berth's data (a mistyped path, a home directory) is not emptied.
    writeFileSync(join(host.dataRoot, 'notes.txt'), 'not Berth’s');
    const foreign = await cli('wipe', '--yes');
    expect(foreign.code).toBe(1);
    expect(foreign.stderr).toMatch(
      /WRONG_STATE: .* holds more than Berth's data \(notes\.txt\): not wiping it/,
    );
    expect(JSON.parse((await cli('list', '--json')).stdout)).toHaveLength(1);
    expect(readFileSync(join(host.dataRoot, 'notes.txt'), 'utf8')).toBe('not Berth’s');
    rmSync(join(host.dataRoot, 'notes.txt'));

    // Not while the data root's worker runs (this test process plays it: it holds the data root and
    // records itself, as the worker does), but once it is gone. What it recorded stays behind, as after a
    // SIGKILL: the record alone holds nothing.
    const held = await lockDataRoot(host.dataRoot);
    await claimDataRoot(host.dataRoot);
    const busy = await cli('wipe', '--yes');
    // Nor does any command that changes the host run beside it; those that look do.
    const besides = {
      create: await cli('create', 'web3'),
      reconcile: await cli('reconcile', '--remove'),
      list: await cli('list', '--json'),
    };
    await held.release();
    expect(busy.code).toBe(1);
    expect(busy.stderr).toMatch(new RegExp(`WRONG_STATE: the worker of .* runs \\(pid ${process.pid}\\)`));
    for (const refused of [besides.create, besides.reconcile]) {
      expect(refused.code).toBe(1);
      expect(refused.stderr).toMatch(
        /WRONG_STATE: the worker of .* runs .*or change this host through the API/,
      );
    }
    expect(besides.list.code).toBe(0);
    expect(JSON.parse(besides.list.stdout)).toHaveLength(1);
    expect(JSON.parse((await cli('list', '--json')).stdout)).toHaveLength(1);
    expect(existsSync(join(host.dataRoot, 'worker.pid'))).toBe(true);

    // Through a symlink to the data root (mounts and loop devices are recorded under its real path).
    const link = `${host.dataRoot}-link`;
    symlinkSync(host.dataRoot, link);
    const wiped = await cliIn(host, ['wipe', '--yes', '--json'], link).finally(() => rmSync(link));
    expect(wiped).toMatchObject({ code: 0, stderr: '' });
    expect(JSON.parse(wiped.stdout)).toEqual({
      containers: ['web2'],
      templates: ['busybox'],
      bridgeRemoved: false,
      dataRootRemoved: true,
    });
    expect(existsSync(host.dataRoot)).toBe(false);
    expect(readFileSync('/proc/self/mountinfo', 'utf8')).not.toContain(host.dataRoot);
    const loops = readdirSync('/sys/block').filter((d) => d.startsWith('loop'));
    const backing = loops.map((d) => {
      try {
        return readFileSync(`/sys/block/${d}/loop/backing_file`, 'utf8');
      } catch {
        return '';
      }
    });
    expect(backing.filter((f) => f.startsWith(host.dataRoot))).toEqual([]);
    for (const c of ['cpu', 'memory', 'pids', 'freezer'])
      expect({ c, left: existsSync(`/sys/fs/cgroup/${c}/${host.cgroupParent}`) }).toEqual({ c, left: false });
    // Nothing left to wipe: said so, nothing made.
    const again = await cli('wipe', '--yes');
    expect(again).toMatchObject({ code: 0, stdout: `nothing to wipe: ${host.dataRoot} does not exist\n` });
    expect(existsSync(host.dataRoot)).toBe(false);
  }, 120_000);
});
