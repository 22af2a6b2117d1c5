import { constants } from 'node:fs';
import { access, chmod, copyFile, mkdir, readFile, rename, stat, symlink, writeFile } from 'node:fs/promises';
import * as path from 'node:path';
import { run } from '../common/exec';
import { RuntimeError } from '../common/errors';
import { assertContainerName, assertTemplateName } from '../common/validation';
import { removeTree, stagingPathFor, treeUsage } from './fs-util';

/** Bumped whenever the produced tree changes, so a template records which builder made it. */
export const BUSYBOX_BUILDER_VERSION = 1;
export const BUSYBOX_BUILDER = `berth-busybox@${BUSYBOX_BUILDER_VERSION}`;
/** Path of the marker file inside every template Berth builds: `name=`, `builder=` lines. */
export const TEMPLATE_MARKER = 'etc/berth-template';

export interface BusyboxTemplateOptions {
  /** Template name (see assertTemplateName). */
  name: string;
  /** Default hostname written to /etc/hostname and /etc/hosts; defaults to the name (must be a DNS label). */
  hostname?: string;
  /** The static busybox to copy; Debian's `busybox-static` installs it at /bin/busybox. */
  busyboxPath?: string;
}

export interface BuiltTemplate {
  name: string;
  builder: string;
  /** Sum of regular file sizes in the tree. */
  sizeBytes: number;
  /** Number of entries in the tree. */
  files: number;
  /** False when the template already existed (same name and builder) and was left as it was. */
  created: boolean;
}

/**
 * PID 1 of a busybox container. A shell script rather than busybox init: busybox init's clean shutdown
 * sleeps about 2 s, while this one traps TERM/INT/HUP, stops its services and exits within ~150 ms (the
 * kernel then SIGKILLs whatever is left in the pid namespace). It mounts nothing: the launcher mounts
 * /proc, /sys and /dev and sets the hostname in the container's UTS namespace.
 */
export const BUSYBOX_INIT_SCRIPT = `#!/bin/sh
# Berth busybox init (PID 1). The launcher has mounted /proc, /sys and /dev and set the hostname.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
services=""

start() {
  "$@" &
  services="$services $!"
}

shutdown() {
  trap '' TERM INT HUP
  if [ -n "$services" ]; then
    kill -TERM $services 2>/dev/null
    # A service that ignores TERM gets 150 ms, then KILL; once PID 1 exits the kernel SIGKILLs the rest
    # of the pid namespace, so a stop never waits longer than that.
    ( sleep 0.15; kill -KILL $services 2>/dev/null ) &
    wait $services
  fi
  exit 0
}
trap shutdown TERM INT HUP

ip link set lo up 2>/dev/null
start httpd -f -p 80 -h /var/www
start crond -f -c /var/spool/cron/crontabs

# The shell waits with waitpid(-1), so every wait also reaps the orphans the kernel hands to PID 1.
while :; do
  sleep 2147483647 &
  wait $!
done
`;

const DIRECTORIES: Array<[string, number]> = [
  ['bin', 0o755],
  ['sbin', 0o755],
  ['usr', 0o755],
  ['usr/bin', 0o755],
  ['usr/sbin', 0o755],
  ['etc', 0o755],
  ['dev', 0o755],
  ['proc', 0o555],
  ['sys', 0o555],
  ['run', 0o755],
  ['tmp', 0o1777],
  ['root', 0o700],
  ['home', 0o755],
  ['mnt', 0o755],
  ['opt', 0o755],
  ['srv', 0o755],
  ['var', 0o755],
  ['var/log', 0o755],
  ['var/tmp', 0o1777],
  ['var/www', 0o755],
  ['var/spool', 0o755],
  ['var/spool/cron', 0o755],
  ['var/spool/cron/crontabs', 0o700],
];

/** Applets that must not become symlinks: init is our script, linuxrc is an initrd relic. */
const SKIPPED_APPLETS = new Set(['bin/busybox', 'sbin/init', 'linuxrc']);

function etcFiles(name: string, hostname: string): Array<[string, string, number]> {
  return [
    ['etc/hostname', `${hostname}\n`, 0o644],
    [
      'etc/hosts',
      `127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\t${hostname}\n`,
      0o644,
    ],
    [
      'etc/passwd',
      'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n',
      0o644,
    ],
    ['etc/group', 'root:x:0:\nnogroup:x:65534:\n', 0o644],
    ['etc/shadow', 'root:*:19000:0:99999:7:::\nnobody:*:19000:0:99999:7:::\n', 0o600],
    // Loopback only: Berth never routes a container to the outside by itself (DESIGN.md §9).
    ['etc/resolv.conf', 'nameserver 127.0.0.1\n', 0o644],
    ['etc/shells', '/bin/sh\n/bin/ash\n', 0o644],
    ['etc/profile', 'export PATH=/usr/sbin:/usr/bin:/sbin:/bin\nexport PS1="\\h:\\w\\$ "\n', 0o644],
    [
      'etc/os-release',
      `NAME="Berth busybox"\nID=berth-busybox\nPRETTY_NAME="Berth busybox (${name})"\n`,
      0o644,
    ],
    [
      'var/www/index.html',
      `<!doctype html><title>${name}</title><p>Berth busybox template ${name}</p>\n`,
      0o644,
    ],
    ['var/spool/cron/crontabs/root', '', 0o600],
    [TEMPLATE_MARKER, `name=${name}\nbuilder=${BUSYBOX_BUILDER}\n`, 0o644],
    ['sbin/init', BUSYBOX_INIT_SCRIPT, 0o755],
  ];
}

