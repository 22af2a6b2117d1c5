import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';

const SCRIPT = resolve(__dirname, '..', 'support', 'summary.js');

/** The test command's last line and exit code for jest's `--json` results `r`. */
function summarize(r: object | null, ci = false) {
  const dir = mkdtempSync(join(tmpdir(), 'berth-summary-'));
  try {
    const file = join(dir, 'results.json');
    if (r) writeFileSync(file, JSON.stringify(r));
    const env = { ...process.env, CI: ci ? 'true' : '' };
    const out = spawnSync(process.execPath, [SCRIPT, file], { env, encoding: 'utf8' });
    const lines = out.stdout.trim().split('\n');
    return { last: lines[lines.length - 1], lines, code: out.status };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

const results = (over: object = {}) => ({
  numPassedTests: 5,
  numFailedTests: 0,
  numRuntimeErrorTestSuites: 0,
  numFailedTestSuites: 0,
  numPendingTests: 0,
  numTodoTests: 0,
  numTotalTests: 5,
  success: true,
  ...over,
});

describe('the test command summary line (test/support/summary.js)', () => {
  it('says how many passed and failed, and fails the run on a failure', () => {
    expect(summarize(results())).toEqual({
      last: '5 passed, 0 failed',
      lines: ['5 passed, 0 failed'],
      code: 0,
    });
    expect(summarize(results({ numPassedTests: 4, numFailedTests: 1 }))).toMatchObject({
      last: '4 passed, 1 failed',
      code: 1,
    });
  });

  it('counts a suite that failed to load, or failed with no failing test of its own (a hook), as failed', () => {
    expect(summarize(results({ numRuntimeErrorTestSuites: 1, success: false }))).toMatchObject({
      last: '5 passed, 1 failed',
      code: 1,
    });
    expect(summarize(results({ numFailedTestSuites: 1, success: false }))).toMatchObject({
      last: '5 passed, 1 failed',
      code: 1,
    });
  });

  it('reports skips; in CI (CI=true) a skip fails the run, with the reason before the last line', () => {
    const skipped = results({ numPassedTests: 3, numPendingTests: 2 });
    expect(summarize(skipped)).toMatchObject({ last: '3 passed, 0 failed, 2 skipped', code: 0 });
    const ci = summarize(skipped, true);
    expect(ci).toMatchObject({ last: '3 passed, 0 failed, 2 skipped', code: 1 });
    expect(ci.lines[0]).toMatch(/2 test\(s\) skipped, which fails the run in CI/);
  });

  it('fails a run that ran nothing or left no results', () => {
    expect(summarize(results({ numPassedTests: 0, numTotalTests: 0 }))).toMatchObject({ code: 1 });
    expect(summarize(null)).toMatchObject({ last: '0 passed, 1 failed', code: 1 });
  });
});
