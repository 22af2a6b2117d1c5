import { run } from '../common/exec';
import { RuntimeError } from '../common/errors';
import { assertNetnsName } from './ip-command';
import { parseIpv4 } from './ipv4';

/**
 * Anti-spoofing on the bridge (nftables, `bridge` family, in the host netns): a container's root has
 * CAP_NET_ADMIN in its own network namespace and could otherwise send with another container's address
 * or MAC, or answer ARP for it (or for the gateway) and take its traffic. Each container's port (the host
 * end of its veth) lets through only frames from its own MAC, and of those only IPv4 from its own address
 * and ARP that speaks for its own address and MAC; nothing else (no IPv6: containers have no IPv6
 * address). Checked where the frame enters the bridge: towards another port (forward) and towards the
 * host (input).
 *
 *   table bridge berth
 *     map ports: port name → jump port_<name>       (one element per guarded port)
 *     chain guard_forward, guard_input: iifname vmap @ports
 *     chain port_<name>: its rules
 *
 * A port without an element passes unfiltered: a container started before this guard existed keeps
 * working, unguarded, until its next start (its new veth gets one). Every change is one `nft -f` batch,
 * atomic and idempotent: a port's chain is emptied and refilled, and its removal first adds what it
 * removes, so removing twice (or a port never guarded) is no error.
 */
export const GUARD_TABLE = 'berth';

/** Only names that attachContainer makes (bv + 13 hex digits), so a rule never names another device. */
const PORT = /^bv[0-9a-f]{13}$/;
const MAC = /^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/;

export interface PortGuard {
  /** The host end of the container's veth (vethNameFor). */
  port: string;
  /** The container's eth0 MAC (containerMacFor). */
  mac: string;
  /** The container's IPv4 address. */
  address: string;
}

function check(guard: Pick<PortGuard, 'port'> & Partial<PortGuard>): void {
  if (!PORT.test(guard.port)) {
    throw new RuntimeError('INVALID_NAME', `not a container port name: ${JSON.stringify(guard.port)}`);
  }
  if (guard.mac !== undefined && !MAC.test(guard.mac)) {
    throw new RuntimeError('INVALID_ARGUMENT', `invalid MAC address ${JSON.stringify(guard.mac)}`);
  }
  if (guard.address !== undefined) parseIpv4(guard.address);
}

/** The table, its map and its two base chains: created if missing, their dispatch rule set anew. */
function tableScript(): string[] {
  const t = `bridge ${GUARD_TABLE}`;
  return [
    `add table ${t}`,
    `add map ${t} ports { type ifname : verdict; }`,
    ...['forward', 'input'].flatMap((hook) => [
      `add chain ${t} guard_${hook} { type filter hook ${hook} priority 0; policy accept; }`,
      `flush chain ${t} guard_${hook}`,
      `add rule ${t} guard_${hook} iifname vmap @ports`,
    ]),
  ];
}

async function nft(lines: string[], hostNetns?: string): Promise<void> {
  const script = `${lines.join('\n')}\n`;
  if (hostNetns === undefined) {
    await run('nft', ['-f', '-'], { input: script, timeoutMs: 10_000 });
    return;
  }
  assertNetnsName(hostNetns);
  await run('ip', ['netns', 'exec', hostNetns, 'nft', '-f', '-'], { input: script, timeoutMs: 10_000 });
}

/** Guards a container's port (see above); idempotent. Call before the port is brought up. */
export async function guardPort(guard: PortGuard, hostNetns?: string): Promise<void> {
  check(guard);
  const t = `bridge ${GUARD_TABLE}`;
  const chain = `port_${guard.port}`;
  await nft(
    [
      ...tableScript(),
      `add chain ${t} ${chain}`,
      `flush chain ${t} ${chain}`,
      `add rule ${t} ${chain} ether saddr != ${guard.mac} drop`,
      `add rule ${t} ${chain} ether type arp arp saddr ether != ${guard.mac} drop`,
      `add rule ${t} ${chain} ether type arp arp saddr ip != ${guard.address} drop`,
      `add rule ${t} ${chain} ether type ip ip saddr != ${guard.address} drop`,
      `add rule ${t} ${chain} ether type != { ip, arp } drop`,
      `add element ${t} ports { "${guard.port}" : jump ${chain} }`,
    ],
    hostNetns,
  );
}

/** Removes a port's guard; idempotent (a port never guarded, or removed already, is fine). */
export async function unguardPort(port: string, hostNetns?: string): Promise<void> {
  check({ port });
  const t = `bridge ${GUARD_TABLE}`;
  const chain = `port_${port}`;
  await nft(
    [
      ...tableScript(),
      `add chain ${t} ${chain}`,
      `flush chain ${t} ${chain}`,
      `add element ${t} ports { "${port}" : jump ${chain} }`,
      `delete element ${t} ports { "${port}" }`,
      `delete chain ${t} ${chain}`,
    ],
    hostNetns,
  );
}
