import { promises as fs } from 'node:fs';
import { join } from 'node:path';
import { RuntimeError } from '../common/errors';
import { CgroupBusyError, CgroupNotFoundError, CgroupTimeoutError, cgroupFsError } from './cgroup.errors';

/** File helpers shared by both drivers: cgroupfs files are small text files read and written whole. */

export function errnoOf(e: unknown): string | undefined {
  return (e as NodeJS.ErrnoException | undefined)?.code;
}

/** Reads a control file; undefined when it does not exist. */
export async function readOptional(file: string): Promise<string | undefined> {
  try {
    return await fs.readFile(file, 'utf8');
  } catch (e) {
    if (errnoOf(e) === 'ENOENT') return undefined;
    throw cgroupFsError('read', file, e);
  }
}

/** Reads a control file holding one integer; `max` reads as Infinity; undefined when absent. */
export async function readNumber(file: string): Promise<number | undefined> {
  const text = await readOptional(file);
  if (text === undefined) return undefined;
  const t = text.trim();
  return t === 'max' ? Infinity : Number(t);
}

/**
 * Writes one value with one write(2), as the kernel expects. Errors are thrown as they come (errno kept)
 * so callers can map EBUSY/ESRCH/ENOENT; use `writeControl` for the wrapped version.
 */
export async function writeRaw(file: string, value: string): Promise<void> {
  await fs.writeFile(file, value);
}

/** `writeRaw` with errors wrapped as KERNEL_ERROR/KERNEL_EPERM naming the file and value. */
export async function writeControl(file: string, value: string): Promise<void> {
  try {
    await writeRaw(file, value);
  } catch (e) {
    throw cgroupFsError(`write ${JSON.stringify(value)} to`, file, e);
  }
}

export async function pathExists(path: string): Promise<boolean> {
  try {
    await fs.access(path);
    return true;
  } catch {
    return false;
  }
}

/** Parses "key value" lines (cpu.stat, memory.events, cgroup.events, memory.oom_control…). */
export function parseKeyed(text: string): Map<string, number> {
  const out = new Map<string, number>();
  for (const line of text.split('\n')) {
    const [key, value] = line.trim().split(/\s+/);
    if (key && value !== undefined) out.set(key, Number(value));
  }
  return out;
}

/** Parses a cgroup.procs / tasks file. */
export function parsePids(text: string | undefined): number[] {
  if (!text) return [];
  return text
    .split('\n')
    .map((l) => Number(l.trim()))
    .filter((n) => Number.isInteger(n) && n > 0);
}

/** Names of the child groups (directories) of a group directory; [] when it does not exist. */
export async function childGroups(dir: string): Promise<string[]> {
  try {
    const entries = await fs.readdir(dir, { withFileTypes: true });
    return entries.filter((e) => e.isDirectory()).map((e) => e.name);
  } catch (e) {
    if (errnoOf(e) === 'ENOENT' || errnoOf(e) === 'ENOTDIR') return [];
    throw cgroupFsError('list', dir, e);
  }
}

/** Pids in a group directory and all its descendants (cgroup.procs only lists a group's own members). */
export async function treePids(dir: string): Promise<number[]> {
  const own = parsePids(await readOptional(join(dir, 'cgroup.procs')));
  const nested = await Promise.all((await childGroups(dir)).map((c) => treePids(join(dir, c))));
  return [...own, ...nested.flat()];
}

/**
 * Removes a group directory leaf-first. cgroupfs lets rmdir remove a group with its control files, but
 * not one with child groups. EBUSY right after the last process exited is transient, so it is retried
 * briefly before being reported. Missing directories are fine (idempotent).
 */
export async function removeGroupTree(dir: string, path: string, retryMs = 1000): Promise<void> {
  for (const child of await childGroups(dir))
    await removeGroupTree(join(dir, child), `${path}/${child}`, retryMs);
  const deadline = Date.now() + retryMs;
  for (;;) {
    try {
      await fs.rmdir(dir);
      return;
    } catch (e) {
      const code = errnoOf(e);
      if (code === 'ENOENT') return;
      // Only a real cgroupfs removes directories holding control files; a plain directory (fake trees in
      // tests) needs its files removed first.
      if (code === 'ENOTEMPTY') {
        await removePlainFiles(dir);
        continue;
      }
      if (code === 'EBUSY' && Date.now() < deadline) {
        await sleep(20);
        continue;
      }
      if (code === 'EBUSY') throw new CgroupBusyError(path, await treePids(dir));
      throw cgroupFsError('rmdir', dir, e);
    }
  }
}

async function removePlainFiles(dir: string): Promise<void> {
  const entries = await fs.readdir(dir, { withFileTypes: true });
  const files = entries.filter((e) => e.isFile());
  if (files.length === 0)
    throw cgroupFsError('rmdir', dir, Object.assign(new Error('ENOTEMPTY'), { code: 'ENOTEMPTY' }));
  for (const f of files) await fs.unlink(join(dir, f.name));
}

export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** Polls `check` (with `poke` between polls, e.g. re-writing FROZEN) until it holds or time runs out. */
export async function waitUntil(
  check: () => Promise<boolean>,
  what: { path: string; wanted: string; timeoutMs: number },
  poke?: () => Promise<void>,
): Promise<void> {
  const deadline = Date.now() + what.timeoutMs;
  let delay = 1;
  for (;;) {
    if (await check()) return;
    if (Date.now() >= deadline) throw new CgroupTimeoutError(what.path, what.wanted, what.timeoutMs);
    await sleep(delay);
    delay = Math.min(delay * 2, 50);
    if (poke) await poke();
  }
}

/** Sends a signal to each pid, ignoring ones that already exited. */
export function signalPids(pids: number[], signal: NodeJS.Signals): void {
  for (const pid of pids) {
    try {
      process.kill(pid, signal);
    } catch (e) {
      if (errnoOf(e) !== 'ESRCH') throw e;
    }
  }
}

/** Writes `pid` into a `cgroup.procs` file of group `path`, with the typed errors of addProcess. */
export async function writePid(file: string, pid: number, path: string): Promise<void> {
  try {
    await writeRaw(file, String(pid));
  } catch (e) {
    const code = errnoOf(e);
    if (code === 'ESRCH') throw new RuntimeError('NOT_FOUND', `process ${pid} does not exist`, { pid, path });
    if (code === 'ENOENT') throw new CgroupNotFoundError(path, { file });
    throw cgroupFsError(`add pid ${pid} to`, file, e);
  }
}
