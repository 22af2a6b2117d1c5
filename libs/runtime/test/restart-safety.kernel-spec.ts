import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, rmdirSync, rmSync } from 'node:fs';
import { availableParallelism, totalmem } from 'node:os';
import { join } from 'node:path';
import { describeKernel, itKernel } from '@test/support/kernel';
import {
  CONTAINER_DEVICE_RULES,
  ContainerRuntime,
  isAlive,
  openHostRuntime,
  readProcStat,
  RuntimeError,
  type CgroupDriver,
  type CgroupLimits,
  type ContainerStatus,
  type HostRuntime,
  type ReconcileReport,
  type StorageDriver,
} from '@berth/runtime';
import { openTestHost, spawnRuntimeScript, spec, type TestHost } from './runtime-harness';

const needs = { root: true, programs: ['btrfs', 'mkfs.btrfs', 'busybox', 'nsenter', 'gcc', 'sleep'] };
const CONTROLLERS = ['memory', 'pids', 'cpu', 'freezer'];

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

const EMPTY_REPORT: Omit<ReconcileReport, 'removed'> = {
  orphanCgroups: [],
  orphanVolumes: [],
  orphanVeths: [],
  orphanAddresses: [],
  halfCreated: [],
  deadInits: [],
};

/**
 * Starts a container from a separate node process (the runtime through ts-node, as the worker would run
 * it) that prints the init it started and then stays alive, like a worker busy with other jobs.
 * Resolves once the start returned, with the child still running.
 */
function startFromChild(host: TestHost, id: string): Promise<{ child: ChildProcess; init: { pid: number } }> {
  const script = `
    const { openHostRuntime } = require('@berth/runtime');
    const [dataRoot, cgroupParent, id] = process.argv.slice(1);
    openHostRuntime({ dataRoot, cgroupParent, storageDriver: 'btrfs' })
      .then((rt) => rt.containers.start(id))
      .then((r) => {
        process.stdout.write(JSON.stringify(r.info.init) + '\\n');
        setInterval(() => undefined, 60000);
      })
      .catch((e) => {
        process.stderr.write(String((e && e.stack) || e));
        process.exit(3);
      });`;
  const child = spawnRuntimeScript(script, [host.dataRoot, host.cgroupParent, id]);
  return new Promise((resolve, reject) => {
    let out = '';
    let err = '';
    child.stdout!.on('data', (d: Buffer) => {
      out += d.toString();
      if (out.includes('\n')) resolve({ child, init: JSON.parse(out) as { pid: number } });
    });
    child.stderr!.on('data', (d: Buffer) => (err += d.toString()));
    child.on('exit', (code) =>
      reject(new Error(`starter exited with ${code} before start returned: ${err}`)),
    );
  });
}

/** Polls until the container reports `status` (the kernel needs a moment to reap a killed init). */
async function waitForStatus(rt: HostRuntime, id: string, status: ContainerStatus): Promise<void> {
  for (let i = 0; i < 300 && (await rt.containers.get(id)).status !== status; i++) await sleep(10);
}

function cgroupDirs(host: TestHost, name: string): string[] {
  return CONTROLLERS.map((c) => `/sys/fs/cgroup/${c}/${host.cgroupParent}/${name}`).filter((d) =>
    existsSync(d),
  );
}

