import { ChildProcess, spawn } from 'node:child_process';
import { existsSync, readFileSync, readdirSync, rmdirSync } from 'node:fs';
import { join } from 'node:path';
import { CgroupDriver } from '../cgroup.driver';

/**
 * Helpers for the cgroup kernel tests. `spawnInGroup` plays the C launcher's part of the contract: the
 * child writes its own pid to every file of `procsFiles()` and only then execs the program, so nothing
 * it allocates or forks is ever charged outside the group. The script is fixed; files and argv are
 * positional parameters, never interpolated.
 */
const JOIN_THEN_EXEC =
  'n=$1; shift; while [ "$n" -gt 0 ]; do echo $$ > "$1" || exit 97; shift; n=$((n-1)); done; exec "$@"';

export interface GroupProcess {
  child: ChildProcess;
  pid: number;
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  stderr: () => string;
}

export function spawnInGroup(driver: CgroupDriver, path: string, argv: string[]): GroupProcess {
  const files = driver.procsFiles(path);
  const child = spawn('sh', ['-c', JOIN_THEN_EXEC, 'sh', String(files.length), ...files, ...argv], {
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  let err = '';
  child.stderr?.on('data', (b: Buffer) => (err += b.toString()));
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    child.on('exit', (code, signal) => resolve({ code, signal })),
  );
  if (!child.pid) throw new Error(`could not spawn ${argv.join(' ')}`);
  return { child, pid: child.pid, exited, stderr: () => err };
}

/** Polls until `check` returns a truthy value; fails the test after `timeoutMs`. */
export async function eventually<T>(
  check: () => Promise<T> | T,
  timeoutMs = 5000,
  what = 'condition',
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** The one-letter scheduler state of a process (R, S, D, T, Z…) from /proc/<pid>/stat. */
export function procState(pid: number): string {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  return stat.slice(stat.lastIndexOf(')') + 2).split(' ')[0];
}

/** Lines of /proc/<pid>/cgroup as controller list → path. */
export function procCgroups(pid: number): Map<string, string> {
  const out = new Map<string, string>();
  for (const line of readFileSync(`/proc/${pid}/cgroup`, 'utf8').trim().split('\n')) {
    const [, controllers, path] = line.split(':');
    out.set(controllers, path);
  }
  return out;
}

/**
 * Waits until the child has joined every hierarchy and exec'd `program` (its comm), so a test never acts
 * on the join script half-way through its writes.
 */
export async function waitForExec(p: GroupProcess, program: string): Promise<void> {
  await eventually(
    () => readFileSync(`/proc/${p.pid}/comm`, 'utf8').trim() === program,
    5000,
    `${program} to start`,
  );
}

export function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/**
 * Removes `berth-test-<pid>` parents left by crashed test runs whose process is gone (their pid no
 * longer exists), so several test processes can share the machine and a crash never blocks the next run.
 */
export async function removeStaleTestParents(driver: CgroupDriver, hierarchyDir: string): Promise<void> {
  for (const name of readdirSync(hierarchyDir)) {
    const m = /^berth-test-(\d+)$/.exec(name);
    if (!m || isAlive(Number(m[1]))) continue;
    await killAndDestroy(driver, name);
  }
}

/** SIGKILLs everything in a group, waits until it is empty, then destroys it. */
export async function killAndDestroy(driver: CgroupDriver, path: string): Promise<void> {
  if (!(await driver.exists(path))) return;
  await driver.thaw(path).catch(() => undefined);
  await driver.killAll(path, 'SIGKILL');
  await eventually(async () => (await driver.pids(path)).length === 0, 5000, `${path} to empty`);
  await driver.destroy(path);
}

/**
 * Removes an (empty) test cgroup parent from every hierarchy mounted under `root`, whichever the drivers
 * use (a hierarchy the runtime takes into use later is covered without a change here).
 */
export function removeTestCgroupParent(parent: string, root = '/sys/fs/cgroup'): void {
  // v1: one hierarchy per directory (co-mounts behind symlinks: gone at the first); v2: the root itself.
  for (const dir of [root, ...readdirSync(root).map((h) => join(root, h))]) {
    if (existsSync(join(dir, parent))) rmdirSync(join(dir, parent));
  }
}
