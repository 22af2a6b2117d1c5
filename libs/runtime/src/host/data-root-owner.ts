import { readFile, rename, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
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
