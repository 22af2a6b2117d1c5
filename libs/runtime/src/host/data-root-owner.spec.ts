import { spawn } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, symlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { claimDataRoot, lockDataRoot, releaseDataRoot } from './data-root-owner';

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
