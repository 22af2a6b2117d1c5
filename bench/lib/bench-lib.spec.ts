// Self-checks of the bench's core (unit tests: npm test runs them; scripts/bench.sh runs them before a bench).
import assert from 'node:assert/strict';
import { mkdtemp, readFile, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { compareRow, fmtBytes, fmtMs, markdownTable } from './markdown';
import { kbField } from './proc';
import { fileStamp, writeResults } from './results';
import { percentile, ratio, summarize } from './stats';

test('percentile is nearest-rank over unsorted samples', () => {
  const xs = [5, 1, 4, 2, 3, 10, 9, 8, 7, 6];
  assert.equal(percentile(xs, 50), 5);
  assert.equal(percentile(xs, 99), 10);
  assert.equal(percentile(xs, 0), 1);
  assert.equal(percentile([7], 99), 7);
  const hundred = Array.from({ length: 100 }, (_, i) => 100 - i);
  assert.equal(percentile(hundred, 99), 99);
  assert.equal(percentile(hundred, 50), 50);
  assert.throws(() => percentile([], 50), RangeError);
  assert.throws(() => percentile([1], 101), RangeError);
});

test('summarize gives n, p50, p99, mean, min, max and does not reorder its input', () => {
  const xs = [3, 1, 2];
  assert.deepEqual(summarize(xs), { n: 3, p50: 2, p99: 3, mean: 2, min: 1, max: 3 });
  assert.deepEqual(xs, [3, 1, 2]);
  assert.throws(() => summarize([]), RangeError);
  assert.equal(ratio(1, 4), 0.25);
  assert.equal(ratio(1, 0), null);
  assert.equal(ratio(undefined, 2), null);
});

test('markdown table pads, escapes pipes and formats a Berth/LXC row', () => {
  const t = markdownTable(['a', 'bb'], [['x|y', '1'], compareRow('stop', 50, 200).slice(0, 2)]);
  const lines = t.split('\n');
  assert.equal(lines.length, 4);
  assert.match(lines[0], /^\| a +\| bb +\|$/);
  assert.match(lines[1], /^\|-+\|-+\|$/);
  assert.ok(lines[2].includes('x\\|y'));
  assert.equal(new Set(lines.map((l) => l.length)).size, 1);
  assert.deepEqual(compareRow('stop', 50, 200), ['stop', '50.0 ms', '200 ms', '0.25×']);
  assert.deepEqual(compareRow('x', 1, undefined), ['x', '1.00 ms', '—', '—']);
  assert.equal(fmtMs(1234.4), '1234 ms');
  assert.equal(fmtBytes(512 * 1024), '512 KiB');
  assert.equal(fmtBytes(3 * 1024 * 1024), '3.00 MiB');
});

test('kbField reads /proc kB fields in bytes', () => {
  const status = 'Name:\tberth-launch\nVmRSS:\t     812 kB\nVmHWM:\t 900 kB\n';
  assert.equal(kbField(status, 'VmRSS'), 812 * 1024);
  assert.equal(kbField(status, 'Pss'), null);
});

test('writeResults writes the dated and the latest file with the same JSON', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'berth-bench-selftest-'));
  try {
    const date = new Date('2026-11-25T10:31:07.123Z');
    const w = await writeResults(join(dir, 'out'), 'runtime', { a: 1 }, date);
    assert.equal(fileStamp(date), '2026-11-25T10-31-07Z');
    assert.equal(w.dated, join(dir, 'out', 'runtime-2026-11-25T10-31-07Z.json'));
    assert.deepEqual(JSON.parse(await readFile(w.dated, 'utf8')), { a: 1 });
    assert.deepEqual(JSON.parse(await readFile(w.latest, 'utf8')), { a: 1 });
    // expect, not assert: readdir's array comes from another realm under jest.
    expect((await readdir(join(dir, 'out'))).sort()).toEqual([
      'latest-runtime.json',
      'runtime-2026-11-25T10-31-07Z.json',
    ]);
    await assert.rejects(writeResults(dir, '../x', {}), RangeError);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});
