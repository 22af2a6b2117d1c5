import { spawn } from 'node:child_process';
import { constants, createReadStream, createWriteStream } from 'node:fs';
import type { Stats } from 'node:fs';
import { lstat, mkdir, open, readdir, rename, rm, stat, statfs } from 'node:fs/promises';
import { finished, pipeline } from 'node:stream/promises';
import * as path from 'node:path';
import { run } from '../common/exec';
import { RuntimeError } from '../common/errors';
import { assertTemplateName } from '../common/validation';
import { SHIFT_MARKER } from '../namespaces/ownership-shift';
import { removeTree, stagingPathFor, treeUsage } from './fs-util';
import type { TarCompression } from './template-metadata';
import { readTarEntries, TarEntry, TarEntryType } from './tar-reader';

export const IMPORT_BUILDER = 'berth-import@1';

/**
 * Device nodes a rootfs may carry, by path, with the only numbers they may have (the standard Linux
 * character devices of a minimal /dev). Every other char or block device is refused: a container that
 * owns a node for a host disk owns the disk.
 */
export const ALLOWED_DEVICES: Readonly<Record<string, readonly [number, number]>> = {
  'dev/null': [1, 3],
  'dev/zero': [1, 5],
  'dev/full': [1, 7],
  'dev/random': [1, 8],
  'dev/urandom': [1, 9],
  'dev/tty': [5, 0],
  'dev/console': [5, 1],
  'dev/ptmx': [5, 2],
};

export interface ImportRootfsOptions {
  /** Template name, recorded in the result. */
  name: string;
  /** Path inside the rootfs that must resolve (symlinks followed inside the root) to an executable regular
   *  file. Default `/sbin/init`. */
  initPath?: string;
  /** Restore owners from the archive (needs root). Default: true when running as root. */
  sameOwner?: boolean;
  /** Kill tar after this long. Default 10 minutes. */
  timeoutMs?: number;
}

export interface ImportedRootfs {
  name: string;
  builder: string;
  compression: TarCompression;
  /** Members in the archive. */
  entries: number;
  sizeBytes: number;
  files: number;
}

/** Summary of a validated archive. */
export interface ArchiveInspection {
  compression: TarCompression;
  entries: number;
  /** Normalised member paths (relative, no `./`) with their type, last definition wins. */
  members: Map<string, { type: TarEntryType; mode: number; linkname: string }>;
  /** What its regular files hold, in bytes (what extracting it writes, give or take the metadata). */
  dataBytes: number;
}

export interface InspectOptions {
  /** Refuse (NO_SPACE) an archive whose files hold more than this, as soon as the reading gets there. */
  maxDataBytes?: number;
}

function unsafe(entry: string, reason: string, extra: Record<string, unknown> = {}): RuntimeError {
  return new RuntimeError('UNSAFE_ARCHIVE', `unsafe archive entry ${JSON.stringify(entry)}: ${reason}`, {
    entry,
    reason,
    ...extra,
  });
}

/** Detects the compression from the first bytes (file names lie), falling back to plain tar. */
export async function detectCompression(archivePath: string): Promise<TarCompression> {
  const fh = await open(archivePath, 'r');
  try {
    const head = Buffer.alloc(6);
    const { bytesRead } = await fh.read(head, 0, 6, 0);
    const b = head.subarray(0, bytesRead);
    if (b.length >= 2 && b[0] === 0x1f && b[1] === 0x8b) return 'gzip';
    if (b.length >= 4 && b.readUInt32LE(0) === 0xfd2fb528) return 'zstd';
    if (b.length >= 6 && b.equals(Buffer.from([0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00]))) return 'xz';
    return 'none';
  } finally {
    await fh.close();
  }
}

const DECOMPRESSORS: Record<Exclude<TarCompression, 'none'>, [string, string[]]> = {
  gzip: ['gzip', ['-dc']],
  zstd: ['zstd', ['-dcq']],
  xz: ['xz', ['-dc']],
};

