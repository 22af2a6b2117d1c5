import { mkdir, rename, writeFile } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';

/** Where a benchmark's results were written. */
export interface WrittenResults {
  /** `<dir>/<name>-<date>.json`, e.g. bench/results/runtime-2026-11-25T10-31-07Z.json. */
  dated: string;
  /** `<dir>/latest-<name>.json`, overwritten by every run. */
  latest: string;
}

/** A file-name-safe UTC timestamp (`2026-11-25T10-31-07Z`). */
export function fileStamp(date = new Date()): string {
  return date
    .toISOString()
    .replace(/\.\d+Z$/, 'Z')
    .replace(/:/g, '-');
}

/**
 * Writes `data` as pretty JSON to `<dir>/<name>-<stamp>.json` and `<dir>/latest-<name>.json` (each written
 * to a temporary file and renamed, so a reader never sees half a file). Creates `dir` when missing.
 * `name` must be a plain word (letters, digits, `-`): RangeError otherwise.
 */
export async function writeResults(
  dir: string,
  name: string,
  data: unknown,
  date = new Date(),
): Promise<WrittenResults> {
  if (!/^[a-z0-9][a-z0-9-]*$/i.test(name))
    throw new RangeError(`invalid results name ${JSON.stringify(name)}`);
  await mkdir(dir, { recursive: true });
  const text = `${JSON.stringify(data, null, 2)}\n`;
  const dated = join(dir, `${name}-${fileStamp(date)}.json`);
  const latest = join(dir, `latest-${name}.json`);
  for (const file of [dated, latest]) {
    const tmp = `${file}.${process.pid}.tmp`;
    await writeFile(tmp, text);
    await rename(tmp, file);
  }
  return { dated, latest };
}

/**
 * The checkout's root: the nearest directory above this file holding `nest-cli.json`. The benches run
 * from the sources (ts-node) or compiled under dist/bench (`npm run bench`); either way their results go
 * to `<root>/bench/results` and their worker processes start in the root.
 */
export function checkoutRoot(from = __dirname): string {
  for (let dir = from; ; dir = dirname(dir)) {
    if (existsSync(join(dir, 'nest-cli.json'))) return dir;
    if (dirname(dir) === dir) throw new Error(`no nest-cli.json above ${from}`);
  }
}

/** The default results directory: `<checkout>/bench/results`. */
export const defaultResultsDir = (): string => join(checkoutRoot(), 'bench', 'results');
