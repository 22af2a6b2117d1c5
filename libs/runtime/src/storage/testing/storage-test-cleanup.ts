import { execFileSync } from 'node:child_process';
import { readdirSync, readFileSync, rmSync } from 'node:fs';
import { parseMountInfo } from '../mount-table';

/**
 * Test-only cleanup: unmount everything under a test data root (deepest first), detach loop devices whose
 * image lives there, delete the tree. Synchronous and best-effort so it can run in afterAll after any failure.
 */
export function forceCleanTestRoot(dataRoot: string): void {
  const prefix = `${dataRoot}/`;
  const mounts = parseMountInfo(readFileSync('/proc/self/mountinfo', 'utf8'))
    .filter((m) => m.mountPoint === dataRoot || m.mountPoint.startsWith(prefix))
    .sort((a, b) => b.mountPoint.length - a.mountPoint.length);
  for (const m of mounts) {
    try {
      execFileSync('umount', ['--', m.mountPoint], { stdio: 'ignore' });
    } catch {
      try {
        execFileSync('umount', ['--lazy', '--', m.mountPoint], { stdio: 'ignore' });
      } catch {
        // already gone
      }
    }
  }
  for (const device of loopDevicesUnder(dataRoot)) {
    try {
      execFileSync('losetup', ['--detach', device], { stdio: 'ignore' });
    } catch {
      // already detached
    }
  }
  rmSync(dataRoot, { recursive: true, force: true });
}

/** Loop devices whose backing file is under `dir`. */
export function loopDevicesUnder(dir: string): string[] {
  const found: string[] = [];
  for (const name of readdirSync('/sys/block').filter((n) => n.startsWith('loop'))) {
    try {
      const backing = readFileSync(`/sys/block/${name}/loop/backing_file`, 'utf8').trim();
      if (backing.startsWith(`${dir}/`)) found.push(`/dev/${name}`);
    } catch {
      // not attached
    }
  }
  return found;
}

/**
 * Leftovers of crashed earlier runs: test roots named `<base>/berth-storage-test-<pid>-…` whose pid is no
 * longer alive are force-cleaned, so a crash never poisons later runs (and never touches a live run's root).
 */
export function cleanStaleTestRoots(base: string): void {
  const pattern = /^berth-storage-test-(\d+)-/;
  for (const name of readdirSync(base)) {
    const match = pattern.exec(name);
    if (!match) continue;
    const pid = Number(match[1]);
    if (pid === process.pid || isAlive(pid)) continue;
    forceCleanTestRoot(`${base}/${name}`);
  }
}

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === 'EPERM';
  }
}
