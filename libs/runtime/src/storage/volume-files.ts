import { lstat, mkdir, readdir, readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import { isAbsolute, join, normalize } from 'node:path';
import { RuntimeError } from '../common/errors';
import { mountsUnder } from './mount-table';
import { SnapshotInfo } from './storage.driver';
import { VOLUME_ID_PATTERN, validateVolumeId } from './volume-id';

/**
 * File helpers the drivers share: small pure-fs steps that save a process spawn each (speed is benchmarked),
 * and the bookkeeping (`meta/`) every driver keeps beside its volumes.
 */

/**
 * Checks the driver root: absolute, normalized, and free of characters that would break an overlay option
 * string (`,` `:`) or mountinfo parsing (whitespace, `\`). Throws INVALID_PATH.
 */
export function validateDriverRoot(root: unknown): string {
  if (
    typeof root !== 'string' ||
    !isAbsolute(root) ||
    normalize(root) !== root ||
    root === '/' ||
    /[,:\s\\]/.test(root)
  ) {
    throw new RuntimeError(
      'INVALID_PATH',
      `invalid storage root ${JSON.stringify(root)}: use an absolute, normalized path without ',', ':', '\\' or whitespace`,
      { root },
    );
  }
  return root.endsWith('/') ? root.slice(0, -1) : root;
}

export async function pathExists(path: string): Promise<boolean> {
  try {
    await lstat(path);
    return true;
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return false;
    throw error;
  }
}

/** Writes a file through a temporary name and rename, so a crash never leaves half a file. */
export async function writeFileAtomic(path: string, data: string): Promise<void> {
  const tmp = `${path}.tmp-${process.pid}`;
  await writeFile(tmp, data);
  await rename(tmp, path);
}

/** The entries of `dir` that are valid volume ids (skips our own dot-prefixed temporaries); [] if missing. */
export async function listIds(dir: string): Promise<string[]> {
  try {
    const names = await readdir(dir);
    return names.filter((n) => VOLUME_ID_PATTERN.test(n) && !n.includes('..')).sort();
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw error;
  }
}

/** Snapshots stored as `<dir>/<name>`, oldest first. */
export async function listSnapshotEntries(dir: string): Promise<SnapshotInfo[]> {
  const names = await listIds(dir);
  const infos = await Promise.all(
    names.map(async (name) => ({ name, createdAt: (await stat(join(dir, name))).mtime })),
  );
  return infos.sort((a, b) => a.createdAt.getTime() - b.createdAt.getTime() || a.name.localeCompare(b.name));
}

/**
 * Removes a tree, refusing (WRONG_STATE) when anything is mounted inside it: `rm -r` across a mount point
 * would delete files of whatever is mounted there. No-op when missing.
 */
export async function removeTree(path: string): Promise<void> {
  const mounts = await mountsUnder(path);
  if (mounts.length > 0) {
    throw new RuntimeError(
      'WRONG_STATE',
      `refusing to delete ${path}: ${mounts[0].mountPoint} is mounted inside it`,
      {
        path,
        mountPoint: mounts[0].mountPoint,
      },
    );
  }
  await rm(path, { recursive: true, force: true });
}

/**
 * Allocated bytes of the files under `dir` (st_blocks × 512, each inode once), like `du -s -B1`, walked
 * in-process; does not cross into other filesystems (mounts inside the volume are not its data).
 */
export async function allocatedBytes(dir: string): Promise<number> {
  const root = await lstat(dir);
  const seen = new Set<string>();
  let total = 0;
  const walk = async (path: string): Promise<void> => {
    const entries = await readdir(path, { withFileTypes: true });
    for (const entry of entries) {
      const child = join(path, entry.name);
      const st = await lstat(child);
      if (st.dev !== root.dev) continue;
      const key = `${st.ino}`;
      if (st.nlink > 1) {
        if (seen.has(key)) continue;
        seen.add(key);
      }
      total += st.blocks * 512;
      if (st.isDirectory()) await walk(child);
    }
  };
  total += root.blocks * 512;
  await walk(dir);
  return total;
}

/** Where a driver records which template a container came from and which templates are sealed. */
export class VolumeMeta {
  constructor(private readonly metaDir: string) {}

  async init(): Promise<void> {
    await mkdir(join(this.metaDir, 'containers'), { recursive: true });
    await mkdir(join(this.metaDir, 'templates'), { recursive: true });
  }

  private originFile(containerId: string): string {
    return join(this.metaDir, 'containers', `${containerId}.json`);
  }

  private sealedFile(templateId: string): string {
    return join(this.metaDir, 'templates', `${templateId}.sealed`);
  }

  /** The template a container was cloned from, or undefined when Berth has no record. */
  async origin(containerId: string): Promise<string | undefined> {
    try {
      const parsed = JSON.parse(await readFile(this.originFile(containerId), 'utf8')) as {
        template?: unknown;
      };
      return typeof parsed.template === 'string' ? parsed.template : undefined;
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      throw error;
    }
  }

  async setOrigin(containerId: string, templateId: string): Promise<void> {
    await writeFileAtomic(
      this.originFile(containerId),
      JSON.stringify({ template: templateId, createdAt: new Date().toISOString() }),
    );
  }

  async clearOrigin(containerId: string): Promise<void> {
    await rm(this.originFile(containerId), { force: true });
  }

  /** Container ids whose recorded origin is `templateId`. */
  async clonesOf(templateId: string): Promise<string[]> {
    const dir = join(this.metaDir, 'containers');
    let names: string[];
    try {
      names = await readdir(dir);
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === 'ENOENT') return [];
      throw error;
    }
    const ids = names.filter((n) => n.endsWith('.json')).map((n) => n.slice(0, -'.json'.length));
    const origins = await Promise.all(ids.map(async (id) => ({ id, template: await this.origin(id) })));
    return origins.filter((o) => o.template === templateId).map((o) => o.id);
  }

  async isSealed(templateId: string): Promise<boolean> {
    return pathExists(this.sealedFile(templateId));
  }

  async setSealed(templateId: string): Promise<void> {
    await writeFile(this.sealedFile(templateId), '');
  }

  async clearSealed(templateId: string): Promise<void> {
    await rm(this.sealedFile(templateId), { force: true });
  }
}

