import { ChildProcess, spawn } from 'node:child_process';
import { mkdtemp, readlink, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { describeKernel } from '@test/support/kernel';
import { run } from '../common/exec';
import { ensureBridge, removeBridge } from './bridge';
import { Ipam } from './ipam';
import { attachContainer, detachContainer, listVeths, setupLoopbackOnly, vethNameFor } from './veth';

const HOST_NS = `berth-t${process.pid}-h`;

// Under a full parallel kernel run these spawn many processes on 2 cores: allow more than 5 s.
jest.setTimeout(30_000);

describeKernel(
  'network: bridge + veth + ipam inside a simulated host netns',
  { root: true, programs: ['ip', 'unshare', 'nsenter', 'nft'], paths: ['/bin/busybox'] },
  () => {
    let dataRoot: string;
    let rootLinksBefore: string[];
    let ipForwardBefore: string;
    const procs: ChildProcess[] = [];
    const ids = [`c1-${process.pid}`, `c2-${process.pid}`];

    const rootLinks = async (): Promise<string[]> =>
      (await run('ip', ['-o', 'link', 'show'])).stdout
        .split('\n')
        .filter(Boolean)
        .map((l) => l.split(':')[1].trim().split('@')[0])
        .sort();

    /** A stand-in for a container init: a process alone in a fresh network namespace. */
    const startNetnsProcess = async (): Promise<number> => {
      const child = spawn('unshare', ['--net', '--fork', 'sleep', '1000'], { stdio: 'ignore' });
      procs.push(child);
      const own = await readlink('/proc/self/ns/net');
      const deadline = Date.now() + 5000;
      for (;;) {
        const ns = await readlink(`/proc/${child.pid}/ns/net`).catch(() => own);
        if (ns !== own) return child.pid as number;
        if (Date.now() > deadline) throw new Error('unshare did not enter a new netns');
        await new Promise((r) => setTimeout(r, 10));
      }
    };
    const ping = async (pid: number, address: string): Promise<boolean> => {
      const r = await run(
        'nsenter',
        [`--net=/proc/${pid}/ns/net`, '/bin/busybox', 'ping', '-c1', '-W1', address],
        { okCodes: [0, 1, 2] },
      );
      return r.code === 0;
    };

    beforeAll(async () => {
      dataRoot = await mkdtemp(path.join(tmpdir(), `berth-net-${process.pid}-`));
      // Leftover of a crashed run with our pid: remove it first.
      await run('ip', ['netns', 'del', HOST_NS], { okCodes: [0, 1, 255] });
      rootLinksBefore = await rootLinks();
      ipForwardBefore = (await run('cat', ['/proc/sys/net/ipv4/ip_forward'])).stdout.trim();
      await run('ip', ['netns', 'add', HOST_NS]);
      await run('ip', ['-n', HOST_NS, 'link', 'set', 'dev', 'lo', 'up']);
    });

    afterAll(async () => {
      for (const p of procs) if (p.exitCode === null && p.signalCode === null) p.kill('SIGKILL');
      await run('ip', ['netns', 'del', HOST_NS], { okCodes: [0, 1, 255] });
      await rm(dataRoot, { recursive: true, force: true });
    });

    it('ensureBridge creates, addresses and raises the bridge, idempotently', async () => {
      const first = await ensureBridge({ hostNetns: HOST_NS });
      expect(first).toEqual({ name: 'berth0', address: '10.88.0.1', prefixLen: 24 });
      await ensureBridge({ hostNetns: HOST_NS });
      await Promise.all([ensureBridge({ hostNetns: HOST_NS }), ensureBridge({ hostNetns: HOST_NS })]);
      const addr = (await run('ip', ['-n', HOST_NS, '-o', '-4', 'addr', 'show', 'dev', 'berth0'])).stdout;
      expect(addr.match(/inet 10\.88\.0\.1\/24/g)).toHaveLength(1);
      const link = (await run('ip', ['-n', HOST_NS, '-d', 'link', 'show', 'dev', 'berth0'])).stdout;
      expect(link).toMatch(/state UP|<[^>]*\bUP\b/);
      expect(link).toMatch(/bridge/);
      // It never turns on forwarding, not even in the netns it manages.
      const fwd = await run('ip', ['netns', 'exec', HOST_NS, 'cat', '/proc/sys/net/ipv4/ip_forward']);
      expect(fwd.stdout.trim()).toBe('0');
    });

    it('two attached containers reach each other and the gateway; a none-mode one reaches nothing', async () => {
      const ipam = new Ipam(dataRoot, { cidr: '10.88.0.0/24' });
      const [p1, p2, p3] = [await startNetnsProcess(), await startNetnsProcess(), await startNetnsProcess()];
      const a1 = await ipam.allocate(ids[0]);
      const a2 = await ipam.allocate(ids[1]);
      expect(a1.address).not.toBe(a2.address);
      for (const [id, pid, a] of [
        [ids[0], p1, a1],
        [ids[1], p2, a2],
      ] as const) {
        const r = await attachContainer({
          containerId: id,
          pid,
          bridge: 'berth0',
          address: a.address,
          prefixLen: a.prefixLen,
          gateway: a.gateway,
          hostNetns: HOST_NS,
        });
        expect(r).toEqual({ hostVeth: vethNameFor(id), changed: true });
      }
      // Attaching again changes nothing.
      const again = await attachContainer({
        containerId: ids[0],
        pid: p1,
        bridge: 'berth0',
        address: a1.address,
        prefixLen: 24,
        gateway: a1.gateway,
        hostNetns: HOST_NS,
      });
      expect(again.changed).toBe(false);

      const inside = (await run('nsenter', [`--net=/proc/${p1}/ns/net`, 'ip', '-o', '-4', 'addr'])).stdout;
      expect(inside).toMatch(new RegExp(`eth0\\s+inet ${a1.address.replace(/\./g, '\\.')}/24`));
      const route = (await run('nsenter', [`--net=/proc/${p1}/ns/net`, 'ip', 'route', 'show', 'default']))
        .stdout;
      expect(route).toMatch(/default via 10\.88\.0\.1 dev eth0/);

      expect(await ping(p1, a2.address)).toBe(true);
      expect(await ping(p2, a1.address)).toBe(true);
      expect(await ping(p1, '10.88.0.1')).toBe(true);

      await setupLoopbackOnly(p3);
      expect(await ping(p3, '127.0.0.1')).toBe(true);
      expect(await ping(p3, a1.address)).toBe(false);
      expect(await ping(p3, '10.88.0.1')).toBe(false);
      const p3links = (await run('nsenter', [`--net=/proc/${p3}/ns/net`, 'ip', '-o', 'link'])).stdout;
      expect(p3links.trim().split('\n')).toHaveLength(1);

      const veths = await listVeths(HOST_NS);
      expect(veths.map((v) => v.name).sort()).toEqual(ids.map(vethNameFor).sort());
      expect(veths.every((v) => v.master === 'berth0' && v.up)).toBe(true);
    });

    it('re-attaching after the container restarted (new netns, stale host end) rebuilds the pair', async () => {
      const ipam = new Ipam(dataRoot, { cidr: '10.88.0.0/24' });
      const a1 = await ipam.allocate(ids[0]); // idempotent: same address as before
      const fresh = await startNetnsProcess();
      const r = await attachContainer({
        containerId: ids[0],
        pid: fresh,
        bridge: 'berth0',
        address: a1.address,
        prefixLen: 24,
        gateway: a1.gateway,
        hostNetns: HOST_NS,
      });
      expect(r.changed).toBe(true);
      expect(await ping(fresh, '10.88.0.1')).toBe(true);
      expect((await listVeths(HOST_NS)).filter((v) => v.name === vethNameFor(ids[0]))).toHaveLength(1);
    });

    it('detach removes the veth (and is a no-op the second time)', async () => {
      for (const id of ids) {
        expect(await detachContainer(id, HOST_NS)).toBe(true);
        expect(await detachContainer(id, HOST_NS)).toBe(false);
      }
      expect(await listVeths(HOST_NS)).toEqual([]);
      expect(await removeBridge('berth0', HOST_NS)).toBe(true);
    });

    it('concurrent allocations never share an address, and a full pool says NO_ADDRESS', async () => {
      const root = path.join(dataRoot, 'concurrent');
      const many = Array.from({ length: 40 }, (_, i) => `k${i}`);
      // Separate Ipam instances model separate callers sharing the host's data root.
      const results = await Promise.allSettled(
        many.map((id) => new Ipam(root, { cidr: '10.89.0.0/27' }).allocate(id)),
      );
      const ok = results.filter((r) => r.status === 'fulfilled').map((r) => r.value);
      const failed = results
        .filter((r) => r.status === 'rejected')
        .map((r) => (r.reason as { code: string }).code);
      expect(ok).toHaveLength(29); // a /27 has 30 host addresses, one is the gateway
      expect(failed).toEqual(Array(11).fill('NO_ADDRESS'));
      expect(new Set(ok.map((a) => a.address)).size).toBe(29);
      expect(ok.map((a) => a.address)).not.toContain('10.89.0.1');
      const listed = await new Ipam(root, { cidr: '10.89.0.0/27' }).list();
      expect(listed.map((a) => a.address).sort()).toEqual(ok.map((a) => a.address).sort());
    });

    it('racing retries for one container converge on one address', async () => {
      const root = path.join(dataRoot, 'retries');
      const got = await Promise.all(
        Array.from({ length: 12 }, () => new Ipam(root, { cidr: '10.90.0.0/24' }).allocate('same')),
      );
      expect(new Set(got.map((a) => a.address))).toEqual(new Set([got[0].address]));
      expect(await new Ipam(root, { cidr: '10.90.0.0/24' }).list()).toEqual([
        { address: got[0].address, containerId: 'same' },
      ]);
    });

    it("leaves the machine's real network namespace untouched", async () => {
      const after = await rootLinks();
      const ours = (n: string): boolean => /^(bv|bp)[0-9a-f]{13}$/.test(n) || n === 'berth0';
      expect(after.filter(ours)).toEqual(rootLinksBefore.filter(ours));
      expect(after.filter((n) => !rootLinksBefore.includes(n)).filter(ours)).toEqual([]);
      // And the machine's forwarding is as it was (off, unless its owner turned it on).
      expect((await run('cat', ['/proc/sys/net/ipv4/ip_forward'])).stdout.trim()).toBe(ipForwardBefore);
    });
  },
);
