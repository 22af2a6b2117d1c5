import {
  lstat,
  mkdir,
  mkdtemp,
  readdir,
  readlink,
  rm,
  stat,
  symlink,
  writeFile,
  chmod,
  chown,
  link,
} from 'node:fs/promises';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { describeKernel } from '@test/support/kernel';
import { run } from '../common/exec';
import { buildBusyboxTemplate } from './busybox.builder';
import { importRootfsTarball, inspectRootfsArchive } from './rootfs-import';

// Under a full parallel kernel run these spawn many processes on 2 cores: allow more than 5 s.
jest.setTimeout(30_000);

describeKernel(
  'importRootfsTarball',
  {
    root: true,
    programs: ['tar', 'gzip', 'zstd', 'xz', 'mknod', 'mkfifo', 'chroot'],
    paths: ['/bin/busybox'],
  },
  () => {
    let work: string;
    let src: string; // a good rootfs to archive
    let out: string; // parent of import targets: must only ever hold finished imports

    beforeAll(async () => {
      work = await mkdtemp(path.join(tmpdir(), `berth-import-${process.pid}-`));
      src = path.join(work, 'src');
      out = path.join(work, 'out');
      await mkdir(out);
      await buildBusyboxTemplate(src, { name: 'src' });
      // Things a real rootfs carries: an allowed device, a fifo, a setuid file, owners, links.
      await run('mknod', ['-m', '666', path.join(src, 'dev/null'), 'c', '1', '3']);
      await run('mkfifo', [path.join(src, 'run/initctl')]);
      await writeFile(path.join(src, 'usr/bin/suid'), '#!/bin/sh\n');
      await chmod(path.join(src, 'usr/bin/suid'), 0o4755);
      await mkdir(path.join(src, 'home/user'));
      await chown(path.join(src, 'home/user'), 1234, 1235);
      await symlink('/bin/busybox', path.join(src, 'usr/bin/abs-link'));
      await symlink('../../bin/busybox', path.join(src, 'usr/bin/rel-link'));
      await link(path.join(src, 'etc/passwd'), path.join(src, 'etc/passwd.hard'));
    });
    afterAll(async () => {
      await rm(work, { recursive: true, force: true });
    });

    const tarOf = async (file: string, args: string[]): Promise<string> => {
      const archive = path.join(work, file);
      await run('tar', ['--create', '--file', archive, ...args]);
      return archive;
    };
    const outIsEmpty = async (): Promise<void> => {
      const left = await readdir(out);
      expect(left.filter((n) => !n.startsWith('ok-'))).toEqual([]);
    };

    it.each([
      ['tar', []],
      ['tar.gz', ['--gzip']],
      ['tar.zst', ['--zstd']],
      ['tar.xz', ['--xz']],
    ])('round-trips a rootfs through a .%s archive', async (ext, flags) => {
      const archive = await tarOf(`good.${ext}`, [...flags, '--numeric-owner', '-C', src, '.']);
      const target = path.join(out, `ok-${ext.replace('.', '-')}`);
      const imported = await importRootfsTarball(archive, target, { name: 'imported' });
      expect(imported).toMatchObject({
        name: 'imported',
        compression: { tar: 'none', 'tar.gz': 'gzip', 'tar.zst': 'zstd', 'tar.xz': 'xz' }[ext],
      });
      expect(imported.entries).toBeGreaterThan(250);
      expect(imported.files).toBe(imported.entries - 1); // every member but './'

      const dev = await lstat(path.join(target, 'dev/null'));
      expect(dev.isCharacterDevice()).toBe(true);
      expect(dev.rdev).toBe((1 << 8) | 3);
      expect((await lstat(path.join(target, 'run/initctl'))).isFIFO()).toBe(true);
      expect((await stat(path.join(target, 'usr/bin/suid'))).mode & 0o7777).toBe(0o4755);
      expect((await stat(path.join(target, 'tmp'))).mode & 0o7777).toBe(0o1777);
      const home = await stat(path.join(target, 'home/user'));
      expect([home.uid, home.gid]).toEqual([1234, 1235]);
      expect(await readlink(path.join(target, 'usr/bin/abs-link'))).toBe('/bin/busybox');
      expect(await readlink(path.join(target, 'usr/bin/rel-link'))).toBe('../../bin/busybox');
      const [a, b] = await Promise.all([
        stat(path.join(target, 'etc/passwd')),
        stat(path.join(target, 'etc/passwd.hard')),
      ]);
      expect(a.ino).toBe(b.ino);
      await run('chroot', [target, '/bin/busybox', 'true']);
      await outIsEmpty();
    });

    it('refuses to import over an existing directory', async () => {
      const archive = await tarOf('again.tar', ['-C', src, '.']);
      const target = path.join(out, 'ok-existing');
      await mkdir(target);
      await expect(importRootfsTarball(archive, target, { name: 'x' })).rejects.toMatchObject({
        code: 'TEMPLATE_EXISTS',
      });
      expect(await readdir(target)).toEqual([]);
    });

    it('accepts an init reached through an absolute symlink and refuses a rootfs without init', async () => {
      const root = path.join(work, 'linked-init');
      await mkdir(path.join(root, 'sbin'), { recursive: true });
      await mkdir(path.join(root, 'lib/systemd'), { recursive: true });
      await writeFile(path.join(root, 'lib/systemd/systemd'), '#!/bin/sh\n', { mode: 0o755 });
      await symlink('/lib/systemd/systemd', path.join(root, 'sbin/init'));
      const good = await tarOf('linked-init.tar', ['-C', root, '.']);
      expect((await inspectRootfsArchive(good)).compression).toBe('none');
      await importRootfsTarball(good, path.join(out, 'ok-linked'), { name: 'linked' });

      await chmod(path.join(root, 'lib/systemd/systemd'), 0o644);
      const notExec = await tarOf('noexec-init.tar', ['-C', root, '.']);
      await expect(
        importRootfsTarball(notExec, path.join(out, 'noexec'), { name: 'x' }),
      ).rejects.toMatchObject({
        code: 'INVALID_TEMPLATE',
      });
      const noInit = await tarOf('no-init.tar', ['-C', root, 'lib']);
      await expect(
        importRootfsTarball(noInit, path.join(out, 'noinit'), { name: 'x' }),
      ).rejects.toMatchObject({
        code: 'INVALID_TEMPLATE',
      });
      await outIsEmpty();
    });

    describe('malicious archives are refused with nothing extracted', () => {
      // Each builder returns tar arguments; the good busybox tree comes first so that a partial
      // extraction would be visible.
      const cases: Array<[string, RegExp, (d: string) => Promise<string[]>]> = [
        [
          'absolute member path',
          /absolute entry path/,
          async (d) => {
            await writeFile(path.join(d, 'evil'), 'x');
            return ['-P', path.join(d, 'evil')];
          },
        ],
        [
          'leading .. component',
          /'\.\.' component/,
          async (d) => {
            await writeFile(path.join(d, 'evil'), 'x');
            return ['-P', '-C', d, '--transform', 's,^evil$,../evil,', 'evil'];
          },
        ],
        [
          '.. in the middle of a path',
          /'\.\.' component/,
          async (d) => {
            await writeFile(path.join(d, 'evil'), 'x');
            return ['-P', '-C', d, '--transform', 's,^evil$,usr/../../evil,', 'evil'];
          },
        ],
        [
          'relative symlink escaping the root',
          /escapes the root/,
          async (d) => {
            await mkdir(path.join(d, 'usr'));
            await symlink('../../../../etc', path.join(d, 'usr/esc'));
            return ['-C', d, 'usr/esc'];
          },
        ],
        [
          'member written through an earlier symlink',
          /goes through symlink lnk/,
          async (d) => {
            await mkdir(path.join(d, 'a'));
            await mkdir(path.join(d, 'b/lnk'), { recursive: true });
            await symlink('/etc', path.join(d, 'a/lnk'));
            await writeFile(path.join(d, 'b/lnk/passwd'), 'pwned');
            return ['-C', path.join(d, 'a'), 'lnk', '-C', path.join(d, 'b'), 'lnk/passwd'];
          },
        ],
        [
          'hardlink to a path outside the archive (..)',
          /outside the archive/,
          async (d) => {
            await writeFile(path.join(d, 'f'), 'x');
            await link(path.join(d, 'f'), path.join(d, 'g'));
            return ['-P', '-C', d, '--transform', 's,^f$,../../etc/shadow,RSh', 'f', 'g'];
          },
        ],
        [
          'hardlink to an absolute host path',
          /outside the archive/,
          async (d) => {
            await writeFile(path.join(d, 'f'), 'x');
            await link(path.join(d, 'f'), path.join(d, 'g'));
            return ['-P', '-C', d, '--transform', 's,^f$,/etc/shadow,RSh', 'f', 'g'];
          },
        ],
        [
          'hardlink to a member the archive does not hold',
          /not an earlier member/,
          async (d) => {
            await writeFile(path.join(d, 'f'), 'x');
            await link(path.join(d, 'f'), path.join(d, 'g'));
            return ['-C', d, '--transform', 's,^f$,etc/no-such-file,RSh', 'f', 'g'];
          },
        ],
        [
          'block device',
          /block device not allowed/,
          async (d) => {
            await mkdir(path.join(d, 'dev'));
            await run('mknod', [path.join(d, 'dev/sda'), 'b', '8', '0']);
            return ['-C', d, 'dev/sda'];
          },
        ],
        [
          'char device not on the allow-list (/dev/mem)',
          /char device not allowed/,
          async (d) => {
            await mkdir(path.join(d, 'dev'));
            await run('mknod', [path.join(d, 'dev/mem'), 'c', '1', '1']);
            return ['-C', d, 'dev/mem'];
          },
        ],
        [
          'allowed name with other device numbers',
          /device 1:1 is not dev\/null/,
          async (d) => {
            await mkdir(path.join(d, 'dev'));
            await run('mknod', [path.join(d, 'dev/null'), 'c', '1', '1']);
            return ['-C', d, 'dev/null'];
          },
        ],
      ];

      it.each(cases)('%s', async (label, reason, build) => {
        const d = await mkdtemp(path.join(work, 'evil-'));
        const args = await build(d);
        const slug = label.replace(/[^a-z0-9]+/gi, '-');
        for (const [ext, flags] of [
          ['tar', []],
          ['tar.zst', ['--zstd']],
        ] as const) {
          const archive = path.join(work, `evil-${slug}.${ext}`);
          // Good content first, the bad member last: a streaming extractor would already have written a lot.
          await run('tar', ['--create', ...flags, '--file', archive, '-C', src, '.', ...args]);
          const target = path.join(out, `evil-${slug}`);
          const err = await importRootfsTarball(archive, target, { name: 'evil' }).catch((e: unknown) => e);
          expect(err).toMatchObject({ code: 'UNSAFE_ARCHIVE', message: expect.stringMatching(reason) });
          expect((err as { context: { entry?: string } }).context.entry).toEqual(expect.any(String));
          await expect(stat(target)).rejects.toMatchObject({ code: 'ENOENT' });
          await outIsEmpty();
        }
      });

      it('refuses garbage, truncated and corrupt-compressed files', async () => {
        const garbage = path.join(work, 'garbage.tar');
        await writeFile(garbage, Buffer.alloc(4096, 0x41));
        await expect(importRootfsTarball(garbage, path.join(out, 'g'), { name: 'g' })).rejects.toMatchObject({
          code: 'UNSAFE_ARCHIVE',
        });
        const full = await tarOf('full.tar.gz', ['--gzip', '-C', src, '.']);
        const bytes = (await import('node:fs/promises')).readFile;
        const data = await bytes(full);
        const cut = path.join(work, 'cut.tar.gz');
        await writeFile(cut, data.subarray(0, Math.floor(data.length / 2)));
        await expect(importRootfsTarball(cut, path.join(out, 'cut'), { name: 'c' })).rejects.toMatchObject({
          code: 'UNSAFE_ARCHIVE',
        });
        await expect(
          importRootfsTarball(path.join(work, 'missing.tar'), path.join(out, 'm'), { name: 'm' }),
        ).rejects.toMatchObject({ code: 'NOT_FOUND' });
        // Not a regular file: an endless device would be read for ever, a directory or a FIFO is no archive.
        for (const p of ['/dev/zero', '/dev/urandom', work])
          await expect(importRootfsTarball(p, path.join(out, 'dev'), { name: 'dev' })).rejects.toMatchObject({
            code: 'INVALID_PATH',
          });
        await outIsEmpty();
      });
    });
  },
);