/** Reads `name=` from a template's marker file, or null when there is none. */
export async function readTemplateMarker(rootfs: string): Promise<{ name: string; builder: string } | null> {
  try {
    const text = await readFile(path.join(rootfs, TEMPLATE_MARKER), 'utf8');
    const fields = Object.fromEntries(
      text
        .split('\n')
        .filter((l) => l.includes('='))
        .map((l) => [l.slice(0, l.indexOf('=')), l.slice(l.indexOf('=') + 1)]),
    );
    return { name: fields.name ?? '', builder: fields.builder ?? '' };
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT' || (e as NodeJS.ErrnoException).code === 'ENOTDIR')
      return null;
    throw e;
  }
}

/**
 * Builds a minimal, offline system template from a static busybox into `targetDir` (which must not exist
 * yet, or already hold the same template). The tree is built in a sibling staging directory and renamed
 * into place, so `targetDir` either holds a complete template or does not exist.
 *
 * Idempotent: when `targetDir` already holds a template with the same name built by this builder, it is
 * left untouched and returned with `created: false`.
 * @throws RuntimeError INVALID_NAME (bad name or hostname), DEPENDENCY_MISSING (no busybox),
 *   TEMPLATE_EXISTS (`targetDir` exists with something else in it).
 */
export async function buildBusyboxTemplate(
  targetDir: string,
  options: BusyboxTemplateOptions,
): Promise<BuiltTemplate> {
  const { name } = options;
  assertTemplateName(name);
  const hostname = options.hostname ?? name.replace(/[._]/g, '-');
  assertContainerName(hostname);
  const busybox = options.busyboxPath ?? '/bin/busybox';
  if (!path.isAbsolute(targetDir)) {
    throw new RuntimeError('INVALID_PATH', `template directory must be absolute: ${targetDir}`, {
      targetDir,
    });
  }

  const existing = await existingTemplate(targetDir, name);
  if (existing) return existing;

  try {
    await access(busybox, constants.X_OK);
  } catch {
    throw new RuntimeError(
      'DEPENDENCY_MISSING',
      `${busybox} is missing: install Debian's busybox-static (scripts/services.sh ensure)`,
      { program: busybox },
    );
  }
  const { stdout } = await run(busybox, ['--list-full'], { timeoutMs: 10_000 });
  const applets = stdout
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => l !== '' && !SKIPPED_APPLETS.has(l) && !l.startsWith('/') && !l.split('/').includes('..'));

  await mkdir(path.dirname(targetDir), { recursive: true });
  const staging = stagingPathFor(targetDir, 'busybox');
  try {
    await mkdir(staging, { mode: 0o755 });
    await chmod(staging, 0o755);
    for (const [dir, mode] of DIRECTORIES) {
      await mkdir(path.join(staging, dir), { mode });
      await chmod(path.join(staging, dir), mode); // mkdir's mode is filtered by the umask
    }
    await copyFile(busybox, path.join(staging, 'bin/busybox'));
    await chmod(path.join(staging, 'bin/busybox'), 0o755);
    for (const applet of applets) {
      const link = path.join(staging, applet);
      await mkdir(path.dirname(link), { recursive: true });
      // Absolute target: it resolves inside the container (and under chroot), wherever the tree lives.
      await symlink('/bin/busybox', link).catch((e: NodeJS.ErrnoException) => {
        if (e.code !== 'EEXIST') throw e;
      });
    }
    for (const [file, content, mode] of etcFiles(name, hostname)) {
      await writeFile(path.join(staging, file), content, { mode });
      await chmod(path.join(staging, file), mode);
    }
    const usage = await treeUsage(staging);
    try {
      await rename(staging, targetDir);
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if (code !== 'ENOTEMPTY' && code !== 'EEXIST') throw e;
      // Someone else finished first: theirs wins if it is the same template.
      await removeTree(staging);
      const raced = await existingTemplate(targetDir, name);
      if (raced) return raced;
      throw new RuntimeError('TEMPLATE_EXISTS', `${targetDir} already exists and is not template ${name}`, {
        targetDir,
        name,
      });
    }
    return { name, builder: BUSYBOX_BUILDER, ...usage, created: true };
  } catch (e) {
    await removeTree(staging);
    throw e;
  }
}

async function existingTemplate(targetDir: string, name: string): Promise<BuiltTemplate | null> {
  try {
    await stat(targetDir);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw e;
  }
  const marker = await readTemplateMarker(targetDir);
  if (marker?.name === name && marker.builder === BUSYBOX_BUILDER) {
    return { name, builder: BUSYBOX_BUILDER, ...(await treeUsage(targetDir)), created: false };
  }
  throw new RuntimeError(
    'TEMPLATE_EXISTS',
    `${targetDir} already exists and is not busybox template ${name}`,
    {
      targetDir,
      name,
      found: marker,
    },
  );
}
