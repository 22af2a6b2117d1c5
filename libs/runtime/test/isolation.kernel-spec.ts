import { execFileSync } from 'node:child_process';
import { closeSync, existsSync, openSync, readFileSync, writeFileSync } from 'node:fs';
import { availableParallelism, totalmem } from 'node:os';
import { join } from 'node:path';
import { describeKernel } from '@test/support/kernel';
import { execInContainer, helperPath } from '../src/namespaces';
import { ContainerRuntime } from '../src/container/container-runtime';
import { openTestHost, spec, type TestHost } from './runtime-harness';

const needs = { root: true, programs: ['btrfs', 'mkfs.btrfs', 'busybox', 'gcc'] };
const MiB = 1024 * 1024;

/** Pids listed by `ps -o pid,comm` (header skipped). */
function psPids(out: string): number[] {
  return out
    .trim()
    .split('\n')
    .slice(1)
    .map((l) => Number(l.trim().split(/\s+/)[0]));
}

/** This test process's own memory cgroup OOM-kill counter (v1), to prove the host is not touched. */
function ownOomKills(): number {
  const line = readFileSync('/proc/self/cgroup', 'utf8')
    .split('\n')
    .find((l) => /^\d+:([^:]*,)?memory(,[^:]*)?:/.test(l));
  const path = line?.split(':')[2] ?? '/';
  const control = readFileSync(join('/sys/fs/cgroup/memory', path, 'memory.oom_control'), 'utf8');
  return Number(/oom_kill (\d+)/.exec(control)?.[1] ?? 0);
}

/** The host can still fork and run a program (the container's limits did not leak to us). */
function hostCanSpawn(): boolean {
  return (
    execFileSync('sh', ['-c', 'for i in 1 2 3 4 5; do /bin/true & done; wait; echo ok']).toString().trim() ===
    'ok'
  );
}