const TAR_FLAG: Record<TarCompression, string[]> = {
  none: [],
  gzip: ['--gzip'],
  zstd: ['--zstd'],
  xz: ['--xz'],
};

/**
 * Normalises a member name the way the checks need it: relative, no empty or `.` components, no trailing
 * slash. `''` is the archive root (`./`).
 * @throws UNSAFE_ARCHIVE for absolute names, `..` components and NUL bytes.
 */
export function normaliseMemberName(raw: string, what = 'entry'): string {
  if (raw.includes('\0')) throw unsafe(raw, `NUL byte in ${what} name`);
  if (raw.startsWith('/')) throw unsafe(raw, `absolute ${what} path`);
  const parts = raw.split('/').filter((p) => p !== '' && p !== '.');
  if (parts.includes('..')) throw unsafe(raw, `'..' component in ${what} path`);
  return parts.join('/');
}

/** Lexically resolves a relative symlink target against the link's directory; null when it climbs out. */
function resolveRelative(linkPath: string, target: string): string | null {
  const stack = linkPath.split('/').slice(0, -1);
  for (const part of target.split('/')) {
    if (part === '' || part === '.') continue;
    if (part === '..') {
      if (stack.length === 0) return null;
      stack.pop();
    } else stack.push(part);
  }
  return stack.join('/');
}

function prefixes(p: string): string[] {
  const parts = p.split('/');
  const out: string[] = [];
  for (let i = 1; i < parts.length; i++) out.push(parts.slice(0, i).join('/'));
  return out;
}

/**
 * Checks one member against the rules (see inspectRootfsArchive) given the members seen before it.
 * @throws UNSAFE_ARCHIVE naming the entry and the reason.
 */
function checkEntry(entry: TarEntry, members: ArchiveInspection['members'], symlinks: Set<string>): string {
  const name = normaliseMemberName(entry.name);
  if (name === '' && entry.type !== 'directory')
    throw unsafe(entry.name, `the archive root must be a directory`);
  // GNU tar takes a regular-file member whose name ends in '/' for a directory (an old convention) and
  // reads its data as more members, which this inspection would never have seen.
  if (entry.type !== 'directory' && /\/\.?$/.test(entry.name))
    throw unsafe(entry.name, `a ${entry.type} whose name ends in '/'`);
  // Berth's own bookkeeping at the top of a rootfs (the id shift's marker): not the archive's to set.
  if (name === SHIFT_MARKER || name.startsWith(`${SHIFT_MARKER}.`))
    throw unsafe(entry.name, 'a name Berth reserves for its own bookkeeping');
  // A member under a path the archive made a symlink would be written wherever the link points (an
  // absolute link resolves on the host during extraction): refuse instead of trusting the extractor.
  for (const p of [...prefixes(name), name]) {
    if (symlinks.has(p)) {
      throw unsafe(entry.name, p === name ? `redefines symlink ${p}` : `path goes through symlink ${p}`);
    }
  }
  switch (entry.type) {
    case 'symlink': {
      if (entry.linkname === '') throw unsafe(entry.name, 'empty symlink target');
      if (entry.linkname.includes('\0')) throw unsafe(entry.name, 'NUL byte in symlink target');
      // Absolute targets are fine: they resolve inside the container's root. Relative ones must not
      // climb above the rootfs, where they would point into the host from any host-side access.
      if (!entry.linkname.startsWith('/') && resolveRelative(name, entry.linkname) === null) {
        throw unsafe(entry.name, `symlink target ${JSON.stringify(entry.linkname)} escapes the root`);
      }
      break;
    }
    case 'hardlink': {
      let target: string;
      try {
        target = normaliseMemberName(entry.linkname, 'hardlink target');
      } catch {
        throw unsafe(entry.name, `hardlink target ${JSON.stringify(entry.linkname)} is outside the archive`);
      }
      for (const p of [...prefixes(target), target]) {
        if (symlinks.has(p)) throw unsafe(entry.name, `hardlink target goes through symlink ${p}`);
      }
      const seen = members.get(target);
      if (!seen)
        throw unsafe(
          entry.name,
          `hardlink target ${JSON.stringify(entry.linkname)} is not an earlier member`,
        );
      if (seen.type === 'directory') throw unsafe(entry.name, 'hardlink to a directory');
      break;
    }
    case 'char':
    case 'block': {
      const allowed = ALLOWED_DEVICES[name];
      if (entry.type === 'block' || !allowed) throw unsafe(entry.name, `${entry.type} device not allowed`);
      if (allowed[0] !== entry.devmajor || allowed[1] !== entry.devminor) {
        throw unsafe(entry.name, `device ${entry.devmajor}:${entry.devminor} is not ${name}`);
      }
      break;
    }
    default:
      break; // regular files (setuid included), directories and fifos are fine
  }
  return name;
}

