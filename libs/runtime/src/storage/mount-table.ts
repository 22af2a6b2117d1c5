import { readFile } from 'node:fs/promises';

export interface MountEntry {
  mountPoint: string;
  fsType: string;
  source: string;
}

/** mountinfo escapes space, tab, newline and backslash as 3-digit octal (`\040`). */
function unescapeMountField(field: string): string {
  return field.replace(/\\([0-7]{3})/g, (_m, oct: string) => String.fromCharCode(parseInt(oct, 8)));
}

/** Parses /proc/<pid>/mountinfo text (proc(5)); lines that do not parse are skipped. */
export function parseMountInfo(text: string): MountEntry[] {
  const entries: MountEntry[] = [];
  for (const line of text.split('\n')) {
    if (!line) continue;
    const fields = line.split(' ');
    const dash = fields.indexOf('-', 6);
    if (dash < 0 || fields.length < dash + 3) continue;
    entries.push({
      mountPoint: unescapeMountField(fields[4]),
      fsType: fields[dash + 1],
      source: unescapeMountField(fields[dash + 2]),
    });
  }
  return entries;
}

/**
 * The mount table of this process's mount namespace. Read in-process (no `findmnt` spawn) because drivers
 * check it on hot paths such as `mount()`.
 */
export async function readMounts(): Promise<MountEntry[]> {
  return parseMountInfo(await readFile('/proc/self/mountinfo', 'utf8'));
}

/** The topmost mount at exactly `path`, or undefined. */
export async function mountAt(path: string): Promise<MountEntry | undefined> {
  const mounts = await readMounts();
  // Later lines are mounted on top of earlier ones at the same point.
  for (let i = mounts.length - 1; i >= 0; i--) if (mounts[i].mountPoint === path) return mounts[i];
  return undefined;
}

/** Mount points at or below `dir`, deepest first (the order to unmount them in). */
export async function mountsUnder(dir: string): Promise<MountEntry[]> {
  const prefix = dir.endsWith('/') ? dir : `${dir}/`;
  return (await readMounts())
    .filter((m) => m.mountPoint === dir || m.mountPoint.startsWith(prefix))
    .sort((a, b) => b.mountPoint.length - a.mountPoint.length);
}
