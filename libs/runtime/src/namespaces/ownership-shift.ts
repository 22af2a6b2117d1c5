import { constants } from 'node:fs';
import { chmod, lchown, lstat, open, opendir, rename, rm } from 'node:fs/promises';
import { isAbsolute, join } from 'node:path';
import { InvalidArgumentError, RuntimeError } from '../common/errors';

/** Name of the marker file, at the top of the shifted tree, that records the offset applied. */
export const SHIFT_MARKER = '.berth-idshift';

export interface ShiftResult {
  /** Offset the tree had before (0 for a tree never shifted). */
  from: number;
  /** Number of inodes whose owner changed. */
  changed: number;
  /** True when the marker already recorded this offset: nothing was touched. */
  skipped: boolean;
}

/**
 * Maps one id from the `from` range to the `to` range. Ids already in the `to` range are left alone (a
 * pass interrupted by a crash can run again without shifting twice); ids outside both ranges cannot be
 * represented in the container and are left alone too.
 */
export function shiftId(id: number, from: number, to: number, count: number): number {
  if (id >= from && id < from + count) return id - from + to;
  return id;
}

/**
 * The offset the marker records, 0 without one. The tree may be a container's, whose root can plant
 * anything there: the marker is read only as a small regular file, never through a symlink (which could
 * point at a FIFO or an endless device on the host).
 */
async function readMarker(root: string): Promise<number> {
  let fh;
  try {
    fh = await open(
      join(root, SHIFT_MARKER),
      constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK,
    );
    const st = await fh.stat();
    if (!st.isFile() || st.size > 64) return 0;
    const n = Number((await fh.readFile('utf8')).trim());
    return Number.isSafeInteger(n) && n >= 0 ? n : 0;
  } catch {
    return 0;
  } finally {
    await fh?.close();
  }
}

/**
 * Shifts the owners of every inode under rootfsDir (with lchown, never following symlinks) so uid/gid N
 * becomes offset + N, for N in [0, count). Idempotent: a marker file records the offset applied, an equal
 * offset skips the walk, a different one re-shifts from the recorded one (offset 0 restores the template).
 * Hard links are shifted once; setuid/setgid bits, which chown clears, are restored.
 * Not restored: file capabilities (security.capability xattrs), which the kernel drops on chown.
 * Throws INVALID_PATH / INVALID_ARGUMENT for bad input, NOT_FOUND when rootfsDir does not exist.
 */
export async function shiftOwnership(rootfsDir: string, offset: number, count = 65536): Promise<ShiftResult> {
  if (!isAbsolute(rootfsDir))
    throw new RuntimeError('INVALID_PATH', 'rootfsDir must be absolute', { rootfsDir });
  if (!Number.isSafeInteger(offset) || offset < 0 || !Number.isSafeInteger(count) || count <= 0) {
    throw new InvalidArgumentError('offset and count must be non-negative integers', { offset, count });
  }
  try {
    if (!(await lstat(rootfsDir)).isDirectory()) throw new Error('not a directory');
  } catch (e) {
    throw new RuntimeError('NOT_FOUND', `rootfs directory ${rootfsDir} does not exist`, {
      rootfsDir,
      cause: String(e),
    });
  }
  const from = await readMarker(rootfsDir);
  if (from === offset) return { from, changed: 0, skipped: true };

  const seen = new Set<string>();
  let changed = 0;
  const visit = async (path: string): Promise<void> => {
    const st = await lstat(path);
    const key = `${st.dev}:${st.ino}`;
    if (st.nlink > 1 && !st.isDirectory()) {
      if (seen.has(key)) return;
      seen.add(key);
    }
    const uid = shiftId(st.uid, from, offset, count);
    const gid = shiftId(st.gid, from, offset, count);
    if (uid !== st.uid || gid !== st.gid) {
      await lchown(path, uid, gid);
      changed++;
      if (!st.isSymbolicLink() && st.mode & 0o6000) await chmod(path, st.mode & 0o7777);
    }
    if (st.isDirectory()) {
      const dir = await opendir(path);
      for await (const entry of dir) await visit(join(path, entry.name));
    }
  };
  await visit(rootfsDir);
  // the marker is written last and atomically: a crash before it means the walk runs again (safely)
  // Created new, never through whatever is at its name (a symlink there would have root write anywhere).
  const tmp = join(rootfsDir, `${SHIFT_MARKER}.tmp`);
  await rm(tmp, { force: true });
  const fh = await open(
    tmp,
    constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW,
    0o644,
  );
  try {
    await fh.writeFile(`${offset}\n`);
  } finally {
    await fh.close();
  }
  await lchown(tmp, offset, offset);
  await rename(tmp, join(rootfsDir, SHIFT_MARKER));
  return { from, changed, skipped: false };
}