/**
 * Follows `p` through the archive's own members, symlinks resolved inside the root (like the container
 * will), and returns the member it ends at, or null.
 */
function resolveMember(
  members: ArchiveInspection['members'],
  p: string,
): { type: TarEntryType; mode: number; linkname: string } | null {
  let current = normaliseMemberName(p.replace(/^\/+/, ''));
  for (let hops = 0; hops < 40; hops++) {
    // Resolve symlinked parents first.
    let restarted = false;
    for (const pre of prefixes(current)) {
      const m = members.get(pre);
      if (m?.type === 'symlink') {
        const rest = current.slice(pre.length + 1);
        const base = m.linkname.startsWith('/') ? m.linkname : (resolveRelative(pre, m.linkname) ?? '');
        current = normaliseMemberName(`${base.replace(/^\/+/, '')}/${rest}`.replace(/^\/+/, ''));
        restarted = true;
        break;
      }
    }
    if (restarted) continue;
    const m = members.get(current);
    if (!m) return null;
    if (m.type === 'symlink') {
      current = m.linkname.startsWith('/')
        ? normaliseMemberName(m.linkname.replace(/^\/+/, ''))
        : (resolveRelative(current, m.linkname) ?? '');
      continue;
    }
    if (m.type === 'hardlink') return members.get(normaliseMemberName(m.linkname)) ?? null;
    return m;
  }
  return null;
}

/**
 * Reads every header of a rootfs archive (streamed through its decompressor, data skipped) and checks it
 * without extracting anything. Rules:
 * - member names: no absolute paths, no `..` component, no NUL; `./` prefixes are fine;
 * - no member under (or replacing) a path an earlier member made a symlink;
 * - symlinks: absolute targets allowed (they resolve inside the container); relative targets must stay
 *   inside the root when resolved lexically from the link's directory;
 * - hardlinks: target must be a relative, `..`-free, earlier non-directory member (never through a symlink);
 * - devices: only the char devices of ALLOWED_DEVICES, at those paths with those numbers; no block devices;
 * - fifos, setuid/setgid files and any owner are fine; sparse, multi-volume and unknown member types are not.
 * @throws RuntimeError UNSAFE_ARCHIVE naming the entry and the reason; NOT_FOUND when the file is missing;
 *   NO_SPACE once its files hold more than `options.maxDataBytes`;
 *   DEPENDENCY_MISSING when the decompressor is absent.
 */
