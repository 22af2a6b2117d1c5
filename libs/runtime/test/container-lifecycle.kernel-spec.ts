import { appendFileSync, existsSync, mkdirSync, readFileSync, readlinkSync, rmSync, statSync } from 'node:fs';
import { describeKernel } from '@test/support/kernel';
import { readProcStat } from '@berth/runtime';
import { openTestHost, spec, type TestHost } from './runtime-harness';

const needs = { root: true, programs: ['btrfs', 'mkfs.btrfs', 'busybox', 'nsenter', 'gcc'] };

describeKernel('container lifecycle on the real kernel (btrfs pool)', needs, () => {
  let host: TestHost;
  const id = 'life1';
  const cg = (c: string, f: string) => `/sys/fs/cgroup/${c}/${host.cgroupParent}/${id}/${f}`;

  beforeAll(async () => {
    host = await openTestHost('life', { storageDriver: 'btrfs' });
    expect((await host.templates.ensureBusybox()).changed).toBe(true);
    expect((await host.templates.ensureBusybox()).changed).toBe(false);
  }, 120_000);
  afterAll(() => host?.close(), 60_000);

  it('imports one template name once when asked twice at the same moment (two import jobs on one host)', async () => {
    const made: string[] = [];
    const storage = host.storage;
    const create = storage.createTemplateVolume.bind(storage);
    storage.createTemplateVolume = async (name: string) => {
      made.push(name);
      return create(name);
    };
    try {
      const answers = await Promise.all([
        host.templates.ensureBusybox('twice'),
        host.templates.ensureBusybox('twice'),
      ]);
      expect(answers.map((a) => a.changed).sort()).toEqual([false, true]);
      expect(made).toEqual(['twice']);
      expect(await host.templates.has('twice')).toBe(true);
    } finally {
      storage.createTemplateVolume = create;
      await host.templates.delete('twice');
    }
  }, 120_000);

  it('bounds a console log: past the limit it keeps its end, and what init appends goes after it', async () => {
    const made = await host.containers.create(spec('loud'));
    expect(made.changed).toBe(true);
    const log = host.containers.store.logFile('loud');
    // As init's output arrives (the kernel appends: O_APPEND).
    const lines = Array.from({ length: 40_000 }, (_, i) => `line ${i}\n`).join('');
    appendFileSync(log, lines);
    const size = statSync(log).size;
    expect(await host.containers.trimConsoleLogs(size + 1)).toEqual([]);
    expect(await host.containers.trimConsoleLogs(64 * 1024, 4096)).toEqual(['loud']);
    const kept = readFileSync(log, 'utf8');
    expect(kept.split('\n')[0]).toBe(
      `[berth: console log over 65536 bytes: the ${size - 4096} before these dropped]`,
    );
    expect(kept.endsWith('line 39999\n')).toBe(true);
    expect(Buffer.byteLength(kept)).toBeLessThan(4096 + 200);
    appendFileSync(log, 'after\n');
    expect(readFileSync(log, 'utf8').endsWith('line 39999\nafter\n')).toBe(true);
    await host.containers.destroy('loud');
  });

  it('creates a stopped container, idempotently', async () => {
    const a = await host.containers.create(spec(id));
    expect(a.changed).toBe(true);
    expect(a.info.status).toBe('stopped');
    const b = await host.containers.create(spec(id));
    expect(b.changed).toBe(false);
    await expect(host.containers.create(spec(id, { hostname: 'other' }))).rejects.toMatchObject({
      code: 'CONTAINER_EXISTS',
    });
    expect(readFileSync(cg('memory', 'memory.limit_in_bytes'), 'utf8').trim()).toBe(
      String(128 * 1024 * 1024),
    );
  });

  it('starts init as PID 1 in its own namespaces, in its cgroup, as an unprivileged root', async () => {
    const r = await host.containers.start(id);
    expect(r.changed).toBe(true);
    expect(r.info.status).toBe('running');
    const pid = r.info.init!.pid;
    expect(readFileSync(cg('pids', 'cgroup.procs'), 'utf8')).toContain(String(pid));
    for (const ns of ['pid', 'mnt', 'uts', 'ipc', 'net']) {
      expect(readlinkSync(`/proc/${pid}/ns/${ns}`)).not.toBe(readlinkSync(`/proc/self/ns/${ns}`));
    }
    const ps = await host.containers.exec(id, ['ps', '-o', 'pid,comm']);
    expect(ps.code).toBe(0);
    const pids = ps.stdout
      .trim()
      .split('\n')
      .slice(1)
      .map((l) => Number(l.trim().split(/\s+/)[0]));
    expect(pids).toContain(1);
    expect(Math.max(...pids)).toBeLessThan(100); // only its own processes, numbered in its own pid ns
    expect((await host.containers.exec(id, ['hostname'])).stdout.trim()).toBe(id);
    expect((await host.containers.exec(id, ['id', '-u'])).stdout.trim()).toBe('0');
    const status = readFileSync(`/proc/${pid}/status`, 'utf8');
    expect(status).toMatch(/^Uid:\s+100000\s/m);
  });

  it('start on a running container succeeds and says so', async () => {
    const r = await host.containers.start(id);
    expect(r.changed).toBe(false);
    expect(r.info.status).toBe('running');
  });

  it('runs a real service (httpd) and keeps host mounts and devices out of sight', async () => {
    const ps = await host.containers.exec(id, ['ps', '-o', 'comm']);
    expect(ps.stdout).toMatch(/httpd/);
    const mounts = (await host.containers.exec(id, ['cat', '/proc/self/mountinfo'])).stdout;
    expect(mounts).not.toMatch(/\/sys\/fs\/cgroup|\/work|berth-life/);
    const links = (await host.containers.exec(id, ['ip', '-o', 'link'])).stdout.trim().split('\n');
    expect(links).toHaveLength(1);
    expect(links[0]).toMatch(/: lo:/);
  });

  it('pause freezes every process and resume thaws them', async () => {
    const p = await host.containers.pause(id);
    expect(p.info.status).toBe('paused');
    expect(readFileSync(cg('freezer', 'freezer.state'), 'utf8').trim()).toBe('FROZEN');
    const stat = await readProcStat(p.info.init!.pid);
    expect(stat?.state).toBe('D');
    expect((await host.containers.pause(id)).changed).toBe(false);
    const r = await host.containers.resume(id);
    expect(r.info.status).toBe('running');
    expect(readFileSync(cg('freezer', 'freezer.state'), 'utf8').trim()).toBe('THAWED');
    expect((await host.containers.exec(id, ['true'])).code).toBe(0);
  });

  it('resizes live: new limits in the cgroup without a restart', async () => {
    const before = (await host.containers.get(id)).init!;
    const r = await host.containers.resize(id, { cpus: 0.5, memoryBytes: 64 * 1024 * 1024, pidsMax: 40 });
    expect(r.changed).toBe(true);
    expect(r.info.init).toEqual(before);
    expect(readFileSync(cg('cpu', 'cpu.cfs_quota_us'), 'utf8').trim()).toBe('50000');
    expect(readFileSync(cg('memory', 'memory.limit_in_bytes'), 'utf8').trim()).toBe(String(64 * 1024 * 1024));
    expect(readFileSync(cg('pids', 'pids.max'), 'utf8').trim()).toBe('40');
    expect(r.info.spec.resources).toEqual({ cpus: 0.5, memoryBytes: 64 * 1024 * 1024, pidsMax: 40 });
  });

  it('a resize the kernel refuses (memory below what the container holds) leaves every limit as it was', async () => {
    // 24 MiB in the container's tmpfs /dev/shm: charged to its memory cgroup, and not reclaimable (no swap).
    const held = await host.containers.exec(id, [
      'dd',
      'if=/dev/zero',
      'of=/dev/shm/held',
      'bs=1M',
      'count=24',
    ]);
    expect(held.code).toBe(0);
    const err = await host.containers
      .resize(id, { cpus: 0.25, memoryBytes: 8 * 1024 * 1024 })
      .catch((e: unknown) => e);
    expect(err).toMatchObject({ code: 'CGROUP_LIMIT_REJECTED' });
    // CPU was written before memory was refused: back at the limits config.json records.
    expect(readFileSync(cg('cpu', 'cpu.cfs_quota_us'), 'utf8').trim()).toBe('50000');
    expect(readFileSync(cg('memory', 'memory.limit_in_bytes'), 'utf8').trim()).toBe(String(64 * 1024 * 1024));
    expect((await host.containers.get(id)).spec.resources).toEqual({
      cpus: 0.5,
      memoryBytes: 64 * 1024 * 1024,
      pidsMax: 40,
    });
    await host.containers.exec(id, ['rm', '/dev/shm/held']);
  });

  it('stops cleanly in well under a second, leaving no process behind', async () => {
    const init = (await host.containers.get(id)).init!;
    const t0 = Date.now();
    const r = await host.containers.stop(id);
    expect(Date.now() - t0).toBeLessThan(1_000);
    expect(r.forced).toBe(false);
    expect(r.info.status).toBe('stopped');
    expect(
      existsSync(`/proc/${init.pid}`) && readFileSync(`/proc/${init.pid}/stat`, 'utf8').includes(') Z'),
    ).toBe(false);
    expect(readFileSync(cg('pids', 'cgroup.procs'), 'utf8').trim()).toBe('');
    expect((await host.containers.stop(id)).changed).toBe(false);
  });

  it('keeps data across restarts, and snapshot + rollback restore the rootfs', async () => {
    await host.containers.start(id);
    await host.containers.exec(id, ['sh', '-c', 'echo one > /root/data']);
    await host.containers.snapshot(id, 'snap1');
    await host.containers.exec(id, ['sh', '-c', 'echo two > /root/data']);
    await host.containers.restart(id);
    expect((await host.containers.exec(id, ['cat', '/root/data'])).stdout.trim()).toBe('two');
    await expect(host.containers.rollback(id, 'snap1')).rejects.toMatchObject({ code: 'WRONG_STATE' });
    await host.containers.stop(id);
    await host.containers.rollback(id, 'snap1');
    await host.containers.start(id);
    expect((await host.containers.exec(id, ['cat', '/root/data'])).stdout.trim()).toBe('one');
  });

  it('destroys without leaving anything: no cgroup, volume, state directory', async () => {
    const rootfs = host.storage.rootfsPath(id);
    expect((await host.containers.destroy(id)).changed).toBe(true);
    for (const c of ['memory', 'pids', 'cpu', 'freezer']) {
      expect(existsSync(`/sys/fs/cgroup/${c}/${host.cgroupParent}/${id}`)).toBe(false);
    }
    expect(existsSync(rootfs)).toBe(false);
    expect(existsSync(host.containers.store.containerDir(id))).toBe(false);
    expect(await host.storage.list()).toEqual([]);
    expect((await host.containers.destroy(id)).changed).toBe(false);
    await expect(host.containers.get(id)).rejects.toMatchObject({ code: 'CONTAINER_NOT_FOUND' });
  });

  it('refuses bad input with typed errors and creates nothing', async () => {
    await expect(host.containers.create(spec('Bad_Name'))).rejects.toMatchObject({ code: 'INVALID_NAME' });
    await expect(host.containers.create(spec('x1', { template: 'nope' }))).rejects.toMatchObject({
      code: 'TEMPLATE_NOT_FOUND',
    });
    await expect(
      host.containers.create(spec('x2', { resources: { cpus: 0, memoryBytes: 1 << 30, pidsMax: 10 } })),
    ).rejects.toMatchObject({ code: expect.stringMatching(/INVALID/) });
    await expect(
      host.containers.create(spec('x3', { resources: { cpus: 1, memoryBytes: 2 ** 52, pidsMax: 10 } })),
    ).rejects.toMatchObject({ code: 'INVALID_SIZE' });
    await expect(host.containers.start('missing')).rejects.toMatchObject({ code: 'CONTAINER_NOT_FOUND' });
    await expect(host.containers.start('../etc')).rejects.toMatchObject({ code: 'INVALID_NAME' });
    expect(await host.containers.list()).toEqual([]);
    expect(await host.storage.list()).toEqual([]);
  });

  it('a create whose clone fails while its cgroup is being made leaves no cgroup and no record', async () => {
    // A directory where the volume goes: the clone fails at once (VOLUME_EXISTS) while the cgroup, made
    // side by side with it, is still being created in the v1 hierarchies.
    const clash = 'clash1';
    const planted = host.storage.rootfsPath(clash);
    mkdirSync(planted, { recursive: true });
    try {
      await expect(host.containers.create(spec(clash))).rejects.toMatchObject({ code: 'VOLUME_EXISTS' });
      // In no hierarchy the driver uses.
      expect(await host.cgroups.exists(`${host.cgroupParent}/${clash}`)).toBe(false);
      expect((await host.containers.list()).map((c) => c.id)).not.toContain(clash);
      expect(await host.containers.store.readConfig(clash)).toBeNull();
    } finally {
      rmSync(planted, { recursive: true, force: true });
    }
  });
});