describeKernel('restart safety: the truth is on disk, /proc and cgroupfs', needs, () => {
  let host: TestHost;
  const strays: ChildProcess[] = [];
  const cg = (id: string): string => `${host.cgroupParent}/${id}`;

  beforeAll(async () => {
    host = await openTestHost('rsafe', { storageDriver: 'btrfs' });
    await host.templates.ensureBusybox();
  }, 120_000);
  afterAll(async () => {
    for (const c of strays) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
    await host?.close();
  }, 60_000);

  /** A second runtime on the same data root, as a restarted worker would open it. */
  const reopen = (): Promise<HostRuntime> =>
    openHostRuntime({ dataRoot: host.dataRoot, cgroupParent: host.cgroupParent, storageDriver: 'btrfs' });

  it('a container outlives the SIGKILLed process that started it; a new runtime finds and drives it', async () => {
    await host.containers.create(spec('rs1'));
    const { child, init } = await startFromChild(host, 'rs1');
    strays.push(child);
    const exited = new Promise((r) => child.once('exit', r));
    process.kill(-child.pid!, 'SIGKILL'); // the starter and its whole process group
    await exited;
    expect(child.signalCode).toBe('SIGKILL');
    await sleep(50);

    const fresh = await reopen();
    const [info] = await fresh.containers.list();
    expect(info).toMatchObject({ id: 'rs1', status: 'running' });
    expect(info.init!.pid).toBe(init.pid);
    // init still has its supervisor as parent: nothing of it lived in the killed process group
    const stat = await readProcStat(init.pid);
    expect(stat).not.toBeNull();
    expect(stat!.ppid).not.toBe(child.pid);
    expect(existsSync(`/proc/${stat!.ppid}`)).toBe(true);

    const ps = await fresh.containers.exec('rs1', ['ps', '-o', 'pid,comm']);
    expect(ps.code).toBe(0);
    expect(ps.stdout).toMatch(/^\s*1\s+init$/m);
    const stopped = await fresh.containers.stop('rs1');
    expect(stopped.changed).toBe(true);
    expect(stopped.info.status).toBe('stopped');
    expect(await isAlive(info.init!)).toBe(false);
    expect(await host.cgroups.pids(cg('rs1'))).toEqual([]);
    // a clean stop is not a death behind Berth's back
    expect(await fresh.containers.reconcile()).toEqual({ ...EMPTY_REPORT, removed: false });
  }, 60_000);

  it("an init killed behind Berth's back reads as stopped, reconcile reports it once, start recovers", async () => {
    const started = await host.containers.start('rs1');
    const init = started.info.init!;
    process.kill(init.pid, 'SIGKILL');
    const fresh = await reopen();
    await waitForStatus(fresh, 'rs1', 'stopped');
    expect((await fresh.containers.list()).map((c) => [c.id, c.status])).toEqual([['rs1', 'stopped']]);
    // the whole pid namespace died with its init
    for (let i = 0; i < 200 && (await host.cgroups.pids(cg('rs1'))).length > 0; i++) await sleep(10);
    expect(await host.cgroups.pids(cg('rs1'))).toEqual([]);

    const report = await fresh.containers.reconcile();
    expect(report).toEqual({ ...EMPTY_REPORT, deadInits: ['rs1'], removed: false });
    expect((await fresh.containers.reconcile()).deadInits).toEqual([]);

    const again = await fresh.containers.start('rs1');
    expect(again.info.status).toBe('running');
    expect(again.info.init!.pid).not.toBe(init.pid);
    expect((await fresh.containers.exec('rs1', ['true'])).code).toBe(0);
    await fresh.containers.stop('rs1');
  }, 60_000);

  // A v1 host's (v2 has no devices hierarchy): a loud skip elsewhere, and a failure in CI.
  itKernel(
    'a container made before its runtime used the devices hierarchy starts, restricted to its devices',
    { paths: ['/sys/fs/cgroup/devices/cgroup.procs'] },
    async () => {
      const devices = `/sys/fs/cgroup/devices/${cg('rs1')}`;
      // As an older runtime left it: its groups in the other hierarchies only.
      rmdirSync(devices);
      expect(await host.cgroups.exists(cg('rs1'))).toBe(true);
      const started = await host.containers.start('rs1');
      expect(started.info.status).toBe('running');
      expect(readFileSync(join(devices, 'cgroup.procs'), 'utf8')).toContain(String(started.info.init!.pid));
      expect(readFileSync(join(devices, 'devices.list'), 'utf8').trim().split('\n').sort()).toEqual(
        [...CONTAINER_DEVICE_RULES].sort(),
      );
      expect((await host.containers.exec('rs1', ['sh', '-c', 'echo x > /dev/null'])).code).toBe(0);
      await host.containers.stop('rs1');
    },
    60_000,
  );

  it("a template import's staging left by a killed process is swept (its pid reused or not); a live process's is kept", async () => {
    const tmp = join(host.dataRoot, 'tmp');
    // A pid that is gone: a process that ran and exited.
    const gone = spawn('true');
    await new Promise((r) => gone.once('exit', r));
    const dead = `template-big-${gone.pid}-1700000000000`;
    // pid 1 is alive: under its own start time (`<pid>.<start>`), and as an older version named it.
    const initStart = readFileSync('/proc/1/stat', 'utf8').split(') ')[1].split(' ')[19];
    const live = `template-other-1.${initStart}-1700000000000`;
    const liveOld = `template-older-1-1700000000000`;
    // pid 1 under another start time: a dead importer whose pid the kernel gave to another process.
    const reused = `template-re-used-1.${Number(initStart) + 1}-1700000000000`;
    // This process's own, and one of a dead process that had this process's pid before it.
    const ownStart = readFileSync('/proc/self/stat', 'utf8').split(') ')[1].split(' ')[19];
    const mine = `template-mine-${process.pid}.${ownStart}-1700000000000`;
    const mineBefore = `template-mine-${process.pid}.${Number(ownStart) - 1}-1700000000000`;
    for (const d of [dead, live, liveOld, reused, mine, mineBefore])
      mkdirSync(join(tmp, d, 'rootfs', 'etc'), { recursive: true });
    expect((await host.templates.sweepStaging()).sort()).toEqual([dead, reused, mineBefore].sort());
    for (const d of [dead, reused, mineBefore]) expect(existsSync(join(tmp, d))).toBe(false);
    for (const d of [live, liveOld, mine]) expect(existsSync(join(tmp, d))).toBe(true);
    for (const d of [live, liveOld, mine]) rmSync(join(tmp, d), { recursive: true });
  });

  it('reconcile reports orphans and half-created containers, removes them, and leaves real ones alone', async () => {
    // an orphan cgroup with a live process in it
    const orphanCg = cg('orphan-cg');
    await host.cgroups.create(orphanCg);
    const sleeper = spawn('sleep', ['600'], { stdio: 'ignore' });
    strays.push(sleeper);
    const sleeperGone = new Promise((r) => sleeper.once('exit', r));
    await host.cgroups.addProcess(orphanCg, sleeper.pid!);
    expect(await host.cgroups.pids(orphanCg)).toEqual([sleeper.pid]);
    // a volume with no record
    await host.storage.clone('busybox', 'orphan-vol');
    // a create that crashed after the clone and the cgroup, before its record was complete
    await host.storage.clone('busybox', 'half1');
    await host.cgroups.create(cg('half1'), { pidsMax: 10 });
    await host.containers.store.writeConfig('half1', {
      spec: spec('half1'),
      storageDriver: host.storage.info().name,
      usernsHostUid: 100_000,
      createdAt: new Date().toISOString(),
      creating: true,
    });
    // a crash even before the first record write: a state directory without config.json
    mkdirSync(join(host.containers.store.containerDir('half2'), 'state'), { recursive: true });

    const report = await host.containers.reconcile();
    expect(report).toEqual({
      ...EMPTY_REPORT,
      orphanCgroups: ['orphan-cg'],
      orphanVolumes: ['orphan-vol'],
      halfCreated: ['half1', 'half2'],
      removed: false,
    });
    // reporting removed nothing
    expect(await host.cgroups.pids(orphanCg)).toEqual([sleeper.pid]);
    expect((await host.storage.list()).sort()).toEqual(['half1', 'orphan-vol', 'rs1']);
    // a half-created container is not a container
    await expect(host.containers.get('half1')).rejects.toMatchObject({ code: 'CONTAINER_NOT_FOUND' });

    const removal = await host.containers.reconcile({ remove: true });
    expect(removal).toEqual({ ...report, removed: true });
    await sleeperGone;
    expect(sleeper.signalCode).toBe('SIGKILL');
    expect(cgroupDirs(host, 'orphan-cg')).toEqual([]);
    expect(cgroupDirs(host, 'half1')).toEqual([]);
    expect(await host.storage.list()).toEqual(['rs1']);
    expect(await host.containers.store.ids()).toEqual(['rs1']);
    expect(await host.containers.reconcile()).toEqual({ ...EMPTY_REPORT, removed: false });
    // the real container was left alone and still works
    expect((await host.containers.start('rs1')).info.status).toBe('running');
    await host.containers.stop('rs1');
  }, 60_000);

  describe('a crash in the middle of create', () => {
    const injected = (): RuntimeError => new RuntimeError('KERNEL_ERROR', 'injected failure');
    /** The real driver, except that `create` makes the group and then fails (limits refused, say). */
    const failingCgroups = (): CgroupDriver =>
      Object.assign(Object.create(host.cgroups) as CgroupDriver, {
        async create(path: string, limits?: CgroupLimits): Promise<void> {
          await host.cgroups.create(path, limits);
          throw injected();
        },
      });
    /** The real driver, except that `clone` makes the volume and then fails. */
    const failingStorage = (): StorageDriver =>
      Object.assign(Object.create(host.storage) as StorageDriver, {
        async clone(templateId: string, containerId: string): Promise<never> {
          await host.storage.clone(templateId, containerId);
          throw injected();
        },
      });
    const runtimeWith = (drivers: { cgroups?: CgroupDriver; storage?: StorageDriver }): ContainerRuntime =>
      new ContainerRuntime({
        dataRoot: host.dataRoot,
        cgroups: drivers.cgroups ?? host.cgroups,
        storage: drivers.storage ?? host.storage,
        cgroupParent: host.cgroupParent,
        usernsSupported: true,
        hostCpus: availableParallelism(),
        hostMemoryBytes: totalmem(),
      });

    const expectNothingOf = async (id: string): Promise<void> => {
      expect(await host.containers.store.readConfig(id)).toBeNull();
      expect(existsSync(host.containers.store.containerDir(id))).toBe(false);
      expect(await host.storage.list()).not.toContain(id);
      expect(await host.cgroups.exists(cg(id))).toBe(false);
      expect(await host.containers.reconcile()).toEqual({ ...EMPTY_REPORT, removed: false });
    };

    it.each<[string, { cgroups?: boolean; storage?: boolean }]>([
      ['after the cgroup was made', { cgroups: true }],
      ['after the volume was cloned', { storage: true }],
    ])(
      'leaves nothing when it fails %s, and a retried create succeeds',
      async (_, where) => {
        const id = where.cgroups ? 'crash-cg' : 'crash-vol';
        const broken = runtimeWith({
          cgroups: where.cgroups ? failingCgroups() : undefined,
          storage: where.storage ? failingStorage() : undefined,
        });
        await expect(broken.create(spec(id))).rejects.toMatchObject({ code: 'KERNEL_ERROR' });
        await expectNothingOf(id);

        const retried = await host.containers.create(spec(id));
        expect(retried.changed).toBe(true);
        expect((await host.containers.start(id)).info.status).toBe('running');
        expect((await host.containers.exec(id, ['true'])).code).toBe(0);
        await host.containers.destroy(id);
        await expectNothingOf(id);
      },
      60_000,
    );

    it('a create retried after the creating process died half way clears the leftovers and succeeds', async () => {
      const id = 'crash-proc';
      // what a SIGKILLed create leaves: a record still marked creating, the volume, the cgroup
      await host.containers.store.writeConfig(id, {
        spec: spec(id),
        storageDriver: host.storage.info().name,
        usernsHostUid: 100_000,
        createdAt: new Date().toISOString(),
        creating: true,
      });
      await host.storage.clone('busybox', id);
      await host.cgroups.create(cg(id), { pidsMax: 5 });

      const retried = await host.containers.create(spec(id));
      expect(retried.changed).toBe(true);
      expect(retried.info.status).toBe('stopped');
      expect((await host.containers.start(id)).info.status).toBe('running');
      // the limits are the spec's, not the crashed attempt's
      const pidsMax = readFileSync(`/sys/fs/cgroup/pids/${cg(id)}/pids.max`, 'utf8').trim();
      expect(pidsMax).toBe(String(spec(id).resources.pidsMax));
      expect((await host.containers.store.readConfig(id))?.creating).toBeUndefined();
      await host.containers.destroy(id);
      await expectNothingOf(id);
    }, 60_000);
  });
});
