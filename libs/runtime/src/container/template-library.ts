import { readFileSync } from 'node:fs';
import { mkdir, readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { run } from '../common/exec';
import { RuntimeError } from '../common/errors';
import { withReverter } from '../common/reverter';
import { assertTemplateName } from '../common/validation';
import { parseProcStat, readProcStat } from '../namespaces/init-process';
import { shiftOwnership } from '../namespaces/ownership-shift';
import type { StorageDriver } from '../storage/storage.driver';
import { buildBusyboxTemplate } from '../templates/busybox.builder';
import { importRootfsTarball } from '../templates/rootfs-import';
import { removeTree, treeUsage } from '../templates/fs-util';
import { USERNS_RANGE } from './container-runtime';

export interface TemplateLibraryOptions {
  dataRoot: string;
  storage: StorageDriver;
  /**
   * Host uid that container root maps to. Templates are shifted to it once, at import, so unprivileged
   * containers clone an already-shifted rootfs in O(1). null keeps host ownership (privileged-only hosts).
   */
  usernsHostUid: number | null;
}

export interface TemplateResult {
  name: string;
  /** False when the template already existed and was left as it was. */
  changed: boolean;
  /** The root filesystem's size (regular files, each hard-linked inode once), when it was made now. */
  sizeBytes?: number;
}

let ownStart: number | null | undefined;
/**
 * This process's start time (field 22 of /proc/self/stat), for its staging directories' names; null when
 * it cannot be read (the names then carry the pid alone, which a sweep judges by the pid only).
 */
const ownStartTime = () =>
  ownStart === undefined
    ? (ownStart = parseProcStat(readFileSync('/proc/self/stat', 'utf8'))?.startTime ?? null)
    : ownStart;

/**
 * The templates of one host, kept as sealed volumes of its storage driver. A template is built or
 * extracted into a staging directory under the data root first, validated there, then copied into a
 * fresh template volume (reflink where the filesystem can) and sealed: a crash or a refused archive
 * leaves no half template that clones could use.
 */
export class TemplateLibrary {
  /** Per template name, the end of the last install (or look) queued: one at a time per name. */
  private readonly busy = new Map<string, Promise<void>>();

  constructor(private readonly opts: TemplateLibraryOptions) {}

  /**
   * Runs `fn` after every earlier call for `name` of this library has ended. Two imports of one name at
   * once (two import jobs of it on one host) shared its unsealed volume: the first sealed it, and the
   * second's failure, undone, deleted the template the first had made. Now the second waits, and then
   * finds the template there.
   */
  private async oneAtATime<T>(name: string, fn: () => Promise<T>): Promise<T> {
    const before = this.busy.get(name) ?? Promise.resolve();
    let done!: () => void;
    const mine = before.then(() => new Promise<void>((r) => (done = r)));
    this.busy.set(name, mine);
    await before;
    try {
      return await fn();
    } finally {
      done();
      if (this.busy.get(name) === mine) this.busy.delete(name);
    }
  }

  /**
   * A staging directory is named after its process: pid and start time (`<pid>.<start>`), so that a pid
   * the kernel gave to another process since is not taken for the importer (sweepStaging).
   */
  private staging(name: string): string {
    const start = ownStartTime();
    const owner = start === null ? `${process.pid}` : `${process.pid}.${start}`;
    return join(this.opts.dataRoot, 'tmp', `template-${name}-${owner}-${Date.now()}`);
  }

  /** Builds the built-in busybox template offline from Debian's busybox-static. Idempotent. */
  async ensureBusybox(name = 'busybox'): Promise<TemplateResult> {
    assertTemplateName(name);
    return this.oneAtATime(name, async () => {
      if (await this.opts.storage.hasTemplate(name)) return { name, changed: false };
      return this.install(name, (dir) => buildBusyboxTemplate(dir, { name }).then(() => undefined));
    });
  }

  /**
   * Imports a rootfs tarball (.tar, .tar.gz, .tar.zst, .tar.xz) as a template; the archive is validated
   * entry by entry before anything is extracted (UNSAFE_ARCHIVE). Refuses an existing name (TEMPLATE_EXISTS).
   */
  async importTarball(name: string, archivePath: string): Promise<TemplateResult> {
    assertTemplateName(name);
    return this.oneAtATime(name, async () => {
      if (await this.opts.storage.hasTemplate(name)) {
        throw new RuntimeError('TEMPLATE_EXISTS', `template ${name} already exists`, { name });
      }
      return this.install(name, (dir) =>
        importRootfsTarball(archivePath, dir, { name }).then(() => undefined),
      );
    });
  }

  /**
   * Removes the staging directories of processes that are gone (a worker killed in the middle of an
   * import): each can hold a whole rootfs. A process is its pid and start time: a pid now held by
   * another process does not keep a dead importer's directory. Run before each install and by the
   * worker at its start.
   * Answers the directories removed.
   */
  async sweepStaging(): Promise<string[]> {
    const tmp = join(this.opts.dataRoot, 'tmp');
    const removed: string[] = [];
    for (const entry of await readdir(tmp).catch(() => [] as string[])) {
      // `<pid>.<start>`; a bare `<pid>` from an older version counts as alive while that pid exists.
      const m = /^template-.+-(\d+)(?:\.(\d+))?-\d+$/.exec(entry);
      if (!m) continue;
      // This process too: under its pid with another start time, it is a dead process that had this pid.
      const stat = await readProcStat(Number(m[1]));
      if (stat && (m[2] === undefined || stat.startTime === Number(m[2]))) continue;
      await removeTree(join(tmp, entry));
      removed.push(entry);
    }
    return removed;
  }

  private async install(name: string, fill: (dir: string) => Promise<void>): Promise<TemplateResult> {
    const staging = this.staging(name);
    let sizeBytes: number;
    await mkdir(join(this.opts.dataRoot, 'tmp'), { recursive: true, mode: 0o700 });
    await this.sweepStaging();
    try {
      const rootfs = join(staging, 'rootfs');
      await mkdir(staging, { mode: 0o700 });
      await fill(rootfs);
      if (this.opts.usernsHostUid !== null)
        await shiftOwnership(rootfs, this.opts.usernsHostUid, USERNS_RANGE);
      // As sizeOf measures the sealed template (the shift's marker included).
      ({ sizeBytes } = await treeUsage(rootfs));
      await withReverter(async (revert) => {
        const volume = await this.opts.storage.createTemplateVolume(name);
        revert.add('delete template volume', () => this.opts.storage.deleteTemplate(name));
        // `/.` copies the content into the existing (possibly subvolume) directory, owners and modes kept.
        await run('cp', ['-a', '--reflink=auto', `${rootfs}/.`, `${volume}/`]);
        await this.opts.storage.sealTemplate(name);
      });
    } finally {
      await removeTree(staging);
    }
    return { name, changed: true, sizeBytes };
  }

  /** What a template's root filesystem holds (regular files, each hard-linked inode once); 0 when it is missing. */
  async sizeOf(name: string): Promise<number> {
    assertTemplateName(name);
    if (!(await this.opts.storage.hasTemplate(name))) return 0;
    return (await treeUsage(this.opts.storage.templatePath(name))).sizeBytes;
  }

  async list(): Promise<string[]> {
    return this.opts.storage.listTemplates();
  }

  async has(name: string): Promise<boolean> {
    return this.opts.storage.hasTemplate(name);
  }

  /** Deletes a template; TEMPLATE_IN_USE while clones depend on it (overlay). No-op when missing. */
  async delete(name: string): Promise<void> {
    assertTemplateName(name);
    await this.opts.storage.deleteTemplate(name);
  }
}
