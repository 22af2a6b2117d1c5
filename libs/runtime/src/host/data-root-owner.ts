import { createHash, randomBytes } from 'node:crypto';
import { link, mkdir, realpath, readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import { createServer, type Server } from 'node:net';
import { join } from 'node:path';
import { RuntimeError } from '../common/errors';
import { readProcStat } from '../namespaces/init-process';

/** The file in a data root that names the worker process using it. */
export const OWNER_FILE = 'worker.pid';

interface Owner {
  pid: number;
  startTime: number;
}

async function readOwner(dataRoot: string): Promise<Owner | null> {
  try {
    const o = JSON.parse(await readFile(join(dataRoot, OWNER_FILE), 'utf8')) as Partial<Owner>;
    return Number.isSafeInteger(o.pid) && Number.isSafeInteger(o.startTime)
      ? { pid: o.pid!, startTime: o.startTime! }
      : null;
  } catch {
    return null;
  }
}

/**
 * Records this process as the worker of `dataRoot` (pid and start time, so that a pid the kernel gives to
 * another process later does not count): what `wipe` looks at before it empties a data root. A worker
 * killed without releasing it leaves a record of a dead process, which counts for nothing.
 */
export async function claimDataRoot(dataRoot: string): Promise<void> {
  const stat = await readProcStat(process.pid);
  const tmp = join(dataRoot, `${OWNER_FILE}.tmp`);
  await writeFile(tmp, `${JSON.stringify({ pid: process.pid, startTime: stat?.startTime ?? 0 })}\n`, {
    mode: 0o644,
  });
  await rename(tmp, join(dataRoot, OWNER_FILE));
}

/** Removes this process's record (another process's is left alone). */
export async function releaseDataRoot(dataRoot: string): Promise<void> {
  if ((await readOwner(dataRoot))?.pid === process.pid) await rm(join(dataRoot, OWNER_FILE), { force: true });
}

/** The pid of the live worker recorded in `dataRoot`, or null (none, or it is gone). */
export async function dataRootOwner(dataRoot: string): Promise<number | null> {
  const owner = await readOwner(dataRoot);
  if (!owner) return null;
  const stat = await readProcStat(owner.pid);
  return stat && stat.startTime === owner.startTime && stat.state !== 'Z' ? owner.pid : null;
}

/** A data root held by this process (lockDataRoot) until `release`, or until the process ends. */
export interface DataRootLock {
  readonly dataRoot: string;
  release(): Promise<void>;
}

/** The file in a data root whose random content names its lock (0600: only root can read it). */
export const LOCK_ID_FILE = 'lock.id';

/**
 * The abstract socket name that stands for a data root (made here, 0711, if it does not exist yet): a
 * random id kept in the root (`lock.id`, made once, 0600) and the root's device and inode, hashed. The
 * same root reached by any path (a symlink, a bind mount, before and after it existed) gives the same
 * name; a copy of the root elsewhere gives another; and a user who cannot read `lock.id` cannot compute
 * the name to take it first (abstract sockets have no permissions of their own).
 */
async function lockName(dataRoot: string): Promise<{ path: string; name: string }> {
  await mkdir(dataRoot, { recursive: true, mode: 0o711 });
  const path = await realpath(dataRoot);
  const file = join(path, LOCK_ID_FILE);
  let id = await readFile(file, 'utf8').catch(() => null);
  if (id === null) {
    // Made once, atomically: of two processes making it at once, the first link wins and both read it.
    const tmp = `${file}.${process.pid}.tmp`;
    await writeFile(tmp, `${randomBytes(16).toString('hex')}\n`, { mode: 0o600 });
    await link(tmp, file).catch((e: NodeJS.ErrnoException) => {
      if (e.code !== 'EEXIST') throw e;
    });
    await rm(tmp, { force: true });
    id = await readFile(file, 'utf8');
  }
  const { dev, ino } = await stat(path);
  const key = `${id.trim()}:${dev}:${ino}`;
  return { path, name: `\0berth/data-root/${createHash('sha256').update(key).digest('hex').slice(0, 40)}` };
}

/**
 * Takes a data root for this process alone: a worker holds it for its whole life, `wipe` while it empties
 * one. Two workers on one data root would each reconcile it at start (removing the containers the other is
 * half-way through creating) and run its jobs twice. The lock is a Linux abstract Unix socket bound under a
 * name that stands for the root (lockName): exclusive (the kernel refuses a second bind), and gone with its
 * process however that ends (a SIGKILL leaves no stale lock to judge). Abstract names are per network
 * namespace: processes sharing a data root must share their network namespace (a host's worker and its
 * CLI do). Throws WRONG_STATE, naming the holder's pid when it recorded one, if another process holds it.
 */
export async function lockDataRoot(dataRoot: string): Promise<DataRootLock> {
  const { path, name } = await lockName(dataRoot);
  const server: Server = createServer((socket) => socket.destroy());
  await new Promise<void>((ok, fail) => {
    server.once('error', fail);
    server.listen({ path: name, exclusive: true }, () => {
      server.off('error', fail);
      ok();
    });
  }).catch(async (e: NodeJS.ErrnoException) => {
    if (e.code !== 'EADDRINUSE') throw e;
    const pid = await dataRootOwner(path);
    throw new RuntimeError(
      'WRONG_STATE',
      `data root ${path} is in use by another process${pid === null ? '' : ` (the worker, pid ${pid})`}`,
      { dataRoot: path, pid },
    );
  });
  // The lock does not keep the process alive.
  server.unref();
  let released = false;
  return {
    dataRoot: path,
    release: async () => {
      if (released) return;
      released = true;
      await new Promise<void>((ok) => server.close(() => ok()));
    },
  };
}
