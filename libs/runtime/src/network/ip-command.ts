import { run, RunResult } from '../common/exec';
import { CommandFailedError, RuntimeError } from '../common/errors';

/**
 * iproute2 invocations, always with argument arrays. `hostNetns` selects a named network namespace
 * (`ip -n NAME`) that plays the host: a simulated host keeps its bridge and veths there.
 */

const NETNS_NAME = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/;
/** Kernel interface names: 1-15 bytes, no '/', ':' or whitespace; we also keep to a boring charset. */
const IFNAME = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,14}$/;

/** @throws RuntimeError INVALID_NAME for a netns name that `ip netns` would not accept or that escapes. */
export function assertNetnsName(name: string): void {
  if (typeof name !== 'string' || !NETNS_NAME.test(name)) {
    throw new RuntimeError('INVALID_NAME', `invalid network namespace name ${JSON.stringify(name)}`, {
      netns: name,
    });
  }
}

/** @throws RuntimeError INVALID_NAME for a name the kernel would refuse as an interface name. */
export function assertIfname(name: string): void {
  if (typeof name !== 'string' || !IFNAME.test(name)) {
    throw new RuntimeError(
      'INVALID_NAME',
      `invalid interface name ${JSON.stringify(name)}: 1-15 of [A-Za-z0-9_.-]`,
      {
        ifname: name,
      },
    );
  }
}

/** Runs `ip [-n hostNetns] ARGS`. */
export function ip(args: string[], hostNetns?: string, okCodes?: number[]): Promise<RunResult> {
  if (hostNetns !== undefined) assertNetnsName(hostNetns);
  return run('ip', hostNetns === undefined ? args : ['-n', hostNetns, ...args], {
    timeoutMs: 10_000,
    okCodes,
  });
}

/** Runs `ip ARGS` inside the network namespace of process `pid` (nsenter: never setns in Node itself). */
export function ipInPid(pid: number, args: string[]): Promise<RunResult> {
  return run('nsenter', [`--net=/proc/${pid}/ns/net`, 'ip', ...args], { timeoutMs: 10_000 });
}

/** `ip -j link show dev NAME` → parsed, or null when the device does not exist. */
export async function linkInfo(
  name: string,
  hostNetns?: string,
): Promise<{ ifname: string; master?: string; flags: string[]; linkinfo?: { info_kind?: string } } | null> {
  try {
    const r = await ip(['-d', '-j', 'link', 'show', 'dev', name], hostNetns);
    const parsed = JSON.parse(r.stdout) as Array<{
      ifname: string;
      master?: string;
      flags: string[];
      linkinfo?: { info_kind?: string };
    }>;
    return parsed[0] ?? null;
  } catch (e) {
    if (isNoDevice(e)) return null;
    throw e;
  }
}

/** True for iproute2's "does not exist" answers. */
export function isNoDevice(e: unknown): boolean {
  return (
    e instanceof CommandFailedError && /does not exist|Cannot find device|No such device/i.test(e.stderr)
  );
}

/** True for iproute2's "already exists" answers (a concurrent or earlier creation). */
export function isExists(e: unknown): boolean {
  return e instanceof CommandFailedError && /File exists|already exists/i.test(e.stderr);
}
