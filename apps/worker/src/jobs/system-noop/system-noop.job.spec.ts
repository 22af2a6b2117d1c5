import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { parseJobPayload } from '@berth/jobs';
import type { JobContext } from '../job-context';
import { noopGatePath, systemNoopJob } from './system-noop.job';

describe('system.noop', () => {
  let dataRoot: string;
  beforeEach(() => (dataRoot = mkdtempSync(join(tmpdir(), 'berth-noop-'))));
  afterEach(() => rmSync(dataRoot, { recursive: true, force: true }));

  const run = (payload: unknown) =>
    systemNoopJob.run({
      payload: parseJobPayload('system.noop', payload),
      dataRoot,
    } as JobContext<'system.noop'>);

  it('answers at once without a hold', async () => {
    await expect(run({ n: 3 })).resolves.toEqual({ result: { n: 3 } });
  });

  it('a gated hold ends as soon as its gate opens, not at the end of the hold', async () => {
    const t0 = Date.now();
    const running = run({ n: 1, holdMs: 30_000, gate: 'g-1' });
    await new Promise((r) => setTimeout(r, 100));
    const path = noopGatePath(dataRoot, 'g-1');
    expect(path).toBe(join(dataRoot, 'noop-gates', 'g-1'));
    mkdirSync(dirname(path), { recursive: true });
    writeFileSync(path, '');
    const { result } = await running;
    expect(result).toMatchObject({ n: 1, opened: true });
    expect(Date.now() - t0).toBeLessThan(10_000);
  });

  it('a gate that stays shut ends the hold at holdMs', async () => {
    const { result } = await run({ n: 2, holdMs: 150, gate: 'never' });
    expect(result).toMatchObject({ n: 2, opened: false });
    const r = result as { ranFrom: string; ranTo: string };
    expect(Date.parse(r.ranTo) - Date.parse(r.ranFrom)).toBeGreaterThanOrEqual(140);
  });

  it('refuses a gate name that is not a plain name (no path out of the gates directory)', () => {
    for (const gate of ['../x', 'a/b', '', '.hidden', 'UPPER', 'x'.repeat(64)])
      expect(() => parseJobPayload('system.noop', { holdMs: 10, gate })).toThrow();
  });
});
