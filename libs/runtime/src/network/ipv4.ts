import { RuntimeError } from '../common/errors';

/** IPv4 helpers for the address pool: addresses as unsigned 32-bit numbers. */

export interface Ipv4Cidr {
  /** The address as written (for `10.88.0.1/24`: 10.88.0.1). */
  address: number;
  prefixLen: number;
  /** Network address (host bits zero). */
  network: number;
  /** Broadcast address (host bits one). */
  broadcast: number;
}

/**
 * Parses a dotted-quad IPv4 address.
 * @throws RuntimeError INVALID_ARGUMENT for anything else (leading zeros included: `010` is ambiguous).
 */
export function parseIpv4(text: string): number {
  const m = /^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$/.exec(typeof text === 'string' ? text : '');
  const octets = m ? m.slice(1).map(Number) : [];
  if (!m || octets.some((o, i) => o > 255 || (m[i + 1].length > 1 && m[i + 1].startsWith('0')))) {
    throw new RuntimeError('INVALID_ARGUMENT', `invalid IPv4 address ${JSON.stringify(text)}`, {
      address: text,
    });
  }
  return ((octets[0] << 24) | (octets[1] << 16) | (octets[2] << 8) | octets[3]) >>> 0;
}

export function formatIpv4(n: number): string {
  return [n >>> 24, (n >>> 16) & 255, (n >>> 8) & 255, n & 255].join('.');
}

/**
 * Parses `a.b.c.d/len` with len from 8 to 30 (a pool needs room for a gateway and at least one container).
 * @throws RuntimeError INVALID_ARGUMENT otherwise.
 */
export function parseCidr(text: string): Ipv4Cidr {
  const m = /^([0-9.]+)\/(\d{1,2})$/.exec(typeof text === 'string' ? text : '');
  const prefixLen = m ? Number(m[2]) : NaN;
  if (!m || prefixLen < 8 || prefixLen > 30) {
    throw new RuntimeError(
      'INVALID_ARGUMENT',
      `invalid CIDR ${JSON.stringify(text)}: expected a.b.c.d/8..30`,
      {
        cidr: text,
      },
    );
  }
  const address = parseIpv4(m[1]);
  const mask = (0xffffffff << (32 - prefixLen)) >>> 0;
  const network = (address & mask) >>> 0;
  const broadcast = (network | (~mask >>> 0)) >>> 0;
  return { address, prefixLen, network, broadcast };
}
