import { existsSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describeKernel } from '@test/support/kernel';
import { run } from '@berth/runtime/common/exec';
import { containerMacFor, isAlive, vethNameFor } from '@berth/runtime';
import { openTestHost, spawnRuntimeScript, spec, type TestHost } from './runtime-harness';

const needs = { root: true, programs: ['btrfs', 'mkfs.btrfs', 'busybox', 'gcc', 'ip', 'nsenter', 'nft'] };

// The "host" side of the bridge lives in a network namespace of this test only: nothing is added to the
// machine's own network namespace, and no packet leaves the namespaces created here.
const HOST_NS = `berth-t${process.pid}`;
const CIDR = '10.231.0.0/24';
const GATEWAY = '10.231.0.1';
const BRIDGE = 'berth0';

/**
 * Starts a bridge container from a separate node process (as the worker would) whose write to the start
 * FIFO never happens: it prints `held` at that point and waits, so the test can SIGKILL it exactly
 * between the launch of init and its release.
 */
function startHeldAtRelease(host: TestHost, id: string): Promise<() => Promise<void>> {
  const script = `
    const fsp = require('node:fs/promises');
    const open = fsp.open;
    fsp.open = (p, ...rest) => {
      if (String(p).endsWith('start.fifo')) {
        process.stdout.write('held\\n');
        return new Promise(() => undefined);
      }
      return open(p, ...rest);
    };
    const { openHostRuntime } = require('@berth/runtime');
    const [dataRoot, cgroupParent, id, bridge, cidr, hostNetns] = process.argv.slice(1);
    openHostRuntime({ dataRoot, cgroupParent, storageDriver: 'btrfs', network: { bridge, cidr, hostNetns } })
      .then((rt) => rt.containers.start(id))
      .then(() => process.exit(4), (e) => { process.stderr.write(String((e && e.stack) || e)); process.exit(3); });`;
  const child = spawnRuntimeScript(script, [host.dataRoot, host.cgroupParent, id, BRIDGE, CIDR, HOST_NS]);
  return new Promise((resolve, reject) => {
    let err = '';
    child.stderr!.on('data', (d: Buffer) => (err += d.toString()));
    child.on('exit', (code) => reject(new Error(`starter exited with ${code} before it was held: ${err}`)));
    child.stdout!.on('data', (d: Buffer) => {
      if (!d.toString().includes('held')) return;
      child.removeAllListeners('exit');
      resolve(async () => {
        const exited = new Promise((r) => child.once('exit', r));
        process.kill(-child.pid!, 'SIGKILL');
        await exited;
      });
    });
  });
}

/** Device names in the machine's root network namespace. */
async function rootLinks(): Promise<string[]> {
  return (await run('ip', ['-o', 'link', 'show'])).stdout
    .split('\n')
    .filter(Boolean)
    .map((l) => l.split(':')[1].trim().split('@')[0])
    .sort();
}

/** Device names in the simulated host's namespace. */
async function hostNsLinks(): Promise<string[]> {
  return (await run('ip', ['-n', HOST_NS, '-o', 'link', 'show'])).stdout
    .split('\n')
    .filter(Boolean)
    .map((l) => l.split(':')[1].trim().split('@')[0]);
}

