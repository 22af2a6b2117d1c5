import { spawn, ChildProcess } from 'node:child_process';
import { lstat, mkdir, mkdtemp, readFile, readlink, readdir, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { describeKernel } from '@test/support/kernel';
import { run } from '../common/exec';
import { BUSYBOX_BUILDER, buildBusyboxTemplate, readTemplateMarker } from './busybox.builder';

// Under a full parallel kernel run these spawn many processes on 2 cores: allow more than 5 s.
jest.setTimeout(30_000);

describeKernel(
  'buildBusyboxTemplate',
  { root: true, programs: ['chroot', 'unshare', 'nsenter'], paths: ['/bin/busybox'] },
  () => {
    let work: string;
    let rootfs: string;
    const children: ChildProcess[] = [];

    beforeAll(async () => {
      work = await mkdtemp(path.join(tmpdir(), `berth-bb-${process.pid}-`));
      rootfs = path.join(work, 'templates', 'busybox');
    });
    afterAll(async () => {
      for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
      await rm(work, { recursive: true, force: true });
    });

    it('builds a complete FHS tree with busybox applets and config files', async () => {
      const built = await buildBusyboxTemplate(rootfs, { name: 'busybox', hostname: 'box1' });
      expect(built).toMatchObject({ name: 'busybox', builder: BUSYBOX_BUILDER, created: true });
      expect(built.files).toBeGreaterThan(250);
      expect(built.sizeBytes).toBeGreaterThan((await stat('/bin/busybox')).size - 1);

      expect((await stat(path.join(rootfs, 'bin/busybox'))).mode & 0o111).toBeTruthy();
      expect(await readlink(path.join(rootfs, 'bin/sh'))).toBe('/bin/busybox');
      expect(await readlink(path.join(rootfs, 'usr/sbin/httpd'))).toBe('/bin/busybox');
      const init = await stat(path.join(rootfs, 'sbin/init'));
      expect(init.isFile() && (init.mode & 0o111) !== 0).toBe(true);
      expect(await readFile(path.join(rootfs, 'sbin/init'), 'utf8')).toMatch(
        /^#!\/bin\/sh\n[\s\S]*trap shutdown TERM/,
      );
      expect((await lstat(path.join(rootfs, 'tmp'))).mode & 0o7777).toBe(0o1777);
      expect((await lstat(path.join(rootfs, 'root'))).mode & 0o7777).toBe(0o700);
      expect(await readFile(path.join(rootfs, 'etc/hostname'), 'utf8')).toBe('box1\n');
      expect(await readFile(path.join(rootfs, 'etc/hosts'), 'utf8')).toMatch(/127\.0\.1\.1\tbox1/);
      expect(await readFile(path.join(rootfs, 'etc/passwd'), 'utf8')).toMatch(/^root:x:0:0:/);
      expect(await readFile(path.join(rootfs, 'etc/group'), 'utf8')).toMatch(/^root:x:0:/);
      expect(await readFile(path.join(rootfs, 'etc/resolv.conf'), 'utf8')).toMatch(/127\.0\.0\.1/);
      expect(await readFile(path.join(rootfs, 'var/www/index.html'), 'utf8')).toMatch(/busybox/);
      expect(await readTemplateMarker(rootfs)).toEqual({ name: 'busybox', builder: BUSYBOX_BUILDER });
      for (const d of ['proc', 'sys', 'dev', 'run', 'etc', 'usr/bin', 'var/log']) {
        expect((await lstat(path.join(rootfs, d))).isDirectory()).toBe(true);
      }
      // Built by rename: no staging directory is left beside the template.
      expect(await readdir(path.dirname(rootfs))).toEqual(['busybox']);
    });

    it('runs busybox and a shell under chroot', async () => {
      await run('chroot', [rootfs, '/bin/busybox', 'true']);
      const r = await run('chroot', [rootfs, '/bin/sh', '-c', 'echo "$(cat /etc/hostname) $(id -u)"']);
      expect(r.stdout).toBe('box1 0\n');
    });

    it('is idempotent for the same template and refuses to overwrite anything else', async () => {
      const before = (await stat(path.join(rootfs, 'etc/hostname'))).mtimeMs;
      const again = await buildBusyboxTemplate(rootfs, { name: 'busybox', hostname: 'other' });
      expect(again.created).toBe(false);
      expect((await stat(path.join(rootfs, 'etc/hostname'))).mtimeMs).toBe(before);
      await expect(buildBusyboxTemplate(rootfs, { name: 'other-name' })).rejects.toMatchObject({
        code: 'TEMPLATE_EXISTS',
      });
      const foreign = path.join(work, 'foreign');
      await mkdir(foreign);
      await writeFile(path.join(foreign, 'keep'), 'x');
      await expect(buildBusyboxTemplate(foreign, { name: 'busybox' })).rejects.toMatchObject({
        code: 'TEMPLATE_EXISTS',
      });
      expect(await readdir(foreign)).toEqual(['keep']);
    });

    it('rejects bad names before touching the disk', async () => {
      const target = path.join(work, 'bad');
      await expect(buildBusyboxTemplate(target, { name: '../x' })).rejects.toMatchObject({
        code: 'INVALID_NAME',
      });
      await expect(buildBusyboxTemplate(target, { name: 'ok', hostname: 'Bad_Host' })).rejects.toMatchObject({
        code: 'INVALID_NAME',
      });
      await expect(stat(target)).rejects.toMatchObject({ code: 'ENOENT' });
    });

    it('concurrent builds of one template produce one complete tree', async () => {
      const target = path.join(work, 'race', 'bb');
      const results = await Promise.all([1, 2, 3].map(() => buildBusyboxTemplate(target, { name: 'bb' })));
      expect(results.filter((r) => r.created).length).toBeGreaterThanOrEqual(1);
      expect(await readdir(path.dirname(target))).toEqual(['bb']);
      await run('chroot', [target, '/bin/busybox', 'true']);
    });

    it('its init serves HTTP as PID 1, reaps orphans and stops within 200 ms of SIGTERM', async () => {
      const launcher = spawn(
        'unshare',
        [
          '--pid',
          '--fork',
          '--mount',
          '--uts',
          '--ipc',
          '--net',
          '--mount-proc',
          `--root=${rootfs}`,
          '/sbin/init',
        ],
        { stdio: 'ignore' },
      );
      children.push(launcher);
      const initPid = await waitFor(async () => {
        const kids = await readFile(`/proc/${launcher.pid}/task/${launcher.pid}/children`, 'utf8').catch(
          () => '',
        );
        return Number(kids.trim().split(/\s+/)[0]) || undefined;
      });
      const page = await waitFor(async () => {
        const r = await run(
          'nsenter',
          ['-t', String(initPid), '-n', '/bin/busybox', 'wget', '-qO-', 'http://127.0.0.1/'],
          {
            okCodes: [0, 1],
          },
        );
        return r.code === 0 ? r.stdout : undefined;
      });
      expect(page).toMatch(/Berth busybox template busybox/);

      // An orphan (double fork) is reparented to our init and must not stay a zombie.
      const r = await run('nsenter', [
        '-t',
        String(initPid),
        '-a',
        '/bin/sh',
        '-c',
        '(sleep 0.1 &); echo $$',
      ]);
      expect(r.code).toBe(0);
      await new Promise((res) => setTimeout(res, 600));
      const kids = (await readFile(`/proc/${initPid}/task/${initPid}/children`, 'utf8')).trim().split(/\s+/);
      for (const k of kids) {
        const status = await readFile(`/proc/${k}/status`, 'utf8').catch(() => 'State:\tX');
        expect(status).not.toMatch(/^State:\s+Z/m);
      }

      const exited = new Promise((res) => launcher.once('exit', res));
      const t0 = performance.now();
      process.kill(initPid, 'SIGTERM');
      await exited;
      expect(performance.now() - t0).toBeLessThan(200);
    });
  },
);

async function waitFor<T>(probe: () => Promise<T | undefined>, timeoutMs = 5000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await probe();
    if (v !== undefined) return v;
    if (Date.now() > deadline) throw new Error('timed out waiting');
    await new Promise((res) => setTimeout(res, 20));
  }
}
