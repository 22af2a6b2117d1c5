import { createHash } from 'node:crypto';
import { access } from 'node:fs/promises';
import { RuntimeError } from '../common/errors';
import { assertIfname, ip, ipInPid, isNoDevice, linkInfo } from './ip-command';
import { parseIpv4 } from './ipv4';
import { guardPort, unguardPort } from './port-guard';

/**
 * Naming, so that reconcile can find every device Berth made: the host end of a container's veth pair is
 * `bv` + the first 13 hex digits of sha256(containerId) (15 chars, the kernel's limit); the peer is
 * created as `bp` + the same digits and renamed to `eth0` once inside the container. Reconcile computes
 * vethNameFor(id) for each container it knows; any other `bv*`/`bp*` veth in the host netns is an orphan.
 */
export const VETH_HOST_PREFIX = 'bv';
export const VETH_PEER_PREFIX = 'bp';

export function vethNameFor(containerId: string): string {
  return VETH_HOST_PREFIX + createHash('sha256').update(containerId).digest('hex').slice(0, 13);
}

function peerNameFor(containerId: string): string {
  return VETH_PEER_PREFIX + createHash('sha256').update(containerId).digest('hex').slice(0, 13);
}

/**
 * The container's eth0 MAC address, stable per container id (locally administered unicast, `02:` +
 * 5 bytes of sha256): a restarted container gets a new veth pair, and with a random MAC its peers' ARP
 * caches would point at the old one for seconds (unreachable until the entries time out).
 */
export function containerMacFor(containerId: string): string {
  const h = createHash('sha256').update(`berth-mac:${containerId}`).digest('hex');
  return ['02', ...(h.slice(0, 10).match(/../g) ?? [])].join(':');
}

export interface AttachOptions {
  containerId: string;
  /** Pid of a process in the container's network namespace (its init). */
  pid: number;
  /** Bridge the host end joins (see ensureBridge). */
  bridge: string;
  /** IPv4 address for the container's eth0 (from Ipam). */
  address: string;
  prefixLen: number;
  /** Default route via this address (the bridge's address). */
  gateway: string;
  hostNetns?: string;
}

export interface AttachResult {
  hostVeth: string;
  /** False when everything was already in place. */
  changed: boolean;
}

export interface VethInfo {
  name: string;
  /** Bridge it is enslaved to, if any. */
  master?: string;
  up: boolean;
}

async function assertPid(pid: number): Promise<void> {
  if (!Number.isSafeInteger(pid) || pid <= 1) {
    throw new RuntimeError('INVALID_ARGUMENT', `invalid pid ${pid}`, { pid });
  }
  try {
    await access(`/proc/${pid}/ns/net`);
  } catch {
    throw new RuntimeError('NOT_FOUND', `process ${pid} does not exist`, { pid });
  }
}

interface AddrInfo {
  ifname: string;
  flags: string[];
  addr_info?: Array<{ family: string; local: string; prefixlen: number }>;
}

async function containerLinks(pid: number): Promise<AddrInfo[]> {
  return JSON.parse((await ipInPid(pid, ['-j', 'addr', 'show'])).stdout) as AddrInfo[];
}

/**
 * Connects a container's network namespace to the bridge: a veth pair (see vethNameFor), host end on the
 * bridge and up, peer moved into the namespace of `pid` and renamed `eth0`, `address/prefixLen` on it,
 * default route via `gateway`, `lo` up. Idempotent: when the host end and a configured eth0 are there, it
 * only re-asserts address, state and route; when only half is there (a crash, or a new init pid), it
 * rebuilds the pair. On failure the host end is deleted (which deletes the peer too).
 * @throws RuntimeError INVALID_ARGUMENT / INVALID_NAME for bad input, NOT_FOUND when the pid is gone,
 *   WRONG_STATE when the bridge is missing, COMMAND_FAILED / KERNEL_EPERM from ip/nsenter.
 */