export async function inspectRootfsArchive(
  archivePath: string,
  options: InspectOptions = {},
): Promise<ArchiveInspection> {
  let st;
  try {
    st = await stat(archivePath);
  } catch {
    throw new RuntimeError('NOT_FOUND', `archive ${archivePath} does not exist`, { archivePath });
  }
  // A device, a FIFO or a directory is no archive (/dev/zero would be read for ever).
  if (!st.isFile()) {
    throw new RuntimeError('INVALID_PATH', `archive ${archivePath} is not a regular file`, { archivePath });
  }
  const compression = await detectCompression(archivePath);
  const members: ArchiveInspection['members'] = new Map();
  const symlinks = new Set<string>();
  let entries = 0;
  let dataBytes = 0;

  if (compression === 'none') {
    const stream = createReadStream(archivePath);
    try {
      for await (const entry of readTarEntries(stream)) {
        const name = checkEntry(entry, members, symlinks);
        record(entry, name);
      }
    } finally {
      stream.destroy();
    }
    return { compression, entries, members, dataBytes };
  }

  const [cmd, args] = DECOMPRESSORS[compression];
  const child = spawn(cmd, [...args, '--', archivePath], { stdio: ['ignore', 'pipe', 'pipe'] });
  const stderr: Buffer[] = [];
  child.stderr.on('data', (b: Buffer) => stderr.push(b));
  const exited = new Promise<{ code: number | null; error?: NodeJS.ErrnoException }>((resolve) => {
    child.on('error', (error: NodeJS.ErrnoException) => resolve({ code: null, error }));
    child.on('close', (code) => resolve({ code }));
  });
  try {
    for await (const entry of readTarEntries(child.stdout)) {
      const name = checkEntry(entry, members, symlinks);
      record(entry, name);
    }
  } catch (e) {
    child.kill('SIGKILL');
    // Unread output would keep the pipe (and so the child's 'close') open forever.
    child.stdout.destroy();
    const { error } = await exited;
    if (error?.code === 'ENOENT') {
      throw new RuntimeError(
        'DEPENDENCY_MISSING',
        `${cmd} is not installed: run scripts/services.sh ensure`,
        {
          program: cmd,
        },
      );
    }
    throw e;
  }
  const { code, error } = await exited;
  if (error?.code === 'ENOENT') {
    throw new RuntimeError('DEPENDENCY_MISSING', `${cmd} is not installed: run scripts/services.sh ensure`, {
      program: cmd,
    });
  }
  if (code !== 0) {
    throw new RuntimeError('UNSAFE_ARCHIVE', `${compression} stream of ${archivePath} is corrupt`, {
      archivePath,
      stderr: Buffer.concat(stderr).toString('utf8').slice(0, 2000),
    });
  }
  return { compression, entries, members, dataBytes };

  function record(entry: TarEntry, name: string): void {
    entries += 1;
    if (entry.type === 'file') {
      dataBytes += entry.size;
      if (options.maxDataBytes !== undefined && dataBytes > options.maxDataBytes)
        throw new RuntimeError(
          'NO_SPACE',
          `the archive holds more than the ${options.maxDataBytes} bytes free where it would be extracted`,
          { archivePath, maxDataBytes: options.maxDataBytes },
        );
    }
    if (entry.type === 'symlink') symlinks.add(name);
    if (name !== '') members.set(name, { type: entry.type, mode: entry.mode, linkname: entry.linkname });
  }
}

/**
 * Imports a rootfs archive (`.tar`, gzip, zstd or xz; detected from its content) into `targetDir`, which
 * must not exist. Every header is validated first (inspectRootfsArchive) and the init path checked, so a
 * refused archive extracts nothing. Then GNU tar extracts into a staging directory beside the target
 * (numeric owners, permissions kept, default GNU tar protections on: no `-P`) and the staging directory is
 * renamed into place: on any failure nothing is left behind.
 *
 * Berth writes nothing into an imported rootfs (no marker file): its own symlinks could point anywhere on
 * the host. Callers record metadata in `template.json` outside the rootfs.
 * @throws RuntimeError INVALID_NAME, UNSAFE_ARCHIVE, NO_SPACE (more data than the filesystem has free),
 *   INVALID_TEMPLATE (no executable init),
 *   TEMPLATE_EXISTS (target exists), NOT_FOUND (archive missing), COMMAND_FAILED/KERNEL_EPERM (tar failed).
 */
