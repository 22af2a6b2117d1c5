import { CgroupDriver } from './cgroup.driver';
import { CgroupNotFoundError } from './cgroup.errors';
import { signalPids } from './cgroupfs.io';

/**
 * Signals every process of a group without racing forks (runc's signalAllProcesses): freeze, read the
 * pids, signal them, thaw. A frozen task cannot fork, so no child escapes the list. The group is left
 * thawed so the signal is delivered. Without a working freezer it still signals, best effort.
 */
export async function signalGroupFrozen(
  driver: Pick<CgroupDriver, 'freeze' | 'thaw' | 'pids'>,
  path: string,
  signal: NodeJS.Signals,
  timeoutMs = 2000,
): Promise<void> {
  let frozen = false;
  try {
    await driver.freeze(path, timeoutMs);
    frozen = true;
  } catch (e) {
    if (e instanceof CgroupNotFoundError) return;
    // A freeze timeout (e.g. a task stuck in uninterruptible IO) must not stop a kill: signal anyway.
  }
  try {
    signalPids(await driver.pids(path), signal);
  } finally {
    if (frozen) await driver.thaw(path, timeoutMs);
  }
}
