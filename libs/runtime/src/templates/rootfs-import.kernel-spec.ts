import {
  lstat,
  mkdir,
  mkdtemp,
  readdir,
  readFile,
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
import { importRootfsTarball, inspectRootfsArchive, verifyExtracted } from './rootfs-import';
import { shiftOwnership } from '../namespaces/ownership-shift';

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

      /** A ustar header (what GNU tar writes), for members `tar --create` would not make. */
      const ustar = (
        name: string,
        type: string,
        size = 0,
        extra: { dev?: [number, number] } = {},
      ): Buffer => {
        const h = Buffer.alloc(512);
        const oct = (v: number, len: number) => v.toString(8).padStart(len - 1, '0') + '\0';
        h.write(name, 0, 100, 'utf8');
        h.write(oct(0o755, 8), 100, 'latin1');
        h.write(oct(0, 8), 108, 'latin1');
        h.write(oct(0, 8), 116, 'latin1');
        if (size < 8 ** 11) h.write(oct(size, 12), 124, 'latin1');
        else {
          // GNU base-256 for what 11 octal digits cannot say.
          h[124] = 0x80;
          h.writeBigUInt64BE(BigInt(size), 128);
        }
        h.write(oct(0, 12), 136, 'latin1');
        h.write(type, 156, 'latin1');
        h.write('ustar\x0000', 257, 'latin1');
        h.write(oct(extra.dev?.[0] ?? 0, 8), 329, 'latin1');
        h.write(oct(extra.dev?.[1] ?? 0, 8), 337, 'latin1');
        h.fill(0x20, 148, 156);
        let sum = 0;
        for (const b of h) sum += b;
        h.write(`${sum.toString(8).padStart(6, '0')}\0 `, 148, 'latin1');
        return h;
      };
      const padded = (b: Buffer) => Buffer.concat([b, Buffer.alloc((512 - (b.length % 512)) % 512)]);
      const init = Buffer.from('#!/bin/sh\n');
      /** A tar stream: the root, an executable /sbin/init, then `members`, then the end blocks. */
      const withInit = (...members: Buffer[]) =>
        Buffer.concat([
          ustar('./', '5'),
          ustar('sbin/', '5'),
          ustar('sbin/init', '0', init.length),
          padded(init),
          ...members,
          Buffer.alloc(1024),
        ]);

      it("refuses a regular file named like a directory ('foo/'), whose data GNU tar would extract as members", async () => {
        // Inside foo/'s data: a block device for a host disk, which GNU tar would create.
        const hidden = ustar('dev/evil', '4', 0, { dev: [7, 0] });
        const archive = path.join(work, 'slash.tar');
        await writeFile(archive, withInit(ustar('foo/', '0', hidden.length), hidden));
        const err = await importRootfsTarball(archive, path.join(out, 'slash'), { name: 'slash' }).catch(
          (e: unknown) => e,
        );
        expect(err).toMatchObject({ code: 'UNSAFE_ARCHIVE', message: expect.stringMatching(/ends in '\/'/) });
        await outIsEmpty();
      });

      it('refuses an archive whose files hold more than the filesystem has free, before extracting any', async () => {
        // A header that says 1 TiB follows (a decompression bomb says the same, only smaller on disk).
        const archive = path.join(work, 'huge.tar');
        await writeFile(archive, withInit(ustar('big', '0', 2 ** 40)));
        const err = await importRootfsTarball(archive, path.join(out, 'huge'), { name: 'huge' }).catch(
          (e: unknown) => e,
        );
        expect(err).toMatchObject({ code: 'NO_SPACE' });
        await outIsEmpty();
        // The bound, given: counted over the regular files' sizes.
        const small = await tarOf('small.tar', ['-C', src, '.']);
        const { dataBytes } = await inspectRootfsArchive(small);
        expect(dataBytes).toBeGreaterThan(0);
        await expect(inspectRootfsArchive(small, { maxDataBytes: dataBytes - 1 })).rejects.toMatchObject({
          code: 'NO_SPACE',
        });
        await expect(inspectRootfsArchive(small, { maxDataBytes: dataBytes })).resolves.toMatchObject({
          dataBytes,
        });
      });

      it("refuses members named like Berth's id-shift marker", async () => {
        for (const name of ['.berth-idshift', './.berth-idshift.tmp']) {
          const archive = path.join(work, 'marker.tar');
          await writeFile(archive, withInit(ustar(name, '2')));
          await expect(inspectRootfsArchive(archive)).rejects.toMatchObject({
            code: 'UNSAFE_ARCHIVE',
            message: expect.stringMatching(/reserves/),
          });
        }
      });

      it('checks the extracted tree against the inspected members: anything unchecked is refused', async () => {
        const tree = await mkdtemp(path.join(work, 'tree-'));
        await mkdir(path.join(tree, 'etc'));
        await writeFile(path.join(tree, 'etc/hosts'), 'x');
        const members = new Map([
          ['etc', { type: 'directory' as const, mode: 0o755, linkname: '' }],
          ['etc/hosts', { type: 'file' as const, mode: 0o644, linkname: '' }],
        ]);
        await expect(verifyExtracted(tree, members)).resolves.toBeUndefined();
        // A device nobody checked (what a second reading of the archive could have made).
        await run('mknod', [path.join(tree, 'etc/disk'), 'b', '7', '0']);
        await expect(verifyExtracted(tree, members)).rejects.toMatchObject({
          code: 'UNSAFE_ARCHIVE',
          message: expect.stringMatching(/etc\/disk.*no such member/),
        });
        await rm(path.join(tree, 'etc/disk'));
        // A member of another type than the one checked.
        await rm(path.join(tree, 'etc/hosts'));
        await symlink('/etc/shadow', path.join(tree, 'etc/hosts'));
        await expect(verifyExtracted(tree, members)).rejects.toMatchObject({ code: 'UNSAFE_ARCHIVE' });
      });

      it('never writes the id-shift marker through a link the tree holds, nor reads one that is no small file', async () => {
        const tree = await mkdtemp(path.join(work, 'shift-'));
        const victim = path.join(work, 'victim');
        await writeFile(victim, 'precious\n');
        await symlink(victim, path.join(tree, '.berth-idshift.tmp'));
        await run('mkfifo', [path.join(work, 'shift-fifo')]);
        await symlink(path.join(work, 'shift-fifo'), path.join(tree, '.berth-idshift'));
        const shifted = await shiftOwnership(tree, 100000);
        expect(shifted).toMatchObject({ from: 0, skipped: false });
        expect(await readFile(victim, 'utf8')).toBe('precious\n');
        expect((await lstat(path.join(tree, '.berth-idshift'))).isFile()).toBe(true);
        expect(await shiftOwnership(tree, 100000)).toMatchObject({ skipped: true });
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