describeKernel('isolation of unprivileged containers (btrfs)', needs, () => {
  let host: TestHost;
  const cgFile = (id: string, c: string, f: string) => `/sys/fs/cgroup/${c}/${host.cgroupParent}/${id}/${f}`;

  beforeAll(async () => {
    host = await openTestHost('iso', { storageDriver: 'btrfs' });
    await host.templates.ensureBusybox();
  }, 120_000);
  afterAll(() => host?.close(), 120_000);

  describe('two containers side by side', () => {
    beforeAll(async () => {
      for (const id of ['iso-a', 'iso-b']) {
        await host.containers.create(spec(id));
        await host.containers.start(id);
      }
    }, 60_000);
    afterAll(async () => {
      for (const id of ['iso-a', 'iso-b']) await host.containers.destroy(id).catch(() => undefined);
    }, 60_000);

    it('each sees only its own processes, numbered in its own pid namespace, and its own hostname', async () => {
      // a marker process in A, started from inside and left running in the background
      const bg = await host.containers.exec('iso-a', [
        'sh',
        '-c',
        'sleep 4242 </dev/null >/dev/null 2>&1 & echo $!',
      ]);
      expect(bg.code).toBe(0);
      const inA = await host.containers.exec('iso-a', ['ps', '-o', 'pid,comm,args']);
      const inB = await host.containers.exec('iso-b', ['ps', '-o', 'pid,comm,args']);
      expect(inA.stdout).toMatch(/sleep 4242/);
      expect(inB.stdout).not.toMatch(/sleep 4242/);
      for (const out of [inA.stdout, inB.stdout]) {
        const pids = psPids(out);
        expect(pids).toContain(1);
        expect(Math.max(...pids)).toBeLessThan(200);
      }
      // the marker's host pid (it is in A's cgroup) means nothing inside B
      const hostPids = (await host.cgroups.pids(`${host.cgroupParent}/iso-a`)).filter((p) =>
        readFileSync(`/proc/${p}/cmdline`, 'utf8').includes('4242'),
      );
      expect(hostPids).toHaveLength(1);
      expect(hostPids[0]).toBeGreaterThan(200);
      const probe = await host.containers.exec('iso-b', ['kill', '-0', String(hostPids[0])]);
      expect(probe.code).not.toBe(0);
      // and B's processes are not A's: B's init is another host process
      const a = await host.containers.get('iso-a');
      const b = await host.containers.get('iso-b');
      expect(a.init!.pid).not.toBe(b.init!.pid);
      expect((await host.containers.exec('iso-a', ['hostname'])).stdout.trim()).toBe('iso-a');
      expect((await host.containers.exec('iso-b', ['hostname'])).stdout.trim()).toBe('iso-b');
      expect(execFileSync('hostname').toString().trim()).not.toMatch(/^iso-/);
    });

    it("neither sees the other's files: separate roots, no path to the other's rootfs", async () => {
      await host.containers.exec('iso-a', ['sh', '-c', 'echo secret-a > /root/only-in-a']);
      expect((await host.containers.exec('iso-a', ['cat', '/root/only-in-a'])).stdout.trim()).toBe(
        'secret-a',
      );
      expect((await host.containers.exec('iso-b', ['cat', '/root/only-in-a'])).code).not.toBe(0);
      // the host path of A's rootfs does not exist inside B
      const aRoot = host.storage.rootfsPath('iso-a');
      expect(readFileSync(join(aRoot, 'root/only-in-a'), 'utf8').trim()).toBe('secret-a');
      expect((await host.containers.exec('iso-b', ['ls', join(aRoot, 'root')])).code).not.toBe(0);
      expect((await host.containers.exec('iso-b', ['ls', host.dataRoot])).code).not.toBe(0);
    });

    it('sees none of the host mounts and, in none mode, only the loopback device', async () => {
      for (const id of ['iso-a', 'iso-b']) {
        const mounts = (await host.containers.exec(id, ['cat', '/proc/self/mountinfo'])).stdout;
        // mountinfo field 5 is the mount point: only its own root and the container's pseudo filesystems
        const points = mounts
          .trim()
          .split('\n')
          .map((l) => l.split(' ')[4]);
        expect(points[0]).toBe('/');
        for (const p of points) expect(p).toMatch(/^\/(proc|sys|dev)?(\/|$)/);
        expect(mounts).not.toContain(host.dataRoot);
        expect(mounts).not.toMatch(/\/sys\/fs\/cgroup|\/work\/|\/tmp\/berth-|berth-oldroot/);
        const links = (await host.containers.exec(id, ['ip', '-o', 'link'])).stdout.trim().split('\n');
        expect(links).toHaveLength(1);
        expect(links[0]).toMatch(/^1: lo:/);
        // no address but loopback either
        const addrs = (await host.containers.exec(id, ['ip', '-o', 'addr'])).stdout;
        expect(addrs).not.toMatch(/inet (?!127\.0\.0\.1)/);
      }
    });

    it("runs exec'd commands in the container's cgroups (not the caller's)", async () => {
      const out = (await host.containers.exec('iso-a', ['cat', '/proc/self/cgroup'])).stdout;
      for (const c of ['memory', 'pids', 'cpu', 'freezer']) {
        const line = out.split('\n').find((l) => l.split(':')[1]?.split(',').includes(c));
        expect(line?.split(':')[2]).toBe(`/${host.cgroupParent}/iso-a`);
      }
      // while it runs, the host sees the command in A's group
      // Looked at until the command shows (its exec's helper and setns take a while on a loaded machine);
      // it lives a second from then, so it is seen before the exec ends.
      let ended = false;
      const run = host.containers.exec('iso-a', ['sleep', '1']).finally(() => (ended = true));
      const commands = async () =>
        (await host.cgroups.pids(`${host.cgroupParent}/iso-a`)).map((p) => {
          try {
            return readFileSync(`/proc/${p}/cmdline`, 'utf8').replace(/\0/g, ' ').trim();
          } catch {
            return ''; // gone between the list and the read
          }
        });
      let inGroup = await commands();
      while (!inGroup.includes('sleep 1') && !ended) {
        await new Promise((r) => setTimeout(r, 10));
        inGroup = await commands();
      }
      expect(inGroup).toContain('sleep 1');
      expect((await run).code).toBe(0);
    });

    it('refuses exec into a paused container (it would freeze on joining the group) and runs it after resume', async () => {
      await host.containers.pause('iso-b');
      try {
        await expect(host.containers.exec('iso-b', ['true'])).rejects.toMatchObject({ code: 'WRONG_STATE' });
      } finally {
        await host.containers.resume('iso-b');
      }
      expect((await host.containers.exec('iso-b', ['true'])).code).toBe(0);
    });
  });

  it("OOM-kills a memory hog started by exec at the container's limit, leaving init and the host alone", async () => {
    const id = 'iso-hog';
    await host.containers.create(spec(id, { resources: { cpus: 1, memoryBytes: 64 * MiB, pidsMax: 128 } }));
    await host.containers.start(id);
    const init = (await host.containers.get(id)).init!;
    const hostOomBefore = ownOomKills();
    expect((await host.containers.stats(id)).oomKills).toBe(0);

    // tail buffers an endless line from /dev/zero until the kernel kills it
    const hog = await host.containers.exec(id, ['tail', '/dev/zero'], { timeoutMs: 30_000 });
    expect(hog.code).toBe(137); // 128 + SIGKILL
    // and through a shell inside, which reports its killed child the same way
    const viaShell = await host.containers.exec(id, ['sh', '-c', 'tail /dev/zero; echo "status=$?"'], {
      timeoutMs: 30_000,
    });
    expect(viaShell.stdout.trim()).toBe('status=137');

    const stats = await host.containers.stats(id);
    expect(stats.oomKills).toBeGreaterThanOrEqual(2);
    expect(stats.memoryPeakBytes).toBeLessThanOrEqual(64 * MiB);
    expect(stats.memoryPeakBytes).toBeGreaterThan(32 * MiB);
    // init survived (the hog was the victim), the container still works
    const after = await host.containers.get(id);
    expect(after.status).toBe('running');
    expect(after.init).toEqual(init);
    expect((await host.containers.exec(id, ['true'])).code).toBe(0);
    // the host: this process lives, its memory cgroup saw no OOM kill
    expect(ownOomKills()).toBe(hostOomBefore);
    expect(hostCanSpawn()).toBe(true);
    expect((await host.containers.destroy(id)).changed).toBe(true);
  }, 90_000);

  it('stops a fork bomb at pids.max; the host is unaffected and the container is still destroyable', async () => {
    const id = 'iso-bomb';
    await host.containers.create(spec(id, { resources: { cpus: 1, memoryBytes: 128 * MiB, pidsMax: 50 } }));
    await host.containers.start(id);
    // forks sleeps until fork fails; prints the count after each success (the sleeps do not hold stdout)
    const bomb = await host.containers.exec(
      id,
      [
        'sh',
        '-c',
        'i=0; while [ $i -lt 500 ]; do sleep 1000 </dev/null >/dev/null 2>&1 & i=$((i+1)); echo $i; done',
      ],
      { timeoutMs: 30_000 },
    );
    const forked = Math.max(0, ...bomb.stdout.trim().split('\n').filter(Boolean).map(Number));
    expect(bomb.code).not.toBe(0);
    expect(bomb.stderr).toMatch(/fork|Resource temporarily unavailable/i);
    expect(forked).toBeGreaterThan(20);
    expect(forked).toBeLessThan(50);
    expect(Number(readFileSync(cgFile(id, 'pids', 'pids.current'), 'utf8'))).toBeLessThanOrEqual(50);
    expect(
      Number(/max (\d+)/.exec(readFileSync(cgFile(id, 'pids', 'pids.events'), 'utf8'))?.[1]),
    ).toBeGreaterThan(0);
    expect(hostCanSpawn()).toBe(true);
    const t0 = Date.now();
    expect((await host.containers.destroy(id)).changed).toBe(true);
    expect(Date.now() - t0).toBeLessThan(10_000);
    expect(await host.cgroups.exists(`${host.cgroupParent}/${id}`)).toBe(false);
  }, 90_000);

  it('enforces a lowered pids limit on the next fork after a live resize', async () => {
    const id = 'iso-resize';
    await host.containers.create(spec(id, { resources: { cpus: 1, memoryBytes: 128 * MiB, pidsMax: 100 } }));
    await host.containers.start(id);
    const start = await host.containers.exec(id, [
      'sh',
      '-c',
      'i=0; while [ $i -lt 60 ]; do sleep 1000 </dev/null >/dev/null 2>&1 & i=$((i+1)); done; echo started $i',
    ]);
    expect(start.code).toBe(0);
    expect(start.stdout.trim()).toBe('started 60');
    const current = Number(readFileSync(cgFile(id, 'pids', 'pids.current'), 'utf8'));
    expect(current).toBeGreaterThan(60);
    // still room under 100: one more fork works
    expect((await host.containers.exec(id, ['sh', '-c', 'sleep 0 & wait'])).code).toBe(0);

    const before = (await host.containers.get(id)).init;
    await host.containers.resize(id, { pidsMax: 40 });
    expect(readFileSync(cgFile(id, 'pids', 'pids.max'), 'utf8').trim()).toBe('40');
    const denied = await host.containers.exec(id, ['sh', '-c', 'sleep 0 & wait']);
    expect(denied.code).not.toBe(0);
    expect(denied.stderr).toMatch(/fork|Resource temporarily unavailable/i);
    // nothing was restarted: the same init, the 60 sleeps still there
    expect((await host.containers.get(id)).init).toEqual(before);
    expect(Number(readFileSync(cgFile(id, 'pids', 'pids.current'), 'utf8'))).toBeGreaterThan(60);

    // raising it again lets forks succeed
    await host.containers.resize(id, { pidsMax: 200 });
    expect((await host.containers.exec(id, ['sh', '-c', 'sleep 0 & wait'])).code).toBe(0);
    expect((await host.containers.destroy(id)).changed).toBe(true);
  }, 90_000);

  it('enforces a lowered memory limit after a live resize: 48 MiB fit under 128 MiB, not under 32 MiB', async () => {
    const id = 'iso-mem';
    await host.containers.create(spec(id, { resources: { cpus: 1, memoryBytes: 128 * MiB, pidsMax: 128 } }));
    await host.containers.start(id);
    // tail keeps its whole input (no newline) in memory: 48 MiB of it
    const alloc = ['sh', '-c', 'head -c 50331648 /dev/zero | tail | wc -c'];
    const fits = await host.containers.exec(id, alloc, { timeoutMs: 30_000 });
    expect(fits.code).toBe(0);
    expect(fits.stdout.trim()).toBe('50331648');
    expect((await host.containers.stats(id)).oomKills).toBe(0);
    expect((await host.containers.stats(id)).memoryPeakBytes).toBeGreaterThan(48 * MiB);

    await host.containers.resize(id, { memoryBytes: 32 * MiB });
    expect(readFileSync(cgFile(id, 'memory', 'memory.limit_in_bytes'), 'utf8').trim()).toBe(String(32 * MiB));
    const killed = await host.containers.exec(id, alloc, { timeoutMs: 30_000 });
    expect(killed.stdout.trim()).not.toBe('50331648');
    expect((await host.containers.stats(id)).oomKills).toBeGreaterThanOrEqual(1);
    expect((await host.containers.get(id)).status).toBe('running');
    expect((await host.containers.destroy(id)).changed).toBe(true);
  }, 90_000);

  it('runs privileged containers (real root on the host, without its host-wide capabilities, sysctls and SysRq) that start and stop', async () => {
    const id = 'iso-priv';
    const created = await host.containers.create(spec(id, { privileged: true }));
    expect(created.changed).toBe(true);
    const started = await host.containers.start(id);
    expect(started.info.status).toBe('running');
    const pid = started.info.init!.pid;
    expect(readFileSync(`/proc/${pid}/status`, 'utf8')).toMatch(/^Uid:\s+0\s+0\s+0\s+0$/m);
    expect(readFileSync(`/proc/${pid}/uid_map`, 'utf8')).toMatch(/^\s*0\s+0\s+4294967295/);
    expect((await host.containers.exec(id, ['id', '-u'])).stdout.trim()).toBe('0');
    // its exec'd commands join its cgroups too
    const cg = (await host.containers.exec(id, ['cat', '/proc/self/cgroup'])).stdout;
    expect(cg).toContain(`/${host.cgroupParent}/${id}`);
    expect((await host.containers.exec(id, ['hostname'])).stdout.trim()).toBe(id);
    // Root there is the host's, without the capabilities that reach past the container (LXC's default
    // drop list): its init and the commands run in it alike. The rest of root's set stays.
    const HOST_CAPS = [16, 17, 25, 32, 33]; // sys_module, sys_rawio, sys_time, mac_override, mac_admin
    const bounding = (status: string) => BigInt(`0x${/^CapBnd:\s+([0-9a-f]+)$/m.exec(status)![1]}`);
    const initBnd = bounding(readFileSync(`/proc/${pid}/status`, 'utf8'));
    const execStatus = (await host.containers.exec(id, ['cat', '/proc/self/status'])).stdout;
    for (const set of [initBnd, bounding(execStatus)]) {
      for (const cap of HOST_CAPS)
        expect({ cap, held: (set >> BigInt(cap)) & 1n }).toEqual({ cap, held: 0n });
      for (const cap of [0, 12, 21])
        expect({ cap, held: (set >> BigInt(cap)) & 1n }).toEqual({ cap, held: 1n }); // chown, net_admin, sys_admin
    }
    expect(/^CapEff:\s+([0-9a-f]+)$/m.exec(execStatus)![1]).toBe(
      /^CapBnd:\s+([0-9a-f]+)$/m.exec(execStatus)![1],
    );
    // A worker started with inheritable and ambient capabilities (systemd's CapabilityInheritable=,
    // AmbientCapabilities=) does not hand them back: root's exec gains bounding | inheritable | ambient.
    const wrapper = join(host.dataRoot, 'helper-with-inherited-caps');
    const inherit = ['setpriv', '--inh-caps', '+sys_time,+sys_module', '--ambient-caps', '+sys_time', '--'];
    writeFileSync(wrapper, `#!/bin/sh\nexec ${inherit.join(' ')} ${helperPath()} "$@"\n`, { mode: 0o755 });
    const caps = (status: string, set: string) =>
      BigInt(`0x${new RegExp(`^${set}:\\s+([0-9a-f]+)$`, 'm').exec(status)![1]}`);
    // (the wrapper does what it says: a program it starts on the host has them)
    const onHost = execFileSync(inherit[0], [...inherit.slice(1), 'cat', '/proc/self/status'], {
      encoding: 'utf8',
    });
    expect((caps(onHost, 'CapInh') >> 25n) & 1n).toBe(1n);
    expect((caps(onHost, 'CapAmb') >> 25n) & 1n).toBe(1n);
    const inherited = await execInContainer(started.info.init!, ['cat', '/proc/self/status'], {
      cgroupProcs: host.cgroups.procsFiles(`${host.cgroupParent}/${id}`),
      helper: wrapper,
    });
    expect(inherited.code).toBe(0);
    for (const set of ['CapInh', 'CapPrm', 'CapEff', 'CapAmb', 'CapBnd'])
      for (const cap of HOST_CAPS)
        expect({ set, cap, held: (caps(inherited.stdout, set) >> BigInt(cap)) & 1n }).toEqual({
          set,
          cap,
          held: 0n,
        });
    // The host's sysctls and the magic SysRq key are read-only: opening one for writing fails (EROFS, the
    // shell exits 1); were it writable, the open alone (`: >`, nothing written) would change nothing.
    const readOnly = ['/proc/sys/vm/swappiness', '/proc/sys/kernel/hostname'];
    if (existsSync('/proc/sysrq-trigger')) readOnly.push('/proc/sysrq-trigger'); // kernels with SysRq
    for (const file of readOnly)
      expect({ file, code: (await host.containers.exec(id, ['sh', '-c', ': > "$0"', file])).code }).toEqual({
        file,
        code: 1,
      });
    expect((await host.containers.exec(id, ['test', '-r', '/proc/sys/vm/swappiness'])).code).toBe(0);
    // Its root can make device nodes in its /dev (a tmpfs of its own), but opens only the devices a container
    // may use (its devices cgroup): a host disk and the loop devices' control are refused, even read-only.
    const made = await host.containers.exec(id, [
      'sh',
      '-c',
      'mknod /dev/hostdisk b 7 0 && mknod /dev/loopctl c 10 237 && mknod /dev/null2 c 1 3',
    ]);
    expect(made).toMatchObject({ code: 0 });
    for (const node of ['/dev/hostdisk', '/dev/loopctl']) {
      const opened = await host.containers.exec(id, ['sh', '-c', ': < "$0"', node]);
      expect({ node, code: opened.code, err: opened.stderr }).toEqual({
        node,
        code: expect.any(Number),
        err: expect.stringMatching(/Operation not permitted/),
      });
      expect(opened.code).not.toBe(0);
    }
    // (the host's root opens the same device: the refusal is the container's)
    expect(() => closeSync(openSync('/dev/loop-control', 'r'))).not.toThrow();
    expect((await host.containers.exec(id, ['sh', '-c', 'echo x > /dev/null2'])).code).toBe(0);
    const stopped = await host.containers.stop(id);
    expect(stopped.info.status).toBe('stopped');
    expect(await host.cgroups.pids(`${host.cgroupParent}/${id}`)).toEqual([]);
    expect((await host.containers.destroy(id)).changed).toBe(true);
  }, 60_000);

  it.each([false, true])(
    "keeps the host's root out of a container that planted links for its next start (privileged: %p)",
    async (privileged) => {
      const id = privileged ? 'iso-links-p' : 'iso-links';
      await host.containers.create(spec(id, { privileged }));
      await host.containers.start(id);
      const root = host.storage.rootfsPath(id);
      // Its root plants, for the launcher's next start: the old root's mount point as a link that reads
      // as /tmp/old of its rootfs on the host, and as /proc once inside (a link under that host path in its
      // own tree); /proc, /sys and /dev as links out of the rootfs.
      const plant = await host.containers.exec(id, [
        'sh',
        '-c',
        [
          'mkdir -p /tmp/old /tmp/p',
          `ln -sfn ${root}/tmp/old /.berth-oldroot`,
          `mkdir -p ${root}/tmp && ln -sfn /proc ${root}/tmp/old`,
        ].join(' && '),
      ]);
      expect(plant.code).toBe(0);
      await host.containers.stop(id);
      const started = await host.containers.start(id).then(
        (r) => r.info.status,
        (e: Error) => e.message,
      );
      if (started === 'running') {
        // Started: nothing of the host under /tmp/old, and /proc is the container's own.
        expect((await host.containers.exec(id, ['ls', '-A', '/tmp/old'])).stdout.trim()).toBe('');
        expect((await host.containers.exec(id, ['cat', '/proc/1/comm'])).code).toBe(0);
        const mounts = (await host.containers.exec(id, ['cat', '/proc/self/mountinfo'])).stdout;
        for (const p of mounts
          .trim()
          .split('\n')
          .map((l) => l.split(' ')[4]))
          expect(p).toMatch(/^\/(proc|sys|dev)?(\/|$)/);
        await host.containers.stop(id);
      }
      expect((await host.containers.destroy(id)).changed).toBe(true);
      expect(existsSync(root)).toBe(false);
    },
    60_000,
  );

  it('refuses an unprivileged container on a host without user namespaces, rather than running it as root', async () => {
    const noUserns = new ContainerRuntime({
      dataRoot: host.dataRoot,
      cgroups: host.cgroups,
      storage: host.storage,
      cgroupParent: host.cgroupParent,
      usernsSupported: false,
      hostCpus: availableParallelism(),
      hostMemoryBytes: totalmem(),
    });
    await expect(noUserns.create(spec('iso-nouserns'))).rejects.toMatchObject({ code: 'UNSUPPORTED' });
    expect(await host.containers.store.readConfig('iso-nouserns')).toBeNull();
    expect(await host.storage.list()).not.toContain('iso-nouserns');
    // A privileged one (an admin's) is what it says.
    expect((await noUserns.create(spec('iso-nouserns-p', { privileged: true }))).changed).toBe(true);
    expect((await noUserns.destroy('iso-nouserns-p')).changed).toBe(true);
  });
});
