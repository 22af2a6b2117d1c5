import { mkdir, readFile, rename, writeFile } from 'node:fs/promises';
import * as path from 'node:path';
import { RuntimeError } from '../common/errors';
import { assertTemplateName } from '../common/validation';

/** Where a template came from. */
export type TemplateSource =
  | { kind: 'busybox'; busyboxPath: string }
  | { kind: 'tarball'; archive: string; compression: TarCompression };

export type TarCompression = 'none' | 'gzip' | 'zstd' | 'xz';

/** Contents of `template.json`, written beside a template's rootfs. */
export interface TemplateMetadata {
  name: string;
  source: TemplateSource;
  /** Builder that produced the rootfs and its version, e.g. `berth-busybox@1` or `berth-import@1`. */
  builder: string;
  /** ISO-8601 UTC. */
  createdAt: string;
  sizeBytes: number;
  files: number;
  /** Set when the rootfs was chowned for a user namespace: host uid that container uid 0 maps to. */
  shiftedUid?: number;
}

export const TEMPLATE_METADATA_FILE = 'template.json';

/**
 * Reads `<dir>/template.json`.
 * @returns the metadata, or null when the file does not exist.
 * @throws RuntimeError INVALID_ARGUMENT when the file is not valid metadata (corrupt or foreign).
 */
export async function readTemplateMetadata(dir: string): Promise<TemplateMetadata | null> {
  const file = path.join(dir, TEMPLATE_METADATA_FILE);
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw e;
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (cause) {
    throw new RuntimeError('INVALID_ARGUMENT', `${file} is not valid JSON`, { path: file }, { cause });
  }
  return validateTemplateMetadata(parsed, file);
}

/**
 * Writes `<dir>/template.json` atomically (temp file + rename), creating `dir` if needed, so a reader never
 * sees a half-written file.
 * @throws RuntimeError INVALID_NAME for a bad template name; fs errors as they come.
 */
export async function writeTemplateMetadata(dir: string, meta: TemplateMetadata): Promise<void> {
  validateTemplateMetadata(meta, path.join(dir, TEMPLATE_METADATA_FILE));
  await mkdir(dir, { recursive: true });
  const file = path.join(dir, TEMPLATE_METADATA_FILE);
  const tmp = `${file}.tmp-${process.pid}`;
  await writeFile(tmp, `${JSON.stringify(meta, null, 2)}\n`, { mode: 0o644 });
  await rename(tmp, file);
}

/** Checks the shape of parsed metadata; returns it typed. */
export function validateTemplateMetadata(value: unknown, where = 'template metadata'): TemplateMetadata {
  const bad = (why: string): RuntimeError =>
    new RuntimeError('INVALID_ARGUMENT', `${where}: ${why}`, { path: where });
  if (typeof value !== 'object' || value === null) throw bad('not an object');
  const v = value as Record<string, unknown>;
  assertTemplateName(v.name);
  if (typeof v.builder !== 'string' || v.builder === '') throw bad('builder missing');
  if (typeof v.createdAt !== 'string' || Number.isNaN(Date.parse(v.createdAt)))
    throw bad('createdAt invalid');
  if (!Number.isSafeInteger(v.sizeBytes) || (v.sizeBytes as number) < 0) throw bad('sizeBytes invalid');
  if (!Number.isSafeInteger(v.files) || (v.files as number) < 0) throw bad('files invalid');
  if (v.shiftedUid !== undefined && (!Number.isSafeInteger(v.shiftedUid) || (v.shiftedUid as number) < 0)) {
    throw bad('shiftedUid invalid');
  }
  const src = v.source as Record<string, unknown> | undefined;
  if (typeof src !== 'object' || src === null || (src.kind !== 'busybox' && src.kind !== 'tarball')) {
    throw bad('source invalid');
  }
  return value as TemplateMetadata;
}
