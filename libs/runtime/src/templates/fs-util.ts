import { randomBytes } from 'node:crypto';
import { lstat, readdir, rm } from 'node:fs/promises';
import * as path from 'node:path';

/** Size and entry count of a tree, without following symlinks or crossing into other trees. */
export interface TreeUsage {
  /** Sum of the apparent sizes of regular files (hard links counted once). */
  sizeBytes: number;
  /** Number of entries (files, directories, links, nodes), the root excluded. */
  files: number;
}

/** Walks `root` with lstat (never follows symlinks) and sums regular file sizes; hard links count once. */
export async function treeUsage(root: string): Promise<TreeUsage> {
  const seen = new Set<string>();
  let sizeBytes = 0;
  let files = 0;
  const walk = async (dir: string): Promise<void> => {
    for (const entry of await readdir(dir, { withFileTypes: true })) {
      const p = path.join(dir, entry.name);
      files += 1;
      if (entry.isDirectory()) {
        await walk(p);
      } else if (entry.isFile()) {
        const st = await lstat(p);
        const key = `${st.dev}:${st.ino}`;
        if (!seen.has(key)) {
          seen.add(key);
          sizeBytes += st.size;
        }
      }
    }
  };
  await walk(root);
  return { sizeBytes, files };
}

/**
 * A sibling path of `target` for building into before an atomic rename: same parent (so rename(2) cannot
 * cross filesystems), a `.berth-tmp-` prefix that reconcile can recognise and delete, pid + random suffix.
 */
export function stagingPathFor(target: string, purpose: string): string {
  const parent = path.dirname(target);
  const suffix = `${process.pid}-${randomBytes(4).toString('hex')}`;
  return path.join(parent, `.berth-tmp-${purpose}-${path.basename(target)}-${suffix}`);
}

/** Removes a tree, ignoring a missing one. */
export async function removeTree(p: string): Promise<void> {
  await rm(p, { recursive: true, force: true });
}
