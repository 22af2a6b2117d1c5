import { RuntimeError } from '../common/errors';
import { assertIfname, ip, isExists, linkInfo } from './ip-command';
import { formatIpv4, parseCidr } from './ipv4';

export const DEFAULT_BRIDGE = 'berth0';
export const DEFAULT_BRIDGE_CIDR = '10.88.0.1/24';

export interface BridgeOptions {
  /** Bridge device name (≤ 15 chars). Default `berth0`. */
  name?: string;
  /** The bridge's own address = the containers' gateway, with the pool's prefix. Default `10.88.0.1/24`. */
  cidr?: string;
  /** Named netns playing the host (simulated host); the real host's netns when absent. */
  hostNetns?: string;
}

export interface BridgeInfo {
  name: string;
  address: string;
  prefixLen: number;
}

/**
 * Makes sure the bridge exists, carries its address and is up. Idempotent and safe to race: a creation
 * that loses to another one is fine. It never enables IP forwarding or NAT and writes no sysctl: traffic
 * stays between the containers and the host side of the bridge. Routing containers beyond the host is an
 * operator's decision (their own forwarding/NAT config), deliberately not something Berth switches on.
 * @throws RuntimeError INVALID_NAME / INVALID_ARGUMENT for bad names or CIDR; WRONG_STATE when a device of
 *   that name exists and is not a bridge; COMMAND_FAILED / KERNEL_EPERM from ip.
 */
export async function ensureBridge(options: BridgeOptions = {}): Promise<BridgeInfo> {
  const name = options.name ?? DEFAULT_BRIDGE;
  const cidr = options.cidr ?? DEFAULT_BRIDGE_CIDR;
  assertIfname(name);
  const parsed = parseCidr(cidr);
  if (parsed.address === parsed.network || parsed.address === parsed.broadcast) {
    throw new RuntimeError('INVALID_ARGUMENT', `bridge address ${cidr} must be a host address`, { cidr });
  }
  const address = formatIpv4(parsed.address);
  const { hostNetns } = options;

  let info = await linkInfo(name, hostNetns);
  if (!info) {
    try {
      await ip(['link', 'add', 'name', name, 'type', 'bridge'], hostNetns);
    } catch (e) {
      if (!isExists(e)) throw e;
    }
    info = await linkInfo(name, hostNetns);
  }
  if (info?.linkinfo?.info_kind !== 'bridge') {
    throw new RuntimeError('WRONG_STATE', `device ${name} exists and is not a bridge`, { name, hostNetns });
  }

  const addrs = JSON.parse((await ip(['-j', 'addr', 'show', 'dev', name], hostNetns)).stdout) as Array<{
    addr_info?: Array<{ family: string; local: string; prefixlen: number }>;
  }>;
  const has = (addrs[0]?.addr_info ?? []).some(
    (a) => a.family === 'inet' && a.local === address && a.prefixlen === parsed.prefixLen,
  );
  if (!has) {
    try {
      await ip(['addr', 'add', `${address}/${parsed.prefixLen}`, 'dev', name], hostNetns);
    } catch (e) {
      if (!isExists(e)) throw e;
    }
  }
  await ip(['link', 'set', 'dev', name, 'up'], hostNetns);
  return { name, address, prefixLen: parsed.prefixLen };
}

/**
 * Deletes the bridge if present (for tests and host decommissioning; never while containers use it).
 * @returns false when there was nothing to delete.
 */
export async function removeBridge(name: string = DEFAULT_BRIDGE, hostNetns?: string): Promise<boolean> {
  assertIfname(name);
  const info = await linkInfo(name, hostNetns);
  if (!info) return false;
  if (info.linkinfo?.info_kind !== 'bridge') {
    throw new RuntimeError('WRONG_STATE', `device ${name} is not a bridge: not deleting it`, {
      name,
      hostNetns,
    });
  }
  await ip(['link', 'del', 'dev', name], hostNetns);
  return true;
}