describeKernel('container networking: bridge mode inside a simulated host netns, none mode', needs, () => {
  let host: TestHost;
  let rootBefore: string[];
  let ipForwardBefore: string;
  const ipamFile = (address: string) => join(host.dataRoot, 'network', 'ipam', address);

  const ping = async (id: string, address: string) =>
    (await host.containers.exec(id, ['ping', '-c1', '-W1', address], { timeoutMs: 10_000 })).code;

  beforeAll(async () => {
    // a leftover of a crashed run with our pid goes first
    await run('ip', ['netns', 'del', HOST_NS], { okCodes: [0, 1, 255] });
    rootBefore = await rootLinks();
    ipForwardBefore = (await run('cat', ['/proc/sys/net/ipv4/ip_forward'])).stdout.trim();
    await run('ip', ['netns', 'add', HOST_NS]);
    await run('ip', ['-n', HOST_NS, 'link', 'set', 'dev', 'lo', 'up']);
    host = await openTestHost('net', {
      storageDriver: 'btrfs',
      network: { bridge: BRIDGE, cidr: CIDR, hostNetns: HOST_NS },
    });
    await host.templates.ensureBusybox();
  }, 120_000);

  afterAll(async () => {
    await host?.close();
    await run('ip', ['netns', 'del', HOST_NS], { okCodes: [0, 1, 255] });
  }, 120_000);

  it('gives two bridge containers distinct pool addresses on eth0, and they ping each other', async () => {
    for (const id of ['net-a', 'net-b']) {
      const created = await host.containers.create(spec(id, { network: { mode: 'bridge' } }));
      expect(created.info.ipAddress).toMatch(/^10\.231\.0\.\d+$/);
      await host.containers.start(id);
    }
    const a = await host.containers.get('net-a');
    const b = await host.containers.get('net-b');
    expect(a.ipAddress).not.toBe(b.ipAddress);
    for (const info of [a, b]) {
      expect(info.ipAddress).not.toBe(GATEWAY);
      expect(existsSync(ipamFile(info.ipAddress!))).toBe(true);
      const addr = (await host.containers.exec(info.id, ['ip', '-o', '-4', 'addr', 'show', 'dev', 'eth0']))
        .stdout;
      expect(addr).toContain(`inet ${info.ipAddress}/24`);
      const route = (await host.containers.exec(info.id, ['ip', 'route'])).stdout;
      expect(route).toMatch(new RegExp(`default via ${GATEWAY.replace(/\./g, '\\.')} dev eth0`));
    }
    expect(await ping('net-a', b.ipAddress!)).toBe(0);
    expect(await ping('net-b', a.ipAddress!)).toBe(0);
    // the bridge's own address (the simulated host) answers too
    expect(await ping('net-a', GATEWAY)).toBe(0);
    // the host ends of both veths sit on the bridge in the simulated host's namespace
    const links = await hostNsLinks();
    expect(links).toEqual(expect.arrayContaining([BRIDGE, vethNameFor('net-a'), vethNameFor('net-b')]));
    const master = (await run('ip', ['-n', HOST_NS, '-o', 'link', 'show', 'master', BRIDGE])).stdout;
    expect(master).toContain(vethNameFor('net-a'));
    expect(master).toContain(vethNameFor('net-b'));
  }, 60_000);

  it('does not let a container send as another (its address or MAC) or answer ARP for it', async () => {
    const a = (await host.containers.get('net-a')).ipAddress!;
    const b = (await host.containers.get('net-b')).ipAddress!;
    const inA = async (cmd: string) => (await host.containers.exec('net-a', ['sh', '-c', cmd])).code;
    const neighOfB = async () => (await run('ip', ['-n', HOST_NS, 'neigh', 'show', b])).stdout.toLowerCase();
    // The host knows B (its MAC) from talking to it.
    await run('ip', ['netns', 'exec', HOST_NS, 'ping', '-c', '1', '-W', '1', b]);
    expect(await neighOfB()).toContain(containerMacFor('net-b'));

    // B's address on A's eth0: what A sends from it reaches neither the host nor B.
    expect(await inA(`ip addr add ${b}/24 dev eth0`)).toBe(0);
    expect(await inA(`ping -c 1 -W 1 -I ${b} ${GATEWAY}`)).not.toBe(0);
    // A gratuitous ARP that says B's address is at A's MAC: the host's entry for B does not move.
    await inA(`arping -U -c 2 -w 2 -I eth0 -s ${b} ${b}`);
    expect(await neighOfB()).toContain(containerMacFor('net-b'));
    expect(await neighOfB()).not.toContain(containerMacFor('net-a'));
    expect(await inA(`ip addr del ${b}/24 dev eth0`)).toBe(0);

    // B's MAC on A's eth0: nothing goes through either.
    expect(await inA(`ip link set dev eth0 address ${containerMacFor('net-b')}`)).toBe(0);
    expect(await inA(`ping -c 1 -W 1 ${GATEWAY}`)).not.toBe(0);
    expect(await inA(`ip link set dev eth0 address ${containerMacFor('net-a')}`)).toBe(0);

    // As itself, A reaches both again.
    expect(await ping('net-a', GATEWAY)).toBe(0);
    expect(await ping('net-a', b)).toBe(0);
    expect(a).not.toBe(b);
  }, 60_000);

  it('leaves a none-mode container with only loopback: it reaches no one', async () => {
    await host.containers.create(spec('net-n'));
    const started = await host.containers.start('net-n');
    expect(started.info.ipAddress).toBeNull();
    const links = (await host.containers.exec('net-n', ['ip', '-o', 'link'])).stdout.trim().split('\n');
    expect(links).toHaveLength(1);
    expect(links[0]).toMatch(/^1: lo:/);
    for (const id of ['net-a', 'net-b']) {
      const address = (await host.containers.get(id)).ipAddress!;
      expect(await ping('net-n', address)).not.toBe(0);
    }
    expect(await ping('net-n', GATEWAY)).not.toBe(0);
    // its own loopback works
    expect(await ping('net-n', '127.0.0.1')).toBe(0);
  }, 60_000);

  it('adds no device to the machine and turns on no forwarding', async () => {
    expect(await rootLinks()).toEqual(rootBefore);
    expect((await run('cat', ['/proc/sys/net/ipv4/ip_forward'])).stdout.trim()).toBe(ipForwardBefore);
    const inHostNs = await run('nsenter', [
      `--net=/run/netns/${HOST_NS}`,
      'cat',
      '/proc/sys/net/ipv4/ip_forward',
    ]);
    expect(inHostNs.stdout.trim()).toBe('0');
  });

  it('a start whose caller was killed before it released init: the next start runs the container', async () => {
    await host.containers.create(spec('net-k', { network: { mode: 'bridge' } }));
    const kill = await startHeldAtRelease(host, 'net-k');
    await kill();
    // What the kill left: an init that has not exec'd the container's, which the runtime must not take
    // for a running container.
    const stale = JSON.parse(
      readFileSync(join(host.dataRoot, 'containers', 'net-k', 'state', 'init.pid'), 'utf8'),
    ) as { pid: number; startTime: number };
    expect(await isAlive(stale)).toBe(true);
    expect(await host.containers.get('net-k')).toMatchObject({ status: 'stopped', init: null });

    const started = await host.containers.start('net-k');
    expect(started.changed).toBe(true);
    expect(started.info.init!.pid).not.toBe(stale.pid);
    expect(await isAlive(stale)).toBe(false);
    const ps = await host.containers.exec('net-k', ['ps', '-o', 'pid,comm']);
    expect(ps.stdout).toMatch(/^\s*1\s+init$/m);
    const addr = await host.containers.exec('net-k', ['ip', '-o', '-4', 'addr', 'show', 'eth0']);
    expect(addr.stdout).toContain(started.info.ipAddress!);
    // Started and released: a later start is a no-op again, even with the mark left behind (a caller
    // killed after the release, before it removed the mark): init runs the container's program.
    writeFileSync(join(host.dataRoot, 'containers', 'net-k', 'state', 'starting'), '');
    const again = await host.containers.start('net-k');
    expect(again.changed).toBe(false);
    expect(again.info.init!.pid).toBe(started.info.init!.pid);
    expect((await host.containers.get('net-k')).status).toBe('running');
    await host.containers.destroy('net-k');
  }, 60_000);

  it('keeps the address and MAC across a restart, so peers reach it again at once', async () => {
    const before = (await host.containers.get('net-a')).ipAddress;
    const mac = async () =>
      /link\/ether ([0-9a-f:]+)/.exec(
        (await host.containers.exec('net-a', ['ip', 'link', 'show', 'eth0'])).stdout,
      )?.[1];
    const macBefore = await mac();
    expect(macBefore).toMatch(/^02:/);
    await host.containers.stop('net-a');
    // a stopped container has no veth on the bridge
    expect(await hostNsLinks()).not.toContain(vethNameFor('net-a'));
    await host.containers.start('net-a');
    expect((await host.containers.get('net-a')).ipAddress).toBe(before);
    expect(await hostNsLinks()).toContain(vethNameFor('net-a'));
    // a new veth pair, but the same MAC: net-b's ARP cache still points at the right place
    expect(await mac()).toBe(macBefore);
    expect(await ping('net-b', before!)).toBe(0);
  }, 60_000);

  it('destroy removes the veth and releases the address for the next container', async () => {
    const address = (await host.containers.get('net-a')).ipAddress!;
    const guards = async () =>
      (await run('ip', ['netns', 'exec', HOST_NS, 'nft', 'list', 'table', 'bridge', 'berth'])).stdout;
    expect(await guards()).toContain(`port_${vethNameFor('net-a')}`);
    expect((await host.containers.destroy('net-a')).changed).toBe(true);
    expect(await hostNsLinks()).not.toContain(vethNameFor('net-a'));
    // Its port's guard went with its veth.
    expect(await guards()).not.toContain(vethNameFor('net-a'));
    expect(existsSync(ipamFile(address))).toBe(false);
    expect(await ping('net-b', address)).not.toBe(0);
    // the lowest free address is handed out again
    const c = await host.containers.create(spec('net-c', { network: { mode: 'bridge' } }));
    expect(c.info.ipAddress).toBe(address);

    for (const id of ['net-b', 'net-c', 'net-n']) await host.containers.destroy(id);
    expect((await hostNsLinks()).filter((l) => l.startsWith('bv'))).toEqual([]);
    expect(await guards()).not.toMatch(/port_bv/);
    expect(readdirSync(join(host.dataRoot, 'network', 'ipam')).filter((f) => !f.startsWith('.'))).toEqual([]);
    expect(await rootLinks()).toEqual(rootBefore);
  }, 60_000);
});
