import { spawn } from 'node:child_process';
import { cpSync, mkdirSync, mkdtempSync, rmSync, statSync, symlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { claimDataRoot, LOCK_ID_FILE, lockDataRoot, releaseDataRoot } from './data-root-owner';

const ROOT = resolve(__dirname, '../../../..');

describe('lockDataRoot: one process per data root', () => {
  let dir: string;
  let dataRoot: string;
  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'berth-lock-'));
    dataRoot = join(dir, 'root');
    mkdirSync(dataRoot);
  });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  it('refuses a second holder, also through a symlink, naming the recorded worker; free again once released', async () => {
    const lock = await lockDataRoot(dataRoot);
    await expect(lockDataRoot(dataRoot)).rejects.toMatchObject({
      code: 'WRONG_STATE',
      message: `data root ${dataRoot} is in use by another process`,
    });
    await claimDataRoot(dataRoot);
    const link = join(dir, 'link');
    symlinkSync(dataRoot, link);
    await expect(lockDataRoot(link)).rejects.toMatchObject({
      code: 'WRONG_STATE',
      message: `data root ${dataRoot} is in use by another process (the worker, pid ${process.pid})`,
      context: { dataRoot, pid: process.pid },
    });
    // Another data root is another lock.
    const other = join(dir, 'other');
    mkdirSync(other);
    await (await lockDataRoot(other)).release();

    await releaseDataRoot(dataRoot);
    await lock.release();
    await lock.release(); // twice: nothing more happens
    const again = await lockDataRoot(link);
    expect(again.dataRoot).toBe(dataRoot);
    await again.release();
  });

  it('one lock per root whatever the path: made on first use, reached through a symlinked parent; its id is root-only', async () => {
    mkdirSync(join(dir, 'real'));
    symlinkSync(join(dir, 'real'), join(dir, 'alias'));
    // Neither exists yet: the first lock makes the root.
    const lock = await lockDataRoot(join(dir, 'alias', 'fresh'));
    expect(lock.dataRoot).toBe(join(dir, 'real', 'fresh'));
    expect(statSync(join(dir, 'real', 'fresh')).mode & 0o777).toBe(0o711);
    await expect(lockDataRoot(join(dir, 'real', 'fresh'))).rejects.toMatchObject({ code: 'WRONG_STATE' });
    // The name comes from an id only root can read (no other user can take the name first).
    expect(statSync(join(dir, 'real', 'fresh', LOCK_ID_FILE)).mode & 0o777).toBe(0o600);
    await lock.release();
    // A copy of a root (its id with it) is another root.
    const copy = join(dir, 'copy');
    mkdirSync(copy);
    cpSync(join(dir, 'real', 'fresh', LOCK_ID_FILE), join(copy, LOCK_ID_FILE));
    const a = await lockDataRoot(join(dir, 'real', 'fresh'));
    const b = await lockDataRoot(copy);
    await a.release();
    await b.release();
  });

  it('a holder killed with SIGKILL leaves no lock behind', async () => {
    const child = spawn(
      process.execPath,
      [
        '-r',
        'ts-node/register/transpile-only',
        '-e',
        `require(${JSON.stringify(join(__dirname, 'data-root-owner.ts'))}).lockDataRoot(process.argv[1])
           .then(() => { console.log('locked'); setInterval(() => undefined, 1000); })`,
        dataRoot,
      ],
      { cwd: ROOT, stdio: ['ignore', 'pipe', 'inherit'] },
    );
    const exited = new Promise((r) => child.once('exit', r));
    try {
      await new Promise<void>((ok, fail) => {
        child.stdout!.on('data', (b: Buffer) => b.toString().includes('locked') && ok());
        child.once('exit', () => fail(new Error('the child exited before it held the lock')));
      });
      await expect(lockDataRoot(dataRoot)).rejects.toMatchObject({ code: 'WRONG_STATE' });
    } finally {
      child.kill('SIGKILL');
      await exited;
    }
    await (await lockDataRoot(dataRoot)).release();
  }, 30_000);
});
