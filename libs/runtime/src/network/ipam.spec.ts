import { mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { Ipam } from './ipam';
import { formatIpv4, parseCidr, parseIpv4 } from './ipv4';

describe('ipv4', () => {
  it('parses and formats addresses and CIDRs', () => {
    expect(formatIpv4(parseIpv4('10.88.0.1'))).toBe('10.88.0.1');
    expect(parseIpv4('255.255.255.255')).toBe(0xffffffff);
    const c = parseCidr('10.88.0.7/24');
    expect([formatIpv4(c.network), formatIpv4(c.broadcast), c.prefixLen]).toEqual([
      '10.88.0.0',
      '10.88.0.255',
      24,
    ]);
  });
  it.each(['256.0.0.1', '1.2.3', '01.2.3.4', '1.2.3.4 ', 'a.b.c.d', ''])('rejects address %j', (a) => {
    expect(() => parseIpv4(a)).toThrow(expect.objectContaining({ code: 'INVALID_ARGUMENT' }));
  });
  it.each(['10.0.0.0/31', '10.0.0.0/7', '10.0.0.0', '10.0.0.0/24/1', '10.0.0.0/x'])(
    'rejects CIDR %j',
    (c) => {
      expect(() => parseCidr(c)).toThrow(expect.objectContaining({ code: 'INVALID_ARGUMENT' }));
    },
  );
});

describe('Ipam', () => {
  let root: string;
  beforeEach(async () => {
    root = await mkdtemp(path.join(tmpdir(), 'berth-ipam-'));
  });
  afterEach(async () => {
    await rm(root, { recursive: true, force: true });
  });

  it('hands out the lowest free address after the gateway, one file per address', async () => {
    const ipam = new Ipam(root, { cidr: '10.88.0.0/24' });
    expect(await ipam.allocate('a')).toEqual({
      containerId: 'a',
      address: '10.88.0.2',
      prefixLen: 24,
      gateway: '10.88.0.1',
    });
    expect((await ipam.allocate('b')).address).toBe('10.88.0.3');
    expect(await readdir(path.join(root, 'network/ipam'))).toEqual(['10.88.0.2', '10.88.0.3']);
  });

  it('is idempotent per container and survives a new instance (state is on disk)', async () => {
    const first = await new Ipam(root, { cidr: '10.88.0.0/24' }).allocate('a');
    const again = await new Ipam(root, { cidr: '10.88.0.0/24' }).allocate('a', '10.88.0.99');
    expect(again.address).toBe(first.address);
  });

  it('honours a preferred address and refuses one held by someone else or reserved', async () => {
    const ipam = new Ipam(root, { cidr: '10.88.0.0/24' });
    expect((await ipam.allocate('a', '10.88.0.50')).address).toBe('10.88.0.50');
    await expect(ipam.allocate('b', '10.88.0.50')).rejects.toMatchObject({ code: 'ADDRESS_IN_USE' });
    for (const bad of ['10.88.0.1', '10.88.0.0', '10.88.0.255', '10.89.0.5']) {
      await expect(ipam.allocate('c', bad)).rejects.toMatchObject({ code: 'INVALID_ARGUMENT' });
    }
  });

  it('releases, reuses freed addresses, and says NO_ADDRESS when full', async () => {
    const ipam = new Ipam(root, { cidr: '10.88.0.0/30' }); // .1 gateway, .2 the only container address
    await ipam.allocate('a');
    await expect(ipam.allocate('b')).rejects.toMatchObject({ code: 'NO_ADDRESS' });
    expect(await ipam.release('a')).toEqual(['10.88.0.2']);
    expect(await ipam.release('a')).toEqual([]);
    expect((await ipam.allocate('b')).address).toBe('10.88.0.2');
    expect(await ipam.list()).toEqual([{ address: '10.88.0.2', containerId: 'b' }]);
    expect(await ipam.get('b')).toMatchObject({ address: '10.88.0.2' });
    expect(await ipam.get('a')).toBeNull();
  });

  it('ignores leftover temp files of a crashed claim and rejects unsafe container ids', async () => {
    const ipam = new Ipam(root, { cidr: '10.88.0.0/24' });
    await ipam.allocate('a');
    await writeFile(path.join(root, 'network/ipam/.claim-1-deadbeef'), 'ghost\n');
    expect(await ipam.list()).toEqual([{ address: '10.88.0.2', containerId: 'a' }]);
    for (const id of ['', '../x', 'a/b', 'a\nb', '.hidden']) {
      await expect(ipam.allocate(id)).rejects.toMatchObject({ code: 'INVALID_ARGUMENT' });
    }
  });

  it('refuses a gateway outside the pool', () => {
    expect(() => new Ipam(root, { cidr: '10.88.0.0/24', gateway: '10.88.1.1' })).toThrow(
      expect.objectContaining({ code: 'INVALID_ARGUMENT' }),
    );
  });
});