export async function importRootfsTarball(
  archivePath: string,
  targetDir: string,
  options: ImportRootfsOptions,
): Promise<ImportedRootfs> {
  assertTemplateName(options.name);
  if (!path.isAbsolute(targetDir) || !path.isAbsolute(archivePath)) {
    throw new RuntimeError('INVALID_PATH', 'archive and target paths must be absolute', {
      archivePath,
      targetDir,
    });
  }
  const initPath = options.initPath ?? '/sbin/init';
  const sameOwner = options.sameOwner ?? process.getuid?.() === 0;
  if (await exists(targetDir)) {
    throw new RuntimeError('TEMPLATE_EXISTS', `${targetDir} already exists`, {
      targetDir,
      name: options.name,
    });
  }

  await mkdir(path.dirname(targetDir), { recursive: true });
  // The archive is read once, into a private copy, which is both checked and extracted: a file swapped at
  // its path between the check and tar's own opening (by whoever may write where it lies) would be
  // extracted unchecked.
  const copy = stagingPathFor(targetDir, 'archive');
  await privateCopy(archivePath, copy);
  try {
    return await importChecked(copy, archivePath, targetDir, options, initPath, sameOwner);
  } finally {
    await rm(copy, { force: true });
  }
}

/** importRootfsTarball from its private copy of the archive (`archive`; `archivePath` names it in errors). */
async function importChecked(
  archive: string,
  archivePath: string,
  targetDir: string,
  options: ImportRootfsOptions,
  initPath: string,
  sameOwner: boolean,
): Promise<ImportedRootfs> {
  // No more than the filesystem has free (a decompression bomb would otherwise fill it, as root), less a
  // twentieth kept for everything else.
  const fs = await statfs(path.dirname(targetDir));
  const inspection = await inspectRootfsArchive(archive, {
    maxDataBytes: Math.floor(fs.bavail * fs.bsize * 0.95),
  });
  let init: ReturnType<typeof resolveMember>;
  try {
    init = resolveMember(inspection.members, initPath);
  } catch {
    init = null; // a link chain with '..' in absolute targets: not a usable init either way
  }
  if (!init || init.type !== 'file' || (init.mode & 0o111) === 0) {
    throw new RuntimeError(
      'INVALID_TEMPLATE',
      `archive has no executable ${initPath}: a system container needs an init (set initPath if it lives elsewhere)`,
      { archivePath, initPath },
    );
  }

  await mkdir(path.dirname(targetDir), { recursive: true });
  const staging = stagingPathFor(targetDir, 'import');
  try {
    await mkdir(staging, { mode: 0o755 });
    await run(
      'tar',
      [
        '--extract',
        ...TAR_FLAG[inspection.compression],
        '--file',
        archive,
        '--directory',
        staging,
        '--numeric-owner',
        sameOwner ? '--same-owner' : '--no-same-owner',
        '--preserve-permissions',
        '--no-overwrite-dir',
        '--delay-directory-restore',
        '--warning=no-timestamp',
      ],
      { timeoutMs: options.timeoutMs ?? 600_000 },
    );
    // What tar made must be what the inspection saw: a mismatch between the two readers of the archive
    // must not slip a device, or anything unchecked, into a template.
    await verifyExtracted(staging, inspection.members);
    const usage = await treeUsage(staging);
    try {
      await rename(staging, targetDir);
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if (code === 'ENOTEMPTY' || code === 'EEXIST') {
        throw new RuntimeError('TEMPLATE_EXISTS', `${targetDir} already exists`, {
          targetDir,
          name: options.name,
        });
      }
      throw e;
    }
    return {
      name: options.name,
      builder: IMPORT_BUILDER,
      compression: inspection.compression,
      entries: inspection.entries,
      ...usage,
    };
  } catch (e) {
    await removeTree(staging);
    throw e;
  }
}

/**
 * Copies the regular file at `src` to `dst` (new, 0600), from one open file: a device, a FIFO or a
 * directory is refused (INVALID_PATH), a missing file is NOT_FOUND; at most the size it had when opened.
 */
