import { rename, rm } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { run } from '../common/exec';
import { withReverter } from '../common/reverter';
import { removeTree } from './volume-files';

/*
 * Temporaries use fixed names (no pid) so a retry after a crash finds and replaces the leftovers; operations
 * on one volume are serialized by the worker (per-container FIFO), so two never share a temporary.
 */

/**
 * Copies a tree with `cp -a --reflink=auto` (one spawn; shares extents on btrfs/xfs, plain copy elsewhere)
 * into a temporary sibling of `target`, then renames it into place, so `target` either appears whole or not
 * at all. `target` must not exist.
 */
export async function copyTreeAtomic(source: string, target: string): Promise<void> {
  const tmp = join(dirname(target), `.copy-${basename(target)}`);
  await removeTree(tmp);
  try {
    await run('cp', ['-a', '--reflink=auto', '--no-target-directory', '--', source, tmp]);
    await rename(tmp, target);
  } catch (error) {
    await rm(tmp, { recursive: true, force: true });
    throw error;
  }
}

/**
 * Replaces directory `target` with a copy of `source`, all or nothing: copy beside it, move the old one aside,
 * move the copy in, then delete the old one. On failure before the swap `target` is as it was.
 */
export async function replaceWithCopy(source: string, target: string): Promise<void> {
  const fresh = join(dirname(target), `.rollback-${basename(target)}`);
  const old = join(dirname(target), `.old-${basename(target)}`);
  await removeTree(old);
  await withReverter(async (revert) => {
    await copyTreeAtomic(source, fresh);
    revert.add('remove the rollback copy', () => removeTree(fresh));
    await rename(target, old);
    revert.add('put the old volume back', () => rename(old, target));
    await rename(fresh, target);
  });
  await removeTree(old);
}