/** Validates an id and joins it to a base directory. */
export function idPath(base: string, id: string, kind: 'template' | 'container' | 'snapshot'): string {
  return join(base, validateVolumeId(id, kind));
}

/** Where a container's snapshot lives under `base` (ids validated: INVALID_NAME). */
export function snapshotPathIn(base: string, containerId: string, snapshotName: string): string {
  return join(
    base,
    'snapshots',
    validateVolumeId(containerId, 'container'),
    validateVolumeId(snapshotName, 'snapshot'),
  );
}

async function isDir(path: string): Promise<boolean> {
  return stat(path).then(
    (st) => st.isDirectory(),
    () => false,
  );
}

/** Returns `path` when `probe` (default: `path`) is a directory, else throws VOLUME_NOT_FOUND. */
export async function requireVolumeDir(path: string, containerId: string, probe = path): Promise<string> {
  if (!(await isDir(probe))) {
    throw new RuntimeError('VOLUME_NOT_FOUND', `container ${containerId} has no volume`, {
      containerId,
      path,
    });
  }
  return path;
}

/** Returns `path` when it is a directory, else throws SNAPSHOT_NOT_FOUND. */
export async function requireSnapshotDir(
  path: string,
  containerId: string,
  snapshotName: string,
): Promise<string> {
  if (!(await isDir(path))) {
    throw new RuntimeError(
      'SNAPSHOT_NOT_FOUND',
      `snapshot ${snapshotName} of ${containerId} does not exist`,
      {
        containerId,
        snapshotName,
      },
    );
  }
  return path;
}

/**
 * Where a new snapshot goes under `base`: its parent directory is made, and SNAPSHOT_EXISTS is thrown when
 * one of that name exists (a snapshot taken later would not hold the same data).
 */
export async function newSnapshotPath(
  base: string,
  containerId: string,
  snapshotName: string,
): Promise<string> {
  const target = snapshotPathIn(base, containerId, snapshotName);
  if (await pathExists(target)) {
    throw new RuntimeError('SNAPSHOT_EXISTS', `snapshot ${snapshotName} of ${containerId} already exists`, {
      containerId,
      snapshotName,
    });
  }
  await mkdir(join(base, 'snapshots', containerId), { recursive: true });
  return target;
}