export async function attachContainer(options: AttachOptions): Promise<AttachResult> {
  const { containerId, pid, bridge, address, prefixLen, gateway, hostNetns } = options;
  assertIfname(bridge);
  parseIpv4(address);
  parseIpv4(gateway);
  if (!Number.isInteger(prefixLen) || prefixLen < 8 || prefixLen > 30) {
    throw new RuntimeError('INVALID_ARGUMENT', `invalid prefix length ${prefixLen}`, { prefixLen });
  }
  await assertPid(pid);
  const hostVeth = vethNameFor(containerId);
  const peer = peerNameFor(containerId);
  if (!(await linkInfo(bridge, hostNetns))) {
    throw new RuntimeError('WRONG_STATE', `bridge ${bridge} does not exist: call ensureBridge first`, {
      bridge,
      hostNetns,
    });
  }

  const host = await linkInfo(hostVeth, hostNetns);
  const inside = await containerLinks(pid);
  const eth0 = inside.find((l) => l.ifname === 'eth0');
  const cidr = `${address}/${prefixLen}`;
  const configured =
    host !== null &&
    host.master === bridge &&
    host.flags.includes('UP') &&
    eth0 !== undefined &&
    eth0.flags.includes('UP') &&
    (eth0.addr_info ?? []).some(
      (a) => a.family === 'inet' && a.local === address && a.prefixlen === prefixLen,
    );
  const guard = { port: hostVeth, mac: containerMacFor(containerId), address };
  if (configured) {
    await guardPort(guard, hostNetns);
    await configureInside(pid, cidr, gateway);
    return { hostVeth, changed: false };
  }

  // Half-built or stale (e.g. the container restarted: new netns, old host end): rebuild from scratch.
  if (host) await ip(['link', 'del', 'dev', hostVeth], hostNetns).catch(ignoreNoDevice);
  try {
    await ip(
      [
        'link',
        'add',
        'name',
        hostVeth,
        'type',
        'veth',
        'peer',
        'name',
        peer,
        'address',
        containerMacFor(containerId),
      ],
      hostNetns,
    );
    await ip(['link', 'set', 'dev', hostVeth, 'master', bridge], hostNetns);
    // Its port only ever passes the container's own addresses (see port-guard): set before it is up.
    await guardPort(guard, hostNetns);
    await ip(['link', 'set', 'dev', hostVeth, 'up'], hostNetns);
    await ip(['link', 'set', 'dev', peer, 'netns', String(pid)], hostNetns);
    if (eth0) await ipInPid(pid, ['link', 'del', 'dev', 'eth0']).catch(ignoreNoDevice);
    await ipInPid(pid, ['link', 'set', 'dev', peer, 'name', 'eth0']);
    await ipInPid(pid, ['addr', 'flush', 'dev', 'eth0']);
    await ipInPid(pid, ['addr', 'add', cidr, 'dev', 'eth0']);
    await configureInside(pid, cidr, gateway);
  } catch (e) {
    await ip(['link', 'del', 'dev', hostVeth], hostNetns).catch(() => undefined);
    throw e;
  }
  return { hostVeth, changed: true };
}

async function configureInside(pid: number, cidr: string, gateway: string): Promise<void> {
  await ipInPid(pid, ['link', 'set', 'dev', 'lo', 'up']);
  await ipInPid(pid, ['link', 'set', 'dev', 'eth0', 'up']);
  await ipInPid(pid, ['route', 'replace', 'default', 'via', gateway, 'dev', 'eth0']);
}

/**
 * Loopback-only mode (network `none`): the container keeps its own empty netns with `lo` up and nothing
 * else, so it reaches nothing but itself.
 * @throws RuntimeError NOT_FOUND when the pid is gone; COMMAND_FAILED from ip/nsenter.
 */
export async function setupLoopbackOnly(pid: number): Promise<void> {
  await assertPid(pid);
  await ipInPid(pid, ['link', 'set', 'dev', 'lo', 'up']);
}

/**
 * Deletes the host end of a container's veth pair (the kernel deletes the peer with it).
 * @returns false when there was none (detaching twice is fine).
 */
export async function detachContainer(containerId: string, hostNetns?: string): Promise<boolean> {
  const hostVeth = vethNameFor(containerId);
  let deleted: boolean;
  try {
    await ip(['link', 'del', 'dev', hostVeth], hostNetns);
    deleted = true;
  } catch (e) {
    if (!isNoDevice(e)) throw e;
    deleted = false;
  }
  // Its port's guard goes too (also when the veth went before: a detach repeated after a crash). Without
  // nft no guard was ever made (attach needs it).
  await unguardPort(hostVeth, hostNetns).catch((e: unknown) => {
    if ((e as { code?: string }).code !== 'DEPENDENCY_MISSING') throw e;
  });
  return deleted;
}

/** Every Berth veth (`bv*` host ends and `bp*` peers not yet moved) in the host netns, for reconcile. */
export async function listVeths(hostNetns?: string): Promise<VethInfo[]> {
  const links = JSON.parse((await ip(['-j', 'link', 'show', 'type', 'veth'], hostNetns)).stdout) as Array<{
    ifname: string;
    master?: string;
    flags: string[];
  }>;
  return links
    .filter((l) => /^(bv|bp)[0-9a-f]{13}$/.test(l.ifname))
    .map((l) => ({ name: l.ifname, ...(l.master ? { master: l.master } : {}), up: l.flags.includes('UP') }));
}

function ignoreNoDevice(e: unknown): void {
  if (!isNoDevice(e)) throw e;
}
