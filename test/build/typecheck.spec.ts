import { execFile } from 'node:child_process';
import { join } from 'node:path';

/**
 * The whole project type-checks (apps, libs, bench and every test). jest runs each file through ts-jest
 * with `isolatedModules` (transpiled alone, its types never checked), so without this a type error in a
 * test or in a path no test loads would reach `main` unseen.
 */
describe('the project', () => {
  it('type-checks (tsc --noEmit over tsconfig.json)', async () => {
    const root = join(__dirname, '..', '..');
    const tsc = require.resolve('typescript/bin/tsc');
    const { code, out } = await new Promise<{ code: number | null; out: string }>((resolve) => {
      execFile(
        process.execPath,
        [tsc, '-p', join(root, 'tsconfig.json'), '--noEmit', '--pretty', 'false'],
        { cwd: root, maxBuffer: 16 * 1024 * 1024 },
        (err, stdout, stderr) =>
          resolve({ code: err ? ((err as { code?: number }).code ?? 1) : 0, out: stdout + stderr }),
      );
    });
    expect({ code, errors: out.split('\n').filter((l) => / error TS\d+:/.test(l)) }).toEqual({
      code: 0,
      errors: [],
    });
  }, 180_000);
});
