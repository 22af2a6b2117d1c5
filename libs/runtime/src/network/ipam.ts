import { randomBytes } from 'node:crypto';
import { link, mkdir, readdir, readFile, unlink, writeFile } from 'node:fs/promises';
import * as path from 'node:path';
import { RuntimeError } from '../common/errors';
import { formatIpv4, Ipv4Cidr, parseCidr, parseIpv4 } from './ipv4';

export interface IpamOptions {
  /** Pool, e.g. `10.88.0.0/24`. */
  cidr: string;
  /** Gateway (the bridge's address), never handed out. Default: the first host address (`.1`). */
  gateway?: string;
}

export interface AddressAllocation {
  containerId: string;
  address: string;
  prefixLen: number;
  gateway: string;
}

/** Container ids become file contents and log fields: keep them boring. */
const CONTAINER_ID = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$/;

function assertContainerId(id: string): void {
  if (typeof id !== 'string' || !CONTAINER_ID.test(id)) {
    throw new RuntimeError('INVALID_ARGUMENT', `invalid container id ${JSON.stringify(id)}`, {
      containerId: id,
    });
  }
}

/**
 * The per-host address pool. State is one file per allocated address under `<dataRoot>/network/ipam/`,
 * named after the address and holding the container id. A file is published with link(2) from a
 * fully-written temp file: like O_EXCL creation it fails with EEXIST when the address is taken (so two
 * allocators, in one process or many, never hand out one address twice), and unlike O_EXCL + write it
 * never leaves an empty, ownerless file after a crash. No lock and no index to get out of sync.
 */
export class Ipam {
  private readonly pool: Ipv4Cidr;
  private readonly gateway: number;
  readonly dir: string;

  /**
   * @param dataRoot the host's data root (a simulated host has its own).
   * @throws RuntimeError INVALID_ARGUMENT for a bad CIDR or a gateway outside it.
   */
  constructor(dataRoot: string, options: IpamOptions) {
    this.pool = parseCidr(options.cidr);
    this.gateway = options.gateway ? parseIpv4(options.gateway) : this.pool.network + 1;
    if (this.gateway <= this.pool.network || this.gateway >= this.pool.broadcast) {
      throw new RuntimeError(
        'INVALID_ARGUMENT',
        `gateway ${options.gateway} is not a host address of ${options.cidr}`,
        {
          cidr: options.cidr,
          gateway: options.gateway,
        },
      );
    }
    this.dir = path.join(dataRoot, 'network', 'ipam');
  }

  /**
   * Gives `containerId` an address: its existing one if it has one (idempotent), else `preferred` if given,
   * else the lowest free address. Concurrent calls for one container converge on one address (extra
   * claims are released).
   * @throws RuntimeError INVALID_ARGUMENT (bad id, preferred outside the pool or reserved), ADDRESS_IN_USE
   *   (preferred held by another container), NO_ADDRESS (pool exhausted).
   */
  async allocate(containerId: string, preferred?: string): Promise<AddressAllocation> {
    assertContainerId(containerId);
    const want = preferred === undefined ? undefined : parseIpv4(preferred);
    if (want !== undefined && !this.isHostAddress(want)) {
      throw new RuntimeError('INVALID_ARGUMENT', `${preferred} is not an assignable address of the pool`, {
        preferred,
      });
    }
    await mkdir(this.dir, { recursive: true });
    const existing = await this.addressesOf(containerId);
    if (existing.length > 0) return this.settle(containerId);

    if (want !== undefined) {
      if (!(await this.claim(want, containerId))) {
        const owner = await this.ownerOf(want);
        if (owner !== containerId) {
          throw new RuntimeError('ADDRESS_IN_USE', `${preferred} is already assigned to ${owner}`, {
            address: preferred,
            owner,
          });
        }
      }
      return this.settle(containerId);
    }

    const taken = new Set((await this.list()).map((a) => a.address));
    for (let n = this.pool.network + 1; n < this.pool.broadcast; n++) {
      if (n === this.gateway || taken.has(formatIpv4(n))) continue;
      if (await this.claim(n, containerId)) return this.settle(containerId);
    }
    throw new RuntimeError(
      'NO_ADDRESS',
      `address pool ${formatIpv4(this.pool.network)}/${this.pool.prefixLen} is full`,
      {
        containerId,
      },
    );
  }

  /**
   * Frees every address held by `containerId`.
   * @returns the freed addresses (empty when it held none: releasing twice is fine).
   */
  async release(containerId: string): Promise<string[]> {
    assertContainerId(containerId);
    const mine = await this.addressesOf(containerId);
    for (const a of mine) await unlink(path.join(this.dir, a)).catch(ignoreEnoent);
    return mine;
  }

  /** Every allocation, sorted by address. Temp files of interrupted claims are ignored. */
  async list(): Promise<Array<{ address: string; containerId: string }>> {
    let names: string[];
    try {
      names = await readdir(this.dir);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return [];
      throw e;
    }
    const out: Array<{ address: string; containerId: string; n: number }> = [];
    for (const name of names) {
      if (name.startsWith('.')) continue;
      let n: number;
      try {
        n = parseIpv4(name);
      } catch {
        continue;
      }
      const owner = await this.ownerOf(n);
      if (owner !== null) out.push({ address: name, containerId: owner, n });
    }
    return out.sort((a, b) => a.n - b.n).map(({ address, containerId }) => ({ address, containerId }));
  }

  /** The address of `containerId`, or null. */
  async get(containerId: string): Promise<AddressAllocation | null> {
    const mine = await this.addressesOf(containerId);
    return mine.length === 0 ? null : this.allocation(containerId, mine[0]);
  }

  private isHostAddress(n: number): boolean {
    return n > this.pool.network && n < this.pool.broadcast && n !== this.gateway;
  }

  private allocation(containerId: string, address: string): AddressAllocation {
    return { containerId, address, prefixLen: this.pool.prefixLen, gateway: formatIpv4(this.gateway) };
  }

  /** Publishes the claim file for `n`; false when someone holds it. */
  private async claim(n: number, containerId: string): Promise<boolean> {
    const tmp = path.join(this.dir, `.claim-${process.pid}-${randomBytes(6).toString('hex')}`);
    await writeFile(tmp, `${containerId}\n`, { mode: 0o644 });
    try {
      await link(tmp, path.join(this.dir, formatIpv4(n)));
      return true;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'EEXIST') return false;
      throw e;
    } finally {
      await unlink(tmp).catch(ignoreEnoent);
    }
  }

  /** Keeps the lowest of a container's addresses and frees the rest (a concurrent double claim). */
  private async settle(containerId: string): Promise<AddressAllocation> {
    const mine = await this.addressesOf(containerId);
    for (const extra of mine.slice(1)) await unlink(path.join(this.dir, extra)).catch(ignoreEnoent);
    if (mine.length === 0) return this.allocate(containerId); // released meanwhile: start over
    return this.allocation(containerId, mine[0]);
  }

  private async addressesOf(containerId: string): Promise<string[]> {
    return (await this.list()).filter((a) => a.containerId === containerId).map((a) => a.address);
  }

  private async ownerOf(n: number): Promise<string | null> {
    try {
      return (await readFile(path.join(this.dir, formatIpv4(n)), 'utf8')).trim();
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return null;
      throw e;
    }
  }
}

function ignoreEnoent(e: NodeJS.ErrnoException): void {
  if (e.code !== 'ENOENT') throw e;
}