async function privateCopy(src: string, dst: string): Promise<void> {
  let fh;
  try {
    fh = await open(src, constants.O_RDONLY | constants.O_NONBLOCK);
  } catch {
    throw new RuntimeError('NOT_FOUND', `archive ${src} does not exist`, { archivePath: src });
  }
  try {
    const st = await fh.stat();
    if (!st.isFile())
      throw new RuntimeError('INVALID_PATH', `archive ${src} is not a regular file`, { archivePath: src });
    const fs = await statfs(path.dirname(dst));
    if (st.size > fs.bavail * fs.bsize)
      throw new RuntimeError(
        'NO_SPACE',
        `archive ${src} is larger than the free space of ${path.dirname(dst)}`,
        {
          archivePath: src,
          sizeBytes: st.size,
        },
      );
    const out = createWriteStream(dst, { flags: 'wx', mode: 0o600 });
    if (st.size === 0) {
      out.end();
      await finished(out);
      return;
    }
    await pipeline(fh.createReadStream({ start: 0, end: st.size - 1, autoClose: false }), out);
  } catch (e) {
    await rm(dst, { force: true });
    throw e;
  } finally {
    await fh.close();
  }
}

/** A member's type as the extracted inode shows it (a hard link is a regular file). */
function extractedType(st: Stats): TarEntryType | null {
  if (st.isFile()) return 'file';
  if (st.isDirectory()) return 'directory';
  if (st.isSymbolicLink()) return 'symlink';
  if (st.isCharacterDevice()) return 'char';
  if (st.isBlockDevice()) return 'block';
  if (st.isFIFO()) return 'fifo';
  return null;
}

/** A member's type, a hard link's being its target's (checkEntry made sure it is an earlier member). */
function typeOf(
  member: { type: TarEntryType; linkname: string },
  members: ArchiveInspection['members'],
): TarEntryType | undefined {
  let m: { type: TarEntryType; linkname: string } | undefined = member;
  for (let hops = 0; m?.type === 'hardlink' && hops < 64; hops++)
    m = members.get(normaliseMemberName(m.linkname));
  return m?.type === 'hardlink' ? undefined : m?.type;
}

/**
 * Walks the extracted tree (never following a link): every inode must be a member the inspection checked,
 * of the same type (or a directory tar made as the parent of one), and every device one of
 * ALLOWED_DEVICES with its numbers. @throws UNSAFE_ARCHIVE naming the first that is not.
 */
export async function verifyExtracted(root: string, members: ArchiveInspection['members']): Promise<void> {
  const parents = new Set<string>();
  for (const name of members.keys()) for (const p of prefixes(name)) parents.add(p);
  const walk = async (dir: string, rel: string): Promise<void> => {
    for (const entry of await readdir(dir)) {
      const name = rel === '' ? entry : `${rel}/${entry}`;
      const st = await lstat(path.join(dir, entry));
      const type = extractedType(st);
      const member = members.get(name);
      const expected = member && typeOf(member, members);
      if (type === 'directory' && !member && parents.has(name)) {
        await walk(path.join(dir, entry), name);
        continue;
      }
      if (!type || !member || expected !== type)
        throw unsafe(
          name,
          `extracted as ${type ?? 'an unknown type'}, but the archive was checked with ${member ? `a ${member.type}` : 'no such member'}`,
        );
      if (type === 'block') throw unsafe(name, 'block device not allowed');
      if (type === 'char') {
        const allowed = ALLOWED_DEVICES[name];
        const major = Math.floor(st.rdev / 256) & 0xfff;
        const minor = (st.rdev & 0xff) | ((st.rdev >> 12) & 0xfff00);
        if (!allowed || allowed[0] !== major || allowed[1] !== minor)
          throw unsafe(name, `device ${major}:${minor} not allowed`);
      }
      if (type === 'directory') await walk(path.join(dir, entry), name);
    }
  };
  await walk(root, '');
}

async function exists(p: string): Promise<boolean> {
  try {
    await lstat(p);
    return true;
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return false;
    throw e;
  }
}
